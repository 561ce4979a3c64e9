"""Validate, filter and accumulate one repository's records into Arrow tables.

Where it sits in the flow: a source of records for one DID feeds
`RecordColumns.add(collection, rkey, cid, record)` once per record, then calls
`finish()` for `{collection: pa.Table}` plus dead letters. Two sources use it:

* the CAR path (`records.transform.extract_repo`): records are libipld-decoded
  DAG-CBOR (links and byte strings are Python `bytes`);
* the listRecords path: records are JSON values (`orjson.loads`), links already
  `{"$link": ...}`. Validation reads only plain string fields (`$type`,
  `createdAt`, `text`, subjects...) that look the same in both shapes, and the
  JSON encoder passes JSON-shaped values through unchanged, so the same `add`
  serves both: pass the record value and its CID string as given.

Per record, only what must be per record happens here (a few dict lookups, one
regex + `fromisoformat` on createdAt, the orjson dump, list appends). Arrow
conversion is done once per repo in `finish`: the common columns of all
collections are built as one set of arrays (createdAt parsed by Arrow's C++
ISO parser) and each collection's table is a zero-copy slice of them, since
a source delivers a collection's records together (MST key order,
listRecords pages); interleaved input still works, through `take`. Arrow's
fixed cost per call (~4 us) would otherwise dominate the many small
collections of a typical repo.

Rules (the `createdAt` window is [since, until)):

* `$type` must equal the collection and the record key must be valid, else
  dead letter (stage validate, InvalidRecord).
* Collections with a bundled lexicon (`records.validate`): the record key must
  be of the lexicon's key type (`tid`, `nsid`, `literal:self`) and the record
  valid under it (unless `RecordFilter.validate` is off, `--no-validate`),
  else dead letter with the path and rule in the message.
* Every validate-stage dead letter keeps the record's `cid` and its JSON.
* Collections whose Lexicon requires createdAt: a missing or invalid createdAt
  is a dead letter; the window applies.
* Known collections with optional/no createdAt (`app.bsky.actor.profile`,
  chat declaration, lexicon schema) are state records: always landed whatever
  the window; `created_at` is filled when present and valid, else null.
* Unknown collections: the window applies when the record has a valid
  createdAt; without one the record is kept with a null `created_at`.
* Invalid records are dead-lettered whether or not they fall in the window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import pyarrow as pa

from bsky_backfill.models import DeadLetter, RecordFilter
from bsky_backfill.records import native
from bsky_backfill.records.datamodel import has_float as _has_float
from bsky_backfill.records.formats import FORMATS
from bsky_backfill.records.json import RecordEncodeError, encode_default, to_json
from bsky_backfill.records.lexicon import CREATED_AT_REQUIRED, window_applies
from bsky_backfill.records.native_columns import FAMILIES, KEY_RULES, NativeRows, array_of
from bsky_backfill.records.schema import TIMESTAMP, schema_for
from bsky_backfill.records.validate import (
    Validator,
    record_checks,
    record_key_check,
    record_key_type,
)
from bsky_backfill.records.validate_codegen import FastCheck
from bsky_backfill.records.validate_native import native_check
from bsky_backfill.syntax import datetime_micros, datetime_value

__all__ = ["RecordColumns"]

_STRING = pa.string()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_N_COMMON = 7
_dumps = orjson.dumps
_SORT_KEYS = orjson.OPT_SORT_KEYS  # same text from a CAR and from listRecords
_rkey_ok = FORMATS["record-key"]  # C where built: ~20 ns a key against ~140 for the regex
# createdAt's validity (C where built, ~40 ns against ~0.5 us for the regex and
# fromisoformat of `datetime_value`, whose value only a time window needs).
_datetime_ok = FORMATS["datetime"]

# --- typed columns, one extractor per collection family -----------------------
# Each appends exactly one value to each of its lists, None when the field is
# absent or not the expected type (the `record` column always has the truth).


# `x if x.__class__ is str else None` is spelled out rather than put in a
# helper: a call per field is measurable at this rate.


_EMBED_RECORD = "app.bsky.embed.record"
_EMBED_MEDIA = "app.bsky.embed.recordWithMedia"
_EMBED_IMAGES = "app.bsky.embed.images"
_EMBED_EXTERNAL = "app.bsky.embed.external"
_MENTION = "app.bsky.richtext.facet#mention"
_LINK = "app.bsky.richtext.facet#link"
_TAG = "app.bsky.richtext.facet#tag"
_NONE: tuple[str, ...] = ()  # shared: most posts have no mentions, links or tags


def _extract_post(rec: dict[str, Any], cols: tuple[list[Any], ...]) -> None:
    (text, langs, root_uri, parent_uri, embed_type, quote_uri, quote_cid,
     external_uri, image_count, mentions, links, tags) = cols  # fmt: skip
    value = rec.get("text")
    text.append(value if value.__class__ is str else None)
    value = rec.get("langs")
    # Elements are checked in bulk by `_build_extra` (they are rarely wrong).
    langs.append(value if value.__class__ is list else None)
    reply = rec.get("reply")
    if reply.__class__ is dict:
        ref = reply.get("root")
        value = ref.get("uri") if ref.__class__ is dict else None
        root_uri.append(value if value.__class__ is str else None)
        ref = reply.get("parent")
        value = ref.get("uri") if ref.__class__ is dict else None
        parent_uri.append(value if value.__class__ is str else None)
    else:
        root_uri.append(None)
        parent_uri.append(None)
    _extract_embed(rec.get("embed"), embed_type, quote_uri, quote_cid, external_uri, image_count)
    # Facet features in order (mentions, links, tags), then the post's own `tags`.
    found_m: list[str] | tuple[str, ...] = _NONE
    found_l: list[str] | tuple[str, ...] = _NONE
    found_t: list[str] | tuple[str, ...] = _NONE
    facets = rec.get("facets")
    if facets.__class__ is list:
        found_m, found_l, found_t = [], [], []
        for facet in facets:
            features = facet.get("features") if facet.__class__ is dict else None
            if features.__class__ is not list:
                continue
            for feature in features:
                if feature.__class__ is not dict:
                    continue
                kind = feature.get("$type")
                if kind == _MENTION:
                    value = feature.get("did")
                    if value.__class__ is str:
                        found_m.append(value)
                elif kind == _LINK:
                    value = feature.get("uri")
                    if value.__class__ is str:
                        found_l.append(value)
                elif kind == _TAG:
                    value = feature.get("tag")
                    if value.__class__ is str:
                        found_t.append(value)
    extra = rec.get("tags")
    if extra.__class__ is list:
        found_t = [*found_t, *(t for t in extra if t.__class__ is str)]
    mentions.append(found_m)
    links.append(found_l)
    tags.append(found_t)


def _extract_embed(
    embed: Any,
    embed_type: list[Any],
    quote_uri: list[Any],
    quote_cid: list[Any],
    external_uri: list[Any],
    image_count: list[Any],
) -> None:
    """embed -> its `$type`, the quoted record's strongRef (record, or the record of
    recordWithMedia), the external link's uri and the image count (images, or the
    media of recordWithMedia)."""
    kind = embed.get("$type") if embed.__class__ is dict else None
    if kind.__class__ is not str:
        embed_type.append(None)
        quote_uri.append(None)
        quote_cid.append(None)
        external_uri.append(None)
        image_count.append(None)
        return
    embed_type.append(kind)
    media = embed
    quoted = None
    if kind == _EMBED_RECORD:
        quoted = embed.get("record")
    elif kind == _EMBED_MEDIA:
        inner = embed.get("record")
        quoted = inner.get("record") if inner.__class__ is dict else None
        media = embed.get("media")
        if media.__class__ is not dict:
            media = {}
    if quoted.__class__ is dict:
        value = quoted.get("uri")
        quote_uri.append(value if value.__class__ is str else None)
        value = quoted.get("cid")
        quote_cid.append(value if value.__class__ is str else None)
    else:
        quote_uri.append(None)
        quote_cid.append(None)
    media_kind = media.get("$type")
    value = None
    if media_kind == _EMBED_EXTERNAL:
        external = media.get("external")
        value = external.get("uri") if external.__class__ is dict else None
    external_uri.append(value if value.__class__ is str else None)
    images = media.get("images") if media_kind == _EMBED_IMAGES else None
    image_count.append(len(images) if images.__class__ is list else None)


def _extract_subject_ref(rec: dict[str, Any], cols: tuple[list[Any], ...]) -> None:
    uri, cid = cols
    subject = rec.get("subject")
    if subject.__class__ is dict:
        value = subject.get("uri")
        uri.append(value if value.__class__ is str else None)
        value = subject.get("cid")
        cid.append(value if value.__class__ is str else None)
    else:
        uri.append(None)
        cid.append(None)


def _extract_subject_did(rec: dict[str, Any], cols: tuple[list[Any], ...]) -> None:
    value = rec.get("subject")
    cols[0].append(value if value.__class__ is str else None)


def _extract_listitem(rec: dict[str, Any], cols: tuple[list[Any], ...]) -> None:
    value = rec.get("subject")
    cols[0].append(value if value.__class__ is str else None)
    value = rec.get("list")
    cols[1].append(value if value.__class__ is str else None)


def _extract_post_uri(rec: dict[str, Any], cols: tuple[list[Any], ...]) -> None:
    value = rec.get("post")
    cols[0].append(value if value.__class__ is str else None)


_Extractor = Callable[[dict[str, Any], tuple[list[Any], ...]], None]
_EXTRACTORS: dict[str, _Extractor] = {
    "app.bsky.feed.post": _extract_post,
    "app.bsky.feed.like": _extract_subject_ref,
    "app.bsky.feed.repost": _extract_subject_ref,
    "app.bsky.graph.follow": _extract_subject_did,
    "app.bsky.graph.block": _extract_subject_did,
    "app.bsky.graph.listitem": _extract_listitem,
    "app.bsky.feed.threadgate": _extract_post_uri,
    "app.bsky.feed.postgate": _extract_post_uri,
}


class _Collection:
    """One collection of one repo: its rules and its typed-column lists."""

    __slots__ = (
        "explain",
        "extract",
        "extras",
        "key_ok",
        "key_rule",
        "name",
        "prefix",
        "required",
        "schema",
        "validator",
        "windowed",
    )

    def __init__(self, did: str, name: str, window_on: bool, validate: bool) -> None:
        self.name = name
        self.prefix = f"at://{did}/{name}/"
        self.schema = schema_for(name)
        self.required = name in CREATED_AT_REQUIRED
        self.windowed = window_on and window_applies(name)
        self.extract = _EXTRACTORS.get(name)
        # createdAt is parsed below anyway; the validator leaves its syntax to us.
        checks = record_checks(name, trust_created_at=True) if validate else None
        self.validator: FastCheck | None = None if checks is None else checks[0]
        self.explain: Validator | None = None if checks is None else checks[1]
        key = record_key_check(name) if validate else None
        self.key_ok: Callable[[str], bool] | None = None if key is None else key[0]
        self.key_rule = "" if key is None else key[1]
        self.extras: tuple[list[Any], ...] = tuple([] for _ in range(len(self.schema) - _N_COMMON))


class RecordColumns:
    """Accumulates the records of one DID; see the module docstring for the rules."""

    def __init__(self, did: str, filt: RecordFilter) -> None:
        self.did = did
        self.wanted = filt.collections
        self._validate = filt.validate
        self._since = _aware(filt.since)
        self._until = _aware(filt.until)
        self._since_us = None if self._since is None else _micros(self._since)
        self._until_us = None if self._until is None else _micros(self._until)
        self._window_on = self._since is not None or self._until is not None
        self._cols: dict[str, _Collection] = {}
        self.dead_letters: list[DeadLetter] = []
        self.outside_window: list[str] = []
        """Keys of the records left out by the time window (no row, no dead letter)."""
        # Repo-wide common columns (uri, rkey, cid, createdAt text, record JSON);
        # `_runs` marks where each run of one collection's rows starts.
        self._uris: list[str] = []
        self._rkeys: list[str] = []
        self._cids: list[str] = []
        self._created: list[str | None] = []
        # Record JSON in one growing buffer plus end offsets: one bytes object per
        # record costs ~4 KB of heap each once orjson's buffers are shrunk (1M
        # records: ~4 GB); the buffer costs the bytes alone.
        self._json = bytearray()
        self._json_ends: list[int] = [0]
        self._runs: list[tuple[int, _Collection]] = []
        self._current: _Collection | None = None
        self._native: list[NativeRows] = []

    def reject(
        self,
        uri: str | None,
        stage: str,
        error: str,
        message: str,
        *,
        cid: str | None = None,
        record: Any = None,
    ) -> None:
        """Record a dead letter for this repo (uri None: the whole repo); a record
        that decoded is kept in it as atproto JSON, with its CID."""
        text = _json_or_none(record)
        self.dead_letters.append(
            DeadLetter(self.did, uri, stage, error, message, cid=cid, record=text)
        )

    def _invalid(
        self, collection: str, rkey: str, message: str, cid: str | None = None, record: Any = None
    ) -> None:
        """A validate-stage dead letter, keeping the record (when it can be written as JSON)."""
        uri = f"at://{self.did}/{collection}/{rkey}"
        text = _json_or_none(record)
        self.dead_letters.append(
            DeadLetter(self.did, uri, "validate", "InvalidRecord", message, cid=cid, record=text)
        )

    def add_native(
        self, data: Any, index: dict[bytes, int], keys: list[str], cids: list[bytes]
    ) -> list[int] | None:
        """The wanted leaves `keys`/`cids` (MST order) of the CAR `data` whose block
        index is `index`, through the native pass (records/native/pass.c): the
        records it lands become rows without a Python object each. Returns the
        indices of the records it declined, which the caller sends through `add_many`
        (the Python path, the reference), or None when the native pass is not
        available (not built, or switched off): then every record goes that way.
        """
        run = native.records_pass
        if run is None or not keys:
            return None
        try:
            declined, outside, runs, colls, common = run(
                data, index, keys, cids, self.did, self._native_plan,
                self._since_us, self._until_us,
            )  # fmt: skip
        except OverflowError:  # columns past 32-bit offsets: all in Python
            return None
        self._native.append(NativeRows(runs, colls, common))
        self.outside_window.extend(keys[i] for i in outside)
        return declined  # type: ignore[no-any-return]

    def _native_plan(self, name: str) -> tuple[int, int, str | None, bool, Any, bool]:
        """pass.c's rules for a collection (its `coll_init`): typed-column family,
        key rule and literal, window, compiled lexicon, and whether to decline
        every record (validation on, a lexicon, but no native schema of it)."""
        cols = self._collection(name)
        rule, literal = 0, None
        key = record_key_type(name) if self._validate else None
        if key is not None and key.startswith("literal:"):
            rule, literal = 3, key.removeprefix("literal:")
        elif key is not None:
            rule = KEY_RULES.get(key, 0)
        schema = native_check(name) if cols.validator is not None else None
        decline_all = cols.validator is not None and schema is None
        return FAMILIES.get(name, 0), rule, literal, cols.windowed, schema, decline_all

    def _collection(self, name: str) -> _Collection:
        cols = self._cols.get(name)
        if cols is None:
            cols = self._cols[name] = _Collection(self.did, name, self._window_on, self._validate)
        return cols

    def add(self, collection: str, rkey: str, cid: str, record: Any) -> None:
        """Validate one record of a wanted collection; keep it if it is in the window."""
        self.add_many(((collection, rkey, cid, record),))

    def add_many(self, items: Iterable[tuple[str, str, str, Any]]) -> None:
        """`add` for a stream of `(collection, rkey, cid, record)`: the hot loop.

        The caller has already skipped unwanted collections (`wanted`). One
        loop with everything bound to locals: per record this is the whole
        Python cost of validation and accumulation, so nothing is called or
        looked up that could be hoisted out of it.
        """
        get_cols = self._cols.get
        runs = self._runs
        uris, rkeys, cids = self._uris, self._rkeys, self._cids
        created_at = self._created
        json_buffer, json_ends = self._json, self._json_ends
        current = self._current
        invalid = self._invalid
        has_float = _has_float
        datetime_ok = _datetime_ok
        for collection, rkey, cid, record in items:
            cols = get_cols(collection)
            if cols is None:
                cols = self._collection(collection)
            if record.__class__ is not dict:
                message = f"record is a {type(record).__name__}, not a map"
                invalid(collection, rkey, message, cid, record)
                continue
            rtype = record.get("$type")
            if rtype != collection:
                message = f"$type is {rtype!r:.100}, expected the collection"
                invalid(collection, rkey, message, cid, record)
                continue
            key_ok = cols.key_ok
            if key_ok is None:
                if not _rkey_ok(rkey):
                    invalid(collection, rkey, "record key is not valid", cid, record)
                    continue
            elif not key_ok(rkey):  # the lexicon's key type implies the syntax
                if _rkey_ok(rkey):
                    message = f"record key {rkey!r} {cols.key_rule}"
                else:
                    message = "record key is not valid"
                invalid(collection, rkey, message, cid, record)
                continue
            created = record.get("createdAt")
            if created.__class__ is not str or not datetime_ok(created):
                if cols.required:
                    what = "missing" if created is None else f"not valid: {created!r:.64}"
                    invalid(collection, rkey, f"createdAt is {what}", cid, record)
                    continue
                if created.__class__ is str and cols.validator is not None:
                    # Optional in the lexicon, but not in a wrong format.
                    message = f"createdAt: {created!r:.100} is not a valid datetime"
                    invalid(collection, rkey, message, cid, record)
                    continue
                created = None
            if cols.validator is not None and not cols.validator(record):
                problem = cols.explain(record)  # type: ignore[misc]
                if problem is not None:
                    invalid(collection, rkey, problem, cid, record)
                    continue
            if created is not None and cols.windowed:
                # Its value is needed only here, to place it in the window.
                when = datetime_value(created)
                if when is not None and not self._in_window(when):
                    self.outside_window.append(f"{collection}/{rkey}")
                    continue
            if has_float(record):
                message = "record holds a float (the data model has none)"
                invalid(collection, rkey, message, cid, record)
                continue
            try:
                js = _dumps(record, default=encode_default, option=_SORT_KEYS)
            except RecordEncodeError as e:
                invalid(collection, rkey, f"record cannot be written as JSON: {e}")
                continue
            if created is not None and len(created) > (27 if created[-1] == "Z" else 32):
                # More than 6 fractional digits, which Arrow's parser refuses:
                # keep the first 6 (the column is microseconds anyway).
                created = created[:26] + (created[-1] if created[-1] == "Z" else created[-6:])
            if cols is not current:
                runs.append((len(rkeys), cols))
                current = cols
            uris.append(cols.prefix + rkey)
            rkeys.append(rkey)
            cids.append(cid)
            created_at.append(created)
            json_buffer += js
            json_ends.append(len(json_buffer))
            if cols.extract is not None:
                cols.extract(record, cols.extras)
        self._current = current

    def _in_window(self, when: dt.datetime | int) -> bool:
        if when.__class__ is int:  # a valid datetime outside Python's range
            since, until = self._since_us, self._until_us
        else:
            since, until = self._since, self._until  # type: ignore[assignment]
        return (since is None or when >= since) and (until is None or when < until)  # type: ignore[operator]

    def finish(self) -> tuple[dict[str, pa.Table], list[DeadLetter]]:
        """Build one table per collection that kept at least one record: the rows
        the native pass landed first, then those of the Python path."""
        tables = self._native_tables()
        for name, table in self._python_tables().items():
            have = tables.get(name)
            tables[name] = table if have is None else pa.concat_tables([have, table])
        return tables, self.dead_letters

    def _native_tables(self) -> dict[str, pa.Table]:
        tables: dict[str, pa.Table] = {}
        for rows in self._native:
            did = pa.repeat(pa.scalar(self.did, _STRING), len(rows.common[0]))
            for i, (name, n, typed) in enumerate(rows.typed):
                if n == 0:
                    continue
                schema = schema_for(name)
                extras = [
                    array_of(spec, schema.field(_N_COMMON + j).type) for j, spec in enumerate(typed)
                ]
                table = _assemble(name, schema, (*rows.common, did), rows.spans(i), extras)
                have = tables.get(name)
                tables[name] = table if have is None else pa.concat_tables([have, table])
        return tables

    def _python_tables(self) -> dict[str, pa.Table]:
        total = len(self._rkeys)
        if total == 0:
            return {}
        common = (
            pa.array(self._uris, _STRING),
            pa.array(self._rkeys, _STRING),
            pa.array(self._cids, _STRING),
            _timestamps(self._created),
            self._json_array(total),
            pa.repeat(pa.scalar(self.did, _STRING), total),
        )
        ranges: dict[_Collection, list[tuple[int, int]]] = {}
        for i, (start, cols) in enumerate(self._runs):
            stop = self._runs[i + 1][0] if i + 1 < len(self._runs) else total
            ranges.setdefault(cols, []).append((start, stop))
        tables: dict[str, pa.Table] = {}
        for cols, spans in ranges.items():
            tables[cols.name] = self._table(cols, common, spans)
        return tables

    def _json_array(self, total: int) -> pa.Array:
        """The `record` column straight from the buffer (orjson only writes valid
        UTF-8, so the bytes are labelled string without a per-value check)."""
        large = len(self._json) >= 2**31  # int32 offsets cannot address it
        offsets = pa.array(self._json_ends, pa.int64() if large else pa.int32())
        kind = pa.large_string() if large else _STRING
        array = pa.Array.from_buffers(
            kind, total, [None, offsets.buffers()[1], pa.py_buffer(self._json)]
        )
        return array.cast(_STRING) if large else array

    def _table(
        self, cols: _Collection, common: tuple[pa.Array, ...], spans: list[tuple[int, int]]
    ) -> pa.Table:
        extras = [
            _build_extra(values, cols.schema.field(_N_COMMON + i).type)
            for i, values in enumerate(cols.extras)
        ]
        return _assemble(cols.name, cols.schema, common, spans, extras)


def _assemble(
    name: str,
    schema: pa.Schema,
    common: tuple[pa.Array, ...],
    spans: list[tuple[int, int]],
    extras: list[pa.Array],
) -> pa.Table:
    """One collection's table: its rows of the common columns (uri, rkey, cid,
    created_at, record, did; `spans` of them, a zero-copy slice when they are
    one run, else gathered) and its typed columns. Both paths build it so."""
    if len(spans) == 1:
        start, stop = spans[0]
        uri, rkey, cid, created, record, did = (a.slice(start, stop - start) for a in common)
    else:  # interleaved input: gather this collection's rows
        idx = pa.array([i for a, b in spans for i in range(a, b)], pa.int64())
        uri, rkey, cid, created, record, did = (a.take(idx) for a in common)
    arrays = [uri, did, pa.repeat(pa.scalar(name, _STRING), len(uri)), rkey, cid, created]
    return pa.Table.from_arrays([*arrays, record, *extras], schema=schema)


def _json_or_none(record: Any) -> str | None:
    """A dead letter's copy of the record (None when there is none, or JSON cannot hold it)."""
    if record is None:
        return None
    try:
        return to_json(record)
    except (RecordEncodeError, TypeError):
        return None


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # A naive bound would make every comparison raise; read it as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _micros(value: dt.datetime) -> int:
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def _timestamps(created: list[str | None]) -> pa.Array:
    """createdAt strings (already spec-valid) -> timestamp[us, UTC], parsed by Arrow."""
    try:
        return pa.array(created, _STRING).cast(TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Safety net for anything Arrow's ISO parser refuses: the exact parser.
        micros = [None if s is None else datetime_micros(s) for s in created]
        return pa.array(micros, pa.int64()).cast(TIMESTAMP)


def _build_extra(values: list[Any], typ: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Only list columns hold unchecked elements (langs); a list holding
        # anything but strings becomes null rather than failing the repo.
        clean = [
            v if v.__class__ in (list, tuple) and all(x.__class__ is str for x in v) else None
            for v in values
        ]
        return pa.array(clean, typ)
