"""Turning a measured child process into the bench's figures (one dict per row).

Where it sits: every runner (`bench.product`, the ceiling and baseline
drivers in `bench.__main__`) hands its `ChildResult` and what it landed to
`figures`, so every row of the table and of the JSON has the same fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bench.proc import ChildResult

MIB = 1024 * 1024


def figures(
    res: ChildResult, records: int, repos: int, *, seconds: float | None = None
) -> dict[str, Any]:
    """The standard row: throughput over `seconds` (default: the child's wall time)."""
    secs = res.wall_s if seconds is None else seconds
    out: dict[str, Any] = {
        "records": records,
        "repos": repos,
        "seconds": round(secs, 3),
        "wall_s": round(res.wall_s, 3),
        "records_per_s": round(records / secs, 1) if secs > 0 else None,
        "repos_per_s": round(repos / secs, 2) if secs > 0 else None,
        "cpu_s": round(res.cpu_s, 3),
        "cpu_user_s": round(res.cpu_user_s, 3),
        "cpu_sys_s": round(res.cpu_sys_s, 3),
        "cpu_s_per_1m_records": round(res.cpu_s / records * 1e6, 2) if records else None,
        "cores_busy": round(res.cpu_s / secs, 2) if secs > 0 else None,
        "peak_rss_mib": round(res.max_rss_bytes / MIB, 1),
        "tree_rss_peak_mib": round(res.tree_rss_peak_bytes / MIB, 1),
        "returncode": res.returncode,
    }
    if res.returncode != 0:
        out["error"] = res.tail()
    return out


def failed_row(res: ChildResult) -> dict[str, Any]:
    """A row for a child that did not finish (nothing to measure but the failure)."""
    return {"returncode": res.returncode, "error": res.tail(), "wall_s": round(res.wall_s, 3)}


def dataset_rows(out: Path) -> int:
    """Rows in every collection table under a dataset folder (not dead letters or state)."""
    total = 0
    for path in out.glob("*/**/*.parquet"):
        if path.relative_to(out).parts[0].startswith("_"):
            continue
        total += pq.ParquetFile(path).metadata.num_rows
    return total
