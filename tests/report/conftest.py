"""A small real dataset for the report tests: the product run on the simulator, once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bsky_backfill.simulate import Scenario, run_network_in_thread
from bsky_backfill.simulate.truth import GroundTruth
from tests.conftest import run_cli

# Profiles make created_at optional (some rows land with a null one); the
# unknown com.example.thing keeps rows without createdAt too.
COLLECTIONS = (
    "app.bsky.feed.post",
    "app.bsky.feed.like",
    "app.bsky.feed.repost",
    "app.bsky.graph.follow",
    "app.bsky.actor.profile",
    "app.bsky.graph.block",
    "app.bsky.graph.list",
    "app.bsky.graph.listitem",
    "com.example.thing",
)


@dataclass(frozen=True)
class Dataset:
    out: Path
    truth: GroundTruth


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """~20 accounts on 3 hosts backfilled through the real CLI (a few seconds)."""
    root = tmp_path_factory.mktemp("report")
    out = root / "out"
    scenario = Scenario(seed=3, accounts=20, hosts=3, mean_records=30)
    with run_network_in_thread(scenario) as net:
        dids = root / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        result = run_cli(
            "run",
            "--dids",
            str(dids),
            "--out",
            str(out),
            "--plc-url",
            net.plc_url,
            "--allow-private-hosts",
            "--no-progress",
            "--collections",
            ",".join(COLLECTIONS),
        )
        truth = net.truth
    assert result.returncode == 0, result.stderr
    return Dataset(out=out, truth=truth)
