"""A hand-tightened extraction loop: the product's tables, with checks batched across repos.

Where it sits: the `tight` variant of the no-network ceiling (`bench.ceiling`).
It lands the same rows as `records.transform.extract_repo` (same schemas, same
values, same dead letters by uri and code; messages may be worded
differently), so the bench can show how far the product's hot path is from
what this machine can do. Checked value by value against `extract_repo` on a
200-repo simulated network (every table equal once sorted by uri, the same
dead letters); each bench run checks that both land the expected row count.
Two things it leaves out, so it is a ceiling rather than a twin: lexicon
validation (issue 17; `extract_repo` with `validate=False` is its match) and
verification. The typed columns come from the product's own extractors
(records/columns.py), so they cannot drift from the product's schema.

What it does differently from the product (ideas for the pipeline):

* the MST walk appends keys and CIDs to two lists (no generator, no per-leaf
  tuple handed through three layers);
* wanted collections are found by bisecting the sorted keys (a collection's
  keys are contiguous), not by a per-key `partition` + set lookup;
* per record, Python only pulls fields out of the decoded dicts (list
  comprehensions) and dumps the JSON; every check that can be a column
  operation is one (`$type`, record-key and createdAt syntax as RE2 regexes,
  sub-microsecond truncation, createdAt parsing), and it runs once per
  collection per *batch of repos* (~64k rows), not per repo: Arrow's fixed
  cost per call (5-200 us, regex compilation included) would otherwise eat
  the gain on small repos;
* record JSON goes into one growing buffer per repo and collection, not one
  bytes object per record (`_json_column`: ~4 KB of RSS per record saved).

A time window (`since`/`until`), and any repo with something unusual in it
(a missing or non-map record block, a link that is not a CID, a record JSON
cannot hold, a malformed MST), goes through `extract_repo` whole.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libipld
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from bsky_backfill.models import DeadLetter, RecordFilter
from bsky_backfill.records.columns import _EXTRACTORS, _N_COMMON, _build_extra
from bsky_backfill.records.json import RecordEncodeError, encode_default
from bsky_backfill.records.lexicon import CREATED_AT_REQUIRED
from bsky_backfill.records.schema import TIMESTAMP, schema_for
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.repo.gcpause import gc_paused
from bsky_backfill.syntax import datetime_micros

__all__ = ["TightExtractor"]

_STRING = pa.string()
# RE2 forms of the product's checks (syntax.py); RE2 has no look-arounds, so
# the "-00:00" offset and the "." / ".." record keys are excluded separately.
_DT_RE = (
    r"^\d\d\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d"
    r"(\.\d{1,20})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_RKEY_RE = r"^[a-zA-Z0-9_~.:-]{1,512}$"
_DOTS = pa.array([".", ".."])
_SORT_KEYS = orjson.OPT_SORT_KEYS  # as records.json: same text from CAR and listRecords
_dumps = orjson.dumps
_encode_cid = libipld.encode_cid


class _Unusual(Exception):
    """Something the fast path leaves to `extract_repo` (see the module docstring)."""


@dataclass
class _Acc:
    """One collection's pending rows, column by column (Python lists until the flush)."""

    uris: list[str] = field(default_factory=list)
    dids: list[str] = field(default_factory=list)
    rkeys: list[str] = field(default_factory=list)
    cids: list[str] = field(default_factory=list)
    types: list[Any] = field(default_factory=list)
    created: list[Any] = field(default_factory=list)
    records: list[pa.Array] = field(default_factory=list)
    """Record JSON, one Arrow binary chunk per repo and collection."""
    extras: list[list[Any]] = field(default_factory=list)


# One repo's contribution to a collection, staged until the whole repo succeeded.
_Staged = tuple[str, list[str], list[str], list[str], list[Any], list[Any], pa.Array, list[Any]]


class TightExtractor:
    """Feed it repos (`add_repo`); it hands finished tables to `emit` a batch at a time."""

    def __init__(
        self, filt: RecordFilter, emit: Callable[[str, pa.Table], None], batch_rows: int = 65536
    ) -> None:
        self.filt = filt
        self.emit = emit
        self.batch_rows = batch_rows
        self.wanted = sorted(filt.collections)
        self.dead_letters: list[DeadLetter] = []
        self.fallbacks = 0
        self._acc: dict[str, _Acc] = {}
        self._pending = 0

    def add_repo(self, data: bytes, did: str) -> None:
        """Extract one getRepo CAR (RepoInvalid propagates, as from `extract_repo`)."""
        staged = None
        if self.filt.since is None and self.filt.until is None:
            try:
                with gc_paused():
                    staged = self._stage(data, did)
            except _Unusual:
                staged = None
        if staged is None:
            self.fallbacks += 1
            result = extract_repo(data, did, self.filt)
            for collection, table in result.tables.items():
                self.emit(collection, table)
            self.dead_letters.extend(result.dead_letters)
            return
        for c, uris, rkeys, cids, types, created, records, extras in staged:
            acc = self._acc.get(c)
            if acc is None:
                acc = self._acc[c] = _Acc(extras=[[] for _ in extras])
            acc.uris += uris
            acc.dids += [did] * len(uris)
            acc.rkeys += rkeys
            acc.cids += cids
            acc.types += types
            acc.created += created
            acc.records.append(records)
            for mine, new in zip(acc.extras, extras, strict=True):
                mine += new
            self._pending += len(uris)
        if self._pending >= self.batch_rows:
            self.flush()

    def _stage(self, data: bytes, did: str) -> list[_Staged]:
        try:
            header, blocks = libipld.decode_car(data)
            commit = blocks[header["roots"][0]]
            commit_did, mst_root = commit["did"], commit["data"]
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise _Unusual from exc
        if commit_did != did:
            raise _Unusual  # the product raises its own error for this
        keys, vals = _walk(blocks, mst_root)
        get = blocks.get
        prefix = f"at://{did}/"
        staged: list[_Staged] = []
        for c in self.wanted:
            lo = bisect.bisect_left(keys, c + "/")  # "/" < "0": the collection's keys
            hi = bisect.bisect_left(keys, c + "0", lo)
            if lo == hi:
                continue
            ks, vs = keys[lo:hi], vals[lo:hi]
            rs: list[Any] = [get(v) for v in vs]
            try:
                types = [r.get("$type") for r in rs]  # AttributeError: missing / not a map
                created = [r.get("createdAt") for r in rs]
                records = _json_column(rs)
                cids = list(map(_encode_cid, vs))
                extras = _extras(c, rs)
            except (AttributeError, ValueError, RecordEncodeError) as exc:
                raise _Unusual from exc
            cut = len(c) + 1
            uris = [prefix + k for k in ks]
            rkeys = [k[cut:] for k in ks]
            staged.append((c, uris, rkeys, cids, types, created, records, extras))
        return staged

    def flush(self) -> None:
        """Validate and build every pending collection's table (one set of Arrow calls each)."""
        for c, acc in self._acc.items():
            if acc.uris:
                self.emit(c, self._table(c, acc))
        self._acc.clear()
        self._pending = 0

    def _table(self, c: str, acc: _Acc) -> pa.Table:
        n = len(acc.uris)
        uri = pa.array(acc.uris, _STRING)
        rkey = pa.array(acc.rkeys, _STRING)
        created = _strings(acc.created)
        type_ok = pc.equal(_strings(acc.types), pa.scalar(c, _STRING)).fill_null(False)
        rkey_ok = pc.and_(
            pc.match_substring_regex(rkey, _RKEY_RE), pc.invert(pc.is_in(rkey, _DOTS))
        )
        created_ok = pc.and_(
            pc.match_substring_regex(created, _DT_RE),
            pc.invert(pc.ends_with(created, "-00:00")),
        ).fill_null(False)
        created = pc.if_else(created_ok, created, pa.nulls(n, _STRING))
        # Calendar check in bulk (Feb 30 passes the regex): strptime rolls an
        # impossible date over into the next month, so its day-of-month changes.
        parsed = pc.strptime(
            pc.utf8_slice_codeunits(created, 0, 10), format="%Y-%m-%d", unit="s", error_is_null=True
        )
        day = pc.cast(pc.utf8_slice_codeunits(created, 8, 10), pa.int64())
        created_ok = pc.and_(created_ok, pc.equal(pc.day(parsed), day).fill_null(False))
        created = pc.if_else(created_ok, created, pa.nulls(n, _STRING))
        if pc.any(pc.greater(pc.binary_length(created), 27)).as_py():
            # More than 6 fractional digits: keep 6, as the product does (column in us).
            created = pc.replace_substring_regex(created, r"(\.\d{6})\d+", r"\1")
        stamps = _timestamps(created)
        created_ok = pc.is_valid(stamps)  # the slow path may still refuse a value
        keep = pc.and_(type_ok, rkey_ok)
        if c in CREATED_AT_REQUIRED:
            keep = pc.and_(keep, created_ok)
        arrays = [
            uri,
            pa.array(acc.dids, _STRING),
            pa.repeat(pa.scalar(c, _STRING), n),
            rkey,
            pa.array(acc.cids, _STRING),
            stamps,
            pa.concat_arrays(acc.records).view(_STRING),  # orjson writes UTF-8 only
            *(_extra(c, i, values) for i, values in enumerate(acc.extras)),
        ]
        if not pc.all(keep).as_py():
            self._reject(acc, keep.to_pylist(), type_ok.to_pylist(), rkey_ok.to_pylist())
            arrays = [pc.filter(a, keep) for a in arrays]
        return pa.Table.from_arrays(arrays, schema=schema_for(c))

    def _reject(
        self, acc: _Acc, keep: list[bool], type_ok: list[bool], rkey_ok: list[bool]
    ) -> None:
        """Dead letters for the rows `keep` drops (Python per rejected row only)."""
        for i, k in enumerate(keep):
            if k:
                continue
            if not type_ok[i]:
                why = f"$type is {acc.types[i]!r:.100}, expected the collection"
            elif not rkey_ok[i]:
                why = "record key is not valid"
            else:
                value = acc.created[i]
                what = "missing" if value is None else f"not valid: {value!r:.64}"
                why = f"createdAt is {what}"
            self.dead_letters.append(
                DeadLetter(acc.dids[i], acc.uris[i], "validate", "InvalidRecord", why)
            )


def _walk(blocks: dict[bytes, Any], root: bytes) -> tuple[list[str], list[bytes]]:
    """Every MST leaf in key order, as two lists; a malformed tree is `_Unusual`."""
    keys: list[str] = []
    vals: list[bytes] = []
    stack: list[Any] = [root]
    seen: set[bytes] = set()
    while stack:
        item = stack.pop()
        if item.__class__ is tuple:
            keys.append(item[0])
            vals.append(item[1])
            continue
        if item in seen:
            raise _Unusual
        seen.add(item)
        node: Any = blocks.get(item)
        try:
            pending: list[Any] = []
            prev = b""
            for e in node["e"]:
                prev = prev[: e["p"]] + e["k"]
                pending.append((prev.decode("ascii"), e["v"]))
                t = e.get("t")
                if t is not None:
                    pending.append(t)
            left = node.get("l")
        except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise _Unusual from exc
        pending.reverse()
        stack += pending
        if left is not None:
            stack.append(left)
    # Strictly ascending (so also no duplicates), checked in one C-level pass.
    if not all(map(operator.lt, keys, keys[1:])):
        raise _Unusual
    return keys, vals


def _json_column(rs: list[Any]) -> pa.Array:
    """Records -> one Arrow binary array of their JSON, through a single growing buffer.

    Keeping each `orjson.dumps` result as its own bytes object costs ~4 KB of
    RSS per record whatever its size (measured: 1M records of ~250 B of JSON
    took 3.9 GB; orjson's output buffer is shrunk after the fact and the heap
    keeps the holes); appending to one bytearray costs the bytes alone, and
    is faster too (fewer page faults).
    """
    buf = bytearray()
    offsets = [0]
    add = offsets.append
    for r in rs:
        buf += _dumps(r, default=encode_default, option=_SORT_KEYS)
        add(len(buf))
    if len(buf) >= 2**31:
        raise _Unusual  # int32 offsets: leave such a collection to extract_repo
    offs = pa.array(offsets, pa.int32()).buffers()[1]
    return pa.Array.from_buffers(pa.binary(), len(rs), [None, offs, pa.py_buffer(buf)])


def _extras(c: str, rs: list[dict[str, Any]]) -> list[list[Any]]:
    """The collection's typed columns as raw values, by the product's own extractors
    (records/columns.py: the same derivation from the record, so the same values)."""
    width = len(schema_for(c)) - _N_COMMON
    cols: tuple[list[Any], ...] = tuple([] for _ in range(width))
    extract = _EXTRACTORS.get(c)
    if extract is not None:
        for r in rs:
            extract(r, cols)
    return list(cols)


def _extra(c: str, i: int, values: list[Any]) -> pa.Array:
    return _build_extra(values, schema_for(c).field(_N_COMMON + i).type)


def _strings(values: list[Any]) -> pa.Array:
    """A string column; values of another type become null (the record column keeps them)."""
    return _typed(values, _STRING, lambda v: v.__class__ is str)


def _typed(values: list[Any], typ: pa.DataType, ok: Callable[[Any], bool]) -> pa.Array:
    """`values` as a `typ` column, anything else null. Arrow's type inference does the check
    in bulk (an explicit type would coerce: bytes to strings, "en" to ["e", "n"])."""
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        arr = None
    if arr is not None and arr.type == typ:
        return arr
    if arr is not None and arr.type == pa.null():
        return pa.nulls(len(values), typ)
    return pa.array([v if ok(v) else None for v in values], typ)


def _timestamps(created: pa.Array) -> pa.Array:
    """createdAt strings (syntax already checked) -> timestamps; calendar-invalid -> null."""
    try:
        return created.cast(TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # A date like Feb 30 passes the regex and fails the whole cast: cast in slices,
    # and give only the failing slices to the product's exact per-value parser.
    parts = []
    for start in range(0, len(created), 1024):
        part = created.slice(start, 1024)
        try:
            parts.append(part.cast(TIMESTAMP))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            micros = [None if s is None else datetime_micros(s) for s in part.to_pylist()]
            parts.append(pa.array(micros, pa.int64()).cast(TIMESTAMP))
    return pa.concat_arrays(parts)
