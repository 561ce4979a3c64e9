"""DatasetWriter: what lands, how it is laid out, and what a failed batch leaves."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bsky_backfill.models import DeadLetter, RepoExtract
from bsky_backfill.sinks import DEAD_LETTER_SCHEMA, DatasetWriter, SinkConfig, dead_letter_table
from bsky_backfill.sinks.batch import encode_tables
from bsky_backfill.sinks.storage import TMP_DIR
from bsky_backfill.state.base import CommittedFile, RepoDone, RepoFailed, RepoState
from bsky_backfill.state.sqlite import SqliteStateStore
from tests.sinks.builders import LIKE, POST, T0, expected_uris, extract, read, rows_table, uris


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def store(out: Path) -> Iterator[SqliteStateStore]:
    with SqliteStateStore(out / "_state" / "state.sqlite") as s:
        yield s


def writer(out: Path, store: SqliteStateStore, **cfg: float) -> DatasetWriter:
    return DatasetWriter(out, store, SinkConfig(**cfg))  # type: ignore[arg-type]


def parquet_files(out: Path) -> list[Path]:
    return sorted(out.glob("**/*.parquet"))


def tmp_files(out: Path) -> list[Path]:
    """Every tmp file, whichever writer's directory (or the old flat layout) it is in."""
    return sorted((out / TMP_DIR).glob("**/*.tmp"))


def test_add_commit_lands_exactly_the_rows(out: Path, store: SqliteStateStore) -> None:
    w = writer(out, store)
    dids = [f"did:plc:r{i}" for i in range(5)]
    for d in dids:
        w.add(*extract(d))
    summary = w.commit()
    want = set().union(*(expected_uris(d) for d in dids))
    got = uris(out)
    assert len(got) == len(want) and set(got) == want
    rows = dict(summary.rows_by_collection)
    assert summary.done == 5 and rows.pop("_accounts") == 5  # one row per landed repo
    assert sum(rows.values()) == len(want)
    assert store.counts()[RepoState.DONE] == 5
    committed = {f.path for f in store.committed_files()}
    assert committed == {str(p.relative_to(out)) for p in parquet_files(out)}
    assert tmp_files(out) == []
    meta = pq.ParquetFile(out / next(iter(committed))).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert w.commit().files == ()  # empty batch: nothing to do


def test_open_batch_is_invisible_to_readers(out: Path, store: SqliteStateStore) -> None:
    w = writer(out, store, row_group_rows=4)
    w.add(*extract("did:plc:a"))
    w.add(*extract("did:plc:b"))
    assert tmp_files(out), "rows should already stream to tmp files"
    assert parquet_files(out) == []
    con = duckdb.connect()
    with pytest.raises(duckdb.IOException):  # DuckDB: "No files found that match the pattern"
        con.execute(f"SELECT count(*) FROM read_parquet('{out}/**/*.parquet')").fetchall()
    w.commit()
    assert len(uris(out)) == len(expected_uris("did:plc:a") | expected_uris("did:plc:b"))


def test_big_repo_is_written_in_row_groups_and_files(out: Path, store: SqliteStateStore) -> None:
    w = writer(out, store, row_group_rows=1000, max_file_rows=5000)
    big = rows_table("did:plc:big", POST, 12_345)
    w.add(RepoExtract("did:plc:big", None, {POST: big}, []), RepoDone("did:plc:big", None, 12_345))
    # Many small repos: buffered into full row groups, not one tiny group each.
    for i in range(40):
        d = f"did:plc:s{i}"
        w.add(RepoExtract(d, None, {LIKE: rows_table(d, LIKE, 50)}, []), RepoDone(d, None, 50))
    w.commit()
    posts = [p for p in parquet_files(out) if p.parent.name == POST]
    assert [pq.ParquetFile(p).metadata.num_rows for p in posts] == [5000, 5000, 2345]
    for p in posts:
        assert max(rg.num_rows for rg in _row_groups(p)) <= 1000
    [likes] = [p for p in parquet_files(out) if p.parent.name == LIKE]
    assert [rg.num_rows for rg in _row_groups(likes)] == [1000, 1000]
    assert read(out, POST, "count(*), count(DISTINCT uri)") == [(12_345, 12_345)]


def _row_groups(path: Path) -> list[pq.RowGroupMetaData]:
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i) for i in range(meta.num_row_groups)]


def test_schema_change_starts_a_new_file(out: Path, store: SqliteStateStore) -> None:
    w = writer(out, store)
    w.add(*extract("did:plc:a"))
    plain = rows_table("did:plc:b", POST, 3)
    typed = plain.append_column("text", pa.array(["x", "y", "z"]))
    w.add(RepoExtract("did:plc:b", None, {POST: typed}, []), RepoDone("did:plc:b", None, 3))
    w.commit()
    assert len([p for p in parquet_files(out) if p.parent.name == POST]) == 2
    assert read(out, POST, "count(*), count(text)") == [
        (len(extract("did:plc:a")[0].tables[POST]) + 3, 3)
    ]


def test_dead_letters_are_written(out: Path, store: SqliteStateStore) -> None:
    w = writer(out, store)
    w.add(*extract("did:plc:a", bad_records=2))
    gone = DeadLetter("did:plc:b", None, "fetch", "RepoTakendown", "taken down", failed_at=T0)
    w.add_failed(RepoFailed("did:plc:b", "RepoTakendown", "taken down"), gone)
    w.commit()
    rows = read(out, "_deadletters", "did, uri, stage, error, message, failed_at")
    assert sorted(rows, key=str) == sorted(
        [
            (
                "did:plc:a",
                f"at://did:plc:a/{POST}/bad0",
                "validate",
                "InvalidRecord",
                "no text",
                T0,
            ),
            (
                "did:plc:a",
                f"at://did:plc:a/{POST}/bad1",
                "validate",
                "InvalidRecord",
                "no text",
                T0,
            ),
            ("did:plc:b", None, "fetch", "RepoTakendown", "taken down", T0),
        ],
        key=str,
    )
    st = store.status()
    assert st.dead_letters_by_code == {"InvalidRecord": 2, "RepoTakendown": 1}
    assert "_deadletters" not in st.records_by_collection
    assert (st.done, st.failed) == (1, 1)


def test_dead_letter_table_schema() -> None:
    t = dead_letter_table([DeadLetter("did:plc:a", None, "resolve", "DidNotFound", "m")])
    assert t.schema == DEAD_LETTER_SCHEMA
    assert t.schema.field("failed_at").type == pa.timestamp("us", tz="UTC")
    assert dead_letter_table([]).num_rows == 0


def test_should_commit_by_rows_and_by_age(
    out: Path, store: SqliteStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = writer(out, store, commit_rows=30, commit_seconds=10.0)
    assert not w.should_commit()
    clock = [1000.0]
    monkeypatch.setattr("bsky_backfill.sinks.parquet.time.monotonic", lambda: clock[0])
    w.add(*extract("did:plc:a"))  # fewer than 30 rows
    assert not w.should_commit()
    clock[0] += 10.0
    assert w.should_commit()
    w.commit()
    assert not w.should_commit()
    for i in range(3):
        w.add(*extract(f"did:plc:n{i}"))
    assert w.batch_rows >= 30 and w.should_commit()


def test_abort_deletes_the_batch_and_names_its_repos(out: Path, store: SqliteStateStore) -> None:
    w = writer(out, store, row_group_rows=2)
    w.add(*extract("did:plc:a"))
    w.add_failed(
        RepoFailed("did:plc:b", "X", "x"), DeadLetter("did:plc:b", None, "fetch", "X", "x")
    )
    assert w.abort() == ["did:plc:a", "did:plc:b"]
    assert tmp_files(out) == []
    assert w.commit().files == ()
    assert parquet_files(out) == [] and store.committed_files() == []


def test_close_refuses_to_drop_an_open_batch(out: Path, store: SqliteStateStore) -> None:
    w = writer(out, store)
    w.add(*extract("did:plc:a"))
    with pytest.raises(RuntimeError, match="uncommitted"):
        w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.add(*extract("did:plc:b"))
    # Closing released the writer: its leftovers are a dead writer's to settle.
    report = writer(out, store).recover()
    # (two tables and `_accounts`)
    assert (report.renamed, report.deleted, report.dead_writers) == (0, 3, 1)
    assert not (out / TMP_DIR / w.writer_id).exists()
    w.close()  # closing twice: a no-op


def test_a_repo_twice_in_a_batch_is_refused(out: Path, store: SqliteStateStore) -> None:
    w = writer(out, store)
    w.add(*extract("did:plc:a"))
    assert w.holds("did:plc:a") and not w.holds("did:plc:b")
    with pytest.raises(ValueError, match="already"):
        w.add(*extract("did:plc:a"))
    w.commit()
    assert not w.holds("did:plc:a")


@pytest.mark.parametrize("name", ["../evil", "_deadletters", "a/b.c", "app", ".x.y", ""])
def test_unsafe_collection_names_are_refused(out: Path, store: SqliteStateStore, name: str) -> None:
    w = writer(out, store)
    ex = RepoExtract("did:plc:a", None, {name: rows_table("did:plc:a", POST, 1)}, [])
    with pytest.raises(ValueError, match="collection"):
        w.add(ex, RepoDone("did:plc:a", None, 1))
    w.add(*extract("did:plc:b"))  # the refusal left the batch usable
    w.commit()


class ExplodingStore(SqliteStateStore):
    def commit(self, *args: Sequence[object]) -> None:
        raise OSError("disk on fire")


def test_failed_store_commit_leaves_tmp_for_recovery(out: Path) -> None:
    path = out / "_state" / "state.sqlite"
    with ExplodingStore(path) as bad, SqliteStateStore(path) as good:
        w = DatasetWriter(out, bad)
        w.add(*extract("did:plc:a"))
        with pytest.raises(OSError, match="fire"):
            w.commit()
        assert parquet_files(out) == []
        # The outcome is unknown: the writer keeps the batch aside and takes nothing new.
        assert w.holds("did:plc:a")
        with pytest.raises(RuntimeError, match="discard_batch"):
            w.add(*extract("did:plc:b"))
        with pytest.raises(RuntimeError, match="discard_batch"):
            w.abort()
        # While its writer lives, nobody else's recovery touches the files...
        assert DatasetWriter(out, good).recover().kept == 3  # two tables and `_accounts`
        assert len(tmp_files(out)) == 3
        with pytest.raises(RuntimeError, match="uncommitted"):
            w.close()
        # ...once it is gone, recovery asks the store: never committed, so deleted.
        report = DatasetWriter(out, good).recover()
    assert report.deleted == 3 and report.renamed == 0
    assert tmp_files(out) == []


def test_failed_write_breaks_the_batch_until_abort(
    out: Path, store: SqliteStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = writer(out, store, row_group_rows=1)

    def boom(*a: object, **k: object) -> None:
        raise OSError("no space left")

    w.add(*extract("did:plc:a"))
    monkeypatch.setattr(pq.ParquetWriter, "write_table", boom)
    with pytest.raises(OSError):
        w.add(*extract("did:plc:b"))
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="abort"):
        w.commit()
    assert w.abort() == ["did:plc:a", "did:plc:b"]
    w.add(*extract("did:plc:c"))
    w.commit()
    assert set(uris(out)) == expected_uris("did:plc:c")


def test_recover_handles_every_leftover_of_the_flat_layout(
    out: Path, store: SqliteStateStore
) -> None:
    """Tmp files directly in `_state/tmp` (earlier versions): a dead writer's."""
    w = writer(out, store)
    w.add(*extract("did:plc:a"))
    w.commit()
    [post] = [f for f in store.committed_files() if f.collection == POST]
    final = out / post.path
    tmp = out / TMP_DIR / (post.path.replace("/", "%2F") + ".tmp")
    final.rename(tmp)  # as if the crash came before the rename
    (out / TMP_DIR / "app.bsky.feed.like%2Fpart-x.parquet.tmp").write_bytes(b"half")  # uncommitted
    (out / TMP_DIR / "notes.txt").write_text("not ours")
    store.commit([CommittedFile("app.bsky.graph.block/gone.parquet", "x", 1)], [], [], [])
    report = DatasetWriter(out, store).recover()
    assert (report.renamed, report.deleted) == (1, 1)
    assert report.missing == ("app.bsky.graph.block/gone.parquet",)
    assert final.exists() and not tmp.exists()
    assert (out / TMP_DIR / "notes.txt").exists()
    # A tmp whose final is already there (a copy-then-delete move that died): dropped.
    tmp.hardlink_to(final)
    assert DatasetWriter(out, store).recover().deleted == 1
    assert final.exists() and not tmp.exists()


def test_writers_get_unique_file_names(out: Path, store: SqliteStateStore) -> None:
    for i in range(3):
        w = writer(out, store)
        w.add(*extract(f"did:plc:w{i}"))
        w.commit()
    names = [p.name for p in parquet_files(out)]
    assert len(names) == len(set(names)) == 9  # two tables and `_accounts`, thrice
    assert read(out, POST, "count(DISTINCT uri) = count(*)") == [(True,)]


def test_times_round_trip_as_utc(out: Path, store: SqliteStateStore) -> None:
    w = writer(out, store)
    w.add(*extract("did:plc:a"))
    w.commit()
    [(first,)] = read(out, POST, "min(created_at)")
    assert first == T0 and first.utcoffset() == dt.timedelta(0)
    [(at,)] = read(out, POST, "typeof(created_at)")[:1]
    assert at == "TIMESTAMP WITH TIME ZONE"


def test_encoded_parts_land_with_their_repo_or_not_at_all(
    out: Path, store: SqliteStateStore
) -> None:
    """Big repos' parts encoded in helper processes (`add_encoded`) are files of the
    open batch: committed with the repo's done mark, deleted by an abort."""
    cfg = SinkConfig()
    w = writer(out, store)
    did = "did:plc:big"
    ex, done = extract(did, bad_records=2)
    halves = [
        {c: t.slice(0, 1) for c, t in ex.tables.items()},
        {c: t.slice(1) for c, t in ex.tables.items()},
    ]
    for i, tables in enumerate(halves):
        w.add_encoded(did, encode_tables(tables, cfg), ex.dead_letters if i else [])
    assert parquet_files(out) == [] and len(tmp_files(out)) >= 2  # invisible until the commit
    w.add(RepoExtract(did=did, rev="rev1", tables={}, dead_letters=[]), done)
    summary = w.commit()
    assert summary.done == 1
    assert sorted(uris(out)) == sorted(expected_uris(did))
    assert len(read(out, "_deadletters")) == 2
    assert tmp_files(out) == []
    # An aborted big repo leaves nothing.
    w2 = writer(out, store)
    w2.add_encoded("did:plc:big2", encode_tables(extract("did:plc:big2")[0].tables, cfg), [])
    before = parquet_files(out)
    assert w2.abort() == []  # partial repos are not named: they were never in the batch's dids
    assert tmp_files(out) == [] and parquet_files(out) == before
