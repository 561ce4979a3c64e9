"""The run: sources -> resolve -> per-host scheduling -> fetch/extract -> commit.

Where it sits: the top of the engine. `Backfill.run()` opens what a run holds
(its `--out`, the state store, the dataset writer, the HTTP client and the
resolvers), wires the stages, and reports a `RunSummary`:

    DidSource ──enqueue──▶ StateStore ◀──claim per host── Scheduler
     (source_loop.py)          ▲                          (scheduler.py)
                               │                              │
          resolve (resolve_loop.py)              HostSlot tasks (repo_task.py)
                                                              │
                Commits ──▶ DatasetWriter.commit ◀── land ────┘
              (commits.py)  (files + repo states in one transaction)

Three concurrent loops share one asyncio event loop (flow.py): the source
streams DIDs into the store; the resolver gives unresolved repos an identity;
the scheduler claims due repos per host while that host's slot has room, so a
slow or throttled host only ever holds its own capacity. A periodic committer
makes the open batch durable every few seconds. Every operation on the dataset
writer (adds, commits, recovery) runs on the writer's own thread, in order
(landing.py): the loop never waits for encoding or fsyncs. With `--workers N`
the leader also starts followers and takes over what dead ones left
(takeover.py).

The per-repo work (repo_task.py) sees the run only through `RepoOutcomes`, which
`Backfill` implements: where a repo's outcome goes, and what it may read.

Long runs: a run holds its `--out` (state/runlock.py) and refuses a dataset
whose state is gone. Resolution and fetching share one durable retry policy
(xrpc/retry.py: retry times and failure times in the store), and every host
(PDS, PLC directory, relay, did:web site) has a circuit breaker
(xrpc/breaker.py): the scheduler and the resolver hand out no work for a
paused host but its one probe, and its repos wait without spending attempts.
`--retry-failed` reopens failed repos first (retry_failed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.commits import Commits, recover_sink
from bsky_backfill.engine.decode_pool import Extractor
from bsky_backfill.engine.filters import check_filters
from bsky_backfill.engine.flow import Flow
from bsky_backfill.engine.landing import SinkLane
from bsky_backfill.engine.part_pool import HelperPool
from bsky_backfill.engine.processes import Role
from bsky_backfill.engine.repo_task import RepoWorker
from bsky_backfill.engine.resolve_loop import ResolveLoop
from bsky_backfill.engine.retry_failed import reopen_failed
from bsky_backfill.engine.scheduler import Scheduler
from bsky_backfill.engine.source_loop import SourceLoop
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.engine.stats import RunStats
from bsky_backfill.engine.takeover import INTAKE, Peers
from bsky_backfill.engine.unexpected import UnexpectedErrors
from bsky_backfill.errors import TerminalError
from bsky_backfill.identity.dns import TxtLookup, parse_server, system_nameserver, udp_txt_lookup
from bsky_backfill.identity.handle import HandleResolver
from bsky_backfill.identity.resolver import DidResolver, host_key
from bsky_backfill.models import DeadLetter, RepoExtract
from bsky_backfill.records.collections import collection_warnings, empty_collection_lines
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.sinks.parquet import CommitSummary, DatasetWriter, SinkConfig
from bsky_backfill.sinks.provenance import file_metadata
from bsky_backfill.state.base import (
    Account,
    Identity,
    RepoDone,
    RepoState,
    StateStore,
    StatusReport,
)
from bsky_backfill.state.open import open_store, store_exists
from bsky_backfill.state.runlock import RunLock, check_state_present
from bsky_backfill.xrpc.breaker import BreakerBoard
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.slot import HostSlot
from bsky_backfill.xrpc.spool import SpoolDir, spool_root
from bsky_backfill.xrpc.ssrf import host_to_base_url

log = logging.getLogger("bsky_backfill")


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
        self.peers = Peers(role or Role.lead(settings.workers))
        self.stats = RunStats()
        self.flow = Flow()
        # Every host's circuit breaker (the client consults them on each request).
        self.breakers = BreakerBoard(settings.breaker_policy)
        self.scheduler = Scheduler(settings, self.breakers, self.flow)
        self.slots: dict[str, HostSlot] = self.scheduler.slots
        # The writer's thread (landing.py): every sink operation runs there, in order.
        self.lane = SinkLane()
        self.bugs = UnexpectedErrors()
        # Every file this run writes says which version and filters made it.
        self.file_metadata = file_metadata(
            sorted(settings.collections), settings.since, settings.until, settings.method
        )
        self._lock: RunLock | None = None
        self._baseline: tuple[int, dict[str, int]] = (0, {})
        """(done, failed by code) in the store when the work started."""
        self._rows_before = (0, 0, 0)  # rows written, deleted, updated (the store's)
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
        self.flow.request_stop()

    @property
    def stopping(self) -> bool:
        return self.flow.stopping

    @property
    def role(self) -> Role:
        return self.peers.role

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
                # A refresh that names no filters takes the dataset's own.
                self.settings = check_filters(self.settings, store)
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
            recover_sink(sink)
            self.store, self.sink = store, sink
            self.scheduler.open(store)
            self.commits = commits = Commits(
                self.lane,
                store,
                sink,
                self.stats,
                commit_rows=settings.commit_rows,
                on_commit=self.on_commit,
                stop=self.request_stop,
            )
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
            # N-1 helper processes (part_pool.py).
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
                    commits.forget_progress = self.worker.forget_progress
                    self.peers.start(settings, store, follower_main)
                    try:
                        await self._run_loops()
                    finally:
                        if await self.peers.finish(self.stopping):
                            # A follower killed between its store commit and its
                            # renames left files only a recovery moves into place.
                            await self.lane.drain()
                            recover_sink(sink)
            finally:
                await self.lane.drain()  # the writer is idle from here: direct calls
                self.lane.close()
                extractor.close()
                spool.close()
                if helpers is not None:
                    helpers.close()
                if commits.fatal is None:
                    commits.commit_here()
                else:
                    with contextlib.suppress(Exception):
                        sink.abort()  # its repos are still in progress: the next run redoes them
                try:
                    sink.close()
                except RuntimeError as e:  # a batch left open by a fatal error: recovery's
                    log.debug("closing the dataset writer: %s", e)
            if commits.fatal is not None:
                raise commits.fatal
            self.scheduler.clear_pauses()
            # The leader's summary counts every process's traffic (--workers).
            self.peers.leave_traffic(store, self.stats)
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

    async def _run_loops(self) -> None:
        """The stages as concurrent tasks; the scheduler's return ends them all."""
        commits, store = self.commits, self.store
        loops = [asyncio.create_task(commits.loop(), name="commit")]
        if self.role.leader:
            source = SourceLoop(
                self.settings, self.source, store, self.client, self.resolver,
                self.scheduler.slot, commits, self.flow,
            )  # fmt: skip
            resolve = ResolveLoop(
                self.settings, store, self.client, self.resolver, self.handles,
                self.breakers, commits, self.flow, self.bugs,
            )  # fmt: skip
            loops.append(asyncio.create_task(source.run(), name="source"))
            loops.append(asyncio.create_task(resolve.run(), name="resolve"))
        else:
            watch = self.peers.watch_intake(store, self.flow)
            loops.append(asyncio.create_task(watch, name="intake"))
        working = self.scheduler.working
        try:
            await self.scheduler.loop(commits, self.peers, self.worker.process, self._tick)
        finally:
            for task in loops:
                task.cancel()
            for task in list(working):
                task.cancel()
            await asyncio.gather(*loops, *working, return_exceptions=True)
            for task in loops:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    def _tick(self) -> None:
        for tick in self.on_tick:
            tick(self)

    # -- RepoOutcomes: what the per-repo work reports (repo_task.py) -----------------------
    def land(
        self, extract: RepoExtract, done: RepoDone, cursors: list[tuple[str, str | None]]
    ) -> bool:
        if not self.commits.land(extract, done, cursors):
            return False
        self.stats.repos_done += 1
        self._count_rows(extract)
        self.commits.maybe_commit()
        return True

    def land_partial(self, extract: RepoExtract, cursors: list[tuple[str, str | None]]) -> bool:
        if not self.commits.land_partial(extract, cursors):
            return False
        self._count_rows(extract)
        self.commits.maybe_commit()
        return True

    def landed_alone(self, summary: CommitSummary) -> None:
        self.stats.repos_done += 1
        for hook in self.on_commit:
            hook(summary)

    def count(self, rows: Mapping[str, int], dead_letters: Iterable[DeadLetter]) -> None:
        for collection, n in rows.items():
            self.stats.records[collection] += n
        for letter in dead_letters:
            self.stats.dead_letters[letter.error] += 1

    def _count_rows(self, extract: RepoExtract) -> None:
        """Live counters for rows handed to the sink (the dataset counts at commit)."""
        self.count({c: t.num_rows for c, t in extract.tables.items()}, extract.dead_letters)

    def fail(self, did: str, error: TerminalError, account: Account | None) -> None:
        self.commits.dead_letter(did, error.stage, error.code, error.message, account)

    def retry(
        self, did: str, attempts: int, when: dt.datetime, why: str, *, held: bool = False
    ) -> None:
        if held:
            self.stats.repos_held += 1
        else:
            self.stats.repos_retried += 1
        self.store.retry_later(did, attempts, when, why)

    def unexpected(self, error: BaseException, did: str, where: str) -> None:
        self.bugs.log(error, did, where)

    def decoded(self, seconds: float) -> None:
        for hook in self.on_decode:
            hook(seconds)

    async def resolve(self, did: str) -> Identity:
        return await self.resolver.resolve(did)

    def wake(self) -> None:
        self.flow.wake()

    # -- the summary ----------------------------------------------------------------------
    def _summary(self, store: StateStore) -> RunSummary:
        counts = store.counts()
        status = store.status()
        followers = self.peers.traffic(store)
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


def follower_main(settings: RunSettings, role: Role, log_level: int) -> None:
    """Entry point of a `--workers` follower process (spawned: a fresh interpreter)."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        backfill = Backfill(settings, None, role=role)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, backfill.request_stop)
        await backfill.run()

    asyncio.run(main())


__all__ = ["Backfill", "RunSummary"]
