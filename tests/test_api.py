"""The Python API, `from bsky_backfill import Backfill`: same options, same result as the CLI."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bsky_backfill import Backfill
from bsky_backfill.errors import UsageError
from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.dataset import assert_matches_truth

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
        ({"dids": ["did:plc:z72i7hdynmk6r22z27h6tvur"], "since": "someday"}, "--since"),
        ({"dids": ["did:plc:z72i7hdynmk6r22z27h6tvur"], "collections": ["bad..nsid"]}, "NSID"),
        ({}, "name what to backfill"),
    ],
)
def test_bad_options_raise_usage_error(
    tmp_path: Path, options: dict[str, object], needle: str
) -> None:
    with pytest.raises(UsageError, match=needle):
        Backfill(out=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
