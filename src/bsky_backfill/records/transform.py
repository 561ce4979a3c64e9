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

from collections.abc import Iterable, Iterator
from typing import Any

import libipld

from bsky_backfill.models import RecordFilter, RepoExtract
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.repo.car import Undecodable, read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.gcpause import gc_paused
from bsky_backfill.repo.mst import walk_mst
from bsky_backfill.repo.verify import failed, mismatched_blocks, verify_commit, walk_verified

__all__ = ["extract_repo"]

_encode_cid = libipld.encode_cid


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
        car = read_car(data)
        commit = read_commit(car)
        if commit.did != did:
            raise failed(f"commit is for {commit.did!r:.100}, not the requested {did}")
        bad: set[bytes] = set()
        if verify:
            bad = mismatched_blocks(data)
            verify_commit(car, commit, signing_key, bad)
            leaves = walk_verified(car.blocks, commit.data, bad)
        else:
            leaves = walk_mst(car.blocks, commit.data)
        out = RecordColumns(did, filt)
        seen = [0]
        out.add_many(_wanted_records(car.blocks, leaves, out, seen, bad))
        tables, dead_letters = out.finish()
        # Drop the decoded blocks while the collector is still paused: reference
        # counting frees them, and the GC never scans them.
        del car, out, leaves
    return RepoExtract(
        did=did,
        rev=commit.rev,
        tables=tables,
        dead_letters=dead_letters,
        records_seen=seen[0],
    )


def _wanted_records(
    blocks: dict[bytes, Any],
    leaves: Iterable[tuple[str, bytes]],
    out: RecordColumns,
    seen: list[int],
    bad: set[bytes],
) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """MST leaves -> `(collection, rkey, cid, record)` for wanted collections.

    Decode-level problems of a single record (block absent, not valid
    DAG-CBOR or not a map, link not a CID) are dead-lettered here; a record
    whose block does not hash to its CID (`bad`, empty unless verifying)
    fails the whole repo. `seen[0]` ends as the number of keys.
    """
    wanted = out.wanted
    n = 0
    for key, value_cid in leaves:
        n += 1
        collection, _, rkey = key.partition("/")
        if collection not in wanted:
            continue
        record = blocks.get(value_cid)
        if record.__class__ is dict:
            if bad and value_cid in bad:
                raise failed(f"the block of record {key!r:.200} does not match its CID")
            try:
                cid = _encode_cid(value_cid)
            except ValueError:
                message = "record link is not a CID"
            else:
                yield collection, rkey, cid, record
                continue
        elif record is None:
            message = "record block not in the CAR"
        elif record.__class__ is Undecodable:
            message = f"record block is not valid DAG-CBOR: {record.reason}"
        else:
            message = f"record block is a {type(record).__name__}"
        error = "RecordBlockMissing" if record is None else "InvalidRecordBlock"
        out.reject(f"at://{out.did}/{collection}/{rkey}", "decode", error, message)
    seen[0] = n
