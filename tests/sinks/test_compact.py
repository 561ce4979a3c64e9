"""Compaction (sinks/compact.py): fewer, sorted files with the same rows, exactly once.

Killed with SIGKILL at each step of its swap, a restart (recovery) leaves the
old files or the new ones, never both, never neither; on S3 too."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from bsky_backfill.sinks import DatasetWriter, SinkConfig
from bsky_backfill.sinks.compact import compact_dataset
from bsky_backfill.state.sqlite import SqliteStateStore
from tests.sinks.builders import LIKE, POST, expected_uris, extract, read, uris
from tests.sinks.compact_child import SMALL, STORE
from tests.sinks.test_s3 import BUCKET, landed_uris, object_keys, s3  # noqa: F401

TABLES = ("_accounts", "_deadletters", LIKE, POST)


def did(batch: int, i: int) -> str:
    return f"did:plc:c{batch}x{i:03d}"


DIDS = [did(b, i) for b in range(5) for i in range(12)]


def build(out: str, store: SqliteStateStore) -> None:
    """Five commits of twelve repos each (one record dead-lettered per repo)."""
    w = DatasetWriter(out, store, SinkConfig())
    for b in range(5):
        for i in range(12):
            w.add(*extract(did(b, i), bad_records=1))
        w.commit()
    w.close()


def check_exactly_once(out: Path, store: SqliteStateStore) -> dict[str, list[str]]:
    """Every row once, the dead letters once, and on disk exactly the committed files."""
    landed = Counter(uris(out))
    assert all(n == 1 for n in landed.values()), "a row is there twice"
    assert set(landed) == set().union(*(expected_uris(d) for d in DIDS)), "rows are missing"
    dead = Counter(read(out, "_deadletters", "uri"))
    assert all(n == 1 for n in dead.values()) and len(dead) == len(DIDS)
    on_disk = {str(p.relative_to(out)) for t in TABLES for p in (out / t).glob("*.parquet")}
    assert on_disk == {f.path for f in store.committed_files()}
    assert not list((out / "_state" / "tmp").rglob("*.tmp"))
    names: dict[str, list[str]] = {}
    for t in TABLES:
        names[t] = sorted(p.name for p in (out / t).glob("*.parquet"))
    return names


def test_compaction_keeps_the_rows_and_sorts_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = SqliteStateStore(out / STORE)
    build(str(out), store)
    before = {t: sorted(read(out, t)) for t in TABLES}
    report = compact_dataset(str(out), store, SMALL)
    assert {t.collection for t in report.tables} == set(TABLES)
    assert all(t.files_before == 5 and not t.skipped for t in report.tables)
    assert {t: sorted(read(out, t)) for t in TABLES} == before  # every column of every row
    names = check_exactly_once(out, store)
    assert all(n.startswith("compact-") for n in names[POST])  # one month
    assert all(n.startswith("compact-") for n in names["_deadletters"])
    # sorted by did, rkey across the files and row groups; statistics and page index on
    keys: list[tuple[str, str]] = []
    ranges: list[tuple[str, str]] = []
    for name in names[POST]:
        f = pq.ParquetFile(out / POST / name)
        md = f.metadata
        assert md.num_row_groups >= 1
        for g in range(md.num_row_groups):
            col = md.row_group(g).column(md.schema.names.index("did"))
            assert col.statistics is not None and col.statistics.has_min_max
            assert col.has_column_index and col.has_offset_index
            ranges.append((col.statistics.min, col.statistics.max))
        t = f.read(columns=["did", "rkey"])
        keys += list(zip(t.column("did").to_pylist(), t.column("rkey").to_pylist(), strict=True))
        assert md.metadata[b"bsky_backfill.version"]
    assert len(names[POST]) > 1 and len(ranges) >= len(names[POST])
    assert keys == sorted(keys)
    # row groups hold disjoint DID ranges: a per-DID query reads one or two of them
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    # a second compaction has nothing left to do; the rows stay
    again = compact_dataset(str(out), store, SMALL)
    assert all(t.skipped for t in again.tables)
    check_exactly_once(out, store)
    store.close()


def child(out: Path, step: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.sinks.compact_child", str(out), step],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("step", "swapped"),
    [
        ("written", False),  # new tmp files complete, store not told: the old set
        ("stored", True),  # swap committed, nothing renamed: the new set
        ("renamed:0", True),
        ("renamed:1", True),
        ("deleted:0", True),  # new in place, old partly deleted
        ("deleted:3", True),
        ("compacted", True),
    ],
)
def test_kill_9_at_each_step_leaves_the_old_set_or_the_new(
    tmp_path: Path, step: str, swapped: bool
) -> None:
    out = tmp_path / "out"
    store = SqliteStateStore(out / STORE)
    build(str(out), store)
    old = check_exactly_once(out, store)
    died = child(out, step)
    assert died.returncode == -signal.SIGKILL, died.stderr
    # the restart: any writer's recovery settles what the dead compaction left
    w = DatasetWriter(str(out), store, SinkConfig())
    report = w.recover()
    w.close()
    names = check_exactly_once(out, store)
    first = "_accounts"  # the first table compacted: where the child died
    if swapped:
        assert names[first] and all(n.startswith("compact-") for n in names[first])
        assert names[first] != old[first]
    else:
        assert names == old and report.deleted >= 1
    # a compaction run to the end afterwards still ends with each row once
    done = child(out, "none")
    assert done.returncode == 0, done.stderr
    final = check_exactly_once(out, store)
    assert all(n.startswith("compact-") for t in TABLES for n in final[t])
    store.close()


def test_compaction_on_s3(s3: pafs.S3FileSystem, tmp_path: Path) -> None:  # noqa: F811
    out = f"s3://{BUCKET}/compact1"
    with SqliteStateStore(tmp_path / "state.sqlite") as store:
        build(out, store)
        before = landed_uris(s3, "compact1")
        report = compact_dataset(out, store, SMALL)
        assert all(t.files_before == 5 and not t.skipped for t in report.tables)
        committed = {f.path for f in store.committed_files()}
        assert store.retired_files() == []
    after = landed_uris(s3, "compact1")
    assert after == before and all(n == 1 for n in after.values())
    assert set(after) == set().union(*(expected_uris(d) for d in DIDS))
    keys = object_keys(s3, "compact1")
    assert {k for k in keys if k.endswith(".parquet")} == committed
    assert all("/compact-" in k for k in committed)
