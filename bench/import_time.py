"""Import time: what a fresh interpreter pays before the first line of real work.

Run: `python -m bench.import_time [--rounds N] [--json FILE]`; also the last part of
`python -m bench` (leave it out with `--skip import`).

Where it sits: beside the throughput rows. The package root is lazy (an import
of a leaf such as `bsky_backfill.syntax` pulls in no aiohttp, duckdb or pyarrow)
and the CLI imports its commands' modules when they run; these figures hold
both to account. Each is the best of `--rounds` fresh interpreters:

- `python -c pass`: the interpreter alone, the floor the others are divided by;
- `import bsky_backfill.syntax`: the import alone, timed inside the child, and
  the child's whole wall time;
- `bsky-backfill --version` (as `python -m bsky_backfill --version`): the whole
  process, start to exit;
- with `-X importtime` (one extra run): how many modules `--version` imports,
  in how long, and the packages that cost the most (cumulative).

Not a test: figures depend on the machine, its disk cache and its neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.proc import ROOT

_TIMED_IMPORT = (
    "import time; t = time.perf_counter(); import bsky_backfill.syntax; "
    "print(time.perf_counter() - t)"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _wall(argv: list[str]) -> tuple[float, str]:
    """Seconds from start to exit of one child, and its stdout."""
    t = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=_env(), check=True)
    return time.perf_counter() - t, done.stdout


def importtime_summary(argv: list[str], top: int = 6) -> dict[str, Any]:
    """`-X importtime` of one run: how many modules, their total, and the packages
    (other than ours) that cost the most, each with everything it imported."""
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    total = modules = 0
    packages: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        modules += 1
        if not name[1:].startswith(" "):  # depth 0: imported by the script itself
            total += int(cumulative)
        name = name.strip()
        if "." not in name and name != "bsky_backfill":  # a package's own import line
            packages[name] = max(packages.get(name, 0), int(cumulative))
    costliest = sorted(packages.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return {
        "modules": modules,
        "total_ms": round(total / 1000, 1),
        "top_packages_ms": {name: round(us / 1000, 1) for name, us in costliest},
    }


def run_import_time(rounds: int = 7) -> dict[str, Any]:
    """Best-of-`rounds` figures (milliseconds), the ratios to the bare interpreter,
    and the `-X importtime` summary of `--version`."""
    py = sys.executable
    version = [py, "-m", "bsky_backfill", "--version"]
    bare, syntax_wall, syntax_import, version_wall = [], [], [], []
    for _ in range(rounds):  # interleaved: a neighbour's burst hits every row alike
        bare.append(_wall([py, "-c", "pass"])[0])
        wall, out = _wall([py, "-c", _TIMED_IMPORT])
        syntax_wall.append(wall)
        syntax_import.append(float(out.strip()))
        version_wall.append(_wall(version)[0])
    best = {
        "bare_python_ms": min(bare) * 1000,
        "syntax_import_ms": min(syntax_import) * 1000,
        "syntax_process_ms": min(syntax_wall) * 1000,
        "version_process_ms": min(version_wall) * 1000,
    }
    row: dict[str, Any] = {k: round(v, 1) for k, v in best.items()}
    row["rounds"] = rounds
    row["syntax_process / bare_python"] = round(
        best["syntax_process_ms"] / best["bare_python_ms"], 2
    )
    row["version_process / bare_python"] = round(
        best["version_process_ms"] / best["bare_python_ms"], 2
    )
    row["version_importtime"] = importtime_summary(version)
    return row


def print_import_time(row: dict[str, Any]) -> None:
    it = row["version_importtime"]
    top = ", ".join(f"{name} {ms:.0f}" for name, ms in it["top_packages_ms"].items())
    print(
        f"\nimport time (best of {row['rounds']} fresh interpreters): "
        f"python -c pass {row['bare_python_ms']:.0f} ms; "
        f"import bsky_backfill.syntax {row['syntax_import_ms']:.0f} ms "
        f"(process {row['syntax_process_ms']:.0f} ms, "
        f"{row['syntax_process / bare_python']:.2f}x bare); "
        f"bsky-backfill --version {row['version_process_ms']:.0f} ms "
        f"({row['version_process / bare_python']:.2f}x bare)"
    )
    print(
        f"  --version imports {it['modules']} modules in {it['total_ms']:.0f} ms "
        f"(-X importtime); costliest packages (ms, with what they import): {top}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.import_time", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="fresh interpreters per figure")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    row = run_import_time(args.rounds)
    print_import_time(row)
    if args.json is not None:
        args.json.write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
