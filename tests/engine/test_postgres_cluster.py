"""Several `run` processes, one PostgreSQL queue, one dataset: one is SIGKILLed mid-run,
the others finish its work once its leases expire; the output is exactly the truth."""

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
from tests.state.pg import fresh_schema_url

GET_REPO = "com.atproto.sync.getRepo"


def test_three_workers_one_killed(tmp_path: Path) -> None:
    scenario = Scenario(seed=61, accounts=60, hosts=4, mean_records=30)
    out = tmp_path / "out"
    with fresh_schema_url() as queue, run_network_in_thread(scenario) as net:
        queue_url = f"{queue}&lease_seconds=3"
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        args = [
            sys.executable, "-m", "bsky_backfill", "run", "--dids", str(dids), "--out",
            str(out), "--queue", queue_url, "--plc-url", net.plc_url, "--allow-private-hosts",
            "--no-progress", "--rate-limit", "6", "--host-concurrency", "1",
            "--commit-seconds", "0.5",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Started in the same instant, as an operator's script does: their start-up
        # recoveries run while the others create their writers (sinks/liveness.py).
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        workers = [
            subprocess.Popen(args, text=True, env=env, **pipes)  # type: ignore[call-overload]
            for _ in range(3)
        ]
        deadline = time.monotonic() + 60
        while net.stats.count(endpoint=GET_REPO) < 25:
            assert time.monotonic() < deadline, "the cluster made no progress"
            assert all(w.poll() is None for w in workers), "a worker ended too early"
            time.sleep(0.05)
        workers[1].send_signal(signal.SIGKILL)
        results = [w.communicate(timeout=180) for w in workers]
        truth = net.truth
        status = run_cli("status", "--queue", queue_url, "--json")
    assert workers[1].returncode == -signal.SIGKILL
    for i in (0, 2):
        assert workers[i].returncode == 0, results[i][1]
    assert status.returncode == 0, status.stderr
    assert '"pending": 0' in status.stdout and '"in_progress": 0' in status.stdout
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
