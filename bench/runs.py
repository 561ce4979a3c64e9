"""Drivers for the ceiling and baseline rows: start their child processes, collect figures.

Where it sits: called by `bench.__main__` between the product runs and the
report. Each variant runs in a fresh child (`bench.proc.run_child`) that
writes its own figures to a JSON file; throughput is taken over the child's
timed loop (first file read -> last Parquet file closed), so interpreter
start-up and imports are left out of the ceiling, which makes it stricter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.ceiling import read_manifest
from bench.figures import failed_row, figures
from bench.proc import ChildResult, python_module, run_child, run_children


def run_ceiling(cars: Path, work: Path, variant: str, processes: int = 1) -> dict[str, Any]:
    """The ceiling with `variant`, its CARs split over `processes` concurrent children."""
    tag = f"{variant}-x{processes}"
    jobs = []
    for i in range(processes):
        out = work / f"ceiling-{tag}-{i}"
        shutil.rmtree(out, ignore_errors=True)
        argv = python_module(
            "bench.ceiling",
            "--cars", str(cars),
            "--out", str(out),
            "--variant", variant,
            "--shard", f"{i}/{processes}",
            "--result", str(work / f"ceiling-{tag}-{i}.json"),
        )  # fmt: skip
        jobs.append((argv, work / f"ceiling-{tag}-{i}.log"))
    results = run_children(jobs)
    parts = []
    for i, res in enumerate(results):
        shutil.rmtree(work / f"ceiling-{tag}-{i}", ignore_errors=True)
        if res.returncode != 0:
            return failed_row(res)
        parts.append((res, json.loads((work / f"ceiling-{tag}-{i}.json").read_text())))
    return _merge(parts, variant)


def _merge(parts: list[tuple[ChildResult, dict[str, Any]]], variant: str) -> dict[str, Any]:
    """One row for N concurrent children: sums of work and CPU, the slowest loop's time."""
    seconds = max(d["loop_s"] for _, d in parts)
    records = sum(d["records"] for _, d in parts)
    repos = sum(d["repos"] for _, d in parts)
    rows = [figures(res, d["records"], d["repos"], seconds=d["loop_s"]) for res, d in parts]
    row = figures(parts[0][0], records, repos, seconds=seconds)
    cpu = sum(r.cpu_s for r, _ in parts)
    row.update(
        variant=variant,
        processes=len(parts),
        cpu_s=round(cpu, 3),
        cpu_s_per_1m_records=round(cpu / records * 1e6, 2) if records else None,
        cores_busy=round(cpu / max(r.wall_s for r, _ in parts), 2),
        peak_rss_mib=max(r["peak_rss_mib"] for r in rows),
        tree_rss_peak_mib=round(sum(r["tree_rss_peak_mib"] for r in rows), 1),
        dead_letters=sum(d["dead_letters"] for _, d in parts),
        repos_failed=sum(d["repos_failed"] for _, d in parts),
        car_bytes=sum(d["car_bytes"] for _, d in parts),
        wall_s=round(max(r.wall_s for r, _ in parts), 3),
    )
    if parts[0][1].get("fallback_repos") is not None:
        row["fallback_repos"] = sum(d["fallback_repos"] for _, d in parts)
    if parts[0][1].get("loop_cpu_s") is not None:  # the decode floor: the loop's own CPU
        row["loop_cpu_s"] = round(sum(d["loop_cpu_s"] for _, d in parts), 3)
    return row


def baseline_subset(cars: Path, target_records: int) -> list[str]:
    """did:plc repos in manifest order, none bigger than a quarter of the target, up to it."""
    chosen: list[str] = []
    total = 0
    for item in read_manifest(cars):
        if total >= target_records:
            break
        if item.did.startswith("did:plc:") and 0 < item.records <= target_records // 4:
            chosen.append(item.did)
            total += item.records
    return chosen


def run_baseline(plc_url: str, cars: Path, work: Path, target_records: int) -> dict[str, Any]:
    """The seed-style listRecords baseline over a subset of about `target_records` records."""
    dids = baseline_subset(cars, target_records)
    dids_file = work / "baseline-dids.txt"
    dids_file.write_text("\n".join(dids) + "\n")
    out = work / "baseline-out"
    shutil.rmtree(out, ignore_errors=True)
    result_file = work / "baseline.json"
    argv = python_module(
        "bench.baseline",
        "--plc", plc_url,
        "--dids", str(dids_file),
        "--out", str(out),
        "--result", str(result_file),
    )  # fmt: skip
    res = run_child(argv, work / "baseline.log")
    if res.returncode != 0:
        return failed_row(res)
    data = json.loads(result_file.read_text())
    row = figures(res, data["records"], data["repos"])
    row.update(
        requests=data["requests"],
        pace_s=data["pace_s"],
        requests_per_s=round(data["requests"] / res.wall_s, 2),
    )
    shutil.rmtree(out, ignore_errors=True)
    return row
