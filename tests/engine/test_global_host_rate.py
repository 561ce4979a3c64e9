"""`--global-host-rate`: machines behind one egress IP share one budget per host.

Two workers on one PostgreSQL queue against a host that throttles without
publishing its budget: without the shared cap they overrun it (429s); with
`--global-host-rate N` they never send more than N requests in one second
together (the host allows 2N+1 per window, and any 1 s window overlaps at most
two of the cap's seconds), so it never throttles.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bsky_backfill.simulate import RateLimit, Scenario, run_network_in_thread
from tests.dataset import assert_matches_truth
from tests.state.pg import fresh_schema_url

CAP = 5


def two_workers(tmp_path: Path, *extra: str) -> tuple[int, object, Path]:
    limit = RateLimit(limit=2 * CAP + 1, window_s=1.0, get_repo_limit=None, headers=False)
    scenario = Scenario(seed=111, accounts=36, hosts=1, mean_records=10, did_web=0,
                        statuses={}, tombstoned=0, unknown=0, rate_limit=limit)  # fmt: skip
    out = tmp_path / "out"
    with fresh_schema_url() as queue, run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        args = [
            sys.executable, "-m", "bsky_backfill", "run", "--dids", str(dids), "--out",
            str(out), "--queue", queue, "--plc-url", net.plc_url, "--allow-private-hosts",
            "--no-progress", "--rate-limit", "0", "--host-concurrency", "4", *extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs = [subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]  # fmt: skip
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        return net.stats.count(status=429), net.truth, out


def test_without_a_shared_cap_two_workers_overrun_the_host(tmp_path: Path) -> None:
    throttled, _, _ = two_workers(tmp_path)
    assert throttled > 0


def test_shared_cap_keeps_the_cluster_under_the_host_budget(tmp_path: Path) -> None:
    throttled, truth, out = two_workers(tmp_path, "--global-host-rate", str(CAP))
    assert throttled == 0
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())  # type: ignore[attr-defined]
