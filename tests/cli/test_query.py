"""`bsky-backfill query`: SQL over current views of a refreshed dataset, printed or written."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from bsky_backfill.query import SHORT_NAMES
from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli

POST = "app.bsky.feed.post"


def build_refreshed_dataset(tmp_path: Path) -> tuple[Path, Counter[str], int, str]:
    """A dataset, one post deleted on its host, refreshed: (out, current counts per
    collection, standing dead letters, the deleted post's URI)."""
    out = tmp_path / "out"
    scenario = Scenario(seed=51, accounts=12, hosts=2, mean_records=30, did_web=1)
    with run_network_in_thread(scenario) as net:
        dids = net.write_dids(tmp_path / "dids.txt")
        common = ["--out", str(out), "--plc-url", net.plc_url, "--allow-private-hosts",
                  "--no-progress", "--rate-limit", "0"]  # fmt: skip
        first = run_cli("run", "--dids", str(dids), *common)
        assert first.returncode == 0, first.stderr
        landed = net.truth.expected_rows()
        gone = sorted(r.uri for r in landed.values() if r.collection == POST)[0]
        net.mutate(gone.split("/")[2], delete_uris=(gone,))
        refresh = run_cli("run", "--refresh", *common)
        assert refresh.returncode == 0, refresh.stderr
        expected = Counter(r.collection for r in net.truth.expected_rows().values())
        dead = len(net.truth.expected_dead_letters())
    assert expected[POST] == Counter(r.collection for r in landed.values())[POST] - 1
    return out, expected, dead, gone


def test_query_current_views_history_and_exports(tmp_path: Path) -> None:
    out, expected, dead, gone = build_refreshed_dataset(tmp_path)
    counts = tmp_path / "counts.csv"
    sql = (
        "SELECT 'posts' AS v, count(*) AS n FROM posts UNION ALL "
        "SELECT 'likes', count(*) FROM likes UNION ALL "
        "SELECT 'follows', count(*) FROM \"app.bsky.graph.follow\" UNION ALL "
        "SELECT 'dead_letters', count(*) FROM dead_letters UNION ALL "
        "SELECT 'deletions', count(*) FROM deletions"
    )
    result = run_cli("query", "--out", str(out), "--to", str(counts), sql)
    assert result.returncode == 0, result.stderr
    with counts.open() as fh:
        got = {row["v"]: int(row["n"]) for row in csv.DictReader(fh)}
    assert got == {
        "posts": expected[POST],
        "likes": expected["app.bsky.feed.like"],
        "follows": expected["app.bsky.graph.follow"],
        "dead_letters": dead,
        "deletions": 1,
    }

    # --history: the deleted post is still in the files
    history = tmp_path / "history.json"
    result = run_cli("query", "--history", "--out", str(out), "--to", str(history),
                     f"SELECT uri FROM posts WHERE uri = '{gone}'")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(history.read_text()) == [{"uri": gone}]

    # every collection: the short name and the NSID agree with the truth
    exported = tmp_path / "per_collection.parquet"
    result = run_cli("query", "--out", str(out), "--to", str(exported),
                     " UNION ALL ".join(f"SELECT '{c}' AS c, count(*) AS n FROM {SHORT_NAMES[c]}"
                                        for c in expected))  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(exported).to_pylist()
    assert {r["c"]: r["n"] for r in rows} == dict(expected)

    # printed as a table; --out from the environment
    env = dict(os.environ, BSKY_BACKFILL_OUT=str(out))
    printed = subprocess.run(
        [sys.executable, "-m", "bsky_backfill", "query", "SELECT count(*) AS n FROM posts"],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    cells = [line.strip("│ ") for line in printed.stdout.splitlines()]
    assert cells[:5] == ["┌───────┐", "n", "int64", "├───────┤", str(expected[POST])]


def test_query_bad_input_is_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "_deadletters").mkdir(parents=True)
    target = tmp_path / "x.csv"
    for args, needle in [
        (["SELECT * FROM nowhere"], "views: accounts, dead_letters, deletions"),
        (["SELEC 1"], "Parser Error"),
        (["--to", str(tmp_path / "x.txt"), "SELECT 1"], ".csv, .json"),
        (["--to", str(target), "SELECT * FROM nowhere"], "nowhere"),
    ]:
        result = run_cli("query", "--out", str(out), *args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and needle in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    missing = run_cli("query", "--out", str(tmp_path / "nothing"), "SELECT 1")
    assert missing.returncode == 2 and "no such directory" in missing.stderr
