"""The open batch, from the event loop's side: adds, dead letters, commits, refusals.

Where it sits: between the loops that finish repos (repo_task.py, and the source
and resolver loops for repos that fail before they are claimed) and the
dataset writer's thread (landing.py). Every sink operation is *submitted* to
that thread in order; its outcome comes back here, on the loop:

    land / land_partial / dead_letter ──submit──▶ SinkLane ──▶ DatasetWriter
    maybe_commit (row budget, writer's timer) ──▶ commit ──▶ after_commit
                                                   │
        counters, on_commit hooks ◀── committed ───┤
        repos back to the queue ◀─── refused ──────┤  (a lease lost, a writer lapsed)
        the run stops, raises ◀──── failed ────────┘  (outcome unknown: recovery decides)

A commit is submitted after the adds that fill `--commit-rows` (so batches keep
their size however far the writer's thread is behind), or when the writer's own
time budget says so, at most one queued at a time; `loop` looks every second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bsky_backfill.engine.landing import SinkLane
from bsky_backfill.engine.stats import RunStats
from bsky_backfill.errors import CommitRefused, TransientError
from bsky_backfill.identity.handle import is_handle
from bsky_backfill.models import DeadLetter, RepoExtract, utcnow
from bsky_backfill.sinks.parquet import CommitSummary, DatasetWriter, DiscardedBatch
from bsky_backfill.state.base import Account, RepoDone, RepoFailed, StateStore

log = logging.getLogger("bsky_backfill")


class Commits:
    """One run's batches: what is in the open one, and when it is committed."""

    def __init__(
        self,
        lane: SinkLane,
        store: StateStore,
        sink: DatasetWriter,
        stats: RunStats,
        *,
        commit_rows: int,
        on_commit: list[Callable[[CommitSummary], None]],
        stop: Callable[[], None],
    ) -> None:
        self.lane = lane
        self.store = store
        self.sink = sink
        self.stats = stats
        self.commit_rows = commit_rows
        self.on_commit = on_commit
        self._stop = stop
        self.forget_progress: Callable[[str], None] = lambda did: None
        """Drops a list-mode repo's fetch progress held in memory (set by the run)."""
        self.fatal: Exception | None = None
        """The writer's failure that stopped the run (`run()` raises it)."""
        self.unclaimed_failures: set[str] = set()
        """DIDs dead-lettered before they were claimed (resolution failures): still
        pending in the store until the next commit, so they must not be resolved again."""
        # Only the writer's thread touches this: the DIDs dead-lettered into the open
        # batch since its last commit.
        self._failed_in_batch: list[str] = []
        self._commit_queued = False
        # Rows handed to the writer's thread since the last commit was submitted: the
        # writer's own batch lags behind what is queued, so the row budget is kept here.
        self._rows_since_commit = 0
        # List-mode repos whose committed-to-be pages were thrown away with a refused
        # batch: their fetch must start again from the store's cursor.
        self._poisoned: set[str] = set()

    # -- into the open batch -----------------------------------------------------------
    def land(
        self, extract: RepoExtract, done: RepoDone, cursors: list[tuple[str, str | None]]
    ) -> bool:
        """A finished repo into the open batch (done at the next commit). False when
        the run already failed (nothing was added)."""
        self._check_poisoned(extract.did)
        self._rows_since_commit += sum(t.num_rows for t in extract.tables.values())
        return self.submit("add", lambda: self.sink.add(extract, done, cursors))

    def land_partial(self, extract: RepoExtract, cursors: list[tuple[str, str | None]]) -> bool:
        """Part of a repo still being fetched (list mode) into the open batch."""
        self._check_poisoned(extract.did)
        self._rows_since_commit += sum(t.num_rows for t in extract.tables.values())
        return self.submit("add_partial", lambda: self.sink.add_partial(extract, cursors))

    def dead_letter(
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

        if not self.submit("add_failed", add_failed):
            return
        self.unclaimed_failures.add(did)
        self.stats.repos_failed += 1
        self.stats.failed_codes[code] += 1
        self.stats.dead_letters[code] += 1
        self.maybe_commit()

    def _check_poisoned(self, did: str) -> None:
        if did in self._poisoned:
            self._poisoned.discard(did)
            self.forget_progress(did)
            raise TransientError("earlier pages of this repo were refused", code="CommitRefused")

    def submit(self, what: str, call: Callable[[], object]) -> bool:
        """Submit a sink operation to the writer's thread (landing.py); a failure
        there is fatal for the run (the batch can no longer be trusted): stop, and let
        `run()` raise it. False when the run already failed so."""
        if self.fatal is not None:
            return False

        def then(result: object) -> None:
            if isinstance(result, BaseException):
                self.set_fatal(what, result)

        self.lane.submit(call, then)
        return True

    def set_fatal(self, what: str, error: BaseException) -> None:
        if self.fatal is not None:
            return
        if not isinstance(error, Exception):
            error = RuntimeError(f"{what}: {error!r}")
        log.error("the dataset writer failed (%s): %s; stopping", what, error)
        self.fatal = error
        self._stop()

    # -- commits -------------------------------------------------------------------------
    def maybe_commit(self) -> None:
        """Submit a commit when the open batch is due (at most one queued at a time)."""
        if self.fatal is not None:
            return
        # The row budget submits a commit after the adds that filled it (in order, so
        # batches keep their size however far the writer is behind); the writer's own
        # test (its time budget) only when no commit is queued already.
        full = self._rows_since_commit >= self.commit_rows
        if not full and (self._commit_queued or not self.sink.should_commit()):
            return
        self._rows_since_commit = 0
        self._commit_queued = True
        sink = self.sink

        def then(result: _Committed | BaseException) -> None:
            self._commit_queued = False
            self._after_commit(result)

        self.lane.submit(lambda: self._commit_on_lane(sink), then)

    async def commit_now(self) -> None:
        """Commit after everything submitted so far, and wait for it."""
        if self.fatal is not None:
            return
        sink = self.sink
        try:
            result: _Committed | BaseException = await self.lane.run(
                lambda: self._commit_on_lane(sink)
            )
        except Exception as e:
            result = e
        self._after_commit(result)

    def commit_here(self) -> None:
        """The last commit, on the loop: the writer's thread is idle for good."""
        self._after_commit(self._commit_on_lane(self.sink))

    async def loop(self) -> None:
        """The writer's time budget is looked at every second, work or not."""
        while True:
            await asyncio.sleep(1.0)
            self.maybe_commit()

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
            self.set_fatal("commit", result)
        elif result.error is not None:
            self.set_fatal("commit", result.error)
        elif result.refused is not None and result.discarded is not None:
            self._put_back(result.discarded, result.refused)
        elif result.summary is not None:
            self.unclaimed_failures.difference_update(result.failed)
            self.stats.commits += 1
            for hook in self.on_commit:
                hook(result.summary)

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
            if did in self.unclaimed_failures:
                self.unclaimed_failures.discard(did)  # never claimed: still pending
                continue
            self.store.retry_later(did, 1, now, f"CommitRefused: {error}")
        self._poisoned.update(discarded.partial)


def recover_sink(sink: DatasetWriter) -> None:
    """The dataset's recovery (sinks/parquet.py), logged: safe in every process at any
    time, since only dead writers' leftovers go."""
    report = sink.recover()
    if report.missing:
        log.error(
            "%d committed files are gone from the dataset (removed by hand?): %s",
            len(report.missing),
            ", ".join(report.missing[:5]),
        )
    if report.renamed or report.deleted or report.dead_writers:
        log.info("dataset recovery: %s", report)


@dataclass(frozen=True, slots=True)
class _Committed:
    """What a commit on the writer's thread came to (see `Commits._after_commit`)."""

    failed: list[str]
    """DIDs dead-lettered into the committed (or refused) batch."""
    summary: CommitSummary | None = None
    refused: Exception | None = None
    discarded: DiscardedBatch | None = None
    error: Exception | None = None
