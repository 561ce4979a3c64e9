"""End to end on the simulator: real loopback HTTP, real SQLite, real Parquet, the real CLI.

The expected output comes from the simulator's own ground truth (written as it
built the repos), never from the product's decoder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from bsky_backfill.repo.native import PURE_PYTHON_ENV
from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth, read_rows

WANTED = (
    "app.bsky.feed.post",
    "app.bsky.feed.like",
    "app.bsky.graph.follow",
    "app.bsky.actor.profile",
    "com.example.thing",
)


def write_dids(path: Path, dids: list[str]) -> Path:
    path.write_text("# input\n" + "\n".join(dids) + "\n\n")
    return path


def test_filtered_backfill_equals_ground_truth(tmp_path: Path) -> None:
    scenario = Scenario(seed=11, accounts=30, hosts=3, mean_records=40)
    since = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    until = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path / "dids.txt", net.truth.input_dids)
        result = run_cli(
            "run",
            "--dids",
            str(dids),
            "--out",
            str(out),
            "--plc-url",
            net.plc_url,
            "--allow-private-hosts",
            "--collections",
            ",".join(WANTED),
            "--since",
            "2024-01-01",
            "--until",
            "2025-01-01T00:00:00Z",
            "--no-progress",
        )
        truth = net.truth
    assert result.returncode == 0, result.stderr
    expected = truth.expected_rows(WANTED, since, until)
    assert expected, "scenario too small to test anything"
    assert_matches_truth(out, expected, truth.expected_dead_letters(WANTED))
    # the window really cut something, and only wanted collections exist
    assert len(truth.expected_rows(WANTED)) > len(expected)
    assert {p.name for p in out.iterdir()} <= {*WANTED, "_accounts", "_deadletters", "_state"}


def test_default_collections_and_status(tmp_path: Path) -> None:
    scenario = Scenario(seed=5, accounts=16, hosts=2, mean_records=30)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path / "dids.txt", net.truth.input_dids)
        args = (
            "run",
            "--dids",
            str(dids),
            "--out",
            str(out),
            "--plc-url",
            net.plc_url,
            "--allow-private-hosts",
            "--no-progress",
        )
        first = run_cli(*args)
        assert first.returncode == 0, first.stderr
        requests_after_first = net.stats.total()
        second = run_cli(*args)  # resume on a finished dataset: nothing fetched again
        assert second.returncode == 0, second.stderr
        assert net.stats.total() == requests_after_first
        truth = net.truth
    expected = truth.expected_rows()
    assert_matches_truth(out, expected, truth.expected_dead_letters())

    status = run_cli("status", "--out", str(out), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["total"] == len(set(truth.input_dids))
    assert report["done"] + report["failed"] == report["total"]
    per_collection: dict[str, int] = {}
    for rec in expected.values():
        per_collection[rec.collection] = per_collection.get(rec.collection, 0) + 1
    assert report["records_by_collection"] == per_collection
    dead = read_rows(out, "_deadletters", "error")
    codes: dict[str, int] = {}
    for row in dead:
        codes[row["error"]] = codes.get(row["error"], 0) + 1
    assert report["dead_letters_by_code"] == codes
    human = run_cli("status", "--out", str(out))
    assert human.returncode == 0 and "done" in human.stdout


def test_the_pure_python_path_lands_the_same_ground_truth(tmp_path: Path) -> None:
    """The whole pipeline with the C extension switched off (repo/native.py's
    `BSKY_BACKFILL_PURE_PYTHON`): the Python twins are the reference, and a run on
    them lands exactly the ground truth, verification on, as the default run does."""
    scenario = Scenario(seed=23, accounts=24, hosts=2, mean_records=40)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path / "dids.txt", net.truth.input_dids)
        os.environ[PURE_PYTHON_ENV] = "1"
        try:
            result = run_cli(
                "run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
                "--allow-private-hosts", "--no-progress",
            )  # fmt: skip
        finally:
            del os.environ[PURE_PYTHON_ENV]
        truth = net.truth
    assert result.returncode == 0, result.stderr
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
