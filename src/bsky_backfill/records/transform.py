"""One repository CAR -> Arrow tables per collection + dead letters (the hot path).

Where it sits in the flow: engine worker fetches getRepo bytes ->
**extract_repo** (read_car -> commit checks -> verification -> MST walk ->
RecordColumns) -> sinks/ commit the `RepoExtract`. Verification (`repo.verify`,
on unless `verify=False`) checks the commit signature and hash, walks the MST
checking its structure, and refuses a landing record whose block does not
hash to its CID; the DID check is always made.

Whole-repo failures raise (RepoInvalid: unreadable CAR, malformed commit or MST,
commit DID not the requested DID, verification failed); record-level failures
become dead letters:

* record block absent from the CAR -> stage decode, RecordBlockMissing
* record block not valid DAG-CBOR, or not a map -> stage decode, InvalidRecordBlock
* validation failures (see `records.columns`) -> stage validate, InvalidRecord

Time-window decision (documented here and in `records.columns`): the window
filters collections whose Lexicon requires createdAt, and unknown collections
on records with a valid createdAt (kept, null `created_at`, without one);
profile-like state records (createdAt optional) are always landed.

Performance: the cyclic GC is paused for the whole CPU section (decode, walk,
transform, Arrow build); nothing here forms reference cycles, so the decoded
blocks are freed by reference counting as soon as this function returns.
Unwanted collections are skipped on the key alone, before any other work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import libipld

from bsky_backfill.errors import RepoInvalid, TransientError
from bsky_backfill.models import RecordFilter, RepoExtract
from bsky_backfill.records import native
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.repo.car import CarBlocks, Undecodable, read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.diff import pack_index, unlanded_keys, verdicts_of
from bsky_backfill.repo.gcpause import gc_paused
from bsky_backfill.repo.lazy import LazyBlocks, read_car_lazy
from bsky_backfill.repo.mst import mst_leaves, verified_leaves, walk_mst
from bsky_backfill.repo.verify import check_blocks, failed, verify_commit

__all__ = ["extract_repo", "native_first"]

_encode_cid = libipld.encode_cid
_Row = tuple[str, str, str, dict[str, Any]]


def extract_repo(
    data: bytes,
    did: str,
    filt: RecordFilter,
    *,
    signing_key: str | None = None,
    verify: bool = False,
) -> RepoExtract:
    """Decode a getRepo CAR for `did` and turn the records `filt` wants into tables.

    `signing_key` is the `#atproto` did:key of the DID document; `verify`
    checks signature, tree and block hashes against it (the engine passes
    RunSettings.verify, on by default; the default here is off so that tools
    and tests reading unsigned CARs need no key). `records_seen` counts every
    record key the MST reaches (wanted or not).
    """
    with gc_paused():
        car = _read_lazily(data) if native.records_pass is not None else None
        if car is None:
            car = read_car(data)
        commit = read_commit(car)
        if commit.did != did:
            raise failed(f"commit is for {commit.did!r:.100}, not the requested {did}")
        out = RecordColumns(did, filt)
        keys: dict[str, bytes] = {}
        rows: Iterable[_Row]
        if verify:
            verify_commit(car, commit, signing_key)
            nodes: set[bytes] = set()
            used: list[bytes] = []
            wanted, cids, seen = verified_leaves(car.blocks, commit.data, nodes, out.wanted, keys)
            # Materialised, so that the tree and every block the rows come from
            # are checked before a single row is built.
            rows = list(
                _wanted_records(*native_first(data, car.blocks, wanted, cids, out, used), out, used)
            )
            check_blocks(data, car, nodes, used)
        else:
            wanted, cids, seen = mst_leaves(walk_mst(car.blocks, commit.data), out.wanted, keys)
            rows = _wanted_records(
                *native_first(data, car.blocks, wanted, cids, out, None), out, None
            )
        out.add_many(rows)
        tables, dead_letters = out.finish()
        key_index = packed_index(did, keys, filt, tables, out, len(wanted))
        # Drop the decoded blocks while the collector is still paused: reference
        # counting frees them, and the GC never scans them.
        del car, out, rows, wanted, cids
    return RepoExtract(
        did=did,
        rev=commit.rev,
        tables=tables,
        dead_letters=dead_letters,
        records_seen=seen,
        keys=key_index,
    )


def _read_lazily(data: bytes) -> CarBlocks | None:
    """The CAR framed, not decoded (repo/lazy.py): the native pass reads record blocks
    from the bytes, so only the MST nodes are ever decoded. None when the lazy
    reader refuses it: `read_car` then reads it and words what is wrong."""
    try:
        return read_car_lazy(data)
    except (RepoInvalid, TransientError, ValueError):
        return None


def native_first(
    data: Any,
    blocks: Mapping[bytes, Any],
    wanted: list[str],
    cids: list[bytes],
    out: RecordColumns,
    used: list[bytes] | None,
) -> tuple[Mapping[bytes, Any], list[str], list[bytes]]:
    """The native pass over the wanted records when the blocks are read lazily;
    what it declined (all of them without it) is left for `_wanted_records`.
    Records it landed, or left out by the window, go to `used` for their hash check.
    Both `extract_repo` and a big repo's `records.stream.extract_part` call it."""
    if not isinstance(blocks, LazyBlocks) or blocks.verify:
        return blocks, wanted, cids
    declined = out.add_native(data, blocks.index, wanted, cids)
    if declined is None:
        return blocks, wanted, cids
    if used is not None:
        start = 0
        for i in declined:  # few: slices between them, no per-record Python
            used.extend(cids[start:i])
            start = i + 1
        used.extend(cids[start:])
    return blocks, [wanted[i] for i in declined], [cids[i] for i in declined]


def packed_index(
    did: str,
    keys: dict[str, bytes],
    filt: RecordFilter,
    tables: dict[str, Any],
    out: RecordColumns,
    wanted_keys: int,
) -> bytes:
    """The key index of a repo (or of a big repo's part) as stored (repo.diff.pack_index);
    `wanted_keys`: how many of `keys` are of wanted collections (the walk counted them)."""
    return pack_index(keys, _unlanded(did, keys, filt, tables, out, wanted_keys))


def _unlanded(
    did: str,
    keys: dict[str, bytes],
    filt: RecordFilter,
    tables: dict[str, Any],
    out: RecordColumns,
    wanted_keys: int,
) -> dict[str, str]:
    """Keys of wanted collections with no row -> their dead letter's "stage/code"
    ("" outside the window)."""
    rows = sum(t.num_rows for t in tables.values())
    if rows == wanted_keys:
        return {}  # all landed: the usual case, no set built
    verdicts = verdicts_of(did, out.dead_letters)
    if rows + len(verdicts) + len(out.outside_window) == wanted_keys:
        # Every key without a row is accounted for by a dead letter or the window
        # (as it must be: nothing is dropped silently): no pass over the rows.
        return {**verdicts, **dict.fromkeys(out.outside_window, "")}
    landed = (f"{c}/{r}" for c, t in tables.items() for r in t["rkey"].to_pylist())
    return unlanded_keys(keys, filt.collections, landed, verdicts)


def _wanted_records(
    blocks: Mapping[bytes, Any],
    keys: list[str],
    cids: list[bytes],
    out: RecordColumns,
    used: list[bytes] | None,
) -> Iterator[_Row]:
    """The leaves of wanted collections (repo.mst `Leaves`) -> `(collection, rkey, cid, record)`.

    Decode-level problems of a single record (block absent, not valid
    DAG-CBOR or not a map, link not a CID) are dead-lettered here. The raw
    CIDs of the records yielded go to `used` (when verifying, for their
    hash check).
    """
    keep = None if used is None else used.append
    for key, value_cid in zip(keys, cids, strict=True):
        collection, _, rkey = key.partition("/")
        record = blocks.get(value_cid)
        if record.__class__ is dict:
            try:
                cid = _encode_cid(value_cid)
            except ValueError:
                message = "record link is not a CID"
            else:
                if keep is not None:
                    keep(value_cid)
                yield collection, rkey, cid, record
                continue
        elif record is None:
            message = "record block not in the CAR"
        elif record.__class__ is Undecodable:
            message = f"record block is not valid DAG-CBOR: {record.reason}"
        else:
            message = f"record block is a {type(record).__name__}"
        error = "RecordBlockMissing" if record is None else "InvalidRecordBlock"
        kept = None if record is None or record.__class__ is Undecodable else record
        try:
            cid_text = None if kept is None else _encode_cid(value_cid)
        except ValueError:
            cid_text = None
        uri = f"at://{out.did}/{collection}/{rkey}"
        out.reject(uri, "decode", error, message, cid=cid_text, record=kept)
