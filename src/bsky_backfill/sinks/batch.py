"""The sink's settings and the open batch of a `DatasetWriter`: its tmp Parquet
files and the repo states that will be committed with them.

Where it sits: used by `sinks.parquet` (which re-exports `SinkConfig` and
`CommitSummary`); split out to keep the commit protocol readable there.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from bsky_backfill.models import DeadLetter
from bsky_backfill.sinks.liveness import Liveness
from bsky_backfill.sinks.provenance import stamp, with_file_metadata
from bsky_backfill.state.base import CommittedFile, RepoDone, RepoFailed

if TYPE_CHECKING:
    from bsky_backfill.sinks.storage import Storage


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """How the sink batches and lays out files."""

    commit_rows: int = 200_000
    """Commit once the open batch holds this many rows (records, dead letters, `_accounts`).
    Files are closed at each commit, so this also bounds how big files get. The
    defaults are `run`'s (--commit-rows, --commit-seconds; a test holds them equal)."""
    commit_seconds: float = 10.0
    """...or once its first row is this old: bounds the work a crash throws away."""
    row_group_rows: int = 128 * 1024
    """Rows per Parquet row group; rows are buffered (as Arrow) up to this per table."""
    max_file_rows: int = 1_000_000
    """Start a new file within a batch past this many rows (huge repos, huge batches)."""
    compression: str = "zstd"
    compression_level: int | None = None
    """None: the codec's default (zstd level 1 in Arrow)."""
    liveness: Liveness = "auto"
    """How recovery tells a dead writer from a live one (sinks/liveness.py): "lock"
    (flock; the "auto" choice on a local filesystem) or "age" (the "auto" choice on
    object stores; also for a filesystem shared by machines whose flock is unreliable)."""
    file_metadata: tuple[tuple[str, str], ...] = ()
    """Key-value metadata written into every file (sinks/provenance.py: tool version,
    the run's filters)."""
    stale_after: float = 3600.0
    """Age rule: a writer whose every tmp file (heartbeat included) is older than this
    many seconds is dead. Live writers rewrite their heartbeat every quarter of it."""


@dataclass(frozen=True, slots=True)
class CommitSummary:
    """What one commit made durable (for logs, events and metrics)."""

    files: tuple[CommittedFile, ...] = ()
    done: int = 0
    failed: int = 0
    dead_letters: int = 0
    rows_by_collection: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class Part:
    """One tmp Parquet file being written: Arrow buffer -> full row groups."""

    __slots__ = ("collection", "final", "pending", "pending_rows", "rows", "schema", "writer")

    def __init__(
        self,
        storage: Storage,
        collection: str,
        final: str,
        tmp: str,
        schema: pa.Schema,
        cfg: SinkConfig,
    ) -> None:
        self.collection = collection
        self.final = final
        self.schema = schema
        self.writer = pq.ParquetWriter(
            storage.abs(tmp),
            with_file_metadata(schema, dict(cfg.file_metadata)),
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


@dataclass(frozen=True, slots=True)
class EncodedFile:
    """A whole Parquet file, encoded away from the writer (`encode_tables`)."""

    collection: str
    data: bytes
    rows: int


def encode_tables(
    tables: dict[str, pa.Table],
    cfg: SinkConfig,
    provenance: tuple[str | None, dt.datetime] | None = None,
) -> list[EncodedFile]:
    """One Parquet file per table, encoded as the writer would write it (record
    tables stamped with `provenance`, (rev, fetched_at), when given).

    Where it sits: big repos' parts built in helper processes (engine/part_pool.py)
    come back as these, so the Parquet encoding (zstd over the JSON column,
    the costliest step after decoding) runs on every core and the bytes that
    cross the process boundary are the compressed ones; the writer adopts them
    as files of its open batch (`DatasetWriter.add_encoded`).
    """
    out = []
    meta = dict(cfg.file_metadata)
    for collection, table in tables.items():
        if provenance is not None and is_record_table(collection):
            table = stamp(table, *provenance)
        table = table.replace_schema_metadata(with_file_metadata(table.schema, meta).metadata)
        sink = pa.BufferOutputStream()
        pq.write_table(
            table,
            sink,
            row_group_size=cfg.row_group_rows,
            compression=cfg.compression,
            compression_level=cfg.compression_level,
        )
        out.append(EncodedFile(collection, sink.getvalue().to_pybytes(), table.num_rows))
    return out


def is_record_table(collection: str) -> bool:
    """A collection's table (not `_deletions` or another of the dataset's own)."""
    return not collection.startswith("_")


@dataclass(slots=True)
class Batch:
    """What the next commit makes durable: files (open and closed) and repo states."""

    started: float | None = None  # time.monotonic() of the first add
    rows: int = 0
    open: dict[str, Part] = field(default_factory=dict)
    closed: list[CommittedFile] = field(default_factory=list)
    done: list[RepoDone] = field(default_factory=list)
    failed: list[RepoFailed] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    dids: set[str] = field(default_factory=set)
    partial: set[str] = field(default_factory=set)
    cursors: list[tuple[str, str | None]] = field(default_factory=list)

    def finals(self) -> list[str]:
        """Final paths of every file of the batch, closed or still open."""
        return [f.path for f in self.closed] + [p.final for p in self.open.values()]


@dataclass(frozen=True, slots=True)
class DiscardedBatch:
    """The repos of a batch thrown away by `DatasetWriter.discard_batch()`.

    None of them is committed; the engine puts them back (`retry_later`).
    """

    done: tuple[str, ...] = ()
    """Repos that were finished (claimed: in_progress in the store)."""
    failed: tuple[str, ...] = ()
    """Repos dead-lettered whole (claimed ones, and unclaimed resolution failures)."""
    partial: tuple[str, ...] = ()
    """Repos still being fetched whose pages (and cursor updates) rode in the batch:
    those pages are lost, so the fetch must restart from the last committed cursor."""

    @property
    def dids(self) -> tuple[str, ...]:
        return tuple(sorted({*self.done, *self.failed, *self.partial}))
