"""`run --refresh`: land what changed in repos that landed before, record what went.

Where it sits: the worker's path for a repo the store marked `refresh`
(`StateStore.mark_refresh`). Two ways, both verified exactly as a full fetch:

* **Diff** (the repo has a key index in the store, `StateStore.repo_keys`,
  written by the commit that landed it): the worker asks for `getRepo
  since=<rev>`; `refresh_diff` checks the commit (DID, signature against the
  key just re-resolved), rebuilds the old tree from the index and walks it
  with the new one (repo/diff.py: exact, bounded, every opened node checked),
  then hash-checks the commit, every opened node and every landing record.
* **Whole** (no index: landed in list mode, as a big repo, or before indexes
  existed): the worker fetches the whole repo; `refresh_whole` extracts it as
  any full fetch (records.transform, verification included) and compares its
  keys with what the dataset holds for the DID (`LandedIndex`, DuckDB over the
  local Parquet tables: the one dataset scan left, once per such repo).

Either way new and changed records go through the same `RecordColumns` as any
record (only they: an unchanged record is never judged again, so its dead
letter is not re-written), superseded and deleted ones become rows of
`OUT/_deletions/` (`reason` = `updated` or `deleted`), and the new key index
rides in the commit. The dataset stays append-only; the current view of a
table is its rows minus the (uri, cid) pairs in `_deletions`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import libipld
import pyarrow as pa
import pyarrow.compute as pc

from bsky_backfill.models import RecordFilter, RepoExtract, utcnow
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.repo.car import Undecodable, read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.diff import OldTree, diff_trees, failed, new_index, pack_index, unpack_index
from bsky_backfill.repo.gcpause import gc_paused
from bsky_backfill.repo.verify import mismatched_blocks, verify_commit
from bsky_backfill.sinks.storage import DELETIONS, table_dir

DELETION_SCHEMA = pa.schema(
    [
        pa.field("did", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("collection", pa.string(), nullable=False),
        pa.field("rkey", pa.string(), nullable=False),
        pa.field("cid", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("rev", pa.string()),
        pa.field("detected_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

_encode_cid = libipld.encode_cid


class LandedIndex:
    """key -> CID of a repo's current records in a local dataset (wanted collections).

    Only for repos without a key index in the store (see the module docstring)."""

    def __init__(self, out: Path, collections: frozenset[str]) -> None:
        self.out = out
        self.collections = collections

    def for_did(self, did: str) -> dict[str, str]:
        globs = [
            str(self.out / table_dir(c) / "**" / "*.parquet")
            for c in sorted(self.collections)
            if any((self.out / table_dir(c)).glob("**/*.parquet"))
        ]
        if not globs:
            return {}
        con = duckdb.connect()
        try:
            rows = con.execute(
                "SELECT uri, cid FROM read_parquet(?, union_by_name=true) WHERE did = ?",
                [globs, did],
            ).fetchall()
            gone: set[tuple[str, str]] = set()
            if any((self.out / DELETIONS).glob("**/*.parquet")):
                gone = set(
                    con.execute(
                        "SELECT uri, cid FROM read_parquet(?) WHERE did = ?",
                        [str(self.out / DELETIONS / "**" / "*.parquet"), did],
                    ).fetchall()
                )
        finally:
            con.close()
        prefix = len(f"at://{did}/")
        return {uri[prefix:]: cid for uri, cid in rows if (uri, cid) not in gone}


def refresh_diff(
    data: bytes,
    did: str,
    filt: RecordFilter,
    index: dict[str, bytes],
    *,
    signing_key: str | None,
    verify: bool,
) -> RepoExtract:
    """The rows a refresh lands from a diff CAR against the repo's key index.

    Raises RepoInvalid (stage verify, VerificationFailed; or decode for an
    unreadable CAR or commit): nothing of the repo lands.
    """
    with gc_paused():
        car = read_car(data)
        commit = read_commit(car)
        if commit.did != did:
            raise failed(f"commit is for {commit.did!r:.100}, not the requested {did}")
        if verify:
            verify_commit(car, commit, signing_key)
        changes = diff_trees(OldTree(index), car.blocks, commit.data)
        columns = RecordColumns(did, filt)
        used: list[bytes] = []
        fresh = sorted([*changes.added.items(), *((k, n) for k, (_, n) in changes.updated.items())])
        for key, value in fresh:
            collection, _, rkey = key.partition("/")
            if collection not in columns.wanted:
                continue
            uri = f"at://{did}/{key}"
            record = car.blocks.get(value)
            if record.__class__ is not dict:
                if record is None:
                    error, message = (
                        "RecordBlockMissing",
                        "a new or changed record's block is not in the diff",
                    )
                elif record.__class__ is Undecodable:
                    error, message = "InvalidRecordBlock", "record block is not valid DAG-CBOR"
                else:
                    error, message = (
                        "InvalidRecordBlock",
                        f"record block is a {type(record).__name__}",
                    )
                columns.reject(uri, "decode", error, message)
                continue
            used.append(value)
            columns.add(collection, rkey, _cid_text(value), record)
        if verify:
            # The same rule as a full fetch: the commit, every node this walk
            # opened and every record that lands hash to their CIDs.
            bad = mismatched_blocks(data, {car.root, *changes.opened, *used})
            if car.root in bad:
                raise failed("the commit block does not match its CID")
            if bad:
                raise failed("an MST node or record block does not match its CID")
        tables, dead_letters = columns.finish()
        replaced = {k: _cid_text(old) for k, (old, _) in changes.updated.items()}
        deleted = {k: _cid_text(old) for k, old in changes.deleted.items()}
        deletions = _deletions(did, commit.rev, replaced, deleted, filt, utcnow())
        keys = new_index(index, changes)
        del car, changes
    if deletions.num_rows:
        tables[DELETIONS] = deletions
    return RepoExtract(did=did, rev=commit.rev, tables=tables, dead_letters=dead_letters,
                       records_seen=len(fresh), keys=pack_index(keys))  # fmt: skip


def refresh_whole(
    data: bytes,
    did: str,
    filt: RecordFilter,
    landed: dict[str, str],
    *,
    signing_key: str | None,
    verify: bool,
) -> RepoExtract:
    """The rows a refresh lands from a whole repo, compared with `landed` (key -> CID)."""
    extract = extract_repo(data, did, filt, signing_key=signing_key, verify=verify)
    keys = unpack_index(extract.keys) if extract.keys is not None else {}
    prefix = f"at://{did}/"
    wanted_landed = {prefix + k: c for k, c in landed.items()}
    tables: dict[str, pa.Table] = {}
    for collection, table in extract.tables.items():
        pairs = [
            wanted_landed.get(u) != c
            for u, c in zip(table["uri"].to_pylist(), table["cid"].to_pylist(), strict=True)
        ]
        kept = table.filter(pc.array(pairs, type=pa.bool_())) if pairs else table
        if kept.num_rows:
            tables[collection] = kept
    replaced: dict[str, str] = {}
    deleted: dict[str, str] = {}
    for key, cid in landed.items():
        now = keys.get(key)
        if now is None:
            deleted[key] = cid
        elif _encode_cid(now) != cid:
            replaced[key] = cid
    deletions = _deletions(did, extract.rev, replaced, deleted, filt, utcnow())
    if deletions.num_rows:
        tables[DELETIONS] = deletions
    return RepoExtract(did=did, rev=extract.rev, tables=tables, dead_letters=extract.dead_letters,
                       records_seen=extract.records_seen, keys=extract.keys)  # fmt: skip


def _cid_text(raw: bytes) -> str:
    try:
        text: str = _encode_cid(raw)
    except ValueError:
        raise failed(f"an MST entry's value is not a CID: {raw!r:.100}") from None
    return text


def _deletions(
    did: str,
    rev: str | None,
    replaced: dict[str, str],
    deleted: dict[str, str],
    filt: RecordFilter,
    at: dt.datetime,
) -> pa.Table:
    rows = [(k, c, "updated") for k, c in replaced.items()]
    rows += [(k, c, "deleted") for k, c in deleted.items()]
    rows = sorted(r for r in rows if r[0].partition("/")[0] in filt.collections)
    keys = [k for k, _, _ in rows]
    return pa.table(
        {
            "did": [did] * len(rows),
            "uri": [f"at://{did}/{k}" for k in keys],
            "collection": [k.partition("/")[0] for k in keys],
            "rkey": [k.partition("/")[2] for k in keys],
            "cid": [c for _, c, _ in rows],
            "reason": [r for _, _, r in rows],
            "rev": [rev] * len(rows),
            "detected_at": [at] * len(rows),
        },
        schema=DELETION_SCHEMA,
    )
