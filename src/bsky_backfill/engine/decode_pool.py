"""Where CPU-bound extraction runs: off the event loop, so downloads keep flowing.

Where it sits: the per-repo task (repo_task.py) hands a fetched CAR to
`Extractor.extract`, which runs `records.transform.extract_repo` (decode, MST
walk, validate, build Arrow tables) in a dedicated thread of this process.
libipld and pyarrow do the heavy lifting in native code; the thread keeps the
asyncio loop responsive while they do. (A big repo's parts may also go to other
processes: part_pool.py; more processes on the whole run: processes.py.)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bsky_backfill.models import RecordFilter, RepoExtract
from bsky_backfill.records.transform import extract_repo

T = TypeVar("T")


class Extractor:
    """Runs repo extraction on a small thread pool."""

    def __init__(self, threads: int = 1) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="extract")

    async def extract(
        self, data: bytes, did: str, filt: RecordFilter, *, signing_key: str | None, verify: bool
    ) -> RepoExtract:
        loop = asyncio.get_running_loop()
        job = functools.partial(extract_repo, signing_key=signing_key, verify=verify)
        return await loop.run_in_executor(self._pool, job, data, did, filt)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Any CPU-bound step on the extraction thread (big repos' parts: one thread
        for all of them keeps the allocator's memory in one arena)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
