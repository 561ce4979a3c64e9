"""`--workers N`: several processes on one machine, one SQLite store, exact output."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth
from tests.state.pg import fresh_schema_url


def test_two_workers_give_the_exact_ground_truth(tmp_path: Path) -> None:
    scenario = Scenario(seed=41, accounts=48, hosts=6, mean_records=40)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        result = run_cli(
            "run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
            "--allow-private-hosts", "--no-progress", "--workers", "2", "--rate-limit", "0",
        )  # fmt: skip
        truth = net.truth
        answered = net.stats.total()
    assert result.returncode == 0, result.stderr
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
    # The summary counts both processes' requests, not the first process's alone.
    summary = next(line for line in result.stdout.splitlines() if line.startswith("finished"))
    requests = int(summary.rsplit(" requests", 1)[0].rsplit(" ", 1)[1].replace(",", ""))
    assert requests == answered
    writers = {p.name.split("-")[2] for p in out.rglob("part-*.parquet")}
    assert len(writers) >= 2, "only one process wrote files"


@pytest.mark.parametrize("queue", ["sqlite", "postgresql"])
def test_hosts_go_to_whichever_process_has_room(tmp_path: Path, queue: str) -> None:
    """Hosts are leased at claim time, not split by a hash: with uneven hosts (one
    holds a giant repo) both processes work, each host paced by one of them at a
    time, and the output is exactly the truth."""
    scenario = Scenario(seed=43, accounts=42, hosts=3, mean_records=30, giant_repo=5000)
    out = tmp_path / "out"
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(run_network_in_thread(scenario))
        queue_args = (
            ["--queue", stack.enter_context(fresh_schema_url())] if queue != "sqlite" else []
        )
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        result = run_cli(
            "run", "-v", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
            "--allow-private-hosts", "--no-progress", "--workers", "2", "--rate-limit", "4",
            "--host-concurrency", "1", *queue_args,
        )  # fmt: skip
        truth = net.truth
    assert result.returncode == 0, result.stderr
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
    # Each process says how many repos it claimed (scheduler.py), on its way out.
    claims = {
        int(m[1]): (int(m[2]), int(m[3]))
        for m in re.finditer(
            r"process (\d) of 2: claimed (\d+) repos on (\d+) hosts it took", result.stderr
        )
    }
    assert set(claims) == {0, 1}, result.stderr
    assert all(repos > 0 and hosts > 0 for repos, hosts in claims.values()), claims
    landed = sum(1 for d in truth.accounts if truth.fetchable(d))
    assert sum(repos for repos, _ in claims.values()) >= landed


def children_running_spawn_main(pid: int) -> list[int]:
    """PIDs of `pid`'s multiprocessing worker children (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and "spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def test_a_killed_worker_process_is_taken_over(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    scenario = Scenario(seed=42, accounts=60, hosts=6, mean_records=30)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bsky_backfill", "run", "--dids", str(dids), "--out",
             str(out), "--plc-url", net.plc_url, "--allow-private-hosts", "--no-progress",
             "--workers", "2", "--rate-limit", "8", "--host-concurrency", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        children: list[int] = []
        while not children or net.stats.count(endpoint="com.atproto.sync.getRepo") < 30:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no worker process appeared"
            time.sleep(0.05)
            children = children or children_running_spawn_main(proc.pid)
        os.kill(children[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
        truth = net.truth
    assert proc.returncode == 0, stderr
    assert "took over their hosts" in stderr
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
