"""Big repos in parts: the same extraction as `extract_repo`, in bounded memory.

Where it sits: the worker sends repos whose CAR is larger than
`RunSettings.stream_bytes` here instead of `records.transform.extract_repo`.
The CAR is read lazily (repo/lazy.py), the MST walked once, and the records
turned into tables `chunk` keys at a time; each part is handed to a writer of
its own (engine/worker.py) that commits the repo only after the last part, so a
repo is still landed whole or not at all. With verification on, the commit is
checked first, then every MST node and landing record block against its CID as
the walk reads it; the writer commits only after the last part, so a repo that
fails anywhere lands nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from bsky_backfill.models import RecordFilter, RepoExtract
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.records.transform import _wanted_records
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.gcpause import gc_paused
from bsky_backfill.repo.lazy import read_car_lazy
from bsky_backfill.repo.mst import walk_mst, walk_verified
from bsky_backfill.repo.verify import failed, verify_commit


def stream_repo(
    data: bytes,
    did: str,
    filt: RecordFilter,
    *,
    signing_key: str | None = None,
    verify: bool = False,
    chunk: int = 20_000,
) -> Iterator[RepoExtract]:
    """Yield the repo's rows part by part; raises (from `next`) like `extract_repo`."""
    with gc_paused():
        car = read_car_lazy(data, verify=verify)
        commit = read_commit(car)
        if commit.did != did:
            raise failed(f"commit is for {commit.did!r:.100}, not the requested {did}")
        nodes: set[bytes] = set()
        if verify:
            # Block hashes are checked as blocks are read (LazyBlocks): the commit's
            # already, every MST node and wanted record block as the walk reaches it.
            verify_commit(car, commit, signing_key)
            leaves = walk_verified(car.blocks, commit.data, nodes)
        else:
            leaves = walk_mst(car.blocks, commit.data)
    while True:
        with gc_paused():
            part = list(islice(leaves, chunk))
            if not part:
                break
            out = RecordColumns(did, filt)
            seen = [0]
            out.add_many(_wanted_records(car.blocks, part, out, seen, None))
            tables, dead_letters = out.finish()
            extract = RepoExtract(did, commit.rev, tables, dead_letters, records_seen=len(part))
            del out, part
        yield extract
