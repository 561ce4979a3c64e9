"""The Parquet sink: buffered batches, committed atomically and exactly once.

Where it sits: the engine's last step. Workers hand each finished repo to
`DatasetWriter.add` (or `add_failed`); the engine calls `commit()` at a repo
boundary whenever `should_commit()` says so, and once more before stopping.

Commit protocol (the state store is the single source of truth):

1. `add` streams rows into `_state/tmp/*.tmp` files of the open batch (one Parquet
   writer per collection, plus `_deadletters`); nothing under a reader's glob.
2. `commit` closes those writers and fsyncs the files and their directory.
3. One store transaction records the final paths *and* marks the batch's
   repos done/failed (`StateStore.commit`, fsynced before it returns).
4. Only then are the tmp files renamed to their final paths (then dirs fsynced).
5. `recover()` at start-up asks the store: committed tmp -> rename (a crash hit
   step 4); uncommitted tmp -> delete (a crash before 3: its repos are still
   pending/in_progress in the store and will be fetched again).

So at any instant, kill -9 or power loss, a batch is either wholly in the store
and (after recovery) wholly in the dataset, or in neither. No row lands twice:
a final path exists only after its store record is durable.

Not thread-safe: one thread drives a writer. `add` encodes Parquet (CPU) and
`commit` fsyncs, so an asyncio engine may call them through a worker thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from bsky_backfill.models import DeadLetter, RepoExtract
from bsky_backfill.sinks.deadletters import dead_letter_table
from bsky_backfill.sinks.recovery import RecoveryReport, recover_dataset
from bsky_backfill.sinks.storage import (
    DEAD_LETTERS,
    TMP_DIR,
    Storage,
    check_collection,
    tmp_path,
)
from bsky_backfill.state.base import CommittedFile, RepoDone, RepoFailed, StateStore


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """How the sink batches and lays out files."""

    commit_rows: int = 500_000
    """Commit once the open batch holds this many rows (records + dead letters).
    Files are closed at each commit, so this also bounds how big files get."""
    commit_seconds: float = 30.0
    """...or once its first row is this old: bounds the work a crash throws away."""
    row_group_rows: int = 128 * 1024
    """Rows per Parquet row group; rows are buffered (as Arrow) up to this per table."""
    max_file_rows: int = 1_000_000
    """Start a new file within a batch past this many rows (huge repos, huge batches)."""
    compression: str = "zstd"
    compression_level: int | None = None
    """None: the codec's default (zstd level 1 in Arrow)."""


@dataclass(frozen=True, slots=True)
class CommitSummary:
    """What one commit made durable (for logs, events and metrics)."""

    files: tuple[CommittedFile, ...] = ()
    done: int = 0
    failed: int = 0
    dead_letters: int = 0
    rows_by_collection: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


StepHook = Callable[[str], None]


class _Part:
    """One tmp Parquet file being written: Arrow buffer -> full row groups."""

    __slots__ = ("collection", "final", "pending", "pending_rows", "rows", "schema", "writer")

    def __init__(
        self, storage: Storage, collection: str, final: str, schema: pa.Schema, cfg: SinkConfig
    ) -> None:
        self.collection = collection
        self.final = final
        self.schema = schema
        self.writer = pq.ParquetWriter(
            storage.abs(tmp_path(final)),
            schema,
            filesystem=storage.fs,
            compression=cfg.compression,
            compression_level=cfg.compression_level,
        )
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0

    def append(self, table: pa.Table, row_group_rows: int) -> None:
        # Small extracts are kept (zero-copy) until a full row group exists:
        # one write per repo would make tiny row groups that readers pay for.
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        if self.pending_rows >= row_group_rows:
            self.flush(row_group_rows, whole=False)

    def flush(self, row_group_rows: int, *, whole: bool) -> None:
        if not self.pending_rows:
            return
        t = self.pending[0] if len(self.pending) == 1 else pa.concat_tables(self.pending)
        n = t.num_rows if whole else t.num_rows - t.num_rows % row_group_rows
        if n:
            self.writer.write_table(t.slice(0, n), row_group_size=row_group_rows)
        rest = t.slice(n)
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows


@dataclass(slots=True)
class _Batch:
    started: float | None = None  # time.monotonic() of the first add
    rows: int = 0
    open: dict[str, _Part] = field(default_factory=dict)
    closed: list[CommittedFile] = field(default_factory=list)
    done: list[RepoDone] = field(default_factory=list)
    failed: list[RepoFailed] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    dids: set[str] = field(default_factory=set)
    partial: set[str] = field(default_factory=set)
    cursors: list[tuple[str, str | None]] = field(default_factory=list)

    def tmp_files(self) -> list[str]:
        return [tmp_path(f.path) for f in self.closed] + [
            tmp_path(p.final) for p in self.open.values()
        ]


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
        self._cfg = config or SinkConfig()
        self._hook = step_hook
        # Unique per writer instance, so several processes or machines can
        # write one dataset; the time prefix keeps listings in write order.
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        self._id = f"{stamp}-{uuid.uuid4().hex[:12]}"
        self._seq = itertools.count()
        self._batch = _Batch()
        self._broken: BaseException | None = None
        self._known_dirs: set[str] = set()
        self._storage.makedirs(TMP_DIR)

    # -- filling a batch -------------------------------------------------------------

    @property
    def batch_rows(self) -> int:
        return self._batch.rows

    @property
    def batch_repos(self) -> int:
        return len(self._batch.dids)

    def holds(self, did: str) -> bool:
        """Whether `did` is in the open batch: still pending/in_progress in the store
        until the commit, so the engine must not hand it out (or resolve it) again."""
        return did in self._batch.dids

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
        self._batch.done.append(done)
        self._batch.cursors.extend(cursors)

    def add_partial(self, extract: RepoExtract, cursors: Sequence[tuple[str, str | None]]) -> None:
        """Add part of a repo that is still being fetched (list mode's big repos): its
        rows land with the next commit together with `cursors`, the durable record of
        how far the repo got, so a restart resumes after them instead of refetching."""
        self._add_rows(extract, partial=True)
        self._batch.cursors.extend(cursors)

    def _add_rows(self, extract: RepoExtract, *, partial: bool) -> None:
        for collection in extract.tables:
            check_collection(collection)  # before writing anything: a refusal leaves no trace
        self._start(extract.did, partial=partial)
        with self._guard():
            for collection, table in extract.tables.items():
                self._append(collection, table)
            if extract.dead_letters:
                self._append(DEAD_LETTERS, dead_letter_table(extract.dead_letters))
        self._batch.dead_letters.extend(extract.dead_letters)

    def add_failed(self, failed: RepoFailed, dead_letter: DeadLetter) -> None:
        """Add one repo dead-lettered whole; it is marked failed when the batch commits."""
        if failed.did != dead_letter.did:
            raise ValueError(f"failure of {failed.did} with dead letter of {dead_letter.did}")
        self._start(failed.did)
        with self._guard():
            self._append(DEAD_LETTERS, dead_letter_table([dead_letter]))
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

    def _start(self, did: str, *, partial: bool = False) -> None:
        if self._broken is not None:
            raise RuntimeError("the open batch failed; abort() it first") from self._broken
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
                name = f"part-{self._id}-{next(self._seq):06d}.parquet"
                part = _Part(self._storage, collection, f"{collection}/{name}", table.schema, cfg)
                b.open[collection] = part
            piece = table.slice(offset, cfg.max_file_rows - part.rows)
            part.append(piece, cfg.row_group_rows)
            offset += piece.num_rows
            b.rows += piece.num_rows
            if part.rows >= cfg.max_file_rows:
                self._close_part(part)

    def _close_part(self, part: _Part) -> None:
        """Finish a tmp file for good: last row group, footer, fsync."""
        del self._batch.open[part.collection]
        part.flush(self._cfg.row_group_rows, whole=True)
        part.writer.close()
        self._storage.fsync_file(tmp_path(part.final))
        self._batch.closed.append(CommittedFile(part.final, part.collection, part.rows))

    # -- commit ------------------------------------------------------------------------

    def commit(self) -> CommitSummary:
        """Make the open batch durable and visible (see the module docstring)."""
        if self._broken is not None:
            raise RuntimeError("the open batch failed; abort() it first") from self._broken
        b = self._batch
        if b.started is None:
            return CommitSummary()
        t0 = time.monotonic()
        with self._guard():
            for part in list(b.open.values()):
                self._close_part(part)
            # The tmp names must be durable before the store points at them.
            self._storage.fsync_dir(TMP_DIR)
        self._step("closed")
        files = tuple(b.closed)
        # From here the batch leaves the writer whatever happens: if the store
        # commit raises, it may still have committed (an error after COMMIT hit
        # the disk), so the tmp files stay for recover(), which asks the store.
        self._batch = _Batch()
        self._store.commit(files, b.done, b.failed, b.dead_letters, b.cursors)
        self._step("stored")
        for i, f in enumerate(files):
            self._ensure_dir(posixpath.dirname(f.path))
            self._storage.move(tmp_path(f.path), f.path)
            self._step(f"renamed:{i}")
        # Not needed for correctness (recover() redoes lost renames); keeps a
        # committed batch from needing recovery after a power cut.
        for d in {posixpath.dirname(f.path) for f in files} | {TMP_DIR}:
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
        b = self._batch
        self._batch = _Batch()
        self._broken = None
        for part in b.open.values():
            with contextlib.suppress(Exception):  # the file is deleted next anyway
                part.writer.close()
        for tmp in b.tmp_files():
            with contextlib.suppress(FileNotFoundError):
                self._storage.delete(tmp)
        return sorted(b.dids)

    def close(self) -> None:
        """Release the writer. The engine commits (or aborts) first: an open batch is an error.

        Its tmp files are left for `recover()`, so nothing already committed is harmed.
        """
        b = self._batch
        if b.started is None:
            return
        for part in b.open.values():
            with contextlib.suppress(Exception):  # releasing handles; recover() deletes it
                part.writer.close()
        self._batch = _Batch()
        raise RuntimeError(
            f"DatasetWriter closed with an uncommitted batch of {len(b.dids)} repos;"
            " call commit() or abort() first (its tmp files are left for recover())"
        )

    def recover(self) -> RecoveryReport:
        """Start-up: finish or discard what a crash left in the tmp dir (see `sinks.recovery`).

        Call before the first `add`, while no other writer uses this dataset.
        """
        if self._batch.started is not None:
            raise RuntimeError("recover() runs before the first add()")
        return recover_dataset(self._storage, self._store)
