"""Lexicon validation on the native record path: a record lexicon described for C.

Where it sits in the flow: the native record path (records/native.py,
records/native/lexcheck.c) validates a record's DAG-CBOR block without
decoding it. Per collection it needs the record lexicon in a form C can walk:
`describe` turns the lexicon model of `records.validate` (the bundled
documents of `load_lexicons`, refs resolved by the same lookup as
`validate._Compiler`) into a flat tuple of nodes, and `native_check` compiles
that once per collection with `lex_compile`. Per record, `lex_check(schema,
block)` answers True exactly where the Python check of
`record_checks(name, trust_created_at=True)` accepts the decoded record, and
False where it rejects it or where C does not decide (records/native/lexcheck.c
lists those cases); then the Python validator decides and words the dead letter.

The description (node 0 is the record's object; children are node indices):
    ("object", ((key, node, required, nullable), ...))   keys in DAG-CBOR order
    ("string", format, minLength, maxLength, minGraphemes, maxGraphemes, enum, const)
    ("integer", minimum, maximum, enum, const)
    ("boolean", const)
    ("bytes", minLength, maxLength)
    ("cid-link",)
    ("blob", maxSize, accept)
    ("array", items, minLength, maxLength)
    ("union", ((member $type, node), ...), closed)
    ("unknown",)
    ("any",)      a required property the object does not describe (presence only)
with None for an absent rule. Values are normalised as the generated checks
(records/validate_codegen.py) read them: bounds through `int`, a boolean
const through `bool`, an enum or const of the wrong type as an enum nothing
matches.
"""

from __future__ import annotations

import functools
from typing import Any

from bsky_backfill.records import native
from bsky_backfill.records.formats import FORMATS
from bsky_backfill.records.validate import _Compiler, load_lexicons

__all__ = ["Description", "describe", "native_check"]

Description = tuple[tuple[Any, ...], ...]
"""A record lexicon as `lex_compile` reads it (see the module docstring)."""


def _key_order(name: str) -> tuple[int, bytes]:
    """DAG-CBOR map-key order: shorter UTF-8 first, then bytewise."""
    raw = name.encode("utf-8")
    return len(raw), raw


def _opt_int(d: dict[str, Any], key: str) -> int | None:
    return int(d[key]) if key in d else None


class _Describer:
    """One record lexicon -> nodes; named definitions are described once (by index)."""

    def __init__(self, docs: dict[str, dict[str, Any]], trust_created_at: bool) -> None:
        self.lookup = _Compiler(docs).lookup  # the same ref resolution as validate.py
        self.trust_created_at = trust_created_at
        self.nodes: list[tuple[Any, ...] | None] = []
        self.named: dict[str, int] = {}
        self.resolving: set[str] = set()

    def record(self, nsid: str, main: dict[str, Any]) -> Description:
        self.nodes.append(None)  # node 0: the record's object
        self.nodes[0] = self.object(main["record"], nsid, record=True)
        assert all(node is not None for node in self.nodes)
        return tuple(node for node in self.nodes if node is not None)

    def node(self, d: dict[str, Any], nsid: str) -> int:
        """The index of the node describing `d` (a ref: its target's, shared)."""
        if d.get("type") == "ref":
            return self.ref(d["ref"], nsid)
        index = len(self.nodes)
        self.nodes.append(None)
        self.nodes[index] = self.content(d, nsid)
        return index

    def ref(self, ref: str, nsid: str) -> int:
        target = self.lookup(ref, nsid)
        if target is None:
            raise ValueError(f"{nsid}: ref {ref!r} does not resolve")
        return self.named_node(*target)

    def named_node(self, full: str, definition: dict[str, Any]) -> int:
        known = self.named.get(full)
        if known is not None:
            return known
        doc_nsid = full.partition("#")[0]
        if definition.get("type") == "ref":  # an alias: its target's node
            if full in self.resolving:
                raise ValueError(f"{full}: refs that only name each other")
            self.resolving.add(full)
            index = self.ref(definition["ref"], doc_nsid)
            self.resolving.discard(full)
        else:
            # Reserved first: a definition that refers to itself finds it.
            index = len(self.nodes)
            self.nodes.append(None)
            self.named[full] = index
            self.nodes[index] = self.content(definition, doc_nsid)
        self.named[full] = index
        return index

    def any_node(self) -> int:
        self.nodes.append(("any",))
        return len(self.nodes) - 1

    def object(self, d: dict[str, Any], nsid: str, *, record: bool = False) -> tuple[Any, ...]:
        required = set(d.get("required", ()))
        nullable = set(d.get("nullable", ()))
        props = []
        for name, p in sorted(d.get("properties", {}).items(), key=lambda kv: _key_order(kv[0])):
            if record and name == "createdAt" and self.trust_created_at:
                # As the generated check: the caller parses createdAt (records/columns.py).
                p = {k: v for k, v in p.items() if k != "format"}
            props.append((name, self.node(p, nsid), name in required, name in nullable))
        # A required property the schema does not list is still required.
        for name in sorted(required - set(d.get("properties", {})), key=_key_order):
            props.append((name, self.any_node(), True, name in nullable))
        props.sort(key=lambda prop: _key_order(prop[0]))
        return ("object", tuple(props))

    def content(self, d: dict[str, Any], nsid: str) -> tuple[Any, ...]:
        kind = d.get("type")
        if kind == "object":
            return self.object(d, nsid)
        if kind == "string":
            fmt = d.get("format")
            if fmt is not None and fmt not in FORMATS:
                raise ValueError(f"{nsid}: unknown string format {fmt!r}")
            enum = tuple(v for v in d["enum"] if v.__class__ is str) if "enum" in d else None
            const = d.get("const")
            if "const" in d and const.__class__ is not str:
                const, enum = None, ()  # no string equals it (the generated `!=` test)
            limits = ("minLength", "maxLength", "minGraphemes", "maxGraphemes")
            return ("string", fmt, *(_opt_int(d, k) for k in limits), enum, const)
        if kind == "integer":
            values = None
            if "enum" in d:
                values = tuple(
                    int(v) for v in d["enum"] if isinstance(v, int | float) and v == int(v)
                )
            const = int(d["const"]) if "const" in d else None
            return ("integer", _opt_int(d, "minimum"), _opt_int(d, "maximum"), values, const)
        if kind == "boolean":
            return ("boolean", bool(d["const"]) if "const" in d else None)
        if kind == "bytes":
            return ("bytes", _opt_int(d, "minLength"), _opt_int(d, "maxLength"))
        if kind == "cid-link":
            return ("cid-link",)
        if kind == "blob":
            accept = tuple(d["accept"]) if d.get("accept") else None
            return ("blob", _opt_int(d, "maxSize"), accept)
        if kind == "array":
            items = self.node(d["items"], nsid)
            return ("array", items, _opt_int(d, "minLength"), _opt_int(d, "maxLength"))
        if kind == "union":
            members = []
            for ref in d.get("refs", ()):
                target = self.lookup(ref, nsid)
                if target is None:
                    raise ValueError(f"{nsid}: union member {ref!r} does not resolve")
                full, definition = target
                index = self.named_node(full, definition)
                members.append((full, index))
                if "#" not in full:
                    members.append((f"{full}#main", index))
            return ("union", tuple(members), bool(d.get("closed", False)))
        if kind == "unknown":
            return ("unknown",)
        raise ValueError(f"{nsid}: lexicon type {kind!r} cannot describe record data")


def describe(
    collection: str,
    docs: dict[str, dict[str, Any]] | None = None,
    *,
    trust_created_at: bool = True,
) -> Description | None:
    """The record lexicon of `collection` as `lex_compile` reads it; None when
    `docs` (default: the bundled lexicons) hold no record lexicon for it.

    `trust_created_at`: as `validate.record_checks` (the native path parses
    createdAt itself, so its format is not part of the schema).
    """
    docs = load_lexicons() if docs is None else docs
    main = docs.get(collection, {}).get("defs", {}).get("main")
    if main is None or main.get("type") != "record":
        return None
    return _Describer(docs, trust_created_at).record(collection, main)


@functools.cache
def native_check(collection: str) -> Any:
    """The compiled schema `lex_check` takes for `collection` (once per process),
    or None when the native path is not built or there is no bundled lexicon."""
    compile_schema = native.lex_compile
    if compile_schema is None:
        return None
    description = describe(collection)
    return None if description is None else compile_schema(description)
