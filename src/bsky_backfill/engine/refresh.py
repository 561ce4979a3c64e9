"""`run --refresh`: land what changed in repos that landed before, record what went.

Where it sits: the per-repo task's path (repo_task.py) for a repo the store
marked `refresh` (`StateStore.mark_refresh`). Two ways, both verified exactly
as a full fetch:

* **Diff** (the repo has a key index in the store, `StateStore.repo_keys`,
  written by the commit that landed it): the worker asks for `getRepo
  since=<rev>`; `refresh_diff` checks the commit (DID, signature against the
  key just re-resolved), rebuilds the old tree from the index and walks it
  with the new one (repo/diff.py: exact, bounded, every opened node checked),
  then hash-checks the commit, every opened node and every landing record.
* **Whole** (no index: landed in list mode, or before indexes
  existed): the worker fetches the whole repo; `refresh_diff` walks it against
  an empty old tree (every node opened and checked, the same checks) and
  compares its keys with what the dataset holds for the DID (`LandedIndex`,
  DuckDB over the local Parquet tables: the one dataset scan left, once per
  such repo; its dead letters too, so none is written twice).

A CAR over `--stream-size` is never read into memory: it is mapped from its
spooled file and its blocks are decoded (and hash-checked) as the walk reaches
them (repo/lazy.py).

Either way new and changed records go through the same `RecordColumns` as any
record (only they: an unchanged record is never judged again, so its dead
letter is not re-written), superseded and deleted ones become rows of
`OUT/_deletions/` (`reason` = `updated` or `deleted`), and the new key index
rides in the commit. The dataset stays append-only; the current view of a
table is its rows minus the (uri, cid) pairs in `_deletions`.
"""

from __future__ import annotations

import datetime as dt
import mmap
from collections.abc import Mapping
from pathlib import Path

import duckdb
import libipld
import pyarrow as pa

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.models import RecordFilter, RepoExtract, utcnow
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.repo.car import Undecodable, read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.diff import (
    Changes,
    OldTree,
    diff_trees,
    failed,
    new_index,
    pack_index,
    unlanded_keys,
    verdicts_of,
)
from bsky_backfill.repo.gcpause import gc_paused
from bsky_backfill.repo.lazy import read_car_lazy
from bsky_backfill.repo.verify import mismatched_blocks, verify_commit
from bsky_backfill.sinks.storage import DEAD_LETTERS, DELETIONS, SUPERSEDED, table_dir
from bsky_backfill.sinks.superseded import CURRENT_DEAD_LETTERS, records_superseded_table

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


class NeedsWholeRepo(Exception):
    """A diff CAR left out a new record's block because the repo already had a block
    with that CID (two records with the same content): the worker asks for the
    whole repo and compares it against the same key index."""


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

    def judged_for_did(self, did: str) -> dict[tuple[str, str], str]:
        """(uri, cid) -> "stage/code" of the record dead letters that stand for `did`
        (sinks/superseded.py's rule)."""
        if not any((self.out / DEAD_LETTERS).glob("**/*.parquet")):
            return {}
        con = duckdb.connect()
        try:
            if any((self.out / SUPERSEDED).glob("**/*.parquet")):
                view = CURRENT_DEAD_LETTERS.format(out=self.out)
            else:
                view = (
                    f"SELECT * FROM read_parquet('{self.out}/{DEAD_LETTERS}/**/*.parquet', "
                    "union_by_name=true)"
                )
            rows = con.execute(
                f"SELECT uri, cid, stage, error FROM ({view}) "
                "WHERE did = ? AND uri IS NOT NULL AND cid IS NOT NULL",
                [did],
            ).fetchall()
        finally:
            con.close()
        return {(str(u), str(c)): f"{s}/{e}" for u, c, s, e in rows}


def refresh_diff(
    data: bytes | mmap.mmap,
    did: str,
    filt: RecordFilter,
    index: dict[str, bytes] | None,
    *,
    signing_key: str | None,
    verify: bool,
    unlanded: Mapping[str, str] | None = None,
    landed: dict[str, str] | None = None,
    judged: Mapping[tuple[str, str], str] | None = None,
    lazy: bool = False,
) -> RepoExtract:
    """The rows a refresh lands for one repo.

    With `index` (the repo's key index; `unlanded`, its keys that have no row),
    `data` is a diff CAR and the old tree is rebuilt from the index. Without
    (a repo landed with no index), `data` is the whole repo, every key of it is
    compared with `landed` (key -> CID text of the rows the dataset holds),
    and dead letters already in the dataset for the same record version
    (`judged`: (uri, cid)) are not written again.
    `lazy` (a CAR over `--stream-size`, mapped from its spooled file): blocks
    are decoded, and hash-checked, only as the walk reaches them.

    Raises RepoInvalid (stage verify, VerificationFailed; or decode for an
    unreadable CAR or commit): nothing of the repo lands.
    """
    unlanded = unlanded or {}
    judged = judged or {}
    with gc_paused():
        car = read_car_lazy(data, verify=verify) if lazy else read_car(data)  # type: ignore[arg-type]
        commit = read_commit(car)
        if commit.did != did:
            raise failed(f"commit is for {commit.did!r:.100}, not the requested {did}")
        if verify:
            verify_commit(car, commit, signing_key)
        changes = diff_trees(OldTree(index or {}), car.blocks, commit.data)
        if index is None:
            _against_landed(changes, landed or {})
        columns = RecordColumns(did, filt)
        used: list[bytes] = []
        known: set[bytes] | None = None
        fresh = sorted([*changes.added.items(), *((k, n) for k, (_, n) in changes.updated.items())])
        for key, value in fresh:
            collection, _, rkey = key.partition("/")
            if collection not in columns.wanted:
                continue
            uri = f"at://{did}/{key}"
            record = car.blocks.get(value)
            if record is None and index is not None:
                if known is None:
                    known = set(index.values())
                if value in known:
                    raise NeedsWholeRepo(key)
            if record.__class__ is not dict:
                if record is None:
                    error, message = (
                        "RecordBlockMissing",
                        "a new or changed record's block is not in the CAR",
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
        if verify and not lazy:
            # The same rule as a full fetch: the commit, every node this walk
            # opened and every record that lands hash to their CIDs (a lazy CAR
            # checks each block as it is read).
            bad = mismatched_blocks(data, {car.root, *changes.opened, *used})  # type: ignore[arg-type]
            if car.root in bad:
                raise failed("the commit block does not match its CID")
            if bad:
                raise failed("an MST node or record block does not match its CID")
        tables, dead_letters = columns.finish()
        verdicts = verdicts_of(did, dead_letters)
        if judged:
            # Judged before, same version: the verdict stands, not written again.
            dead_letters = [d for d in dead_letters if (d.uri, d.cid) not in judged]
        # Only rows that landed leave the current view (a dead-lettered or
        # windowed-out version never was in it).
        replaced = {
            k: _cid_text(old) for k, (old, _) in changes.updated.items() if k not in unlanded
        }
        deleted = {k: _cid_text(old) for k, old in changes.deleted.items() if k not in unlanded}
        now = utcnow()
        deletions = _deletions(did, commit.rev, replaced, deleted, filt, now)
        prefix = f"at://{did}/"
        if index is not None:
            keys = new_index(index, changes)
            gone = {*changes.deleted, *changes.updated}
            # A record dead-lettered before that changed or went: that verdict is
            # history (the new version, if any, was judged above).
            history = [(k, unlanded[k]) for k in sorted(gone) if unlanded.get(k)]
            still = {k: v for k, v in unlanded.items() if k not in gone and k not in changes.added}
        else:
            keys = {**changes.unchanged, **changes.added}
            keys.update((k, new) for k, (_, new) in changes.updated.items())
            history = sorted(
                (uri[len(prefix) :], verdict)
                for (uri, cid), verdict in judged.items()
                if uri.startswith(prefix) and _cid_or_none(keys.get(uri[len(prefix) :])) != cid
            )
            still = {}
        landed_now = (f"{c}/{r}" for c, t in tables.items() for r in t["rkey"].to_pylist())
        fresh_keys = (k for k, _ in fresh)
        still.update(unlanded_keys(fresh_keys, filt.collections, landed_now, verdicts))
        superseded = records_superseded_table(
            did, [(prefix + k, *_verdict(v)) for k, v in history], now
        )
        del car, changes
    if deletions.num_rows:
        tables[DELETIONS] = deletions
    if superseded.num_rows:
        tables[SUPERSEDED] = superseded
    return RepoExtract(did=did, rev=commit.rev, tables=tables, dead_letters=dead_letters,
                       records_seen=len(fresh), keys=pack_index(keys, still))  # fmt: skip


def _against_landed(changes: Changes, landed: dict[str, str]) -> None:
    """A whole repo's keys (all `added`, the old tree being empty) told apart against
    what the dataset holds: unchanged, updated, new; landed keys gone are deleted."""
    everything = changes.added
    changes.added = {}
    for key, value in everything.items():
        before = landed.get(key)
        if before is None:
            changes.added[key] = value
        elif _cid_text(value) == before:
            changes.unchanged[key] = value
        else:
            changes.updated[key] = (_cid_raw(before), value)
    changes.deleted = {k: _cid_raw(c) for k, c in landed.items() if k not in everything}


def _verdict(text: str) -> tuple[str, str]:
    """ "stage/code" -> (stage, code)."""
    stage, _, code = text.partition("/")
    return stage, code


def _cid_or_none(raw: bytes | None) -> str | None:
    return None if raw is None else _cid_text(raw)


def _cid_raw(text: str) -> bytes:
    """The binary form of a CID string (what MST entries hold)."""
    try:
        d = libipld.decode_cid(text)
    except ValueError as e:
        raise RepoInvalid(f"a landed row has a bad CID {text!r:.80}", code="InternalError") from e
    h = d["hash"]
    multihash = _uvarint(h["code"]) + _uvarint(h["size"]) + bytes(h["digest"])
    if d["version"] == 0:
        return multihash
    return _uvarint(d["version"]) + _uvarint(d["codec"]) + multihash


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | 0x80 if n else low)
        if not n:
            return bytes(out)


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
