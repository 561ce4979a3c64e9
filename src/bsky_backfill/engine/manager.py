"""The run: sources -> resolve -> per-host scheduling -> fetch/extract -> commit.

Where it sits: the top of the engine. `Backfill.run()` wires the layers:

    DidSource ──enqueue──▶ StateStore ◀──claim per host── Scheduler
                               ▲                              │
          resolve (identity/) ─┘                     HostSlot workers (worker.py)
                                                              │
                          DatasetWriter.commit ◀── add ───────┘
                  (files + repo states in one transaction)

Three concurrent loops share one asyncio event loop: the source streams DIDs
into the store; the resolver gives unresolved repos an identity; the
scheduler claims due repos per host while that host's slot has room, so a
slow or throttled host only ever holds its own capacity. A periodic
committer makes the open batch durable every few seconds. Every operation on
the dataset writer (adds, commits, recovery) runs on the writer's own thread,
in order (engine/landing.py): the loop never waits for encoding or fsyncs.

Long runs: a run holds its `--out` (state/runlock.py) and refuses a dataset
whose state is gone. Resolution and fetching share one durable retry policy
(xrpc/retry.py: retry times and failure times in the store), and every host
(PDS, PLC directory, relay, did:web site) has a circuit breaker
(xrpc/breaker.py): the scheduler and the resolver hand out no work for a
paused host but its one probe, and its repos wait without spending attempts.
`--retry-failed` reopens failed repos first (engine/retry_failed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import cast

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.cpu import Extractor
from bsky_backfill.engine.enumerate import (
    ListReposSource,
    Page,
    PlcExportSource,
    RelaySource,
    Source,
    run_source,
)
from bsky_backfill.engine.helpers import HelperPool
from bsky_backfill.engine.landing import SinkLane
from bsky_backfill.engine.retry_failed import reopen_failed
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.engine.stats import RunStats
from bsky_backfill.engine.worker import RepoWorker
from bsky_backfill.engine.workers import Role, join_followers, spawn_followers, stop_followers
from bsky_backfill.errors import (
    CommitRefused,
    HostUnreachable,
    TerminalError,
    TransientError,
    UsageError,
)
from bsky_backfill.identity.dns import TxtLookup, parse_server, system_nameserver, udp_txt_lookup
from bsky_backfill.identity.handle import HandleResolver, is_handle
from bsky_backfill.identity.resolver import DidResolver, host_key
from bsky_backfill.models import DeadLetter, RepoExtract, utcnow
from bsky_backfill.records.collections import collection_warnings, empty_collection_lines
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.sinks.parquet import CommitSummary, DatasetWriter, DiscardedBatch, SinkConfig
from bsky_backfill.sinks.provenance import file_metadata
from bsky_backfill.state.base import (
    Account,
    HostPause,
    Identity,
    RepoDone,
    RepoFailed,
    RepoState,
    StateStore,
    StatusReport,
)
from bsky_backfill.state.open import open_store, store_exists
from bsky_backfill.state.runlock import RunLock, check_state_present
from bsky_backfill.xrpc.breaker import Breaker, BreakerBoard, BreakerState, is_host_failure
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.retry import error_summary, next_attempt
from bsky_backfill.xrpc.shared import SharedHostBudget
from bsky_backfill.xrpc.slot import HostSlot
from bsky_backfill.xrpc.spool import SpoolDir, spool_root
from bsky_backfill.xrpc.ssrf import host_to_base_url

log = logging.getLogger("bsky_backfill")

INTAKE = "intake"
FOLLOWER_TRAFFIC = "follower_traffic:"
"""Meta key prefix (+ process index) of a --workers follower's requests and bytes."""
"""Meta key: "running" while the leader reads the source and resolves, then "done"."""


@dataclass
class RunSummary:
    """What a finished (or stopped) run reports."""

    repos_total: int
    repos_done: int
    repos_failed: int
    repos_pending: int
    records: dict[str, int]
    dead_letters: dict[str, int]
    seconds: float
    requests: int
    bytes: int
    stopped: bool
    landed_this_run: int = 0
    """Repos that landed during this run (done)."""
    failed_this_run: dict[str, int] = field(default_factory=dict)
    """Repos dead-lettered whole during this run, by code."""
    empty_collections: list[str] = field(default_factory=list)
    """Lines naming the wanted collections that hold no record (records/collections.py)."""
    changes_this_run: tuple[int, int, int] | None = None
    """A refresh: records (new, updated, deleted) during this run."""
    records_this_run: dict[str, int] = field(default_factory=dict)
    """Records landed during this run, by collection (`records` is the whole dataset)."""

    @property
    def nothing_landed(self) -> bool:
        """Repos were attempted and none landed (exit status 3)."""
        return not self.stopped and self.landed_this_run == 0 and bool(self.failed_this_run)

    @property
    def records_total(self) -> int:
        return sum(self.records.values())

    @property
    def records_landed(self) -> int:
        """Records landed during this run (every collection)."""
        return sum(self.records_this_run.values())

    @property
    def records_per_second(self) -> float:
        """This run's records over this run's time (a resume is not credited the dataset)."""
        return self.records_landed / self.seconds if self.seconds > 0 else 0.0


class Backfill:
    """One backfill run over a DID source, resumable from its state store."""

    def __init__(
        self, settings: RunSettings, source: DidSource | None, *, role: Role | None = None
    ) -> None:
        self.settings = settings
        self.source = source
        self.role = role or Role(0, settings.workers)
        self._followers: list[BaseProcess] = []
        self._parent_pid = os.getppid()
        self.stats = RunStats()
        self.slots: dict[str, HostSlot] = {}
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._source_done = False
        self._resolver_done = False
        self._working: set[asyncio.Task[None]] = set()
        # DIDs dead-lettered before they were claimed (resolution failures): still
        # pending in the store until the next commit, so they must not be resolved again.
        self._failed_uncommitted: set[str] = set()
        # The writer's thread (engine/landing.py), and what only that thread touches:
        # the DIDs dead-lettered into the open batch since its last commit.
        self.lane = SinkLane()
        self._failed_in_batch: list[str] = []
        self._commit_queued = False
        # Rows handed to the writer's thread since the last commit was submitted: the
        # writer's own batch lags behind what is queued, so the row budget is kept here.
        self._rows_since_commit = 0
        self._fatal: Exception | None = None
        # List-mode repos whose committed-to-be pages were thrown away with a refused
        # batch: their fetch must start again from the store's cursor.
        self._poisoned: set[str] = set()
        self._rand = random.Random()
        # Every host's circuit breaker (the client consults them on each request).
        self.breakers = BreakerBoard(settings.breaker_policy)
        self.breakers.listeners.append(self._on_breaker)
        # Pause changes not yet in the store (for `status`), and hosts recorded there.
        self._pause_changes: dict[str, HostPause] = {}
        self._pauses_recorded: set[str] = set()
        # Unexpected errors already logged with their traceback (one per place).
        self._bugs_seen: set[tuple[str, str]] = set()
        # Every file this run writes says which version and filters made it.
        self.file_metadata = file_metadata(
            sorted(settings.collections), settings.since, settings.until, settings.method
        )
        self._lock: RunLock | None = None
        self._baseline: tuple[int, dict[str, int]] = (0, {})
        self._rows_before = (0, 0, 0)  # rows written, deleted, updated (the store's)
        """(done, failed by code) in the store when the work started."""
        self._records_before: dict[str, int] = {}
        """Records per collection in the store when the work started."""
        self.on_tick: list[Callable[[Backfill], None]] = []
        self.on_commit: list[Callable[[CommitSummary], None]] = []
        self.on_decode: list[Callable[[float], None]] = []
        self.sink_step_hook: Callable[[str], None] | None = None
        """For tests: called at each commit protocol step (sinks/parquet.py), on the
        thread that runs the step."""

    # -- control ----------------------------------------------------------------------
    def request_stop(self) -> None:
        """Graceful stop: claim nothing more, commit what is finished, return."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the run ----------------------------------------------------------------------
    async def run(self) -> RunSummary:
        settings = self.settings
        if self.role.leader:
            self._guard_dataset()
        try:
            store = open_store(settings.queue, settings.state_path)
        except BaseException:
            self._release_lock()
            raise
        try:
            if self.role.leader:
                # A typo in --collections lands nothing of it: say so before any work.
                for line in collection_warnings(settings.collections):
                    log.warning("%s", line)
                self._check_settings(store)
                settings = self.settings  # a refresh may take the dataset's filters
                recovered = store.recover()
                if recovered:
                    log.info("recovered %d repos left in progress by an earlier run", recovered)
                store.set_meta(INTAKE, "running")
                if settings.refresh:
                    marked = store.mark_refresh()
                    log.info("refresh: %d finished repos will be checked for changes", marked)
            sink = DatasetWriter(
                settings.out,
                store,
                SinkConfig(
                    commit_rows=settings.commit_rows,
                    commit_seconds=settings.commit_seconds,
                    file_metadata=self.file_metadata,
                ),
                step_hook=self.sink_step_hook,
            )
            # Safe in every process at any time: only dead writers' leftovers go.
            self._recover_sink(sink)
            self.store, self.sink = store, sink
            if self.role.leader and settings.retry_failed is not None:
                reopen_failed(store, sink, settings.retry_failed)
            # What this run lands or fails is the store's change from here (every
            # process of the run, `--workers` followers included).
            before = store.status()
            self._baseline = (before.done, dict(before.failed_by_code))
            self._rows_before = _row_totals(before)
            self._records_before = dict(before.records_by_collection)
            extractor = Extractor()
            # Big repos' parts spread over the cores the user gave: this process and
            # N-1 helper processes (engine/helpers.py).
            helpers = HelperPool(settings.workers - 1) if settings.workers > 1 else None
            spool = SpoolDir.open(spool_root(settings.out, settings.state_path.parent))
            try:
                for host in self._operator_hosts():
                    self.breakers.mark_operator(host)
                async with XrpcClient(
                    settings.http,
                    allow_private=settings.allow_private_hosts,
                    breakers=self.breakers,
                    trusted=operator_hosts(settings),
                    spool_file=spool.new_file,
                ) as client:
                    client.listeners.append(self.stats.on_response)
                    self.client = client
                    self.resolver = DidResolver(
                        client,
                        settings.plc_url,
                        allow_private=settings.allow_private_hosts,
                        concurrency=settings.resolve_concurrency,
                    )
                    self.handles = HandleResolver(
                        client,
                        self.resolver.document_handle,
                        txt=txt_lookup(settings),
                        allow_private=settings.allow_private_hosts,
                    )
                    self.worker = RepoWorker(self, client, extractor, helpers)
                    if self.role.leader and self.role.count > 1:
                        for index in range(1, self.role.count):  # this run's figures only
                            store.set_meta(f"{FOLLOWER_TRAFFIC}{index}", "")
                        self._followers = spawn_followers(settings, self.role.count)
                    try:
                        await self._run_loops()
                    finally:
                        if self._followers:
                            if self.stopping:
                                stop_followers(self._followers)
                            await join_followers(self._followers)
                            # A follower killed between its store commit and its
                            # renames left files only a recovery moves into place.
                            await self.lane.drain()
                            self._recover_sink(sink)
            finally:
                await self.lane.drain()  # the writer is idle from here: direct calls
                self.lane.close()
                extractor.close()
                spool.close()
                if helpers is not None:
                    helpers.close()
                if self._fatal is None:
                    self._after_commit(self._commit_on_lane(sink))
                else:
                    with contextlib.suppress(Exception):
                        sink.abort()  # its repos are still in progress: the next run redoes them
                try:
                    sink.close()
                except RuntimeError as e:  # a batch left open by a fatal error: recovery's
                    log.debug("closing the dataset writer: %s", e)
            if self._fatal is not None:
                raise self._fatal
            self._clear_pauses()
            if not self.role.leader:
                # The leader's summary counts every process's traffic (--workers).
                store.set_meta(
                    f"{FOLLOWER_TRAFFIC}{self.role.index}",
                    json.dumps(
                        {"requests": sum(self.stats.requests.values()), "bytes": self.stats.bytes}
                    ),
                )
            return self._summary(store)
        finally:
            store.close()
            self._release_lock()

    def _guard_dataset(self) -> None:
        """Before anything is written: refuse an `--out` holding data but no state, and
        hold the `--out` for this run (SQLite queue: one run per dataset)."""
        settings = self.settings
        if settings.remote_out:
            return
        check_state_present(settings.out, store_exists(settings.queue, settings.state_path))
        if settings.queue is None or settings.queue.startswith("sqlite:///"):
            self._lock = RunLock.acquire(settings.out)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _operator_hosts(self) -> list[str]:
        """The endpoints the operator named: a shorter budget while they never answered."""
        return [host_key(url) for url in operator_hosts(self.settings)]

    def _check_settings(self, store: StateStore) -> None:
        """A dataset holds one filter; resuming with another would mix two datasets."""
        settings = self.settings
        fingerprint = json.dumps(
            {
                "collections": sorted(settings.collections),
                "since": settings.since.isoformat() if settings.since else None,
                "until": settings.until.isoformat() if settings.until else None,
                "method": settings.method,
            },
            sort_keys=True,
        )
        existing = store.get_meta("filter")
        if existing is None:
            store.set_meta("filter", fingerprint)
        elif existing != fingerprint:
            if settings.refresh and not settings.filters_given:
                self.settings = _with_filters(settings, existing)
                sys.stderr.write(f"refresh: using the dataset's own filters: {_shown(existing)}\n")
                return
            choice = (
                "run --refresh without --collections/--since/--until to use the dataset's own"
                if settings.refresh
                else "repeat the dataset's filters exactly"
            )
            raise UsageError(
                f"--out {settings.out} holds a backfill with other filters "
                f"({_shown(existing)}; this run asks for {_shown(fingerprint)}): "
                f"{choice}, or use another --out for the new filters"
            )

    async def _run_loops(self) -> None:
        loops = [asyncio.create_task(self._commit_loop(), name="commit")]
        if self.role.leader:
            loops.append(asyncio.create_task(self._source_loop(), name="source"))
            loops.append(asyncio.create_task(self._resolve_loop(), name="resolve"))
        else:
            loops.append(asyncio.create_task(self._watch_intake(), name="intake"))
        try:
            await self._schedule_loop()
        finally:
            for task in loops:
                task.cancel()
            for task in list(self._working):
                task.cancel()
            await asyncio.gather(*loops, *self._working, return_exceptions=True)
            for task in loops:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    async def _wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    # -- stage 1: the source ------------------------------------------------------------
    async def _source_loop(self) -> None:
        if self.source is not None:
            for chunk in self.source.chunks():
                if self.stopping:
                    return
                self.store.enqueue(chunk)
                self._wake.set()
                await asyncio.sleep(0)
        await self._enumerate()
        self._source_done = True
        self._wake.set()

    async def _enumerate(self) -> None:
        """--all-from-plc, --from-relay, --pds: page through listings into the store."""
        s = self.settings
        private = s.allow_private_hosts
        sources: list[Source] = []
        if s.all_from_plc:
            sources.append(PlcExportSource(self.client, s.plc_url, allow_private=private))
        if s.from_relay:
            sources.append(
                RelaySource(
                    self.client, s.from_relay, resolve=self.resolver.resolve,
                    allow_private=private, slot_for=self.slot,
                )
            )  # fmt: skip
        for url in s.pds:
            sources.append(
                ListReposSource(
                    self.client, url, resolve=self.resolver.resolve, allow_private=private,
                    slot_for=self.slot,
                )
            )  # fmt: skip
        if not sources:
            return
        results = await asyncio.gather(
            *(run_source(src, self.store, self._on_page) for src in sources)
        )
        for result in results:
            log.info("enumeration finished: %s", result)

    async def _on_page(self, page: Page) -> None:
        """A listing page is stored: dead-letter what it refused (durably, before its
        cursor moves on) and let the scheduler see the new repos."""
        for rejected in page.rejected:
            self._fail(rejected.did, rejected.stage, rejected.code, rejected.message)
        if page.rejected:
            await self._commit_now()
        self._wake.set()

    # -- stage 2: identity ---------------------------------------------------------------
    async def _resolve_loop(self) -> None:
        in_flight: set[str] = set()
        resolved: list[Identity] = []
        tasks: set[asyncio.Task[None]] = set()
        limit = self.settings.resolve_concurrency * 4
        plc = self.breakers.get(host_key(self.settings.plc_url))

        async def resolve_one(did: str) -> None:
            try:
                if is_handle(did):
                    await resolve_handle(did)
                    return
                identity = await self.resolver.resolve(did)
                await self.client.guard.check(identity.pds)
                resolved.append(identity)
                log.debug("resolved %s: PDS %s", did, identity.pds, extra={"did": did})
            except HostUnreachable as e:  # the directory (or did:web host) was given up
                self._fail(did, "resolve", "ResolveFailed", e.message)
            except TerminalError as e:
                self._fail(did, e.stage, e.code, e.message)
            except Exception as e:  # transient, or unexpected: a durable retry, never a spin
                try:
                    self._resolve_failed(did, e)
                except Exception as fatal:  # the store itself failed: the run cannot go on
                    self._set_fatal("resolve", fatal)
            finally:
                in_flight.discard(did)
                self._wake.set()

        async def resolve_handle(handle: str) -> None:
            """An account listed by handle: its verified DID takes its place in the
            queue (added before the handle goes, so a crash between keeps both and
            the next run resolves the handle again: the store ignores the repeat)."""
            identity = await self.resolver.resolve(await self.handles.resolve(handle))
            if identity.handle == handle:  # checked both ways just now: `_accounts` says so
                identity = dataclasses.replace(identity, handle_verified=True)
            await self.client.guard.check(identity.pds)
            self.store.enqueue_resolved([identity])
            self.store.withdraw([handle])
            log.info("handle %s is %s", handle, identity.did)

        while not self.stopping:
            if resolved:
                batch, resolved[:] = list(resolved), []
                self.store.set_identities(batch)
                self._wake.set()
            room = limit - len(in_flight)
            # A paused PLC directory gets no lookups but its one probe (its DIDs wait
            # in the store, due when the pause ends; did:web ones wait with them).
            allowed = plc.claimable(len(in_flight))
            if allowed is not None:
                room = min(room, allowed)
            exclude = [*in_flight, *self._failed_uncommitted]
            batch_dids = self.store.unresolved(room, exclude=exclude) if room > 0 else []
            for did in batch_dids:
                in_flight.add(did)
                task = asyncio.create_task(resolve_one(did))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if not batch_dids and not in_flight and self._source_done:
                due = self.store.next_unresolved()
                if due is None:
                    break
                # DIDs backing off (or waiting for the directory): sleep until due.
                wait = (due - utcnow()).total_seconds()
                if plc.state is BreakerState.OPEN:
                    wait = max(wait, plc.resume_at - time.time())
                await asyncio.sleep(min(1.0, max(0.05, wait)))
                continue
            await asyncio.sleep(0.05 if in_flight else 0.2)
        if resolved:
            self.store.set_identities(resolved)
        if self._failed_uncommitted:
            await self._commit_now()  # resolution failures are durable before followers may finish
        self._resolver_done = True
        if not self.stopping:
            self.store.set_meta(INTAKE, "done")
        self._wake.set()

    def _resolve_failed(self, did: str, error: Exception) -> None:
        """A DID's resolution failed transiently (or unexpectedly): the same durable
        retry as a fetch. Its directory's pause costs it no attempt; both budgets
        spent, it is dead-lettered `ResolveFailed`."""
        if not isinstance(error, TransientError):
            self.log_unexpected(error, did, "resolve")
        breaker = self._identity_breaker(did)
        attempts, since = self.store.failure_of(did)
        now = utcnow()
        summary = error_summary(error)
        if breaker is not None and breaker.holds(error):
            self.store.retry_later(did, attempts, max(now, breaker.resume_time()), summary)
            return
        if (
            breaker is not None
            and breaker.state is BreakerState.GIVEN_UP
            and is_host_failure(error)
        ):
            self._fail(
                did, "resolve", "ResolveFailed", f"{breaker.host}: {breaker.reason}: {summary}"
            )
            return
        policy = self.settings.retry
        when = next_attempt(policy, error, attempts + 1, now, self._rand.random(), since or now)
        if when is None:
            log.info("giving up resolving %s after %d attempts: %s", did, attempts + 1, summary)
            self._fail(did, "resolve", "ResolveFailed", summary)
            return
        self.store.retry_later(did, attempts + 1, when, summary)

    def _identity_breaker(self, did: str) -> Breaker | None:
        """The breaker of the host a DID's document comes from (PLC, or its did:web host)."""
        if did.startswith("did:plc:"):
            return self.breakers.get(host_key(self.settings.plc_url))
        try:
            return self.breakers.get(host_key(self.resolver.document_url(did)))
        except Exception:  # not a did:web we could ask: no host to hold
            return None

    def log_unexpected(self, error: BaseException, did: str, where: str) -> None:
        """An exception outside the error tree (a bug, an unmapped library error): its
        traceback is logged once per place it comes from; then one line each time.
        The caller retries it like a transient error."""
        frames = traceback.extract_tb(error.__traceback__)
        place = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        key = (type(error).__name__, place)
        extra = {"did": did, "host": where}
        if key in self._bugs_seen:
            log.warning(
                "unexpected %s on %s (%s) again: %s; retrying",
                type(error).__name__,
                did,
                where,
                error,
                extra=extra,
            )
            return
        self._bugs_seen.add(key)
        log.error(
            "unexpected error on %s (%s); retried like a transient error "
            "(this traceback is logged once)",
            did,
            where,
            exc_info=error,
            extra=extra,
        )

    async def _watch_intake(self) -> None:
        """Followers: the leader's source and resolver are done when the store says so."""
        while self.store.get_meta(INTAKE) != "done":
            await asyncio.sleep(0.5)
        self._source_done = self._resolver_done = True
        self._wake.set()

    # -- stage 3: per-host scheduling -------------------------------------------------------
    def slot(self, host: str) -> HostSlot:
        slot = self.slots.get(host)
        if slot is None:
            shared = None
            take = getattr(self.store, "take_host_tokens", None)
            if self.settings.global_host_rate and take is not None:
                shared = SharedHostBudget(host, self.settings.global_host_rate, take)
            slot = self.slots[host] = HostSlot(
                host, self.settings.rate_limit, self.settings.host_concurrency, shared
            )
            slot.breaker = self.breakers.get(host)
        return slot

    def _on_breaker(self, breaker: Breaker) -> None:
        """A host was paused, resumed or given up: note it for `status` (written by the
        scheduler) and make it visible in the live view."""
        until = breaker.resume_time() if breaker.state is BreakerState.OPEN else None
        self._pause_changes[breaker.host] = HostPause(breaker.host, until, breaker.reason)
        if breaker.paused():
            self.slot(breaker.host)  # the PLC directory or a relay has no slot otherwise

    def _flush_pauses(self) -> None:
        if not self._pause_changes:
            return
        changes = list(self._pause_changes.values())
        self._pause_changes.clear()
        self.store.set_host_pauses(changes)
        for pause in changes:
            if pause.reason:
                self._pauses_recorded.add(pause.host)
            else:
                self._pauses_recorded.discard(pause.host)

    def _clear_pauses(self) -> None:
        """At the end of a run its pauses are over (the next run learns afresh)."""
        self._pause_changes.clear()
        if self._pauses_recorded:
            with contextlib.suppress(Exception):
                self.store.set_host_pauses(
                    [HostPause(h, None, "") for h in sorted(self._pauses_recorded)]
                )
            self._pauses_recorded.clear()

    async def _schedule_loop(self) -> None:
        while not self.stopping:
            if self.lane.full:  # the writer is behind: fetch no more until it catches up
                await self.lane.room()
                continue
            now = utcnow()
            claimed = 0
            held: list[Breaker] = []
            active_hosts = sum(1 for s in self.slots.values() if s.active)
            self._flush_pauses()
            for host in self.store.pending_hosts(now):
                if not self.role.owns(host):
                    continue
                slot = self.slot(host)
                if not slot.active and active_hosts >= self.settings.max_active_hosts:
                    continue
                room = slot.concurrency - slot.active
                # A paused host gets nothing but, once its pause is over, one probe.
                allowed = self.breakers.get(host).claimable(slot.active)
                if allowed is not None:
                    room = min(room, allowed)
                    if allowed == 0:
                        held.append(self.breakers.get(host))
                if room <= 0:
                    continue
                tasks = self.store.claim(host, room, now)
                if tasks and not slot.active:
                    active_hosts += 1
                for task in tasks:
                    slot.active += 1
                    claimed += 1
                    work = asyncio.create_task(self.worker.process(slot, task))
                    self._working.add(work)
                    work.add_done_callback(self._working.discard)
            for tick in self.on_tick:
                tick(self)
            if not claimed and not self._working and self._source_done and self._resolver_done:
                if self.sink.batch_repos or self.lane.backlog:
                    # Idle with an open batch: make it durable now rather than at the
                    # timer, so the store's view of what is left is exact.
                    await self._commit_now()
                    continue
                if self._followers and self.role.count > 1 and not self._followers_alive():
                    self._take_over()
                    continue
                due = self.store.next_due()
                if due is None:
                    if self._others_finished():
                        return
                    await self._wait(1.0)
                    continue
                wait = (due - utcnow()).total_seconds()
                if wait <= 0 and held:  # due, but their hosts are paused: until one resumes
                    wait = min(b.resume_at for b in held) - time.time()
                await self._wait(min(5.0, max(0.05, wait)))
                continue
            await self._wait(0.5)

    def _followers_alive(self) -> bool:
        return any(p.is_alive() for p in self._followers)

    def _take_over(self) -> None:
        """SQLite `--workers`: every follower has exited, so what is still in progress
        was orphaned by one that died; the leader takes it, and every host, over."""
        recovered = self.store.recover()
        sink = self.sink
        self._sink_call("recover", lambda: self._recover_sink(sink))
        codes = [p.exitcode for p in self._followers]
        if any(code != 0 for code in codes):
            log.warning(
                "worker processes ended with %s; took over their hosts and %d repos they left",
                codes,
                recovered,
            )
        self.role = Role(0, 1)

    def _others_finished(self) -> bool:
        """Nothing is pending. Is anything still held by another process? Its repos may
        come back (a retry) or be orphaned (a dead worker): then this process waits,
        and takes orphans over when it can tell their owner is gone."""
        if self.store.counts().get(RepoState.IN_PROGRESS, 0) == 0:
            return True
        reclaim = getattr(self.store, "reclaim_expired", None)
        if reclaim is not None:
            reclaim()  # PostgreSQL: expired leases of dead workers go back to pending
            return False
        if self.role.leader and self._followers and self.role.count > 1:
            if not self._followers_alive():
                self._take_over()
            return False
        # A follower waits while others work (what comes back may be its host's),
        # unless the leader that would take over orphans is itself gone.
        return not self.role.leader and os.getppid() != self._parent_pid

    def wake(self) -> None:
        self._wake.set()

    # -- results ------------------------------------------------------------------------
    def _put_back(self, discarded: DiscardedBatch, error: Exception) -> None:
        """A commit the store refused for certain (a lease lost to another worker, a
        writer whose liveness lapsed): nothing of the batch landed, and the writer
        deleted its files (`discard_batch`). Its repos go back to the queue; list-mode
        repos still being fetched restart from their committed cursor."""
        log.warning(
            "commit refused (%s); %d repos go back to the queue", error, len(discarded.dids)
        )
        now = utcnow()
        for did in (*discarded.done, *discarded.failed):
            if did in self._failed_uncommitted:
                self._failed_uncommitted.discard(did)  # never claimed: still pending
                continue
            self.store.retry_later(did, 1, now, f"CommitRefused: {error}")
        self._poisoned.update(discarded.partial)

    def _sink_call(self, what: str, call: Callable[[], object]) -> bool:
        """Submit a sink operation to the writer's thread (engine/landing.py); a failure
        there is fatal for the run (the batch can no longer be trusted): stop, and let
        `run()` raise it. False when the run already failed so."""
        if self._fatal is not None:
            return False

        def then(result: object) -> None:
            if isinstance(result, BaseException):
                self._set_fatal(what, result)

        self.lane.submit(call, then)
        return True

    def _set_fatal(self, what: str, error: BaseException) -> None:
        if self._fatal is not None:
            return
        if not isinstance(error, Exception):
            error = RuntimeError(f"{what}: {error!r}")
        log.error("the dataset writer failed (%s): %s; stopping", what, error)
        self._fatal = error
        self.request_stop()

    def _check_poisoned(self, did: str) -> None:
        if did in self._poisoned:
            self._poisoned.discard(did)
            self.worker.forget_progress(did)
            raise TransientError("earlier pages of this repo were refused", code="CommitRefused")

    def land(
        self, extract: RepoExtract, done: RepoDone, cursors: list[tuple[str, str | None]]
    ) -> bool:
        """A finished repo into the open batch (done at the next commit)."""
        self._check_poisoned(extract.did)
        self._rows_since_commit += sum(t.num_rows for t in extract.tables.values())
        return self._sink_call("add", lambda: self.sink.add(extract, done, cursors))

    def land_partial(self, extract: RepoExtract, cursors: list[tuple[str, str | None]]) -> bool:
        """Part of a repo still being fetched (list mode) into the open batch."""
        self._check_poisoned(extract.did)
        self._rows_since_commit += sum(t.num_rows for t in extract.tables.values())
        return self._sink_call("add_partial", lambda: self.sink.add_partial(extract, cursors))

    def _fail(
        self, did: str, stage: str, code: str, message: str, account: Account | None = None
    ) -> None:
        """Dead-letter a whole repo (lands with the next commit)."""
        if account is None and is_handle(did):  # an input handle that did not resolve
            account = Account(handle=did)
        failed = RepoFailed(did=did, code=code, message=message, stage=stage, account=account)
        letter = DeadLetter(did=did, uri=None, stage=stage, error=code, message=message)
        sink = self.sink

        def add_failed() -> None:  # on the writer's thread
            sink.add_failed(failed, letter)
            self._failed_in_batch.append(did)

        if not self._sink_call("add_failed", add_failed):
            return
        self._failed_uncommitted.add(did)
        self.stats.repos_failed += 1
        self.stats.failed_codes[code] += 1
        self.stats.dead_letters[code] += 1
        self._maybe_commit()

    def count_rows(self, extract: RepoExtract) -> None:
        """Live counters for rows handed to the sink (the dataset counts at commit)."""
        self.count({c: t.num_rows for c, t in extract.tables.items()}, extract.dead_letters)

    def count(self, rows: Mapping[str, int], dead_letters: Iterable[DeadLetter]) -> None:
        """`count_rows` for rows counted by collection (parts encoded elsewhere)."""
        for collection, n in rows.items():
            self.stats.records[collection] += n
        for letter in dead_letters:
            self.stats.dead_letters[letter.error] += 1

    def fail_repo(self, did: str, error: TerminalError, account: Account | None = None) -> None:
        self._fail(did, error.stage, error.code, error.message, account)

    def _maybe_commit(self) -> None:
        """Submit a commit when the open batch is due (at most one queued at a time)."""
        if self._fatal is not None:
            return
        # The row budget submits a commit after the adds that filled it (in order, so
        # batches keep their size however far the writer is behind); the writer's own
        # test (its time budget) only when no commit is queued already.
        full = self._rows_since_commit >= self.settings.commit_rows
        if not full and (self._commit_queued or not self.sink.should_commit()):
            return
        self._rows_since_commit = 0
        self._commit_queued = True
        sink = self.sink

        def then(result: _Committed | BaseException) -> None:
            self._commit_queued = False
            self._after_commit(result)

        self.lane.submit(lambda: self._commit_on_lane(sink), then)

    async def _commit_now(self) -> None:
        """Commit after everything submitted so far, and wait for it."""
        if self._fatal is not None:
            return
        sink = self.sink
        try:
            result: _Committed | BaseException = await self.lane.run(
                lambda: self._commit_on_lane(sink)
            )
        except Exception as e:
            result = e
        self._after_commit(result)

    def _recover_sink(self, sink: DatasetWriter) -> None:
        report = sink.recover()
        if report.missing:
            log.error(
                "%d committed files are gone from the dataset (removed by hand?): %s",
                len(report.missing),
                ", ".join(report.missing[:5]),
            )
        if report.renamed or report.deleted or report.dead_writers:
            log.info("dataset recovery: %s", report)

    def _commit_on_lane(self, sink: DatasetWriter) -> _Committed:
        """The commit itself, on the writer's thread (or on the loop once the writer's
        thread is idle for good): its outcome, for `_after_commit` on the loop."""
        failed, self._failed_in_batch = self._failed_in_batch, []
        try:
            return _Committed(failed, summary=sink.commit())
        except CommitRefused as e:  # LeaseLostError, BatchRefused: nothing recorded
            try:
                return _Committed(failed, refused=e, discarded=sink.discard_batch())
            except Exception as discard_error:
                return _Committed(failed, error=discard_error)
        except Exception as e:
            # Unknown outcome (the store may have committed): fatal, and the
            # next start's recovery asks the store which files count.
            return _Committed(failed, error=e)

    def _after_commit(self, result: _Committed | BaseException) -> None:
        """A commit's outcome, back on the loop: counters, hooks, or its repos put back."""
        if isinstance(result, BaseException):
            self._set_fatal("commit", result)
        elif result.error is not None:
            self._set_fatal("commit", result.error)
        elif result.refused is not None and result.discarded is not None:
            self._put_back(result.discarded, result.refused)
        elif result.summary is not None:
            self._failed_uncommitted.difference_update(result.failed)
            self.stats.commits += 1
            for hook in self.on_commit:
                hook(result.summary)

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._maybe_commit()

    def _follower_traffic(self, store: StateStore) -> dict[str, int]:
        """Requests and bytes the --workers followers of this run reported at their end."""
        total = {"requests": 0, "bytes": 0}
        if not self.role.leader:
            return total
        # As many as were started (the role shrinks to one once they are gone).
        for index in range(1, len(self._followers) + 1):
            try:
                figures = json.loads(store.get_meta(f"{FOLLOWER_TRAFFIC}{index}") or "{}")
            except ValueError:
                continue
            for key in total:
                value = figures.get(key) if isinstance(figures, dict) else None
                total[key] += value if isinstance(value, int) else 0
        return total

    def _summary(self, store: StateStore) -> RunSummary:
        counts = store.counts()
        status = store.status()
        followers = self._follower_traffic(store)
        return RunSummary(
            repos_total=sum(counts.values()),
            repos_done=counts.get(RepoState.DONE, 0),
            repos_failed=counts.get(RepoState.FAILED, 0),
            repos_pending=counts.get(RepoState.PENDING, 0) + counts.get(RepoState.IN_PROGRESS, 0),
            records=dict(status.records_by_collection),
            dead_letters=dict(status.dead_letters_by_code),
            seconds=self.stats.elapsed,
            requests=sum(self.stats.requests.values()) + followers["requests"],
            bytes=self.stats.bytes + followers["bytes"],
            stopped=self.stopping,
            landed_this_run=max(0, status.done - self._baseline[0]),
            changes_this_run=_changes(self._rows_before, _row_totals(status))
            if self.settings.refresh
            else None,
            failed_this_run=_grown(self._baseline[1], status.failed_by_code),
            empty_collections=empty_collection_lines(
                self.settings.collections,
                status.records_by_collection,
                counts.get(RepoState.DONE, 0),
                default=self.settings.collections == DEFAULT_COLLECTIONS,
            ),
            records_this_run=_grown(self._records_before, status.records_by_collection),
        )


def _row_totals(status: StatusReport) -> tuple[int, int, int]:
    """(rows written, deleted, updated) over every collection, from the store."""
    deleted = sum(status.deleted_by_collection.values())
    updated = sum(status.updated_by_collection.values())
    written = sum(status.records_by_collection.values()) + deleted + updated
    return written, deleted, updated


def _changes(before: tuple[int, int, int], after: tuple[int, int, int]) -> tuple[int, int, int]:
    """(new, updated, deleted) records between two `_row_totals`: an updated record
    writes a row too, so new = rows written - updated."""
    written, deleted, updated = (max(0, a - b) for a, b in zip(after, before, strict=True))
    return max(0, written - updated), updated, deleted


@dataclass(frozen=True, slots=True)
class _Committed:
    """What a commit on the writer's thread came to (see `Backfill._after_commit`)."""

    failed: list[str]
    """DIDs dead-lettered into the committed (or refused) batch."""
    summary: CommitSummary | None = None
    refused: Exception | None = None
    discarded: DiscardedBatch | None = None
    error: Exception | None = None


def _grown(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """What this run added per key (failed repos per code, records per collection)."""
    return {code: n - before.get(code, 0) for code, n in after.items() if n > before.get(code, 0)}


def txt_lookup(settings: RunSettings) -> TxtLookup | None:
    """Where handles' DNS records come from: the hook, --dns-server, or the system's."""
    if settings.handle_txt is not None:
        return cast(TxtLookup, settings.handle_txt)
    if settings.dns_server is not None:
        host, port = parse_server(settings.dns_server)
        return udp_txt_lookup(host, port)
    nameserver = system_nameserver()
    return udp_txt_lookup(nameserver) if nameserver else None


def operator_hosts(settings: RunSettings) -> list[str]:
    """The base URLs the operator named (`--plc-url`, `--from-relay`, `--pds`): trusted
    by the address guard (xrpc/ssrf.py), as the operator chose them."""
    private = settings.allow_private_hosts
    named = [settings.from_relay] if settings.from_relay else []
    named += settings.pds
    return [settings.plc_url, *(host_to_base_url(h.strip(), private) for h in named)]


__all__ = ["Backfill", "RunSummary"]


def _shown(fingerprint: str) -> str:
    """A filter fingerprint as the flags that make it (for messages)."""
    f = json.loads(fingerprint)
    parts = [f"--collections {','.join(f.get('collections') or []) or '(none)'}"]
    parts += [f"--{k} {f[k]}" for k in ("since", "until") if f.get(k)]
    parts.append(f"--method {f.get('method')}")
    return " ".join(parts)


def _with_filters(settings: RunSettings, fingerprint: str) -> RunSettings:
    """`settings` with the dataset's own filters (a refresh that named none)."""
    f = json.loads(fingerprint)

    def when(v: str | None) -> dt.datetime | None:
        return None if v is None else dt.datetime.fromisoformat(v)

    return settings.model_copy(
        update={
            "collections": frozenset(f.get("collections") or ()),
            "since": when(f.get("since")),
            "until": when(f.get("until")),
            "method": f.get("method", settings.method),
        }
    )
