"""bsky-backfill end to end, as a user runs it: `python -m bsky_backfill run ...` in a child.

Where it sits: `python -m bench` starts the simulator in its own process (a
thread), writes the DIDs file, and calls `run_product` for each product row
(default flags; `--no-verify`; `--workers 2`; the rate-bound run). Always
`--method car --allow-private-hosts --no-progress`; `--rate-limit 0` (no
client-side budget) unless the caller passes its own. Records are counted
in the Parquet files the run committed; repos from `status --json`.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.figures import dataset_rows, figures
from bench.proc import ChildResult, python_module, run_child


def product_argv(plc_url: str, dids: Path, out: Path, extra: list[str]) -> list[str]:
    # `--did` in `extra` replaces the DIDs file (the start-up row: one small repo).
    source = [] if "--did" in extra else ["--dids", str(dids)]
    args = ["run", *source, "--out", str(out), "--plc-url", plc_url]
    args += ["--method", "car", "--allow-private-hosts", "--no-progress"]
    if "--rate-limit" not in extra:
        args += ["--rate-limit", "0"]
    return python_module("bsky_backfill", *args, *extra)


def run_product(
    plc_url: str, dids: Path, out: Path, extra: list[str], log: Path, timeout_s: float = 1800.0
) -> tuple[dict[str, Any], ChildResult]:
    """One end-to-end run into a fresh `out`; its figures row and the raw child result."""
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    res = run_child(product_argv(plc_url, dids, out, extra), log, timeout_s=timeout_s)
    after = resource.getrusage(resource.RUSAGE_SELF)
    status = repo_status(out)
    row = figures(res, dataset_rows(out) if out.is_dir() else 0, int(status.get("done", 0)))
    row["flags"] = " ".join(extra)
    row["repos_failed"] = status.get("failed")
    row["repos_total"] = status.get("total")
    # The simulator serves from this (the bench) process, on the same cores.
    sim = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    row["simulator_cpu_s"] = round(sim, 3)
    return row, res


def repo_status(out: Path) -> dict[str, Any]:
    """`bsky-backfill status --out OUT --json` (empty when there is no state)."""
    done = subprocess.run(
        [sys.executable, "-m", "bsky_backfill", "status", "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {}
    try:
        value: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {}
    return value
