"""Compaction: a table's many small committed files rewritten as few large, sorted ones.

Where it sits: `bsky-backfill compact` (and `run --compact` at the end of a
run). A run commits one file per table per batch (every --commit-rows rows or
--commit-seconds), so a whole-network dataset is ~1M files of a few MB, each covering every DID
and every month: a reader can skip nothing. Compaction reads the files a run
wrote (`part-*.parquet`) of one table, sorts their rows by month of
`created_at`, then `did`, then `rkey` (`uri` where a table has no `rkey`), and
writes them as files of about `file_bytes`, `compact-<writer>-<n>.parquet`,
with row groups of about `row_group_bytes` that never span two months (rows
without `created_at` come last), statistics and page indexes on:

- a per-month query prunes by the row groups' `created_at` min/max (a row
  group holds one month);
- a per-DID query prunes by their `did` min/max (within a month, rows are
  sorted by DID: each row group holds a narrow DID range), reading about one
  row group per month of the DID's activity.

Month files would serve the same pruning, but at study scale they make more
files than they replace (one per table and month); row groups carry it.

Rows are never changed, dropped or merged: the same rows before and after,
`_deletions` still subtracts the same `(uri, cid)` pairs, and refresh's
landed index (a DuckDB scan of the table) reads them as before.

Exactly once, like a commit (`DatasetWriter.swap`): the new files are written
as tmp files of this writer, and one state transaction replaces the old paths
by the new (`StateStore.replace_files`), which records the old as retired;
then the new are renamed into place and the old deleted. `recover()` finishes
whatever a crash interrupted (renames the new, deletes the retired). Files a
running run commits meanwhile are not in the snapshot and stay as they are;
two compactions of one table cannot both win (`FilesChangedError`).

Memory is bounded: DuckDB sorts out of core (its `memory_limit`, spilling to
a temporary directory) and hands back record batches; at most one row group of
rows is held here before it is written.
"""

from __future__ import annotations

import contextlib
import posixpath
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from bsky_backfill import __version__
from bsky_backfill.sinks.batch import SinkConfig
from bsky_backfill.sinks.parquet import DatasetWriter
from bsky_backfill.sinks.provenance import FILTER_KEY, VERSION_KEY, with_file_metadata
from bsky_backfill.sinks.recovery import RecoveryReport
from bsky_backfill.sinks.storage import SUPERSEDED
from bsky_backfill.state.base import CommittedFile, StateStore
from bsky_backfill.state.errors import FilesChangedError

__all__ = ["CompactConfig", "CompactReport", "TableCompaction", "compact_dataset"]

RUN_PREFIX = "part-"
"""Files a run wrote: what compaction takes as input."""
COMPACT_PREFIX = "compact-"
_MONTH = "_bsky_month"  # the sort's month key, never written


@dataclass(frozen=True, slots=True)
class CompactConfig:
    """How compaction sizes and sorts its output."""

    row_group_bytes: int = 128 * 1024 * 1024
    """Target row group size (uncompressed, as Arrow holds it): also what this
    process buffers at most before writing."""
    file_bytes: int = 512 * 1024 * 1024
    """Target file size on storage (compressed): a month with more rows gets more files."""
    memory_limit: str = "1GB"
    """DuckDB's memory for the sort; beyond it, it spills to `temp_dir`."""
    threads: int = 2
    temp_dir: str | None = None
    """Where DuckDB spills (None: the system's temporary directory)."""
    min_files: int = 2
    """A table with fewer run-written files than this is left alone."""
    batch_rows: int = 65_536
    """Rows per record batch fetched from the sort."""
    page_bytes: int = 1024 * 1024
    """Target data page size: what a reader that finds one row in a row group reads
    of each column it needs (page indexes let readers skip the other pages)."""
    order: str = "month"
    """"month": by month of created_at, then did, rkey (per-month and per-DID
    queries both prune); "did": by did, rkey only (per-DID queries prune best,
    per-month queries not at all)."""


@dataclass(frozen=True, slots=True)
class TableCompaction:
    """What compaction did to one table."""

    collection: str
    files_before: int
    files_after: int
    rows: int
    bytes_before: int
    bytes_after: int
    skipped: str = ""
    """Why nothing was done ("" when the files were swapped)."""


@dataclass(slots=True)
class CompactReport:
    tables: list[TableCompaction] = field(default_factory=list)
    recovery: RecoveryReport | None = None
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables if not t.skipped)


StepHook = Callable[[str], None]


def compact_dataset(
    out: str,
    store: StateStore,
    config: CompactConfig | None = None,
    *,
    collections: Sequence[str] | None = None,
    step_hook: StepHook | None = None,
) -> CompactReport:
    """Compact every table of the dataset at `out` (or those in `collections`).

    First settles what crashed writers and compactions left (`recover()`), then
    compacts each table from the store's snapshot of its committed files."""
    cfg = config or CompactConfig()
    t0 = time.monotonic()
    meta = _file_metadata(store)
    writer = DatasetWriter(out, store, SinkConfig(file_metadata=meta), step_hook=step_hook)
    report = CompactReport()
    try:
        report.recovery = writer.recover()
        by_table: dict[str, list[CommittedFile]] = {}
        for f in store.committed_files():
            by_table.setdefault(f.collection, []).append(f)
        for collection in sorted(by_table):
            if collection == SUPERSEDED or (collections and collection not in collections):
                continue
            report.tables.append(_compact_table(writer, by_table[collection], cfg, dict(meta)))
    finally:
        writer.close()
    report.seconds = time.monotonic() - t0
    return report


def _file_metadata(store: StateStore) -> tuple[tuple[str, str], ...]:
    return ((VERSION_KEY, __version__), (FILTER_KEY, store.get_meta("filter") or "{}"))


@dataclass(slots=True)
class _Inputs:
    paths: list[str]
    rows: int
    stored_bytes: int
    schema: pa.Schema


def _inputs(writer: DatasetWriter, files: list[CommittedFile]) -> _Inputs:
    storage = writer.storage
    picked = [f for f in files if posixpath.basename(f.path).startswith(RUN_PREFIX)]
    paths: list[str] = []
    schemas: list[pa.Schema] = []
    rows = stored = 0
    for f in sorted(picked, key=lambda f: f.path):
        try:
            with storage.fs.open_input_file(storage.abs(f.path)) as fh:
                md = pq.read_metadata(fh)
                stored += fh.size()
        except FileNotFoundError:
            continue  # its rename is still pending: left for the next compaction
        paths.append(f.path)
        schemas.append(md.schema.to_arrow_schema().remove_metadata())
        rows += md.num_rows
    schema = pa.unify_schemas(schemas) if schemas else pa.schema([])
    return _Inputs(paths, rows, stored, schema)


def _compact_table(
    writer: DatasetWriter, files: list[CommittedFile], cfg: CompactConfig, meta: dict[str, str]
) -> TableCompaction:
    collection = files[0].collection
    src = _inputs(writer, files)
    n = len(src.paths)
    if n < cfg.min_files:
        return TableCompaction(collection, n, n, src.rows, src.stored_bytes, src.stored_bytes,
                               skipped="too few files")  # fmt: skip
    out = _Output(writer, collection, src, cfg, meta)
    try:
        for batch in _sorted_batches(writer, src, cfg):
            out.add(batch)
        out.finish()
        if out.rows != src.rows:  # never swap a set that is not the same rows
            raise RuntimeError(f"{collection}: compaction wrote {out.rows} of {src.rows} rows")
        writer.swap(src.paths, out.files)
    except FilesChangedError:
        writer.discard_files([f.path for f in out.files])
        return TableCompaction(collection, n, n, src.rows, src.stored_bytes, src.stored_bytes,
                               skipped="compacted by another process meanwhile")  # fmt: skip
    except BaseException:
        out.abandon()
        raise
    return TableCompaction(
        collection, n, len(out.files), src.rows, src.stored_bytes, out.stored_bytes
    )


def _sort_keys(schema: pa.Schema) -> list[str]:
    names = set(schema.names)
    keys = [k for k in ("did", "rkey") if k in names]
    if "rkey" not in names and "uri" in names:
        keys.append("uri")
    return keys


def _sorted_batches(
    writer: DatasetWriter, src: _Inputs, cfg: CompactConfig
) -> Iterator[pa.RecordBatch]:
    """The table's rows in output order, as record batches carrying the month key."""
    storage = writer.storage
    paths = [storage.abs(p) for p in src.paths]
    month = "NULL"
    if cfg.order == "month" and "created_at" in src.schema.names:
        # From the epoch, not the session's time zone (the month of the UTC time).
        month = "strftime(make_timestamp(epoch_us(created_at)), '%Y-%m')"
    order = ", ".join([f"{_MONTH} NULLS LAST", *_sort_keys(src.schema)])
    with tempfile.TemporaryDirectory(prefix="bsky-compact-", dir=cfg.temp_dir) as spill:
        con = duckdb.connect(
            config={
                "memory_limit": cfg.memory_limit,
                "threads": cfg.threads,
                "temp_directory": spill,
                "preserve_insertion_order": False,
            }
        )
        try:
            if storage.local:
                # DuckDB's own reader: streamed, and inside its memory limit.
                source = "read_parquet($paths, union_by_name=true)"
                params: dict[str, object] = {"paths": paths}
            else:
                # Object stores through the dataset's own filesystem (credentials,
                # endpoint), which DuckDB scans as an Arrow dataset.
                fs = storage.fs
                dataset = ds.dataset(paths, schema=src.schema, format="parquet", filesystem=fs)
                con.register("src", dataset)
                source, params = "src", {}
            query = f"SELECT *, {month} AS {_MONTH} FROM {source} ORDER BY {order}"
            reader = con.sql(query, params=params).to_arrow_reader(cfg.batch_rows)
            if reader is None:
                raise RuntimeError("DuckDB returned no result for the sort")
            yield from reader
        finally:
            con.close()


class _Output:
    """The sorted rows cut into month files and row groups, written as tmp files."""

    def __init__(
        self,
        writer: DatasetWriter,
        collection: str,
        src: _Inputs,
        cfg: CompactConfig,
        meta: dict[str, str],
    ) -> None:
        self.writer = writer
        self.collection = collection
        self.schema = with_file_metadata(src.schema, meta)
        self.cfg = cfg
        self.stored_per_row = max(1, src.stored_bytes // max(1, src.rows))
        # Sized from the first batch (Arrow's bytes per row): the footers' sizes
        # count encoded pages, several times smaller than the rows in memory.
        self.group_rows = self.file_rows = 0
        names = src.schema.names
        self.sorting = [pq.SortingColumn(names.index(k)) for k in _sort_keys(src.schema)]
        self.files: list[CommittedFile] = []
        self.rows = 0
        self.stored_bytes = 0
        self._month: str | None = None
        self._pq: pq.ParquetWriter | None = None
        self._final = ""
        self._file_rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def _size(self, table: pa.Table) -> None:
        cfg = self.cfg
        per_row = max(1, table.nbytes // max(1, table.num_rows))
        self.group_rows = max(64, cfg.row_group_bytes // per_row)
        groups = max(1, cfg.file_bytes // self.stored_per_row // self.group_rows)
        self.file_rows = groups * self.group_rows

    def add(self, batch: pa.RecordBatch) -> None:
        months = batch.column(_MONTH)
        plain = self.schema.remove_metadata()
        table = pa.Table.from_batches([batch]).select(plain.names).cast(plain)
        if not self.group_rows:
            self._size(table)
        # The batch is sorted by month: one slice per run of equal months.
        start = 0
        while start < batch.num_rows:
            value = months[start].as_py()
            stop = _run_end(months, start, value)
            self._month_of(value)
            self._append(table.slice(start, stop - start))
            start = stop

    def _month_of(self, month: str | None) -> None:
        # A month never shares a row group with another: its rows' created_at
        # min/max then let a per-month query skip every other row group.
        if month != self._month:
            self._flush()
        self._month = month

    def _append(self, piece: pa.Table) -> None:
        offset = 0
        while offset < piece.num_rows:
            if self._pq is None:
                self._open()
            room = self.file_rows - self._file_rows - self._pending_rows
            part = piece.slice(offset, room)
            self._pending.append(part)
            self._pending_rows += part.num_rows
            offset += part.num_rows
            if self._pending_rows >= self.group_rows:
                self._flush()
            if self._file_rows + self._pending_rows >= self.file_rows:
                self._close()

    def _open(self) -> None:
        final, tmp = self.writer.new_path(self.collection, COMPACT_PREFIX.rstrip("-"))
        storage = self.writer.storage
        self._final = final
        self._pq = pq.ParquetWriter(
            storage.abs(tmp),
            self.schema,
            filesystem=storage.fs,
            compression="zstd",
            write_statistics=True,
            write_page_index=True,
            data_page_size=self.cfg.page_bytes,
            sorting_columns=self.sorting,
        )
        self._file_rows = 0

    def _flush(self) -> None:
        if not self._pending_rows or self._pq is None:
            return
        t = pa.concat_tables(self._pending)
        self._pq.write_table(t, row_group_size=max(self.group_rows, t.num_rows))
        self._file_rows += t.num_rows
        self._pending, self._pending_rows = [], 0

    def _close(self) -> None:
        if self._pq is None:
            return
        self._flush()
        self._pq.close()
        self._pq = None
        storage = self.writer.storage
        tmp = self.writer.tmp_of(self._final)
        storage.fsync_file(tmp)
        with contextlib.suppress(Exception):
            info = storage.fs.get_file_info(storage.abs(tmp))
            self.stored_bytes += info.size or 0
        self.files.append(CommittedFile(self._final, self.collection, self._file_rows))
        self.rows += self._file_rows

    def finish(self) -> None:
        self._close()

    def abandon(self) -> None:
        """Give up: close and delete every tmp file written so far."""
        finals = [f.path for f in self.files]
        if self._pq is not None:
            with contextlib.suppress(Exception):
                self._pq.close()
            finals.append(self._final)
            self._pq = None
        self.writer.discard_files(finals)


def _run_end(months: pa.Array, start: int, value: str | None) -> int:
    """End of the run of `value` that starts at `start` (the array is sorted)."""
    lo, hi = start + 1, len(months)
    # Binary search: positions before the end hold `value`, after it do not.
    while lo < hi:
        mid = (lo + hi) // 2
        if months[mid].as_py() == value:
            lo = mid + 1
        else:
            hi = mid
    return lo
