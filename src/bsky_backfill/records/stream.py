"""Big repos in parts: the same extraction as `extract_repo`, in bounded memory.

Where it sits: the worker sends repos whose CAR is larger than
`RunSettings.stream_bytes` here instead of `records.transform.extract_repo`.
The CAR is read lazily (repo/lazy.py: a frame index, blocks decoded when
read). `plan_parts` checks the commit (and signature), walks only the top of
the MST and cuts the tree into parts: each subtree `SPLIT_LAYER` layers above
the leaves (~16k keys on average at fanout 4) is a part, and the few keys
above them are one more. `extract_part` walks one part's subtree and turns its
records into tables. Parts are independent, so with `--workers N` they are
extracted in helper processes (engine/part_pool.py, `extract_part_file`, which
reads the spooled CAR file) on every core; one process alone runs them one
after the other (`stream_repo`).

Verification holds across the cut: each part's subtree is walked with the
same checks as a whole tree (its layer is known from the top walk), and its
keys must sort strictly between the keys around it in the top walk, so the
concatenated parts are exactly one well-formed, strictly ordered tree.

Each part goes to a writer of its own (engine/repo_task.py) that commits the
repo only after the last part, so a repo is still landed whole or not at all:
a repo that fails verification anywhere lands nothing.
"""

from __future__ import annotations

import datetime as dt
import mmap
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.models import DeadLetter, RecordFilter, RepoExtract, utcnow
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.records.transform import _wanted_records, native_first, packed_index
from bsky_backfill.repo import native
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.gcpause import gc_paused
from bsky_backfill.repo.lazy import LazyBlocks, _frame_index, map_file, read_car_lazy
from bsky_backfill.repo.mst import key_height, mst_leaves, verified_leaves, walk_mst, walk_verified
from bsky_backfill.repo.verify import failed, verify_commit
from bsky_backfill.sinks.batch import EncodedFile, SinkConfig, encode_tables

__all__ = [
    "SPLIT_LAYER",
    "BigRepo",
    "BuiltPart",
    "PartPlan",
    "extract_part",
    "extract_part_file",
    "index_file",
    "plan_parts",
    "stream_repo",
]

#: Subtrees on this MST layer or below are parts: ~4^(layer+1) keys each.
SPLIT_LAYER = 6


@dataclass(frozen=True, slots=True)
class PartPlan:
    """One part of a big repo, small enough to send to another process.

    Either `leaves` (the keys above the cut, `(key, record CID)` in order) or
    a `subtree` to walk: its node CID, its `layer` (for the verified walk),
    and the keys around it (`after` < every key of it < `before`).
    """

    did: str
    rev: str | None
    verify: bool
    check_hashes: bool
    """Check each block against its CID as it is read (verification on, and
    the whole CAR was not checked in one pass already)."""
    leaves: list[tuple[str, bytes]] | None = None
    subtree: bytes | None = None
    layer: int | None = None
    after: str = ""
    before: str | None = None


@dataclass(frozen=True, slots=True)
class BigRepo:
    """A big repo cut into parts: its revision, block index and parts in key order."""

    rev: str | None
    index: dict[bytes, int]
    parts: list[PartPlan]


def plan_parts(
    data: bytes | mmap.mmap,
    did: str,
    *,
    signing_key: str | None = None,
    verify: bool = False,
    split_layer: int = SPLIT_LAYER,
) -> BigRepo:
    """Check the commit (and with `verify` its signature and every block's hash
    in one pass), walk the top of the tree, and cut it into parts.

    Raises VerificationFailed / InvalidMST / InvalidCar like `extract_repo`.
    """
    with gc_paused():
        car = read_car_lazy(data, verify=verify)
        blocks: LazyBlocks = car.blocks  # type: ignore[assignment]
        commit = read_commit(car)
        if commit.did != did:
            raise failed(f"commit is for {commit.did!r:.100}, not the requested {did}")
        if verify:
            verify_commit(car, commit, signing_key)
            if native.mismatched is not None and native.mismatched(data, None) == set():  # type: ignore[arg-type]
                # Every block of the CAR hashes to its CID (one C pass, ~1 GB/s):
                # no per-block check left to do as blocks are read.
                blocks.verify = False
            top: Iterable[tuple[Any, bytes]] = walk_verified(
                blocks, commit.data, set(), cut=split_layer
            )
        else:
            cut = max(1, _root_layer(blocks, commit.data) - split_layer)
            top = walk_mst(blocks, commit.data, cut=cut)
        parts = _cut(list(top), did, commit.rev, verify, blocks.verify)
    return BigRepo(commit.rev, blocks.index, parts)


def _root_layer(blocks: LazyBlocks, root: bytes) -> int:
    """The root's layer from its first key (0 when unreadable: the walk reports it)."""
    node = blocks.get(root)
    try:
        first = node["e"][0]
        key = first["k"] if first["p"] == 0 else b""
        return key_height(key) if key.__class__ is bytes else 0
    except (KeyError, IndexError, TypeError):
        return 0


def _cut(
    items: list[tuple[Any, bytes]], did: str, rev: str | None, verify: bool, check: bool
) -> list[PartPlan]:
    """The top walk's leaves and cut subtrees -> parts, each subtree with its bounds."""
    before: list[str | None] = [None] * len(items)
    nxt: str | None = None
    for i in range(len(items) - 1, -1, -1):
        before[i] = nxt
        if items[i][0].__class__ is str:
            nxt = items[i][0]
    parts: list[PartPlan] = []
    leaves: list[tuple[str, bytes]] = []
    after = ""
    for i, (first, cid) in enumerate(items):
        if first.__class__ is str:
            leaves.append((first, cid))
            after = first
            continue
        layer = first if verify else None
        parts.append(PartPlan(did, rev, verify, check, None, cid, layer, after, before[i]))
    if leaves:
        parts.append(PartPlan(did, rev, verify, check, leaves))
    return parts


def extract_part(
    data: bytes | mmap.mmap, index: dict[bytes, int], plan: PartPlan, filt: RecordFilter
) -> RepoExtract:
    """A part's tables and dead letters, reading its blocks from the CAR bytes."""
    with gc_paused():
        blocks = LazyBlocks(data, index, verify=plan.check_hashes)
        out = RecordColumns(plan.did, filt)
        keys: dict[str, bytes] = {}
        if plan.subtree is None:
            wanted, cids, seen = mst_leaves(plan.leaves or [], out.wanted, keys)
        elif plan.verify:
            wanted, cids, seen = verified_leaves(
                blocks,
                plan.subtree,
                set(),
                out.wanted,
                keys,
                layer=plan.layer,
                after=plan.after,
                before=plan.before,
            )
        else:
            leaves = walk_mst(blocks, plan.subtree, after=plan.after, before=plan.before)
            wanted, cids, seen = mst_leaves(leaves, out.wanted, keys)
        # The native pass first (unless each block must be hashed as it is read):
        # what it declines goes the Python way.
        out.add_many(
            _wanted_records(*native_first(data, blocks, wanted, cids, out, None), out, None)
        )
        tables, dead_letters = out.finish()
        key_index = packed_index(plan.did, keys, filt, tables, out, len(wanted))
        del out, blocks, keys, wanted, cids
    return RepoExtract(plan.did, plan.rev, tables, dead_letters, records_seen=seen, keys=key_index)


# A helper process's index of the CAR it is working on: (file identity, index).
# Parts of one repo come one after the other, so it is built once per repo per
# helper (~0.6 s for 1M records, in C), not once per part.
_helper_index: tuple[tuple[str, int, int], dict[bytes, int]] | None = None


@dataclass(frozen=True, slots=True)
class BuiltPart:
    """A part as a helper process hands it back: Parquet files, not Arrow tables
    (sinks/batch.py `encode_tables`), and its record-level dead letters."""

    records_seen: int
    files: list[EncodedFile]
    dead_letters: list[DeadLetter]
    keys: bytes | None = None
    """The part's key index (repo.diff.pack_index): the repo's is their merge."""

    @property
    def rows(self) -> dict[str, int]:
        return {f.collection: f.rows for f in self.files}


def extract_part_file(
    path: str,
    plan: PartPlan,
    filt: RecordFilter,
    sink: SinkConfig,
    fetched_at: dt.datetime | None = None,
) -> BuiltPart:
    """`extract_part` on a CAR in a file, encoded as Parquet (a helper process's side);
    rows stamped with the part's rev and `fetched_at` (sinks/provenance.py).

    The file is mapped for this part only: the pages read are dropped with the
    mapping, so a helper's memory is the block index and one part's rows.
    """
    with map_file(path) as mm:
        part = extract_part(mm, _index_of(path, mm), plan, filt)
    files = encode_tables(part.tables, sink, (plan.rev, fetched_at or utcnow()))
    return BuiltPart(part.records_seen, files, part.dead_letters, part.keys)


def index_file(path: str) -> int:
    """Build (or find) this helper's block index of the CAR at `path`; its size.
    Sent ahead of the parts so the index is ready when they arrive."""
    with map_file(path) as mm:
        return len(_index_of(path, mm))


def _index_of(path: str, mm: mmap.mmap) -> dict[bytes, int]:
    global _helper_index
    stat = os.stat(path)
    ident = (path, stat.st_ino, stat.st_size)
    if _helper_index is None or _helper_index[0] != ident:
        _helper_index = None  # the previous repo's index goes first
        try:
            _, index = _frame_index(mm)
        except ValueError as e:
            raise RepoInvalid(f"cannot index CAR: {e}", code="InvalidCar") from e
        _helper_index = (ident, index)
    return _helper_index[1]


def stream_repo(
    data: bytes,
    did: str,
    filt: RecordFilter,
    *,
    signing_key: str | None = None,
    verify: bool = False,
    split_layer: int = SPLIT_LAYER,
) -> Iterator[RepoExtract]:
    """Yield the repo's rows part by part, in this process; raises (from `next`)
    like `extract_repo`."""
    big = plan_parts(data, did, signing_key=signing_key, verify=verify, split_layer=split_layer)
    for plan in big.parts:
        yield extract_part(data, big.index, plan, filt)
