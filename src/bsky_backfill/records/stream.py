"""Big repos in parts: the same extraction as `extract_repo`, in bounded memory.

Where it sits: the worker sends repos whose CAR is larger than
`RunSettings.stream_bytes` here instead of `records.transform.extract_repo`.
The CAR is read lazily (repo/lazy.py) and the MST walked once, `chunk` keys
at a time. Each chunk becomes a `PartPlan` (its keys and where its record
blocks sit in the CAR) and `extract_part` turns a plan into tables. The two
halves are separate so the work can be split: `plan_parts` (commit, signature,
MST walk and node hashes) runs in the process that fetched the repo, and with
`--workers N` the plans go to helper processes (engine/helpers.py) that read
the record blocks from the spooled CAR file, check their hashes, decode and
build the tables, `extract_part_file`. One process alone uses `stream_repo`.

Each part goes to a writer of its own (engine/worker.py) that commits the
repo only after the last part, so a repo is still landed whole or not at all:
a repo that fails verification anywhere (a node while planning, a record
block while extracting) lands nothing.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from bsky_backfill.models import RecordFilter, RepoExtract
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.records.transform import _wanted_records
from bsky_backfill.repo import native
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.gcpause import gc_paused
from bsky_backfill.repo.lazy import LazyBlocks, read_car_lazy
from bsky_backfill.repo.mst import walk_mst, walk_verified
from bsky_backfill.repo.verify import failed, verify_commit

__all__ = ["PartPlan", "extract_part", "extract_part_file", "plan_parts", "stream_repo"]


@dataclass(frozen=True, slots=True)
class PartPlan:
    """One part of a big repo, small enough to send to another process.

    `leaves` are `(key, record CID)` in key order; `index` maps the record
    CIDs present in the CAR to their packed location (`start << 32 | length`,
    as in `LazyBlocks`). A CID missing from `index` is a record block missing
    from the CAR (dead-lettered alone).
    """

    did: str
    rev: str | None
    leaves: list[tuple[str, bytes]]
    index: dict[bytes, int]
    check_hashes: bool
    """Check each record block against its CID as it is read (verification on,
    and the whole CAR was not checked in one pass already)."""


def plan_parts(
    data: bytes,
    did: str,
    *,
    signing_key: str | None = None,
    verify: bool = False,
    chunk: int = 20_000,
) -> Iterator[PartPlan]:
    """Check the commit (and signature), then walk the MST `chunk` keys at a time.

    Raises (from `next`) VerificationFailed / InvalidMST / InvalidCar like
    `extract_repo`; with `verify`, every MST node's hash is checked as the walk
    reads it (record blocks are checked by `extract_part`).
    """
    with gc_paused():
        car = read_car_lazy(data, verify=verify)
        blocks: LazyBlocks = car.blocks  # type: ignore[assignment]
        commit = read_commit(car)
        if commit.did != did:
            raise failed(f"commit is for {commit.did!r:.100}, not the requested {did}")
        if verify:
            verify_commit(car, commit, signing_key)
            if native.mismatched is not None and native.mismatched(data, None) == set():
                # Every block of the CAR hashes to its CID (one C pass, ~1 GB/s):
                # no per-block check left to do as blocks are read.
                blocks.verify = False
            leaves = walk_verified(car.blocks, commit.data, set())
        else:
            leaves = walk_mst(car.blocks, commit.data)
        where = blocks.index
    while True:
        with gc_paused():
            part = list(islice(leaves, chunk))
            if not part:
                break
            get = where.get
            index = {cid: packed for _, cid in part if (packed := get(cid)) is not None}
            plan = PartPlan(did, commit.rev, part, index, blocks.verify)
            del part
        yield plan


def extract_part(data: bytes | mmap.mmap, plan: PartPlan, filt: RecordFilter) -> RepoExtract:
    """A part's tables and dead letters, reading its record blocks from the CAR bytes."""
    with gc_paused():
        blocks = LazyBlocks(data, plan.index, verify=plan.check_hashes)
        out = RecordColumns(plan.did, filt)
        seen = [0]
        out.add_many(_wanted_records(blocks, plan.leaves, out, seen, None))  # type: ignore[arg-type]
        tables, dead_letters = out.finish()
        del out, blocks
    return RepoExtract(plan.did, plan.rev, tables, dead_letters, records_seen=len(plan.leaves))


def extract_part_file(path: str, plan: PartPlan, filt: RecordFilter) -> RepoExtract:
    """`extract_part` on a CAR in a file (a helper process's side).

    The file is mapped for this part only: the pages read are dropped with the
    mapping, so a helper's memory stays at one part's worth.
    """
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return extract_part(mm, plan, filt)


def stream_repo(
    data: bytes,
    did: str,
    filt: RecordFilter,
    *,
    signing_key: str | None = None,
    verify: bool = False,
    chunk: int = 20_000,
) -> Iterator[RepoExtract]:
    """Yield the repo's rows part by part, in this process; raises (from `next`)
    like `extract_repo`."""
    for plan in plan_parts(data, did, signing_key=signing_key, verify=verify, chunk=chunk):
        yield extract_part(data, plan, filt)
