"""Kill the real `run` process with SIGKILL mid-way, several times; the re-run still
lands exactly the ground truth. SIGTERM stops it gracefully and quickly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth


def start_run(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bsky_backfill", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for_requests(
    net: object, target: int, proc: subprocess.Popen[str], limit: float = 60
) -> None:
    """Block until the simulator has served `target` requests in total (or the run ended)."""
    deadline = time.monotonic() + limit
    while net.stats.total() < target and proc.poll() is None:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)


def test_sigkill_at_several_points_then_resume(tmp_path: Path) -> None:
    scenario = Scenario(seed=3, accounts=70, hosts=4, mean_records=50)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        args = [
            "run",
            "--dids",
            str(dids),
            "--out",
            str(out),
            "--plc-url",
            net.plc_url,
            "--allow-private-hosts",
            "--no-progress",
            "--rate-limit",
            "25",
            "--host-concurrency",
            "2",
            "--commit-rows",
            "150",
            "--commit-seconds",
            "0.3",
        ]
        kills = 0
        for step in (12, 25, 40, 60):
            proc = start_run(args)
            wait_for_requests(net, net.stats.total() + step, proc)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=30)
        assert kills >= 2, "the run finished before it could be killed; enlarge the scenario"
        final = run_cli(*args)
        truth = net.truth
    assert final.returncode == 0, final.stderr
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())


def test_sigterm_stops_quickly_and_resumes(tmp_path: Path) -> None:
    scenario = Scenario(seed=4, accounts=40, hosts=2, mean_records=40)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        args = [
            "run",
            "--dids",
            str(dids),
            "--out",
            str(out),
            "--plc-url",
            net.plc_url,
            "--allow-private-hosts",
            "--no-progress",
            "--rate-limit",
            "10",
            "--host-concurrency",
            "1",
        ]
        proc = start_run(args)
        wait_for_requests(net, net.stats.total() + 15, proc)
        assert proc.poll() is None, "the run finished before SIGTERM; enlarge the scenario"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)  # a guard only: a stop that never ends fails here
        assert proc.returncode == 130, proc.returncode
        final = run_cli(*args)
        truth = net.truth
    assert final.returncode == 0, final.stderr
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
