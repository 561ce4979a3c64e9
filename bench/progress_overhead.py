"""Does the progress display slow a run down? The same simulator backfill, display on and off.

Run: `.venv/bin/python bench/progress_overhead.py [--accounts 300] [--hosts 4] [--rounds 3]`.

One simulated network (no rate limits: the run is as fast as this machine
allows, where any overhead would show) is backfilled `--rounds` times in each
mode, the modes interleaved so that drift on a shared machine hits both:

- `off`:  no observer at all;
- `live`: the rich live display (4 Hz), rendered for real into a file (a
  console forced into terminal mode, so every frame is drawn and written);
- `log`:  the one-line progress log of a non-terminal run (every 10 s).

Prints the median wall time of each mode and its difference to `off`, and
the time spent inside the observer's tick hooks (where all of the display's
work happens: sampling, rendering, writing), which is the overhead itself and,
unlike wall time, hardly moves with what else runs on the machine.
Not a test: numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.manager import Backfill
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.observe.start import start_observers
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.simulate import Scenario, SimNetwork, run_network_in_thread


async def _one_run(net: SimNetwork, out: Path, mode: str, screen: Path) -> tuple[float, float, int]:
    """(wall seconds, seconds spent inside the observer's tick hooks, records)."""
    settings = RunSettings(
        out=out,
        plc_url=net.plc_url,
        allow_private_hosts=True,
        rate_limit=None,
        collections=DEFAULT_COLLECTIONS,
    )
    backfill = Backfill(settings, DidSource.from_args(net.truth.input_dids, None))
    in_hooks = [0.0]

    def timed(hook: Callable[[Backfill], None]) -> Callable[[Backfill], None]:
        def run(b: Backfill) -> None:
            t0 = time.perf_counter()
            hook(b)
            in_hooks[0] += time.perf_counter() - t0

        return run

    with screen.open("w") as f:
        console = Console(file=f, force_terminal=True, width=140)
        observers = None
        if mode != "off":
            observers = start_observers(
                backfill, live_progress=mode == "live", log_progress=mode == "log", console=console
            )
            # Everything the display does (sampling, rendering, writing) happens in its hook.
            backfill.on_tick[:] = [timed(h) for h in backfill.on_tick]
        start = time.perf_counter()
        try:
            summary = await backfill.run()
        finally:
            if observers is not None:
                observers.close()
        seconds = time.perf_counter() - start
    return seconds, in_hooks[0], summary.records_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--mean-records", type=float, default=80.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="off,live,log", help="comma-separated subset")
    args = parser.parse_args()
    logging.getLogger("bsky_backfill").setLevel(logging.ERROR)
    scenario = Scenario(
        seed=7, accounts=args.accounts, hosts=args.hosts, mean_records=args.mean_records
    )
    modes = tuple(args.modes.split(","))
    times: dict[str, list[float]] = {m: [] for m in modes}
    hooks: dict[str, list[float]] = {m: [] for m in modes}
    records = 0
    with run_network_in_thread(scenario) as net, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        asyncio.run(_one_run(net, root / "warmup", "off", root / "screen-warmup.txt"))
        for r in range(args.rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:  # none always first
                screen = root / f"screen-{mode}.txt"
                seconds, in_hooks, records = asyncio.run(
                    _one_run(net, root / f"{mode}-{r}", mode, screen)
                )
                times[mode].append(seconds)
                hooks[mode].append(in_hooks)
        live_screen = root / "screen-live.txt"
        drawn = live_screen.stat().st_size if live_screen.exists() else 0
    print(
        f"{args.accounts} accounts on {args.hosts} hosts, {records:,} records a run, "
        f"{args.rounds} rounds, medians (the live display wrote {drawn:,} bytes in its last run)"
    )
    base = statistics.median(times[modes[0]])
    for mode in modes:
        median = statistics.median(times[mode])
        in_hooks = statistics.median(hooks[mode])
        runs = ", ".join(f"{t:.2f}" for t in times[mode])
        print(
            f"  progress {mode:4s}  wall {median:6.2f} s ({100 * (median - base) / base:+5.1f}% "
            f"vs {modes[0]}; runs {runs}); inside its hooks {1000 * in_hooks:7.1f} ms "
            f"= {100 * in_hooks / median:.2f}% of the run"
        )


if __name__ == "__main__":
    main()
