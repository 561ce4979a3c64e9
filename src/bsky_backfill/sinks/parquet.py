"""The Parquet sink: buffered batches, committed atomically and exactly once.

Where it sits: the engine's last step. Workers hand each finished repo to
`DatasetWriter.add` (or `add_failed`); the engine calls `commit()` at a repo
boundary whenever `should_commit()` says so, and once more before stopping.
Several writers (processes, machines) may share one dataset: each writes its
tmp files into its own `_state/tmp/<writer>/` and proves it is alive there
(`sinks.liveness`).

Commit protocol (the state store is the single source of truth):

1. `add` streams rows into `_state/tmp/<writer>/*.tmp` files of the open batch
   (one Parquet writer per collection, plus `_deadletters` and `_accounts`,
   sinks/accounts.py); nothing under a
   reader's glob.
2. `commit` closes those writers and fsyncs the files and their directory.
3. One store transaction records the final paths *and* marks the batch's
   repos done/failed (`StateStore.commit`, fsynced before it returns). Until
   it has answered, the batch stays with the writer: if the store refused it
   for certain (`LeaseLostError`, or the sink's own `BatchRefused` just
   before), `discard_batch()` deletes its files and names its repos.
4. Only then are the tmp files renamed to their final paths (then dirs fsynced).
5. `recover()` (at start-up, or any time, from any writer) asks the store:
   committed tmp -> rename, whoever owns it (a crash, or a failure, hit step
   4); uncommitted tmp of a *dead* writer -> delete (a crash before 3: its
   repos are still pending/in_progress in the store and will be fetched
   again). A live writer's uncommitted files are its open batch: never touched.

So at any instant, kill -9 or power loss, a batch is either wholly in the store
and (after recovery) wholly in the dataset, or in neither. No row lands twice:
a final path exists only after its store record is durable. No committed row
is lost: an uncommitted tmp file is deleted only by its own writer (`abort`
before step 3, `discard_batch` after the store refused step 3) or by recovery
once its writer is dead, and a dead writer never reaches step 3. (Under the
age rule "dead" is inferred from a silent heartbeat; a writer whose heartbeat
lapsed refuses step 3 itself: see sinks/liveness.py.)

Not thread-safe: one thread drives a writer. `add` encodes Parquet (CPU) and
`commit` fsyncs, so an asyncio engine may call them through a worker thread.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import posixpath
import time
from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from bsky_backfill.models import DeadLetter, RepoExtract, utcnow
from bsky_backfill.sinks.accounts import LANDED, accounts_table
from bsky_backfill.sinks.batch import (
    Batch,
    CommitSummary,
    DiscardedBatch,
    EncodedFile,
    Part,
    SinkConfig,
    is_record_table,
)
from bsky_backfill.sinks.deadletters import dead_letter_table
from bsky_backfill.sinks.liveness import WriterDir, pick_rule
from bsky_backfill.sinks.provenance import stamp, with_file_metadata
from bsky_backfill.sinks.recovery import RecoveryReport, recover_dataset
from bsky_backfill.sinks.storage import (
    ACCOUNTS,
    DEAD_LETTERS,
    TMP_DIR,
    Storage,
    check_collection,
    new_writer_id,
    table_dir,
    tmp_path,
)
from bsky_backfill.state.base import CommittedFile, RepoDone, RepoFailed, StateStore

__all__ = ["CommitSummary", "DatasetWriter", "DiscardedBatch", "SinkConfig"]


StepHook = Callable[[str], None]


class DatasetWriter:
    """Writes repos into `OUT/<collection>/` through batches committed with the state store.

    `step_hook(name)` is called at each protocol step ("closed", "stored",
    "renamed:<i>", "committed"); tests use it to crash at an exact point.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        store: StateStore,
        config: SinkConfig | None = None,
        *,
        step_hook: StepHook | None = None,
    ) -> None:
        self._storage = Storage(out)
        self._store = store
        self._cfg = cfg = config or SinkConfig()
        self._hook = step_hook
        # Unique per writer instance, so several processes or machines can
        # write one dataset: it names the writer's files and tmp directory.
        self._id = new_writer_id()
        self._seq = itertools.count()
        self._batch = Batch()
        # A batch whose store commit raised: maybe committed, maybe not.
        self._unsettled: Batch | None = None
        self._broken: BaseException | None = None
        self._closed = False
        self._known_dirs: set[str] = set()
        self._storage.makedirs(TMP_DIR)
        rule = pick_rule(self._storage, cfg.liveness)
        self._dir = WriterDir(self._storage, self._id, rule, cfg.stale_after)

    @property
    def writer_id(self) -> str:
        """This writer's id: in its file names and its `_state/tmp/<id>/` directory."""
        return self._id

    # -- filling a batch -------------------------------------------------------------

    @property
    def batch_rows(self) -> int:
        return self._batch.rows

    @property
    def batch_repos(self) -> int:
        return len(self._batch.dids)

    def holds(self, did: str) -> bool:
        """Whether `did` is in the open batch (or one whose commit failed): still
        pending/in_progress in the store until the commit, so the engine must not
        hand it out (or resolve it) again."""
        return did in self._batch.dids or (
            self._unsettled is not None and did in self._unsettled.dids
        )

    def add(
        self,
        extract: RepoExtract,
        done: RepoDone,
        cursors: Sequence[tuple[str, str | None]] = (),
    ) -> None:
        """Add one finished repo: its rows, its record-level dead letters, its done mark
        (and cursor updates to commit with them, e.g. deleting list-mode progress)."""
        if extract.did != done.did:
            raise ValueError(f"extract of {extract.did} with done mark of {done.did}")
        self._add_rows(extract, partial=False)
        fetched_at = extract.fetched_at or utcnow()
        with self._guard():
            self._append(
                ACCOUNTS, accounts_table([(done.did, done.account, done.rev, fetched_at, LANDED)])
            )
        self._batch.done.append(done)
        self._batch.cursors.extend(cursors)

    def add_partial(self, extract: RepoExtract, cursors: Sequence[tuple[str, str | None]]) -> None:
        """Add part of a repo that is still being fetched (list mode's big repos): its
        rows land with the next commit together with `cursors`, the durable record of
        how far the repo got, so a restart resumes after them instead of refetching."""
        self._add_rows(extract, partial=True)
        self._batch.cursors.extend(cursors)

    def add_encoded(
        self, did: str, files: Sequence[EncodedFile], dead_letters: Sequence[DeadLetter]
    ) -> None:
        """Add part of a repo as Parquet files already encoded (`batch.encode_tables`:
        big repos' parts built in helper processes); each becomes a closed file of
        the open batch as it is, committed (or aborted) with the others."""
        for f in files:
            check_collection(f.collection)
        self._start(did, partial=True)
        b = self._batch
        with self._guard():
            for f in files:
                final = f"{table_dir(f.collection)}/part-{self._id}-{next(self._seq):06d}.parquet"
                tmp = self._tmp(final)
                with self._storage.fs.open_output_stream(self._storage.abs(tmp)) as out:
                    out.write(f.data)
                self._storage.fsync_file(tmp)
                b.closed.append(CommittedFile(final, f.collection, f.rows))
                b.rows += f.rows
            if dead_letters:
                self._append(DEAD_LETTERS, dead_letter_table(list(dead_letters)))
        b.dead_letters.extend(dead_letters)

    def _add_rows(self, extract: RepoExtract, *, partial: bool) -> None:
        for collection in extract.tables:
            check_collection(collection)  # before writing anything: a refusal leaves no trace
        self._start(extract.did, partial=partial)
        fetched_at = extract.fetched_at or utcnow()
        with self._guard():
            for collection, table in extract.tables.items():
                if is_record_table(collection):
                    table = stamp(table, extract.rev, fetched_at)
                self._append(collection, table)
            if extract.dead_letters:
                self._append(DEAD_LETTERS, dead_letter_table(extract.dead_letters))
        self._batch.dead_letters.extend(extract.dead_letters)

    def add_failed(self, failed: RepoFailed, dead_letter: DeadLetter) -> None:
        """Add one repo dead-lettered whole; it is marked failed when the batch commits."""
        if failed.did != dead_letter.did:
            raise ValueError(f"failure of {failed.did} with dead letter of {dead_letter.did}")
        self._start(failed.did)
        row = (failed.did, failed.account, None, dead_letter.failed_at, failed.code)
        with self._guard():
            self._append(DEAD_LETTERS, dead_letter_table([dead_letter]))
            self._append(ACCOUNTS, accounts_table([row]))
        self._batch.dead_letters.append(dead_letter)
        self._batch.failed.append(failed)

    def should_commit(self) -> bool:
        """True when the open batch is big or old enough; the engine commits at repo boundaries."""
        b = self._batch
        if b.started is None:
            return False
        return (
            b.rows >= self._cfg.commit_rows
            or time.monotonic() - b.started >= self._cfg.commit_seconds
        )

    def _usable(self) -> None:
        if self._closed:
            raise RuntimeError("DatasetWriter is closed")
        if self._unsettled is not None:
            raise RuntimeError(
                "a commit failed: discard_batch() if the store surely refused it, else close()"
            )
        if self._broken is not None:
            raise RuntimeError("the open batch failed; abort() it first") from self._broken

    def _start(self, did: str, *, partial: bool = False) -> None:
        self._usable()
        b = self._batch
        if did in b.dids:
            # Twice in one batch would land its rows twice under one done mark.
            raise ValueError(f"{did} is already in the open batch")
        if partial:
            b.partial.add(did)
        else:
            b.dids.add(did)
        if b.started is None:
            b.started = time.monotonic()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Marks the batch broken if a write fails half-way.

        A half-written batch must never be committed: some rows of a repo could
        land without its done mark, and the refetch would land them twice.
        """
        try:
            yield
        except BaseException as e:
            self._broken = e
            raise

    def _append(self, collection: str, table: pa.Table) -> None:
        cfg = self._cfg
        b = self._batch
        offset = 0
        # Slices of at most the room left in the current file: a 3M-row repo
        # spreads over several files instead of one unbounded one.
        while offset < table.num_rows:
            part = b.open.get(collection)
            # A different schema (metadata aside) gets its own file; readers union by name.
            if part is not None and not part.schema.equals(table.schema):
                self._close_part(part)
                part = None
            if part is None:
                final = f"{table_dir(collection)}/part-{self._id}-{next(self._seq):06d}.parquet"
                part = Part(self._storage, collection, final, self._tmp(final), table.schema, cfg)
                b.open[collection] = part
            piece = table.slice(offset, cfg.max_file_rows - part.rows)
            part.append(piece, cfg.row_group_rows)
            offset += piece.num_rows
            b.rows += piece.num_rows
            if part.rows >= cfg.max_file_rows:
                self._close_part(part)

    def _close_part(self, part: Part) -> None:
        """Finish a tmp file for good: last row group, footer, fsync."""
        del self._batch.open[part.collection]
        part.flush(self._cfg.row_group_rows, whole=True)
        part.writer.close()
        self._storage.fsync_file(self._tmp(part.final))
        self._batch.closed.append(CommittedFile(part.final, part.collection, part.rows))

    def _tmp(self, final: str) -> str:
        return tmp_path(final, self._id)

    # -- commit ------------------------------------------------------------------------

    def commit(self) -> CommitSummary:
        """Make the open batch durable and visible (see the module docstring).

        If this raises after the batch's files were closed, the batch is kept
        aside: `discard_batch()` after a definite refusal (`BatchRefused`,
        PostgreSQL's `LeaseLostError`), else `close()` and leave it to `recover()`.
        """
        self._usable()
        b = self._batch
        if b.started is None:
            return CommitSummary()
        t0 = time.monotonic()
        with self._guard():
            for part in list(b.open.values()):
                self._close_part(part)
            # The tmp names must be durable before the store points at them.
            self._storage.fsync_dir(self._dir.rel)
        self._step("closed")
        files = tuple(b.closed)
        self._batch = Batch()
        self._unsettled = b
        self._dir.check_alive()
        # If the store raises, it may still have committed (an error after COMMIT
        # hit the disk): nothing here may delete the files unless told it did not.
        self._store.commit(files, b.done, b.failed, b.dead_letters, b.cursors)
        self._unsettled = None
        self._step("stored")
        for i, f in enumerate(files):
            self._ensure_dir(posixpath.dirname(f.path))
            # Another writer's recover() may have renamed it already: that is fine.
            self._storage.move_committed(self._tmp(f.path), f.path)
            self._step(f"renamed:{i}")
        # Not needed for correctness (recover() redoes lost renames); keeps a
        # committed batch from needing recovery after a power cut.
        for d in {posixpath.dirname(f.path) for f in files} | {self._dir.rel}:
            self._storage.fsync_dir(d)
        self._step("committed")
        rows: dict[str, int] = {}
        for f in files:
            rows[f.collection] = rows.get(f.collection, 0) + f.rows
        return CommitSummary(
            files=files,
            done=len(b.done),
            failed=len(b.failed),
            dead_letters=len(b.dead_letters),
            rows_by_collection=rows,
            seconds=time.monotonic() - t0,
        )

    def commit_file(
        self, collection: str, table: pa.Table, record: Callable[[CommittedFile], None]
    ) -> CommittedFile:
        """One table as one file, committed on its own (outside the open batch) by the
        same protocol as `commit`: tmp file fsynced, then `record(file)`, the store
        transaction that must list it among the committed files (as
        `StateStore.reopen_failed` does), then the rename. For the ledger's own
        tables (`_superseded`). If `record` raises, the tmp file is left to recovery,
        which asks the store whether it counts."""
        self._usable()
        check_collection(collection)
        final = f"{collection}/part-{self._id}-{next(self._seq):06d}.parquet"
        tmp = self._tmp(final)
        meta = with_file_metadata(table.schema, dict(self._cfg.file_metadata)).metadata
        with self._storage.fs.open_output_stream(self._storage.abs(tmp)) as out:
            pq.write_table(table.replace_schema_metadata(meta), out, compression="zstd")
        self._storage.fsync_file(tmp)
        self._storage.fsync_dir(self._dir.rel)
        self._dir.check_alive()
        committed = CommittedFile(final, collection, table.num_rows)
        record(committed)
        self._ensure_dir(collection)
        self._storage.move_committed(tmp, final)
        self._storage.fsync_dir(collection)
        return committed

    # -- compaction's files (sinks/compact.py) ------------------------------------------

    @property
    def storage(self) -> Storage:
        return self._storage

    def new_path(self, collection: str, stem: str) -> tuple[str, str]:
        """(final, tmp) relative paths of a new file of `collection` that this writer
        writes outside its batch: `<table dir>/<stem>-<writer>-<seq>.parquet`."""
        if collection != DEAD_LETTERS:  # (a repo's records can never name it)
            check_collection(collection)
        final = f"{table_dir(collection)}/{stem}-{self._id}-{next(self._seq):06d}.parquet"
        return final, self._tmp(final)

    def tmp_of(self, final: str) -> str:
        """This writer's tmp path (relative) of a final path."""
        return self._tmp(final)

    def swap(self, old: Sequence[str], new: Sequence[CommittedFile]) -> None:
        """Compaction's commit, the protocol of `commit` with a swap for a batch: the
        tmp files of `new` (written and fsynced by the caller) become the committed
        files in place of `old` in ONE store transaction (`replace_files`), then are
        renamed into place, and only then are the `old` files deleted. A crash at
        any step leaves, after `recover()`, the old set (before the transaction) or
        the new one (after it), never both and never neither. Steps for
        `step_hook`: "written", "stored", "renamed:<i>", "deleted:<i>", "compacted".
        """
        self._usable()
        self._storage.fsync_dir(self._dir.rel)  # the tmp names, before the store names them
        self._step("written")
        self._dir.check_alive()
        self._store.replace_files(old, new)  # FilesChangedError: nothing applied
        self._step("stored")
        for i, f in enumerate(new):
            self._ensure_dir(posixpath.dirname(f.path))
            self._storage.move_committed(self._tmp(f.path), f.path)
            self._step(f"renamed:{i}")
        for d in {posixpath.dirname(f.path) for f in new} | {self._dir.rel}:
            self._storage.fsync_dir(d)
        for i, path in enumerate(old):
            with contextlib.suppress(FileNotFoundError):  # a recovery was quicker
                self._storage.delete(path)
            self._step(f"deleted:{i}")
        for d in {posixpath.dirname(p) for p in old}:
            self._storage.fsync_dir(d)
        self._store.forget_retired(old)
        self._step("compacted")

    def discard_files(self, finals: Sequence[str]) -> None:
        """Delete this writer's tmp files of `finals` (a compaction that gave up)."""
        for final in finals:
            with contextlib.suppress(FileNotFoundError):
                self._storage.delete(self._tmp(final))

    def discard_batch(self) -> DiscardedBatch:
        """After `commit()` raised a failure that *certainly* recorded nothing (the
        store's transaction rolled back: `LeaseLostError`; or the sink's own
        `BatchRefused`): delete the batch's tmp files and name its repos, which the
        engine puts back (`retry_later`). The writer is then usable again.

        Never after an error whose outcome is unknown (a connection lost during
        COMMIT): the batch may be committed, and deleting it would lose its rows.
        Then `close()` the writer; `recover()` settles its files by asking the store.
        """
        b = self._unsettled
        if b is None:
            raise RuntimeError("no failed commit to discard")
        self._unsettled = None
        self._delete_files(b)
        return DiscardedBatch(
            done=tuple(d.did for d in b.done),
            failed=tuple(f.did for f in b.failed),
            partial=tuple(sorted(b.partial)),
        )

    def _ensure_dir(self, rel: str) -> None:
        if rel not in self._known_dirs:
            self._storage.makedirs(rel)
            self._known_dirs.add(rel)

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(name)

    # -- abort, close, recover ---------------------------------------------------------

    def abort(self) -> list[str]:
        """Drop the open batch: close and delete its tmp files.

        Returns the DIDs it held: they are in_progress in the store and must be
        put back (`retry_later`) or left for `StateStore.recover()` at the next start.
        """
        if self._unsettled is not None:
            raise RuntimeError("a commit failed: discard_batch() or close(), not abort()")
        b = self._batch
        self._batch = Batch()
        self._broken = None
        self._delete_files(b)
        return sorted(b.dids)

    def _delete_files(self, b: Batch) -> None:
        for part in b.open.values():
            with contextlib.suppress(Exception):  # the file is deleted next anyway
                part.writer.close()
        for final in b.finals():
            with contextlib.suppress(FileNotFoundError):
                self._storage.delete(self._tmp(final))

    def close(self) -> None:
        """Release the writer: its lock (or heartbeat) and, if empty, its tmp directory.

        The engine commits (or aborts) first: an open batch, or one whose commit
        failed, raises here after the release; its tmp files are left for
        `recover()` (by any writer, now that this one is gone), so nothing already
        committed is harmed. Closing twice is a no-op.
        """
        if self._closed:
            return
        self._closed = True
        b, failed = self._batch, self._unsettled
        for part in b.open.values():
            with contextlib.suppress(Exception):  # releasing handles; recover() deletes it
                part.writer.close()
        self._batch, self._unsettled = Batch(), None
        self._dir.release()
        if b.started is not None or failed is not None:
            n = len(b.dids) + (len(failed.dids) if failed is not None else 0)
            raise RuntimeError(
                f"DatasetWriter closed with an uncommitted batch of {n} repos;"
                " call commit() or abort() first (its tmp files are left for recover())"
            )

    def recover(self) -> RecoveryReport:
        """Settle what dead writers (crashed, or closed with a batch open) left in the
        tmp directories (see `sinks.recovery`); committed files of live writers whose
        rename is pending are moved into place too.

        Safe at any time and from any writer: a live writer's open batch (this
        one's included) is never touched.
        """
        if self._closed:
            raise RuntimeError("DatasetWriter is closed")
        return recover_dataset(
            self._storage,
            self._store,
            own=self._dir.rel,
            rule=self._dir.rule,
            stale_after=self._cfg.stale_after,
            now=self._dir.now(),
        )
