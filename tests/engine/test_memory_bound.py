"""Memory does not grow with the input: a run over 200k DIDs stays under a fixed RSS.

A whole-network run enqueues ~40M DIDs; any per-DID structure kept in memory
(a cache, a set of seen DIDs, per-repo bookkeeping) would grow without bound.
Here `--all-from-plc` streams a 200k-account PLC export (simulate/bulk.py: the
accounts are made on demand, so the harness itself stays small) into the
queue, and the run fetches repos until the simulator has served 5,000 of
them; the harness samples the product's RSS from /proc throughout, then stops
it gracefully. The bound holds whatever the machine's speed: it is a size, not a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bsky_backfill.simulate.bulk import BulkNetwork
from tests.conftest import run_cli

ACCOUNTS = 200_000
FETCHED = 5_000
RSS_BOUND = 640 * 1024 * 1024
"""The product's peak RSS over the whole run (the issue's limit is 1 GiB). Measured
on 2026-12-03 with this test at other sizes: 2k DIDs ~260 MiB, 50k ~380, 200k
~425-480, 400k ~490, 800k ~476: it levels off (SQLite's 64 MiB page cache and the
writer's buffers fill; nothing is kept per DID)."""


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (FileNotFoundError, ProcessLookupError):
        return 0


def test_rss_stays_bounded_over_200k_dids(tmp_path: Path) -> None:
    out = tmp_path / "out"
    net = BulkNetwork(ACCOUNTS, hosts=8)
    with net.serve_in_thread():
        args = [
            sys.executable, "-m", "bsky_backfill", "run", "--all-from-plc", "--plc-url",
            net.plc_url, "--out", str(out), "--allow-private-hosts", "--no-progress",
            "--rate-limit", "0",
        ]  # fmt: skip
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        peak = 0
        try:
            deadline = time.monotonic() + 1500  # a hang guard only
            while not net.export_exhausted or net.get_repo_served < FETCHED:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "the run made no progress"
                peak = max(peak, _rss(proc.pid))
                time.sleep(0.1)
            peak = max(peak, _rss(proc.pid))
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err[-2000:]
    print(f"peak RSS {peak >> 20} MiB over {ACCOUNTS} DIDs")
    assert peak < RSS_BOUND, f"peak RSS {peak >> 20} MiB over {ACCOUNTS} DIDs"
    status = run_cli("status", "--out", str(out), "--json")
    counts = json.loads(status.stdout)
    assert counts["total"] == ACCOUNTS
    assert counts["done"] >= FETCHED - 100  # what was fetched before the stop landed
    assert counts["failed"] == 0
