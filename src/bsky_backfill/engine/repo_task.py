"""The work on one repo: fetch, extract, hand to the sink; or retry, or dead-letter.

Where it sits: the scheduler (scheduler.py) claims a repo for a host and runs
`RepoWorker.process` in that host's slot; what comes of the repo goes back to
the run through `RepoOutcomes` (manager.py implements it). The repo ends in
exactly one of:
  - added to the sink's open batch (done at the next commit);
  - back to pending with a retry time (a transient error, or any exception we
    did not map: a bug is not the repo's fault), unless both of its budgets
    (tries and time, xrpc/retry.py) are spent;
  - back to pending without spending an attempt, due when its host's pause
    ends (the host's circuit breaker is open: xrpc/breaker.py);
  - dead-lettered whole (terminal error, a host given up for this run, or a
    transient one with its budgets spent).
A 429 is not an attempt either: the host is paused and the same repo waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import mmap
import os
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.decode_pool import Extractor
from bsky_backfill.engine.list_fetch import ListFetcher
from bsky_backfill.engine.part_pool import HelperPool
from bsky_backfill.engine.refresh import LandedIndex, NeedsWholeRepo, refresh_diff
from bsky_backfill.errors import RepoInvalid, TerminalError, TransientError
from bsky_backfill.models import DeadLetter, RepoExtract, utcnow
from bsky_backfill.records.stream import BigRepo, BuiltPart, PartPlan, extract_part, plan_parts
from bsky_backfill.repo.diff import merge_indexes, unpack_index
from bsky_backfill.repo.lazy import map_file
from bsky_backfill.sinks.parquet import CommitSummary, DatasetWriter, SinkConfig
from bsky_backfill.sinks.storage import DELETIONS, SUPERSEDED
from bsky_backfill.state.base import Account, Identity, RepoDone, RepoTask, StateStore
from bsky_backfill.xrpc.body import Body
from bsky_backfill.xrpc.breaker import Breaker, BreakerState, is_host_failure
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.retry import error_code, error_summary, next_attempt
from bsky_backfill.xrpc.slot import HostSlot, through_rate_limits

log = logging.getLogger("bsky_backfill.worker")


class RepoOutcomes(Protocol):
    """What the work on one repo needs of its run (manager.py `Backfill` implements
    it): where each outcome goes, and the little it reads."""

    @property
    def settings(self) -> RunSettings: ...

    @property
    def store(self) -> StateStore:
        """Cursors, key indexes, identities, and retry times are read and written here."""
        ...

    @property
    def file_metadata(self) -> tuple[tuple[str, str], ...]:
        """What every file of the run carries (big repos' own writers too)."""
        ...

    def land(
        self, extract: RepoExtract, done: RepoDone, cursors: list[tuple[str, str | None]]
    ) -> bool:
        """A finished repo into the open batch, counted (done at the next commit).
        False when the dataset writer failed: the run is stopping."""
        ...

    def land_partial(self, extract: RepoExtract, cursors: list[tuple[str, str | None]]) -> bool:
        """List mode: a repo's finished pages into the open batch, counted."""
        ...

    def landed_alone(self, summary: CommitSummary) -> None:
        """A big repo committed by its own writer (its parts were counted)."""
        ...

    def count(self, rows: Mapping[str, int], dead_letters: Iterable[DeadLetter]) -> None:
        """Live counters for a big repo's part (records by collection, dead letters)."""
        ...

    def fail(self, did: str, error: TerminalError, account: Account | None) -> None:
        """Dead-letter the whole repo (lands with the next commit)."""
        ...

    def retry(
        self, did: str, attempts: int, when: dt.datetime, why: str, *, held: bool = False
    ) -> None:
        """Back to pending, due at `when`, with `attempts` spent; `held`: its host is
        paused (no attempt spent), else a retry."""
        ...

    def unexpected(self, error: BaseException, did: str, where: str) -> None:
        """An exception outside the error tree, logged (once with its traceback)."""
        ...

    def decoded(self, seconds: float) -> None:
        """A CAR took `seconds` to extract (the run's `on_decode` hooks)."""
        ...

    async def resolve(self, did: str) -> Identity:
        """The DID's identity as it is now (a refresh checks for moves and new keys)."""
        ...

    def wake(self) -> None:
        """A slot has room again: the scheduler looks at once."""
        ...


class RepoWorker:
    """Processes claimed repos; shared by all host slots of a run."""

    def __init__(
        self,
        outcomes: RepoOutcomes,
        client: XrpcClient,
        extractor: Extractor,
        helpers: HelperPool | None = None,
    ) -> None:
        self.outcomes = run = outcomes
        self.client = client
        self.extractor = extractor
        self.helpers = helpers
        self.filter = run.settings.record_filter
        self.landed = LandedIndex(Path(run.settings.out), self.filter.collections)
        self.lister: ListFetcher | None = None
        if run.settings.method == "list":
            self.lister = ListFetcher(
                client,
                self.filter,
                load_progress=run.store.get_cursor,
                load_landed=lambda did: self.landed.for_did(did).keys(),
                emit_partial=self._partial,
            )
        self._rand = random.Random()
        # Big repos' own writers: the run's file metadata, big-repo batching.
        self.big_sink = dataclasses.replace(_BIG_SINK, file_metadata=run.file_metadata)

    async def process(self, slot: HostSlot, task: RepoTask) -> None:
        run = self.outcomes
        try:
            cursors: list[tuple[str, str | None]] = []
            fetched_at = utcnow()  # the rows' `fetched_at` (sinks/provenance.py)
            car_bytes: int | None = None  # the whole repo's CAR, when fetched whole
            if task.refresh:
                refreshed = await self._refresh(slot, task)
                if refreshed is None:
                    return  # moved to another host: that host's slot takes it
                # The task as resolved again (its `_accounts` row).
                extract, task, car_bytes = refreshed
            elif self.lister is not None:
                extract, cursors = await self.lister.fetch(slot, task)
            else:
                body = await self._fetch_body(slot, task)
                if body.size and body.size >= run.settings.stream_bytes:
                    await self._land_big(slot, task, body, fetched_at)
                    return
                car_bytes = body.size
                data = await self._read(body)
                started = time.perf_counter()
                extract = await self.extractor.extract(
                    data,
                    task.did,
                    self.filter,
                    signing_key=task.signing_key,
                    verify=run.settings.verify,
                )
                del data
                run.decoded(time.perf_counter() - started)
            if extract.fetched_at is None:
                extract = dataclasses.replace(extract, fetched_at=fetched_at)
            done = RepoDone(
                did=task.did,
                rev=extract.rev,
                records=extract.row_count,
                keys=extract.keys,
                deletions=_deletion_counts(extract),
                superseded=_superseded_counts(extract),
                account=task.account,
                car_bytes=car_bytes,
            )
            extract.keys = None  # held by `done` alone until the commit
            if not run.land(extract, done, cursors):
                return
            slot.done += 1
            log.debug(
                "landed %s from %s: %d records at rev %s",
                task.did,
                slot.host,
                extract.row_count,
                extract.rev,
                extra={"host": slot.host, "did": task.did},
            )
        except TerminalError as e:
            slot.failed += 1
            log.info(
                "dead-lettered %s on %s: %s",
                task.did,
                slot.host,
                error_summary(e),
                extra={"host": slot.host, "did": task.did},
            )
            run.fail(task.did, e, task.account)
        except TransientError as e:
            self._retry_or_fail(slot, task, e)
        except Exception as e:  # a bug or an unmapped library error: retried, bounded
            run.unexpected(e, task.did, slot.host)
            self._retry_or_fail(slot, task, e)
        finally:
            slot.active -= 1
            run.wake()

    async def _land_big(
        self, slot: HostSlot, task: RepoTask, body: Body, fetched_at: dt.datetime
    ) -> None:
        """A big repo: cut into parts (records/stream.py), each extracted into a
        writer of its own, committed alone once every part is written (and
        verified), so memory stays bounded and the repo still lands whole or not
        at all. With helper processes the parts are built on every core."""
        run = self.outcomes
        size = body.size
        writer = DatasetWriter(run.settings.out, run.store, self.big_sink)
        got = _Parts(fetched_at=fetched_at)
        path: str | None = None
        try:
            # Read through a mapping of the spooled file, not into memory: each
            # part's pages are dropped from this process once it is written.
            path = await asyncio.to_thread(_on_disk, body, self.client)
            helpers = self.helpers
            async with contextlib.AsyncExitStack() as stack:
                if helpers is not None and not await stack.enter_async_context(
                    helpers.session(path)
                ):
                    helpers = None  # no machine slot free: every part here
                mapped = stack.enter_context(map_file(path))
                big = await self._plan(mapped, task)
                mapped.madvise(mmap.MADV_DONTNEED)  # indexing and hashing read every page
                if helpers is None:
                    await self._parts_here(big, mapped, writer, got)
                else:
                    await self._parts_shared(helpers, big, path, mapped, writer, got)
            # The parts' key indexes, merged: the next refresh diffs against it.
            indexes = [k for k in got.keys if k is not None]
            keys = merge_indexes(indexes) if len(indexes) == len(got.keys) else None
            done = RepoDone(
                did=task.did,
                rev=big.rev,
                records=got.rows,
                keys=keys,
                account=task.account,
                car_bytes=size,
            )
            writer.add(RepoExtract(did=task.did, rev=big.rev, tables={}, dead_letters=[]), done)
            summary = await self.extractor.call(writer.commit)
        except BaseException:
            with contextlib.suppress(Exception):
                writer.abort()
            raise
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            body.discard()
            if path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        run.landed_alone(summary)
        slot.done += 1
        log.info(
            "%s: big repo (%d MB) landed in %d parts (%d in helpers): %d rows",
            task.did,
            size >> 20,
            len(big.parts),
            len(big.parts) - got.here if helpers else 0,
            got.rows,
        )

    async def _plan(self, data: mmap.mmap, task: RepoTask) -> BigRepo:
        verify = self.outcomes.settings.verify
        return await self.extractor.call(
            functools.partial(plan_parts, signing_key=task.signing_key, verify=verify),
            data,
            task.did,
        )

    async def _parts_here(
        self, big: BigRepo, data: mmap.mmap, writer: DatasetWriter, got: _Parts
    ) -> None:
        """One process: extract and write each part on the extraction thread."""
        for plan in big.parts:
            await self._part_here(big, plan, data, writer, got)

    async def _part_here(
        self,
        big: BigRepo,
        plan: PartPlan,
        data: mmap.mmap,
        writer: DatasetWriter,
        got: _Parts,
    ) -> None:
        filt = self.filter

        def work() -> RepoExtract:
            part = extract_part(data, big.index, plan, filt)
            part = dataclasses.replace(part, fetched_at=got.fetched_at)
            writer.add_partial(part, [])
            # The pages this part read stay in the page cache, not in our RSS.
            data.madvise(mmap.MADV_DONTNEED)
            return part

        part = await self.extractor.call(work)
        got.rows += part.row_count
        got.keys.append(part.keys)
        # On the loop: the counters are not thread-safe.
        self.outcomes.count(_rows(part), part.dead_letters)

    async def _parts_shared(
        self,
        helpers: HelperPool,
        big: BigRepo,
        path: str,
        mapped: mmap.mmap,
        writer: DatasetWriter,
        got: _Parts,
    ) -> None:
        """Parts go to the helpers (extracted and encoded there, adopted here) while
        this process takes one itself whenever the helpers have enough queued: N
        processes' worth of cores on one repo. At most two parts per helper are
        in flight (bounded memory)."""
        filt, sink = self.filter, self.big_sink
        todo = deque(big.parts)
        flight: set[asyncio.Future[BuiltPart]] = set()
        try:
            while todo or flight:
                while todo and len(flight) < 2 * helpers.size:
                    job = helpers.extract(path, todo.popleft(), filt, sink, got.fetched_at)
                    flight.add(asyncio.ensure_future(job))
                if todo:  # the helpers are busy: one part here, from the other end
                    await self._part_here(big, todo.pop(), mapped, writer, got)
                    got.here += 1
                elif flight:
                    await asyncio.wait(flight, return_when=asyncio.FIRST_COMPLETED)
                for future in [f for f in flight if f.done()]:
                    flight.discard(future)
                    await self._adopt(big, future.result(), writer, got)
        finally:
            for future in flight:
                future.cancel()
            for future in flight:
                with contextlib.suppress(BaseException):
                    await future

    async def _adopt(
        self, big: BigRepo, part: BuiltPart, writer: DatasetWriter, got: _Parts
    ) -> None:
        """A part built by a helper: its files join the repo's writer."""
        did = big.parts[0].did
        await self.extractor.call(writer.add_encoded, did, part.files, part.dead_letters)
        rows = part.rows
        got.rows += sum(rows.values())
        got.keys.append(part.keys)
        self.outcomes.count(rows, part.dead_letters)

    def forget_progress(self, did: str) -> None:
        """Drop list-mode progress held in memory (its pages were refused)."""
        if self.lister is not None:
            self.lister.forget(did)

    def _partial(self, part: RepoExtract, key: str, value: str) -> None:
        """List mode: a big repo's finished pages go to the open batch with their cursor."""
        if not self.outcomes.land_partial(part, [(key, value)]):
            raise RepoInvalid("the dataset writer failed", code="InternalError")

    async def _refresh(
        self, slot: HostSlot, task: RepoTask
    ) -> tuple[RepoExtract, RepoTask, int | None] | None:
        """What changed since the last landed revision (engine/refresh.py), the task
        with the identity it has now, and the repo's CAR size if it was fetched whole
        (None: a diff since the landed revision).

        The DID is resolved again first: the account may have moved to another
        host or rotated its key since it landed (the commit must verify against
        the key it has now)."""
        identity = await self.outcomes.resolve(task.did)
        # A handle verified before stays so while the document still names it.
        verified = task.handle_verified and identity.handle == task.handle
        identity = dataclasses.replace(identity, handle_verified=verified)
        store = self.outcomes.store
        if (identity.pds, identity.host, identity.signing_key, identity.handle) != (
            task.pds,
            task.host,
            task.signing_key,
            task.handle,
        ):
            await asyncio.to_thread(store.update_identity, identity)
            if identity.host != task.host:
                # Moved: back to pending, due now, no attempt spent; its new host's
                # slot claims it (per-host limits hold for the new host too).
                log.info("%s moved from %s to %s", task.did, task.host, identity.host)
                store.retry_later(task.did, task.attempts, utcnow(), f"moved to {identity.host}")
                return None
        task = dataclasses.replace(
            task,
            pds=identity.pds,
            signing_key=identity.signing_key,
            handle=identity.handle,
            handle_verified=verified,
        )
        blob = await asyncio.to_thread(store.repo_keys, task.did)
        index: dict[str, bytes] | None = None
        unlanded: dict[str, str] = {}
        if blob is not None:  # no rev (a v2 commit): the whole repo, against the index
            index, unlanded = unpack_index(blob)
        landed: dict[str, str] | None = None
        judged: dict[tuple[str, str], str] = {}
        if index is None and "://" in self.outcomes.settings.out:
            # The fallback reads the local dataset; a remote one is not scanned.
            raise RepoInvalid(
                "this repo has no key index (landed with --method list, or before indexes) "
                "and a remote --out is not scanned: backfill it again",
                code="RefreshNeedsIndex",
                stage="fetch",
            )
        if index is None:
            landed = await asyncio.to_thread(self.landed.for_did, task.did)
            judged = await asyncio.to_thread(self.landed.judged_for_did, task.did)
        call = functools.partial(
            refresh_diff,
            index=index,
            unlanded=unlanded,
            landed=landed,
            judged=judged,
            signing_key=task.signing_key,
            verify=self.outcomes.settings.verify,
        )
        try:
            since = task.since if index is not None else None
            return await self._refresh_body(slot, task, since, call)
        except NeedsWholeRepo:
            return await self._refresh_body(slot, task, None, call)

    async def _refresh_body(
        self,
        slot: HostSlot,
        task: RepoTask,
        since: str | None,
        call: Callable[..., RepoExtract],
    ) -> tuple[RepoExtract, RepoTask, int | None]:
        """Fetch a refresh's CAR (a diff since `since`, or the whole repo) and apply
        `call` to it: in memory, or over `--stream-size` never read into memory
        but mapped from its spooled file, each block decoded (and hash-checked)
        only when reached. Returns the extract, `task`, and the CAR's size if it
        is the whole repo."""
        body = await self._fetch_body(slot, task, since)
        whole = body.size if since is None else None
        if not (body.size and body.size >= self.outcomes.settings.stream_bytes):
            data = await self._read(body)
            return await self.extractor.call(call, data, task.did, self.filter), task, whole
        path = await asyncio.to_thread(_on_disk, body, self.client)
        try:
            with map_file(path) as mapped:
                lazy = functools.partial(call, lazy=True)
                extract = await self.extractor.call(lazy, mapped, task.did, self.filter)
                return extract, task, whole
        finally:
            body.discard()
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _fetch_body(self, slot: HostSlot, task: RepoTask, since: str | None = None) -> Body:
        return await through_rate_limits(
            lambda: self.client.get_repo(task.pds, task.did, slot, since=since)
        )

    @staticmethod
    async def _read(body: Body) -> bytes:
        if body.path is None:
            return body.read()
        return await asyncio.to_thread(body.read)  # spooled: read back off the loop

    def _retry_or_fail(self, slot: HostSlot, task: RepoTask, error: Exception) -> None:
        """A retryable failure (transient, or unknown): back to pending with a retry
        time, or, both budgets spent, dead-lettered. A failure of a paused host is no
        attempt: the repo waits for the host's pause to end."""
        run = self.outcomes
        breaker = self._breaker(slot)
        now = utcnow()
        if breaker.holds(error):
            # Not an attempt and no failure time: the host is down, not the repo.
            resume = max(now, breaker.resume_time())
            run.retry(task.did, task.attempts, resume, error_summary(error), held=True)
            return
        if breaker.state is BreakerState.GIVEN_UP and is_host_failure(error):
            slot.failed += 1
            run.fail(task.did, _final(error, f"{breaker.host}: {breaker.reason}"), task.account)
            return
        attempt = task.attempts + 1
        since = task.failing_since or now
        rand = self._rand.random()
        when = next_attempt(run.settings.retry, error, attempt, now, rand, since)
        if when is None:
            log.info(
                "giving up on %s after %d attempts over %s: %s",
                task.did,
                attempt,
                now - since,
                error_summary(error),
                extra={"host": slot.host, "did": task.did},
            )
            slot.failed += 1
            run.fail(task.did, _final(error), task.account)
            return
        run.retry(task.did, attempt, when, error_summary(error))

    def _breaker(self, slot: HostSlot) -> Breaker:
        return self.client.breakers.get(slot.host)


def _rows(extract: RepoExtract) -> dict[str, int]:
    """Rows per collection of an extract (for the live counters)."""
    return {c: t.num_rows for c, t in extract.tables.items()}


def _deletion_counts(extract: RepoExtract) -> tuple[tuple[str, str, int], ...]:
    """(collection, reason, rows) of a refresh's `_deletions` rows (for `status`)."""
    table = extract.tables.get(DELETIONS)
    if table is None:
        return ()
    pairs = Counter(zip(table["collection"].to_pylist(), table["reason"].to_pylist(), strict=True))
    return tuple((c, r, n) for (c, r), n in sorted(pairs.items()))


def _superseded_counts(extract: RepoExtract) -> tuple[tuple[str, str, int], ...]:
    """(stage, code, n) of the record dead letters a refresh supersedes (for `status`)."""
    table = extract.tables.get(SUPERSEDED)
    if table is None:
        return ()
    pairs = Counter(zip(table["stage"].to_pylist(), table["error"].to_pylist(), strict=True))
    return tuple((s, c, n) for (s, c), n in sorted(pairs.items()))


def _final(error: Exception, why: str = "") -> TerminalError:
    """The dead letter's error for a retryable failure whose budget is spent: its own
    code and stage (a bug: `InternalError`, stage `internal`)."""
    message = (
        error.message if isinstance(error, TransientError) else f"{type(error).__name__}: {error}"
    )
    final = TerminalError(f"{why}: {message}" if why else message, code=error_code(error))
    final.stage = error.stage if isinstance(error, TransientError) else "internal"
    return final


# A big repo's own writer: committed once, after its last part; smaller row
# groups, since rows wait in memory until a group is full.
_BIG_SINK = SinkConfig(commit_rows=1 << 62, commit_seconds=float("inf"), row_group_rows=32_768)


@dataclass(slots=True)
class _Parts:
    """What a big repo's written parts add up to."""

    rows: int = 0
    keys: list[bytes | None] = field(default_factory=list)
    """Each part's key index (repo.diff.pack_index)."""
    here: int = 0
    """Parts extracted in this process (the others in helpers)."""
    fetched_at: dt.datetime | None = None
    """When the repo was fetched: every part's rows carry it."""


def _on_disk(body: Body, client: XrpcClient) -> str:
    """The body's spooled file (written out if the body was in memory, in the run's
    spool directory), to be mapped here and read by helper processes; the caller
    removes it."""
    if body.path is not None:
        path, body.path = body.path, None
        return path
    with client.spool_file() as fh:
        fh.write(body.read())
    body.discard()
    return fh.name
