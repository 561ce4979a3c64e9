"""The work on one repo: fetch, extract, hand to the sink; or retry, or dead-letter.

Where it sits: the scheduler (manager.py) claims a repo for a host and runs
`RepoWorker.process` in that host's slot. The repo ends in exactly one of:
  - added to the sink's open batch (done at the next commit);
  - back to pending with a retry time (transient error, attempts left);
  - dead-lettered whole (terminal error, or transient with no attempts left).
A 429 is not an attempt: the host is paused and the same repo waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bsky_backfill.engine.cpu import Extractor
from bsky_backfill.engine.listing import ListFetcher
from bsky_backfill.engine.refresh import LandedIndex, refresh_extract
from bsky_backfill.errors import RepoInvalid, TerminalError, TransientError
from bsky_backfill.models import RepoExtract, utcnow
from bsky_backfill.records.stream import stream_repo
from bsky_backfill.sinks.parquet import DatasetWriter, SinkConfig
from bsky_backfill.state.base import RepoDone, RepoTask
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.retry import error_summary, next_attempt
from bsky_backfill.xrpc.slot import HostSlot, through_rate_limits

if TYPE_CHECKING:
    from bsky_backfill.engine.manager import Backfill

log = logging.getLogger("bsky_backfill.worker")


class RepoWorker:
    """Processes claimed repos; shared by all host slots of a run."""

    def __init__(self, run: Backfill, client: XrpcClient, extractor: Extractor) -> None:
        self.run = run
        self.client = client
        self.extractor = extractor
        self.filter = run.settings.record_filter
        self.landed = LandedIndex(Path(run.settings.out), self.filter.collections)
        self.lister: ListFetcher | None = None
        if run.settings.method == "list":
            self.lister = ListFetcher(
                client,
                self.filter,
                load_progress=run.store.get_cursor,
                emit_partial=self._partial,
            )
        self._rand = random.Random()

    async def process(self, slot: HostSlot, task: RepoTask) -> None:
        run = self.run
        try:
            cursors: list[tuple[str, str | None]] = []
            if task.refresh:
                extract = await self._refresh(slot, task)
            elif self.lister is not None:
                extract, cursors = await self.lister.fetch(slot, task)
            else:
                data = await self._fetch(slot, task)
                if len(data) >= run.settings.stream_bytes:
                    await self._land_big(slot, task, data)
                    return
                started = time.perf_counter()
                extract = await self.extractor.extract(
                    data,
                    task.did,
                    self.filter,
                    signing_key=task.signing_key,
                    verify=run.settings.verify,
                )
                del data
                for hook in run.on_decode:
                    hook(time.perf_counter() - started)
            done = RepoDone(did=task.did, rev=extract.rev, records=extract.row_count)
            if not run.land(extract, done, cursors):
                return
            run.stats.repos_done += 1
            slot.done += 1
            run.count_rows(extract)
            run._maybe_commit()
        except TerminalError as e:
            slot.failed += 1
            log.info(
                "dead-lettered %s on %s: %s",
                task.did,
                slot.host,
                error_summary(e),
                extra={"host": slot.host, "did": task.did},
            )
            run.fail_repo(task.did, e)
        except TransientError as e:
            self._retry_or_fail(slot, task, e)
        except Exception as e:  # a bug or an unmapped library error: never stall the run
            log.exception(
                "unexpected error on %s (%s)",
                task.did,
                slot.host,
                extra={"host": slot.host, "did": task.did},
            )
            run.fail_repo(task.did, RepoInvalid(f"{type(e).__name__}: {e}", code="InternalError"))
        finally:
            slot.active -= 1
            run.wake()

    async def _land_big(self, slot: HostSlot, task: RepoTask, data: bytes) -> None:
        """A big repo: extracted in parts into a writer of its own, committed alone
        once every part is written (and verified), so memory stays bounded and the
        repo still lands whole or not at all."""
        run = self.run
        parts = stream_repo(
            data,
            task.did,
            self.filter,
            signing_key=task.signing_key,
            verify=run.settings.verify,
        )
        writer = DatasetWriter(
            run.settings.out,
            run.store,
            # Smaller row groups: rows wait in memory until a group is full.
            SinkConfig(commit_rows=1 << 62, commit_seconds=float("inf"), row_group_rows=32_768),
        )
        rows, rev = 0, None
        try:
            while (part := await self.extractor.call(next, parts, None)) is not None:
                await self.extractor.call(writer.add_partial, part, [])
                rows += part.row_count
                rev = part.rev
                run.count_rows(part)
            done = RepoDone(did=task.did, rev=rev, records=rows)
            writer.add(RepoExtract(did=task.did, rev=rev, tables={}, dead_letters=[]), done)
            summary = await self.extractor.call(writer.commit)
        except BaseException:
            with contextlib.suppress(Exception):
                writer.abort()
            raise
        finally:
            with contextlib.suppress(Exception):
                writer.close()
        run.stats.repos_done += 1
        slot.done += 1
        for hook in run.on_commit:
            hook(summary)
        log.info("%s: big repo (%d MB) landed in parts: %d rows", task.did, len(data) >> 20, rows)

    def forget_progress(self, did: str) -> None:
        """Drop list-mode progress held in memory (its pages were refused)."""
        if self.lister is not None:
            self.lister.progress.pop(did, None)

    def _partial(self, part: RepoExtract, key: str, value: str) -> None:
        """List mode: a big repo's finished pages go to the open batch with their cursor."""
        if not self.run.land_partial(part, [(key, value)]):
            raise RepoInvalid("the dataset writer failed", code="InternalError")
        self.run.count_rows(part)
        self.run._maybe_commit()

    async def _refresh(self, slot: HostSlot, task: RepoTask) -> RepoExtract:
        """What changed since the last landed revision (engine/refresh.py)."""
        data = await self._fetch(slot, task, since=task.since)
        landed = await asyncio.to_thread(self.landed.for_did, task.did)
        return await asyncio.to_thread(refresh_extract, data, task.did, self.filter, landed)

    async def _fetch(self, slot: HostSlot, task: RepoTask, since: str | None = None) -> bytes:
        body = await through_rate_limits(
            lambda: self.client.get_repo(task.pds, task.did, slot, since=since)
        )
        if body.path is None:
            return body.read()
        return await asyncio.to_thread(body.read)  # spooled: read back off the loop

    def _retry_or_fail(self, slot: HostSlot, task: RepoTask, error: TransientError) -> None:
        attempt = task.attempts + 1
        when = next_attempt(self.run.settings.retry, error, attempt, utcnow(), self._rand.random())
        if when is None:
            log.info("giving up on %s after %d attempts: %s", task.did, attempt, error)
            slot.failed += 1
            final = TerminalError(error.message, code=error.code)
            final.stage = error.stage
            self.run.fail_repo(task.did, final)
            return
        self.run.stats.repos_retried += 1
        self.run.store.retry_later(task.did, attempt, when, error_summary(error))
