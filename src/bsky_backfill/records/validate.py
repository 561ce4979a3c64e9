"""Lexicon validation of records: the bundled lexicon JSON compiled once per process.

Where it sits in the flow: `records.columns.RecordColumns` calls
`record_checks(collection)` once per collection of a repo and the returned
check once per record, after the `$type`/record-key/createdAt checks and
before the time window (an invalid record is dead-lettered wherever it falls).
A failure is a dead letter (stage `validate`, code `InvalidRecord`) whose
message names the path and the rule, e.g.
`subject: expected com.atproto.repo.strongRef, got string`.

The schemas are the published lexicons bundled under `records/lexicons/`
(upstream commit in `lexicons/VERSION`). They are compiled **once per
process**, twice: into one generated function per record type
(`records.validate_codegen`, the per-record fast path: valid or not) and into
the closure tree here (`_Compiler`), which runs only for an invalid record to
name the path and the rule; tests hold the two equal. Cost per record:
README "Validation" and `bench/validation_cost.py`. Why our own code rather
than a package (checked on PyPI): `lexrpc` validates lexicons but interprets
the schema documents on every call and expects JSON-shaped values, while the
CAR path hands us libipld values (links and byte strings as Python `bytes`);
JSON-schema engines (`jsonschema`, `fastjsonschema`, `jsonschema-rs`) have no
`$type`-dispatched unions, grapheme limits, CID links or blobs, and would need
the record converted to JSON first. The `atproto` SDK validates through one
pydantic model per record, which costs more than the rest of the extraction.

Both record shapes are accepted (see `records.columns`): a link is `bytes`
(CAR) or `{"$link": str}` (JSON), a byte string is `bytes` or
`{"$bytes": str}`. A blob is `{"$type": "blob", "ref": link, "mimeType",
"size"}`; the legacy 2023 blob `{"cid": str, "mimeType": str}` is accepted too,
as the reference implementation reads it (the data model spec asks readers to).
Other pre-lexicon shapes (2023 follows with `subject: {did, declarationCid}`,
...) are invalid under today's lexicons and are dead-lettered.

Rules checked: required properties, nullable, types (an int is never a bool),
`$type` of union members (closed unions refuse unknown types; open unions
accept them unchecked), refs, string formats (`records.formats`: the C twins
of `bsky_backfill.syntax`'s checks, which the interop vectors test),
`minLength`/`maxLength` (UTF-8 bytes), `minGraphemes`/`maxGraphemes`,
`enum`/`const`, array `minLength`/`maxLength`, integer
`minimum`/`maximum`/`enum`/`const`, byte-string lengths, `unknown` (must be
a map), the blob shape, `accept` and `maxSize`. `knownValues` are not
enforced: the spec makes them open (a value the lexicon does not list is
allowed). The lexicon's record-key type (`tid`, `nsid`, `literal:self`) is
`record_key_check`, which records/columns.py applies to the rkey.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Callable
from importlib import resources
from typing import Any

import libipld

from bsky_backfill.records.formats import FORMATS
from bsky_backfill.records.validate_codegen import FastCheck, generate

__all__ = [
    "LEXICON_VERSION",
    "Invalid",
    "KeyCheck",
    "Validator",
    "compile_pairs",
    "compile_records",
    "grapheme_count",
    "known_record_types",
    "load_lexicons",
    "record_checks",
    "record_key_check",
    "record_key_type",
    "validator_for",
]


class Invalid:
    """Why a value failed: the path (innermost first, while it unwinds) and the rule."""

    __slots__ = ("message", "path")

    def __init__(self, message: str) -> None:
        self.message = message
        self.path: list[str] = []

    def at(self, step: str) -> Invalid:
        self.path.append(step)
        return self

    def __str__(self) -> str:
        where = "".join(
            step if step.startswith("[") else f".{step}" for step in reversed(self.path)
        ).lstrip(".")
        return f"{where or 'record'}: {self.message}"


Check = Callable[[Any], Invalid | None]
"""A compiled definition: None when the value is valid."""

Validator = Callable[[dict[str, Any]], str | None]
"""A compiled record lexicon: None, or the message of the first failure."""

_MISSING = object()
_decode_cid = libipld.decode_cid


def _kind(value: Any) -> str:
    """The data-model type name of a value, for messages."""
    cls = value.__class__
    if value is None:
        return "null"
    if cls is bool:
        return "boolean"
    if cls is int:
        return "integer"
    if cls is str:
        return "string"
    if cls is list:
        return "array"
    if cls is bytes:
        return "bytes"
    if cls is dict:
        t = value.get("$type")
        return f"object of type {t!r:.80}" if t.__class__ is str else "object"
    return str(cls.__name__)


# --- string formats and graphemes --------------------------------------------

# FORMATS: the C checks where built (records/formats.py), else `syntax`'s regexes.
_is_valid_cid = FORMATS["cid"]


def _extends(ch: str) -> bool:
    """Whether `ch` continues the grapheme cluster before it (the common cases)."""
    o = ord(ch)
    return (
        unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or o == 0x200D  # zero-width joiner
        or 0xFE00 <= o <= 0xFE0F  # variation selectors
        or 0x1F3FB <= o <= 0x1F3FF  # skin-tone modifiers
        or 0xE0020 <= o <= 0xE007F  # tag characters (flag sequences)
    )


def grapheme_count(s: str) -> int:
    """Extended grapheme clusters in `s`, for the cases that matter in posts.

    No standard-library segmenter exists; this joins CR LF, combining marks,
    variation selectors, skin tones, tags, ZWJ sequences and regional-indicator
    pairs. For a few scripts (Hangul jamo sequences, Indic conjuncts under
    Unicode 15.1) it counts more clusters than a full segmenter, so a text at
    the very limit in such a script may be refused. It only runs when a string
    has more code points than the limit allows graphemes, which is rare.
    """
    if s.isascii():  # one grapheme per character, except CR LF
        return len(s) - s.count("\r\n")
    count = 0
    joined = False
    ri_open = False
    for ch in s:
        o = ord(ch)
        if joined or _extends(ch):
            joined = o == 0x200D
            continue
        if 0x1F1E6 <= o <= 0x1F1FF:  # regional indicators pair into one flag
            if ri_open:
                ri_open = False
                continue
            ri_open = True
        else:
            ri_open = False
        count += 1
    return count - s.count("\r\n")


# --- the compiler --------------------------------------------------------------


class _Compiler:
    """Turns lexicon definitions into checks, once; refs are resolved lazily
    through a cell so recursive definitions compile."""

    def __init__(self, docs: dict[str, dict[str, Any]], *, trust_created_at: bool = False) -> None:
        self.docs = docs
        self.compiled: dict[str, Check] = {}
        self.trust_created_at = trust_created_at

    def lookup(self, ref: str, nsid: str) -> tuple[str, dict[str, Any]] | None:
        """`#name`, `nsid#name` or `nsid` (its main) -> (full name, definition)."""
        full = f"{nsid}{ref}" if ref.startswith("#") else ref
        doc_id, _, name = full.partition("#")
        doc = self.docs.get(doc_id)
        definition = None if doc is None else doc["defs"].get(name or "main")
        if definition is None:
            return None
        return (doc_id if name in ("", "main") else f"{doc_id}#{name}"), definition

    def ref(self, full: str, definition: dict[str, Any], nsid: str) -> Check:
        """The compiled check of a named definition (shared; compiled on first use)."""
        known = self.compiled.get(full)
        if known is not None:
            return known
        cell: list[Check] = []
        # Placeholder first: a definition that refers to itself finds it.
        self.compiled[full] = lambda value: cell[0](value)
        check = self.compile(definition, full.partition("#")[0] or nsid, label=full)
        cell.append(check)
        self.compiled[full] = check
        return check

    def compile(self, d: dict[str, Any], nsid: str, label: str | None = None) -> Check:
        kind = d.get("type")
        if kind == "object":
            return self._c_object(d, nsid, label)
        if kind == "record":
            return self._c_object(d["record"], nsid, label, record=True)
        method = getattr(self, f"_c_{str(kind).replace('-', '_')}", None)
        if method is None:
            raise ValueError(f"{nsid}: lexicon type {kind!r} cannot describe record data")
        check: Check = method(d, nsid)
        return check

    def _c_object(
        self, d: dict[str, Any], nsid: str, label: str | None, *, record: bool = False
    ) -> Check:
        """An object: its properties by name, with a fast path for the common leaves.

        The loop runs over the value's keys (records hold fewer keys than their
        schema lists), and a leaf that needs only a type test (a string with no
        limits, optionally a format; an integer or boolean without bounds) is
        checked inline; anything else, or a leaf that fails, calls its check
        (which also writes the message).
        """
        props = d.get("properties", {})
        required = tuple(d.get("required", ()))
        nullable = frozenset(d.get("nullable", ()))
        specs: dict[str, tuple[int, Any, Check]] = {}
        for name, p in props.items():
            kind, fast = _fast_kind(p)
            if record and name == "createdAt" and self.trust_created_at and kind == _FMT:
                # The caller parses createdAt anyway (records/columns.py): not twice.
                kind, fast = _STR, None
            specs[name] = (kind, fast, self.compile(p, nsid))
        get_spec = specs.get
        expected = "an object" if label is None else label

        def check_object(value: Any) -> Invalid | None:
            if value.__class__ is not dict:
                return Invalid(f"expected {expected}, got {_kind(value)}")
            for name in required:
                if name not in value:
                    return Invalid("required property missing").at(name)
            for name, v in value.items():
                spec = get_spec(name)
                if spec is None:
                    continue  # open objects: unknown properties are allowed
                kind, fast, sub = spec
                cls = v.__class__
                if kind == _FMT:
                    if cls is str and fast(v):
                        continue
                elif kind == _STR:
                    if cls is str:
                        continue
                elif kind == _INT:
                    if cls is int:
                        continue
                elif kind == _BOOL and cls is bool:
                    continue
                if v is None and name in nullable:
                    continue
                err = sub(v)
                if err is not None:
                    return err.at(name)
            return None

        return check_object

    def _c_ref(self, d: dict[str, Any], nsid: str) -> Check:
        target = self.lookup(d["ref"], nsid)
        if target is None:
            raise ValueError(f"{nsid}: ref {d['ref']!r} does not resolve")
        full, definition = target
        if definition.get("type") == "token":
            raise ValueError(f"{nsid}: ref {full!r} is a token, not data")
        # An object definition's check names it in its "expected ..." message.
        return self.ref(full, definition, nsid)

    def _c_union(self, d: dict[str, Any], nsid: str) -> Check:
        members: dict[str, Check] = {}
        for ref in d.get("refs", ()):
            target = self.lookup(ref, nsid)
            if target is None:
                raise ValueError(f"{nsid}: union member {ref!r} does not resolve")
            full, definition = target
            check = self.ref(full, definition, nsid)
            members[full] = check
            if "#" not in full:
                members[f"{full}#main"] = check
        closed = bool(d.get("closed", False))
        names = ", ".join(m for m in members if not m.endswith("#main"))

        def check_union(value: Any) -> Invalid | None:
            if value.__class__ is not dict:
                return Invalid(f"expected one of {names}, got {_kind(value)}")
            t = value.get("$type")
            if t.__class__ is not str:
                return Invalid(f"union member has no $type (expected one of {names})")
            member = members.get(t)
            if member is None:
                if closed:
                    return Invalid(f"$type {t!r:.100} is not one of {names}")
                return None  # open union: a type we do not know is allowed
            return member(value)

        return check_union

    def _c_string(self, d: dict[str, Any], nsid: str) -> Check:
        fmt = d.get("format")
        valid = None if fmt is None else FORMATS.get(fmt)
        if fmt is not None and valid is None:
            raise ValueError(f"{nsid}: unknown string format {fmt!r}")
        max_bytes = d.get("maxLength")
        min_bytes = d.get("minLength")
        max_g = d.get("maxGraphemes")
        min_g = d.get("minGraphemes")
        enum = frozenset(d["enum"]) if "enum" in d else None
        const = d.get("const")
        # Cheap bounds on code points that make the exact counts unnecessary:
        # UTF-8 takes 1-4 bytes a code point, a grapheme is >= 1 code point.
        sure_max = None if max_bytes is None else max_bytes // 4
        what = "string" if fmt is None else f"{fmt} string"

        def check_string(value: Any) -> Invalid | None:
            if value.__class__ is not str:
                return Invalid(f"expected a {what}, got {_kind(value)}")
            n = len(value)
            if max_bytes is not None and n > sure_max:  # type: ignore[operator]
                size = len(value.encode("utf-8", "surrogatepass"))
                if size > max_bytes:
                    return Invalid(f"string is {size} bytes long, maxLength is {max_bytes}")
            if min_bytes is not None and n < min_bytes:
                size = len(value.encode("utf-8", "surrogatepass"))
                if size < min_bytes:
                    return Invalid(f"string is {size} bytes long, minLength is {min_bytes}")
            if max_g is not None and n > max_g:
                g = grapheme_count(value)
                if g > max_g:
                    return Invalid(f"string is {g} graphemes long, maxGraphemes is {max_g}")
            if min_g is not None:
                g = grapheme_count(value)
                if g < min_g:
                    return Invalid(f"string is {g} graphemes long, minGraphemes is {min_g}")
            if valid is not None and not valid(value):
                return Invalid(f"{value!r:.100} is not a valid {fmt}")
            if enum is not None and value not in enum:
                return Invalid(f"{value!r:.100} is not one of {sorted(enum)}")
            if const is not None and value != const:
                return Invalid(f"{value!r:.100} must be {const!r}")
            return None

        limits = (max_bytes, min_bytes, max_g, min_g, enum, const)
        if all(limit is None for limit in limits):  # the common case: one call, no closure
            if valid is None:
                return _check_plain_string
            return functools.partial(_check_format_string, valid, str(fmt))
        return check_string

    def _c_integer(self, d: dict[str, Any], nsid: str) -> Check:
        low, high = d.get("minimum"), d.get("maximum")
        enum = frozenset(d["enum"]) if "enum" in d else None
        const = d.get("const")

        def check_integer(value: Any) -> Invalid | None:
            if value.__class__ is not int:
                return Invalid(f"expected an integer, got {_kind(value)}")
            if low is not None and value < low:
                return Invalid(f"{value} is less than minimum {low}")
            if high is not None and value > high:
                return Invalid(f"{value} is more than maximum {high}")
            if enum is not None and value not in enum:
                return Invalid(f"{value} is not one of {sorted(enum)}")
            if const is not None and value != const:
                return Invalid(f"{value} must be {const}")
            return None

        return check_integer

    def _c_boolean(self, d: dict[str, Any], nsid: str) -> Check:
        const = d.get("const")

        def check_boolean(value: Any) -> Invalid | None:
            if value.__class__ is not bool:
                return Invalid(f"expected a boolean, got {_kind(value)}")
            if const is not None and value is not const:
                return Invalid(f"{value} must be {const}")
            return None

        return check_boolean

    def _c_array(self, d: dict[str, Any], nsid: str) -> Check:
        item = self.compile(d["items"], nsid)
        low, high = d.get("minLength"), d.get("maxLength")

        def check_array(value: Any) -> Invalid | None:
            if value.__class__ is not list:
                return Invalid(f"expected an array, got {_kind(value)}")
            n = len(value)
            if high is not None and n > high:
                return Invalid(f"array has {n} items, maxLength is {high}")
            if low is not None and n < low:
                return Invalid(f"array has {n} items, minLength is {low}")
            for i, v in enumerate(value):
                err = item(v)
                if err is not None:
                    return err.at(f"[{i}]")
            return None

        return check_array

    def _c_bytes(self, d: dict[str, Any], nsid: str) -> Check:
        low, high = d.get("minLength"), d.get("maxLength")

        def check_bytes(value: Any) -> Invalid | None:
            if value.__class__ is bytes:
                n = len(value)
            elif value.__class__ is dict and value.keys() == {"$bytes"}:
                text = value["$bytes"]
                if text.__class__ is not str:
                    return Invalid("$bytes is not a string")
                n = len(text.rstrip("=")) * 3 // 4
            else:
                return Invalid(f"expected bytes, got {_kind(value)}")
            if high is not None and n > high:
                return Invalid(f"bytes are {n} long, maxLength is {high}")
            if low is not None and n < low:
                return Invalid(f"bytes are {n} long, minLength is {low}")
            return None

        return check_bytes

    def _c_cid_link(self, d: dict[str, Any], nsid: str) -> Check:
        return _check_link

    def _c_blob(self, d: dict[str, Any], nsid: str) -> Check:
        max_size = d.get("maxSize")
        accept = tuple(d.get("accept", ()))
        if max_size is None and not accept:
            return _check_blob
        exact = frozenset(a for a in accept if not a.endswith("/*"))
        prefixes = tuple(a[:-1] for a in accept if a.endswith("/*") and a != "*/*")
        any_type = "*/*" in accept or not accept

        def check_limited_blob(value: Any) -> Invalid | None:
            err = _check_blob(value)
            if err is not None:
                return err
            size = value.get("size")
            if max_size is not None and size.__class__ is int and size > max_size:
                return Invalid(f"blob is {size} bytes, maxSize is {max_size}")
            mime = value["mimeType"]
            if not any_type and mime not in exact and not mime.startswith(prefixes):
                return Invalid(f"blob mimeType {mime!r:.80} is not one of {list(accept)}")
            return None

        return check_limited_blob

    def _c_unknown(self, d: dict[str, Any], nsid: str) -> Check:
        return _check_unknown


_OTHER, _STR, _FMT, _INT, _BOOL = range(5)
_LIMITS = ("maxLength", "minLength", "maxGraphemes", "minGraphemes", "enum", "const")


def _fast_kind(d: dict[str, Any]) -> tuple[int, Any]:
    """Whether a definition is a leaf its parent can check inline, and how."""
    kind = d.get("type")
    if kind == "string" and not any(k in d for k in _LIMITS):
        fmt = d.get("format")
        return (_STR, None) if fmt is None else (_FMT, FORMATS.get(fmt))
    if kind == "integer" and not any(k in d for k in ("minimum", "maximum", "enum", "const")):
        return _INT, None
    if kind == "boolean" and "const" not in d:
        return _BOOL, None
    return _OTHER, None


def _check_plain_string(value: Any) -> Invalid | None:
    if value.__class__ is not str:
        return Invalid(f"expected a string, got {_kind(value)}")
    return None


def _check_format_string(valid: Callable[[str], bool], fmt: str, value: Any) -> Invalid | None:
    if value.__class__ is not str:
        return Invalid(f"expected a {fmt} string, got {_kind(value)}")
    if not valid(value):
        return Invalid(f"{value!r:.100} is not a valid {fmt}")
    return None


def _is_link(value: Any) -> bool:
    if value.__class__ is bytes:
        try:
            _decode_cid(value)
        except ValueError:
            return False
        return True
    if value.__class__ is dict and len(value) == 1:
        link = value.get("$link")
        return link.__class__ is str and _is_valid_cid(link)
    return False


def _check_link(value: Any) -> Invalid | None:
    return None if _is_link(value) else Invalid(f"expected a CID link, got {_kind(value)}")


def _check_blob(value: Any) -> Invalid | None:
    if value.__class__ is not dict:
        return Invalid(f"expected a blob, got {_kind(value)}")
    mime = value.get("mimeType")
    if mime.__class__ is not str:
        return Invalid("blob mimeType is missing or not a string")
    if value.get("$type") == "blob":
        if not _is_link(value.get("ref", _MISSING)):
            return Invalid("blob ref is not a CID link")
        size = value.get("size")
        if size.__class__ is not int or size < 0:
            return Invalid("blob size is missing or not a non-negative integer")
        return None
    cid = value.get("cid")
    if "$type" not in value and cid.__class__ is str and _is_valid_cid(cid):
        return None  # the legacy 2023 blob: {"cid": "...", "mimeType": "..."}
    return Invalid(f"expected a blob, got {_kind(value)}")


def _check_unknown(value: Any) -> Invalid | None:
    # Any map, but not one that is really a byte string or a blob.
    if value.__class__ is not dict or "$bytes" in value or value.get("$type") == "blob":
        return Invalid(f"expected an object, got {_kind(value)}")
    return None


# --- the bundled lexicons -----------------------------------------------------


@functools.cache
def load_lexicons() -> dict[str, dict[str, Any]]:
    """Every bundled lexicon document, by NSID (read once per process)."""
    root = resources.files("bsky_backfill.records").joinpath("lexicons")
    docs: dict[str, dict[str, Any]] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                stack.append(entry)
            elif entry.name.endswith(".json"):
                doc = json.loads(entry.read_text(encoding="utf-8"))
                docs[doc["id"]] = doc
    return docs


LEXICON_VERSION = "bluesky-social/atproto@d6296a1cfdb40a773319cb59061300e4e8e52f26"
"""Where the bundled lexicons come from (also `records/lexicons/VERSION`)."""


@functools.cache
def known_record_types() -> frozenset[str]:
    """NSIDs whose bundled lexicon's main definition is a record."""
    return frozenset(
        nsid
        for nsid, doc in load_lexicons().items()
        if doc["defs"].get("main", {}).get("type") == "record"
    )


def compile_records(
    docs: dict[str, dict[str, Any]], *, trust_created_at: bool = False
) -> dict[str, Validator]:
    """Validators for every record type in `docs` (NSID -> lexicon document).

    `trust_created_at`: the record's own `createdAt` (a datetime in the
    lexicon) is checked only for being a string; its datetime syntax is left to
    the caller, which parses it anyway (records/columns.py does). The bundled
    set goes through `validator_for`; this entry also serves tests that drive
    the compiler with other documents (the interop catalog).
    """
    pairs = compile_pairs(docs, trust_created_at=trust_created_at)
    return {nsid: _as_validator(fast, explain) for nsid, (fast, explain) in pairs.items()}


def compile_pairs(
    docs: dict[str, dict[str, Any]],
    *,
    trust_created_at: bool = False,
    formats: dict[str, Callable[[str], bool]] | None = None,
) -> dict[str, tuple[FastCheck, Check]]:
    """NSID -> (generated valid/invalid check, explaining closure) per record type.

    `formats`: the string-format checks of the generated code (default: the
    ones in use); tests pass `records.formats.PYTHON` to cover the code
    generated for a machine without the C checks.
    """
    compiler = _Compiler(docs, trust_created_at=trust_created_at)
    fast = generate(
        docs,
        compiler.lookup,
        compiler.compile,
        FORMATS if formats is None else formats,
        grapheme_count,
        _is_link,
        trust_created_at=trust_created_at,
    )
    return {
        nsid: (check, compiler.ref(nsid, docs[nsid]["defs"]["main"], nsid))
        for nsid, check in fast.items()
    }


def _as_validator(fast: FastCheck, explain: Check) -> Validator:
    """The generated check answers; the closures explain a failure (the two agree)."""

    def validate(record: dict[str, Any]) -> str | None:
        if fast(record):
            return None
        err = explain(record)
        return None if err is None else str(err)

    return validate


@functools.cache
def _bundled(trust_created_at: bool) -> dict[str, Validator]:
    return compile_records(load_lexicons(), trust_created_at=trust_created_at)


@functools.cache
def _bundled_pairs(trust_created_at: bool) -> dict[str, tuple[FastCheck, Validator]]:
    pairs = compile_pairs(load_lexicons(), trust_created_at=trust_created_at)
    return {nsid: (fast, _explainer(explain)) for nsid, (fast, explain) in pairs.items()}


def _explainer(explain: Check) -> Validator:
    def why(record: dict[str, Any]) -> str | None:
        err = explain(record)
        return None if err is None else str(err)

    return why


def record_checks(
    collection: str, *, trust_created_at: bool = False
) -> tuple[FastCheck, Validator] | None:
    """The hot path's form of `validator_for`: (is it valid?, why not?) as two
    functions, so a valid record costs one call; None without a bundled lexicon."""
    return _bundled_pairs(trust_created_at).get(collection)


KeyCheck = tuple[Callable[[str], bool], str]
"""(does a record key fit, the rule it broke as a dead letter's message suffix)."""


def record_key_type(collection: str) -> str | None:
    """The key type a collection's bundled record lexicon declares (`tid`, `nsid`,
    `any`, `literal:<value>`, ...), None without one."""
    main = load_lexicons().get(collection, {}).get("defs", {}).get("main", {})
    key = main.get("key") if main.get("type") == "record" else None
    return key if isinstance(key, str) else None


@functools.cache
def record_key_check(collection: str) -> KeyCheck | None:
    """The record lexicon's key type as a check of the rkey (records/columns.py
    calls it per record): `tid`, `nsid` or `literal:<value>`, each of which
    accepts only valid record keys, so it stands in for the syntax check.
    None for key type `any` (the syntax is all it asks), for a type the spec
    does not name, and without a bundled lexicon."""
    key = record_key_type(collection)
    if key in ("tid", "nsid"):
        what = "a TID" if key == "tid" else "an NSID"
        return FORMATS[key], f"is not {what} (the lexicon's key type is {key})"
    if isinstance(key, str) and key.startswith("literal:"):
        literal = key.removeprefix("literal:")
        if not FORMATS["record-key"](literal):  # the caller relies on it (columns.py)
            raise ValueError(f"{collection}: key type {key!r} is not a valid record key")
        return literal.__eq__, f"is not {literal!r} (the lexicon's key type is {key})"
    return None


def validator_for(collection: str, *, trust_created_at: bool = False) -> Validator | None:
    """The compiled validator of a collection's record lexicon (None: no bundled lexicon).

    `trust_created_at`: see `compile_records` (the hot path passes True).
    """
    return _bundled(trust_created_at).get(collection)
