"""The per-record fast path of lexicon validation: each record lexicon as generated Python.

Where it sits in the flow: `records.validate` builds, once per process, one
function per bundled record type from this module and one explaining closure
tree (`_Compiler` there). Per record, `RecordColumns` runs the generated
function, which only answers valid / invalid; only for an invalid record does
the closure tree run again to name the path and the rule. So the two must
agree, and tests/records/test_lexicon_validation.py holds them equal on every
fixture record, the interop vectors and the hand-made invalid table.

Why generated code: a closure per definition costs a Python call per field
and per nesting level (a post's validation was ~40 % of its extraction); the
generated function is straight-line code with objects, arrays, unions and
refs inlined (a recursive ref becomes a call), so the remaining calls are the
string-format checks. Where the C checks were built (records/formats.py)
each is one call, cheaper than anything put in front of it. Without them
the regex checks are memoised: a value that passed once (a DID, a language,
a repeated subject) is a set lookup afterwards, and the common AT-URI shape
(`at://did:plc:.../nsid/rkey`) is one precompiled regex before the full
check. Blobs, byte strings, CID links and `unknown` (rare) call the
explaining checks directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["FastCheck", "clear_memos", "generate"]

FastCheck = Callable[[dict[str, Any]], bool]

_MEMO_LIMIT = 65_536
"""Valid values remembered per format (the set is emptied when it is full)."""

# Shapes that are always valid when they match (a subset of each format), so
# the common value costs one precompiled regex: a DID whose identifier has no
# ':' or '%' (every did:plc and did:web); an AT-URI of such a DID, an NSID of
# plain lowercase segments and a letters-only name, and a record key without
# '.' (every TID); a base32 CIDv1 string; an http(s) URL of at most 4 KB.
# Anything else gets the full check.
# Their values repeat less (subjects, links), but still often enough (a
# reply's root and parent, popular posts and accounts across the repos of one
# process) that a remembered value is worth a set lookup before the regex.
_DID_COMMON = r"did:[a-z]{1,32}:[a-zA-Z0-9._-]{1,1024}"
_COMMON: dict[str, re.Pattern[str]] = {
    "did": re.compile(_DID_COMMON),
    "at-uri": re.compile(
        rf"at://{_DID_COMMON}"
        r"(?:/(?:[a-z]{1,40}\.){2,6}[a-zA-Z]{1,60}(?:/[a-zA-Z0-9_~:-]{1,512})?)?"
    ),
    "cid": re.compile(r"b[a-z2-7]{7,255}"),
    "uri": re.compile(r"https?://[^\s/][^\s]{0,4000}"),
}
# Formats whose values repeat within and across repos (langs, handles, NSIDs):
# a value that passed once is a set lookup afterwards.
_MEMOISED = frozenset({"language", "handle", "nsid", "at-identifier", "record-key", "tid"})


_MEMOS: list[set[str]] = []


def clear_memos() -> None:
    """Forget every remembered valid value (benchmarks measure cold values)."""
    for seen in _MEMOS:
        seen.clear()


def _memo(valid: Callable[[str], bool]) -> tuple[set[str], Any]:
    """(remembered valid values, a check that remembers what passes)."""
    seen: set[str] = set()
    _MEMOS.append(seen)

    def check(value: str) -> bool:
        if valid(value):
            if len(seen) >= _MEMO_LIMIT:
                seen.clear()
            seen.add(value)
            return True
        return False

    return seen, check


_BUILTIN = type(len)

_MAX_INLINE_DEPTH = 8

# CIDv1 of a sha2-256 digest (36 bytes), dag-cbor or raw codec: what a PDS
# writes for every record and blob; such bytes always decode as a CID.
_CID_PREFIXES = frozenset({b"\x01\x71\x12\x20", b"\x01\x55\x12\x20"})


class _Generator:
    """Writes the source of one module holding a function per record type."""

    def __init__(
        self,
        docs: dict[str, dict[str, Any]],
        lookup: Callable[[str, str], tuple[str, dict[str, Any]] | None],
        slow: Callable[[dict[str, Any], str], Any],
        formats: dict[str, Callable[[str], bool]],
        grapheme_count: Callable[[str], int],
        is_link: Callable[[Any], bool],
        trust_created_at: bool,
    ) -> None:
        self.is_link = is_link
        self.docs = docs
        self.valid_formats = formats
        self.grapheme_count = grapheme_count
        self.lookup = lookup
        self.slow = slow  # definition -> the explaining check (blob, bytes, ...)
        self.trust_created_at = trust_created_at
        self.names: dict[str, Any] = {}
        self.blocks: list[list[str]] = []
        self.functions: dict[str, str] = {}  # definition name -> generated function
        self.counter = 0
        self.formats: dict[str, tuple[str, str]] = {}  # format -> (pre-test, check)
        self.recent: dict[str, str] = {}  # format -> its memo set, for _COMMON formats

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, value: Any, prefix: str) -> str:
        name = self.fresh(prefix)
        self.names[name] = value
        return name

    def format_test(self, fmt: str, v: str) -> str:
        """An expression that is true when `v` (a str) is NOT valid in `fmt`."""
        known = self.formats.get(fmt)
        if known is None:
            valid = self.valid_formats[fmt]
            if valid.__class__ is _BUILTIN:
                # A C check (records/_formats.c) costs less than a set lookup
                # of a fresh string (its hash) plus the add: no memory.
                known = ("", self.const(valid, "F"))
            elif fmt in _MEMOISED:
                seen, check = _memo(valid)
                known = ("{v} not in " + self.const(seen, "S"), self.const(check, "F"))
            elif fmt in _COMMON:
                common = self.const(_COMMON[fmt].fullmatch, "R")
                known = (common + "({v}) is None", self.const(valid, "F"))
                seen = set()
                _MEMOS.append(seen)
                self.recent[fmt] = self.const(seen, "S")
            else:
                known = ("", self.const(valid, "F"))
            self.formats[fmt] = known
        first, check = known
        if not first:
            return f"not {check}({v})"
        return f"{first.format(v=v)} and not {check}({v})"

    # -- definitions -> lines ---------------------------------------------------

    def function_for(self, full: str, definition: dict[str, Any], nsid: str) -> str:
        """A generated function for a named definition (used for recursion)."""
        name = self.functions.get(full)
        if name is None:
            name = self.functions[full] = self.fresh("d")
            lines = [f"def {name}(x):"]
            self.emit(definition, "x", nsid, 1, (full,), lines)
            lines.append("    return True")
            self.blocks.append(lines)
        return name

    def record(self, nsid: str, main: dict[str, Any]) -> str:
        name = self.fresh("r")
        lines = [f"def {name}(x):"]
        self.emit_object(main["record"], "x", nsid, 1, (nsid,), lines, record=True)
        lines.append("    return True")
        self.blocks.append(lines)
        return name

    def emit(
        self,
        d: dict[str, Any],
        v: str,
        nsid: str,
        depth: int,
        stack: tuple[str, ...],
        out: list[str],
    ) -> None:
        pad = "    " * depth
        kind = d.get("type")
        if kind == "object":
            self.emit_object(d, v, nsid, depth, stack, out)
        elif kind == "string":
            self.emit_string(d, v, depth, out)
        elif kind == "integer":
            cond = [f"{v}.__class__ is not int"]
            if "minimum" in d:
                cond.append(f"{v} < {int(d['minimum'])}")
            if "maximum" in d:
                cond.append(f"{v} > {int(d['maximum'])}")
            if "enum" in d:
                cond.append(f"{v} not in {self.const(frozenset(d['enum']), 'E')}")
            if "const" in d:
                cond.append(f"{v} != {int(d['const'])}")
            out.append(f"{pad}if {' or '.join(cond)}: return False")
        elif kind == "boolean":
            cond = [f"{v}.__class__ is not bool"]
            if "const" in d:
                cond.append(f"{v} is not {bool(d['const'])}")
            out.append(f"{pad}if {' or '.join(cond)}: return False")
        elif kind == "array":
            cond = [f"{v}.__class__ is not list"]
            if "maxLength" in d:
                cond.append(f"len({v}) > {int(d['maxLength'])}")
            if "minLength" in d:
                cond.append(f"len({v}) < {int(d['minLength'])}")
            out.append(f"{pad}if {' or '.join(cond)}: return False")
            item = self.fresh("i")
            body: list[str] = []
            self.emit(d["items"], item, nsid, depth + 1, stack, body)
            out.append(f"{pad}for {item} in {v}:")
            out.extend(body)
        elif kind == "union":
            self.emit_union(d, v, nsid, depth, stack, out)
        elif kind == "ref":
            target = self.lookup(d["ref"], nsid)
            if target is None:
                raise ValueError(f"{nsid}: ref {d['ref']!r} does not resolve")
            self.emit_named(target[0], target[1], v, depth, stack, out)
        elif kind == "blob":
            self.emit_blob(d, v, nsid, depth, out)
        elif kind in ("bytes", "cid-link", "unknown"):
            check = self.const(self.slow(d, nsid), "C")
            out.append(f"{pad}if {check}({v}) is not None: return False")
        else:
            raise ValueError(f"{nsid}: lexicon type {kind!r} cannot describe record data")

    def emit_named(
        self,
        full: str,
        definition: dict[str, Any],
        v: str,
        depth: int,
        stack: tuple[str, ...],
        out: list[str],
        *,
        checked_dict: bool = False,
    ) -> None:
        doc_nsid = full.partition("#")[0]
        if full in stack or len(stack) > _MAX_INLINE_DEPTH:
            name = self.function_for(full, definition, doc_nsid)
            out.append(f"{'    ' * depth}if not {name}({v}): return False")
        elif checked_dict and definition.get("type") == "object":
            inner = (*stack, full)
            self.emit_object(definition, v, doc_nsid, depth, inner, out, checked_dict=True)
        else:
            self.emit(definition, v, doc_nsid, depth, (*stack, full), out)

    def emit_object(
        self,
        d: dict[str, Any],
        v: str,
        nsid: str,
        depth: int,
        stack: tuple[str, ...],
        out: list[str],
        *,
        record: bool = False,
        checked_dict: bool = False,
    ) -> None:
        pad = "    " * depth
        start = len(out)
        if not checked_dict:  # a union member was checked for it already
            out.append(f"{pad}if {v}.__class__ is not dict: return False")
        required = d.get("required", ())
        for name in required:
            out.append(f"{pad}if {name!r} not in {v}: return False")
        nullable = set(d.get("nullable", ()))
        for name, p in d.get("properties", {}).items():
            if record and name == "createdAt" and self.trust_created_at:
                # The caller parses createdAt anyway (records/columns.py): not twice.
                p = {k: val for k, val in p.items() if k != "format"}
            # `in` and a subscript, not `.get`: no method call for the (many)
            # properties a record does not have.
            y = self.fresh("y")
            inner = depth + 1
            if name in nullable:
                out.append(f"{pad}if {name!r} in {v} and {v}[{name!r}] is not None:")
            elif name in required:
                inner = depth  # known to be present
            else:
                out.append(f"{pad}if {name!r} in {v}:")
            out.append(f"{'    ' * inner}{y} = {v}[{name!r}]")
            self.emit(p, y, nsid, inner, stack, out)
        if len(out) == start:  # nothing to check (an empty object as a union member)
            out.append(f"{pad}pass")

    def emit_blob(self, d: dict[str, Any], v: str, nsid: str, depth: int, out: list[str]) -> None:
        """A typed blob inline (its ref checked for the common CID shape first);
        the legacy 2023 form and anything odd go to the explaining check."""
        pad = "    " * depth
        ref, size, mime = self.fresh("b"), self.fresh("z"), self.fresh("m")
        link = self.const(self.is_link, "L")
        slow = self.const(self.slow(d, nsid), "C")
        size_cond = [f"{size}.__class__ is not int", f"{size} < 0"]
        if "maxSize" in d:
            size_cond.append(f"{size} > {int(d['maxSize'])}")
        accept = list(d.get("accept", ()))
        mime_cond = [f"{mime}.__class__ is not str"]
        if accept and "*/*" not in accept:
            exact = self.const(frozenset(a for a in accept if not a.endswith("/*")), "E")
            prefixes = self.const(tuple(a[:-1] for a in accept if a.endswith("/*")), "P")
            mime_cond.append(f"not ({mime} in {exact} or {mime}.startswith({prefixes}))")
        out += [
            f"{pad}if {v}.__class__ is not dict: return False",
            f"{pad}if {v}.get('$type') == 'blob':",
            f"{pad}    {ref} = {v}.get('ref')",
            f"{pad}    if not ({ref}.__class__ is bytes and len({ref}) == 36 and "
            f"{ref}[:4] in {self.const(_CID_PREFIXES, 'Q')}) and not {link}({ref}): return False",
            f"{pad}    {size} = {v}.get('size')",
            f"{pad}    if {' or '.join(size_cond)}: return False",
            f"{pad}    {mime} = {v}.get('mimeType')",
            f"{pad}    if {' or '.join(mime_cond)}: return False",
            f"{pad}elif {slow}({v}) is not None: return False",
        ]

    def emit_string(self, d: dict[str, Any], v: str, depth: int, out: list[str]) -> None:
        pad = "    " * depth
        out.append(f"{pad}if {v}.__class__ is not str: return False")
        encoded = f"len({v}.encode('utf-8', 'surrogatepass'))"
        if "maxLength" in d:
            most = int(d["maxLength"])
            out.append(f"{pad}if len({v}) > {most // 4} and {encoded} > {most}: return False")
        if "minLength" in d:
            least = int(d["minLength"])
            out.append(f"{pad}if len({v}) < {least} and {encoded} < {least}: return False")
        if "maxGraphemes" in d or "minGraphemes" in d:
            count = self.const(self.grapheme_count, "G")
            if "maxGraphemes" in d:
                most = int(d["maxGraphemes"])
                out.append(f"{pad}if len({v}) > {most} and {count}({v}) > {most}: return False")
            if "minGraphemes" in d:
                least = int(d["minGraphemes"])
                out.append(f"{pad}if {count}({v}) < {least}: return False")
        fmt = d.get("format")
        if fmt is not None:
            test = self.format_test(fmt, v)
            seen = self.recent.get(fmt)
            if seen is None:
                out.append(f"{pad}if {test}: return False")
            else:
                out += [
                    f"{pad}if {v} not in {seen}:",
                    f"{pad}    if {test}: return False",
                    f"{pad}    if len({seen}) >= {_MEMO_LIMIT}: {seen}.clear()",
                    f"{pad}    {seen}.add({v})",
                ]
        if "enum" in d:
            out.append(f"{pad}if {v} not in {self.const(frozenset(d['enum']), 'E')}: return False")
        if "const" in d:
            out.append(f"{pad}if {v} != {self.const(d['const'], 'K')}: return False")

    def emit_union(
        self,
        d: dict[str, Any],
        v: str,
        nsid: str,
        depth: int,
        stack: tuple[str, ...],
        out: list[str],
    ) -> None:
        pad = "    " * depth
        t = self.fresh("t")
        out.append(f"{pad}if {v}.__class__ is not dict: return False")
        out.append(f"{pad}{t} = {v}.get('$type')")
        first = True
        for ref in d.get("refs", ()):
            target = self.lookup(ref, nsid)
            if target is None:
                raise ValueError(f"{nsid}: union member {ref!r} does not resolve")
            full, definition = target
            names = [full] if "#" in full else [full, f"{full}#main"]
            test = " or ".join(f"{t} == {n!r}" for n in names)
            out.append(f"{pad}{'if' if first else 'elif'} {test}:")
            first = False
            self.emit_named(full, definition, v, depth + 1, stack, out, checked_dict=True)
        closed = bool(d.get("closed", False))
        fallback = "return False" if closed else f"if {t}.__class__ is not str: return False"
        if first:  # a union of no refs
            out.append(f"{pad}{fallback}")
        else:
            out.append(f"{pad}else:")
            out.append(f"{pad}    {fallback}")


def generate(
    docs: dict[str, dict[str, Any]],
    lookup: Callable[[str, str], tuple[str, dict[str, Any]] | None],
    slow: Callable[[dict[str, Any], str], Any],
    formats: dict[str, Callable[[str], bool]],
    grapheme_count: Callable[[str], int],
    is_link: Callable[[Any], bool],
    *,
    trust_created_at: bool,
) -> dict[str, FastCheck]:
    """NSID -> generated valid/invalid function, for every record type in `docs`.

    `lookup` resolves a ref, `slow` compiles an explaining check (used for
    blobs, bytes, links, unknown), `formats` are the string-format checks.
    """
    gen = _Generator(docs, lookup, slow, formats, grapheme_count, is_link, trust_created_at)
    entry: dict[str, str] = {}
    for nsid, doc in docs.items():
        main = doc["defs"].get("main")
        if main is not None and main.get("type") == "record":
            entry[nsid] = gen.record(nsid, main)
    source = "\n\n".join("\n".join(block) for block in gen.blocks) + "\n"
    namespace: dict[str, Any] = dict(gen.names)
    exec(compile(source, "<lexicon validators>", "exec"), namespace)
    return {nsid: namespace[name] for nsid, name in entry.items()}
