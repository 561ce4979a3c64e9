"""The Python API, `from bsky_backfill import Backfill`: same options, same result as the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bsky_backfill import Backfill, RunSummary
from bsky_backfill.errors import UsageError
from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.dataset import assert_matches_truth
from tests.fixture_paths import REPO_ROOT

WANTED = ["app.bsky.feed.post", "app.bsky.graph.follow"]


def test_backfill_from_python(tmp_path: Path) -> None:
    since = dt.date(2024, 1, 1)
    with run_network_in_thread(Scenario(seed=91, accounts=10, hosts=2, mean_records=30)) as net:
        summary = Backfill(
            dids=net.truth.input_dids, collections=WANTED, since=since, out=tmp_path / "out",
            plc_url=net.plc_url, allow_private_hosts=True, rate_limit=0,
        ).run()  # fmt: skip
        truth = net.truth
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    expected = truth.expected_rows(WANTED, start)
    assert_matches_truth(tmp_path / "out", expected, truth.expected_dead_letters(WANTED))
    assert summary.records_total == len(expected)
    assert summary.repos_done + summary.repos_failed == summary.repos_total
    assert summary.repos_pending == 0
    assert sum(summary.dead_letters.values()) == len(truth.expected_dead_letters(WANTED))


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"did": ["did:plc:z72i7hdynmk6r22z27h6tvur"]}, "unknown option"),
        ({"dids": ["not-a-did"]}, "not-a-did"),
        ({"dids": ["did:plc:z72i7hdynmk6r22z27h6tvur"], "since": "someday"}, "since='someday'"),
        ({"dids": ["did:plc:z72i7hdynmk6r22z27h6tvur"], "rate_limit": -1}, "rate_limit=-1"),
        ({"dids": ["did:plc:z72i7hdynmk6r22z27h6tvur"], "collections": ["bad..nsid"]}, "NSID"),
        ({}, "name what to backfill"),
    ],
)
def test_bad_options_raise_usage_error(
    tmp_path: Path, options: dict[str, object], needle: str
) -> None:
    with pytest.raises(UsageError) as caught:
        Backfill(out=tmp_path / "out", **options)
    assert needle in caught.value.message
    assert "--" not in caught.value.message  # parameters, not CLI flags
    assert not (tmp_path / "out").exists()


def test_run_inside_a_running_event_loop_as_jupyter_does(tmp_path: Path) -> None:
    """A notebook cell calls `run()` with the kernel's loop running in its thread."""
    with run_network_in_thread(Scenario(seed=93, accounts=8, hosts=2, mean_records=20)) as net:
        backfill = Backfill(
            dids=net.truth.input_dids, collections=WANTED, out=tmp_path / "out",
            plc_url=net.plc_url, allow_private_hosts=True, rate_limit=0,
        )  # fmt: skip

        async def cell() -> RunSummary:
            asyncio.get_running_loop()  # the situation asyncio.run() refuses
            return backfill.run()

        summary = asyncio.run(cell())
        truth = net.truth
    expected = truth.expected_rows(WANTED)
    assert_matches_truth(tmp_path / "out", expected, truth.expected_dead_letters(WANTED))
    per_collection = Counter(r.collection for r in expected.values())
    assert summary.records_this_run == dict(per_collection)
    assert summary.records == dict(per_collection)
    assert not summary.stopped


def test_readme_notebook_example_runs_in_a_running_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("<!-- notebook-example -->\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}

    async def cell() -> None:
        exec(compile(block, "README notebook example", "exec"), namespace)

    asyncio.run(cell())
    summary = namespace["summary"]
    assert summary.records_this_run["app.bsky.feed.post"] > 0
    posts_by_did = namespace["top"].fetchall()
    assert sum(n for _, n in posts_by_did) == summary.records_this_run["app.bsky.feed.post"]
    assert (tmp_path / "practice-data" / "app.bsky.feed.post").is_dir()
    assert str(summary.records_this_run["app.bsky.graph.follow"]) in capsys.readouterr().out
