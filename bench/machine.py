"""What the figures were measured on: machine, software versions, date, load.

Where it sits: `python -m bench` puts `machine_info()` at the top of the JSON
and of the printed table, so a figure is never quoted without its machine.
The load average is taken before and after: these machines are shared, and
a busy neighbour lowers every figure of a run.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.proc import ROOT
from bsky_backfill.repo import native


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def machine_info() -> dict[str, Any]:
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": _mem_total_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("bsky-backfill", "libipld", "pyarrow", "aiohttp", "orjson")
        },
        "native_verify_loops": native.NATIVE,  # repo/_native.c built (else Python loops)
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(dirty),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
    }
