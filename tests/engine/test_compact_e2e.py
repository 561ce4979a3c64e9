"""`bsky-backfill compact` on a real run's dataset: several commits, a refresh with
`_deletions`, then compaction. Every reader sees the same rows and the same
current view before and after; refresh keeps working after it; and compaction
beside a run that is still landing into the dataset leaves the exact truth."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds

from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth, collections_in, read_rows
from tests.engine.test_refresh import current_view

POST = "app.bsky.feed.post"


def all_rows(out: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows (every column), sorted, as DuckDB reads them."""
    tables = [*collections_in(out), "_deadletters", "_deletions"]
    got: dict[str, list[tuple[Any, ...]]] = {}
    for t in tables:
        rows = read_rows(out, t)
        # (repr: a column may hold None in one row and a string in another)
        got[t] = sorted((tuple(sorted(r.items())) for r in rows), key=repr)
    return got


def other_readers(out: Path) -> dict[str, int]:
    """Row counts through pyarrow.dataset, pandas and Polars (the readers' own engines)."""
    counts: dict[str, int] = {}
    for t in collections_in(out):
        dataset = ds.dataset(out / t, format="parquet")
        table = dataset.to_table()
        counts[t] = table.num_rows
        uris = table.column("uri").to_pylist()
        assert len(set(uris)) == len(uris) or t == POST  # posts may repeat (updated)
        assert len(pd.read_parquet(out / t)) == counts[t]
        assert (
            pl.scan_parquet(str(out / t / "*.parquet")).select(pl.len()).collect().item()
            == counts[t]
        )
    return counts


def test_compact_after_commits_and_a_refresh(tmp_path: Path) -> None:
    scenario = Scenario(seed=163, accounts=24, hosts=2, mean_records=60)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        common = ["--out", str(out), "--plc-url", net.plc_url, "--allow-private-hosts",
                  "--no-progress", "--rate-limit", "0"]  # fmt: skip
        first = run_cli("run", "--dids", str(dids), "--commit-rows", "200", *common)
        assert first.returncode == 0, first.stderr
        landed = net.truth.expected_rows()
        with_posts = sorted({r.did for r in landed.values() if r.collection == POST})
        victim = sorted(
            r for r in landed.values() if r.did == with_posts[0] and r.collection == POST
        )
        net.mutate(with_posts[0], delete_uris=(victim[0].uri,))
        net.mutate(with_posts[1], add_posts=4)
        refresh = run_cli("run", "--refresh", *common)
        assert refresh.returncode == 0, refresh.stderr
        files_before = len(list(out.rglob("*.parquet")))
        rows_before, view_before = all_rows(out), current_view(out)
        counts_before = other_readers(out)
        status_before = run_cli("status", "--out", str(out), "--json").stdout

        compacted = run_cli("compact", "--out", str(out))
        assert compacted.returncode == 0, compacted.stderr
        assert "compacted" in compacted.stdout
        files_after = len(list(out.rglob("*.parquet")))
        assert files_after < files_before
        assert all_rows(out) == rows_before
        assert current_view(out) == view_before
        assert other_readers(out) == counts_before
        # counts in `status` come from the store's files: the same rows
        assert run_cli("status", "--out", str(out), "--json").stdout == status_before

        # refresh after compaction: the landed index reads the compacted files
        late = net.mutate(with_posts[2], add_posts=2)
        gone = sorted(r for r in net.truth.expected_rows().values()
                      if r.did == with_posts[1] and r.collection == POST)[0]  # fmt: skip
        net.mutate(with_posts[1], delete_uris=(gone.uri,))
        again = run_cli("run", "--refresh", *common)
        assert again.returncode == 0, again.stderr
        truth = net.truth
    view = current_view(out)
    expected = truth.expected_rows()
    assert set(view) == set(expected)
    assert {r.uri for r in late.added} <= set(view)
    deletions = read_rows(out, "_deletions")
    assert Counter(d["uri"] for d in deletions)[gone.uri] == 1
    con = duckdb.connect()
    # the README's records-only glob: no dead letters or deletions mixed in
    n = con.execute(
        "SELECT count(*) FROM read_parquet(?, union_by_name=true)",
        [str(out / "[!_]*" / "**" / "*.parquet")],
    ).fetchone()
    assert n is not None and n[0] == sum(len(read_rows(out, c)) for c in collections_in(out))


def test_compact_beside_a_running_run(tmp_path: Path) -> None:
    scenario = Scenario(seed=164, accounts=60, hosts=3, mean_records=40)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        log = (tmp_path / "run.log").open("w")
        run = subprocess.Popen(
            [sys.executable, "-m", "bsky_backfill", "run", "--dids", str(dids), "--out", str(out),
             "--plc-url", net.plc_url, "--allow-private-hosts", "--no-progress",
             "--rate-limit", "4", "--commit-rows", "100", "--commit-seconds", "0.2"],
            stdout=subprocess.DEVNULL, stderr=log, text=True,
        )  # fmt: skip
        compactions = swapped = 0
        try:
            while run.poll() is None:
                state = out / "_state" / "state.sqlite"
                if state.exists():
                    c = run_cli("compact", "--out", str(out))
                    assert c.returncode == 0, c.stderr
                    compactions += 1
                    swapped += c.stdout.count(" -> ")
                time.sleep(0.2)
            run.wait(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
            log.close()
        assert run.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
        final = run_cli("compact", "--out", str(out))
        assert final.returncode == 0, final.stderr
        truth = net.truth
    assert compactions >= 2 and swapped >= 1  # it really ran while the run landed
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())


def test_compact_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ("--out", str(tmp_path / "missing")),
        ("--out", str(empty)),  # a directory without a backfill's state
        ("--out", str(empty), "--row-group-size", "lots"),
        ("--out", "s3://bucket/prefix"),  # remote without --queue
        ("--out", str(empty), "--sort", "random"),
    ]
    for args in cases:
        result = run_cli("compact", *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bsky-backfill: error:"), result.stderr
    assert list(empty.iterdir()) == []  # nothing written


def test_run_compact_compacts_when_the_run_has_finished(tmp_path: Path) -> None:
    scenario = Scenario(seed=165, accounts=16, hosts=2, mean_records=40)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        result = run_cli("run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
                         "--allow-private-hosts", "--no-progress", "--rate-limit", "0",
                         "--commit-rows", "100", "--compact")  # fmt: skip
        assert result.returncode == 0, result.stderr
        truth = net.truth
    assert "compacted" in result.stdout
    for c in collections_in(out):
        names = [p.name for p in (out / c).glob("*.parquet")]
        # a table that had one file keeps it; the others are one compacted file
        assert len(names) == 1, (c, names)
    assert any(p.name.startswith("compact-") for p in out.glob("app.bsky.feed.*/*.parquet"))
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
