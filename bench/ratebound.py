"""The rate-bound run: 8 hosts, `--rate-limit 10`, no server limits; is the budget used?

Where it sits: the last part of `python -m bench`. A separate simulated
network of many tiny repos (so each host's work is one getRepo per repo and
requests, not CPU, bound the run), backfilled by the product with a client
budget of `RATE` requests/s per host. The simulator counts every request per
host (`net.stats.count(host=...)`); a thread samples those counts every
50 ms, so each host's achieved rate is measured over its own busy window
(first request seen -> last request seen), not diluted by start-up (DID
resolution at the PLC directory) or by hosts finishing at different times.
The whole-run figure (requests / run wall time) is reported beside it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bench.product import run_product
from bsky_backfill.simulate import Scenario, SimNetwork, run_network_in_thread

RATE = 10.0
HOSTS = 8


def rate_scenario(per_host: int, cache_dir: Path) -> Scenario:
    """HOSTS hosts x `per_host` small, healthy did:plc repos (one request each to fetch)."""
    return Scenario(
        seed=7_10,
        accounts=HOSTS * per_host,
        hosts=HOSTS,
        mean_records=5.0,
        size_sigma=0.5,
        empty_repos=0,
        did_web=0,
        statuses={},
        tombstoned=0,
        unknown=0,
        migrated=0,
        other_service_first=0,
        invalid_rate=0.0,
        orphan_rate=0.0,
        rate_limit=None,
        cache_dir=cache_dir,
    )


class _Sampler:
    """Per-host request counts over time, sampled from the simulator's stats."""

    def __init__(self, net: SimNetwork, hosts: list[str], every_s: float = 0.05) -> None:
        self.net = net
        self.hosts = hosts
        self.every_s = every_s
        self.samples: dict[str, list[tuple[float, int]]] = {h: [] for h in hosts}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rate", daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def _take(self) -> None:
        now = time.perf_counter()
        for h in self.hosts:
            self.samples[h].append((now, self.net.stats.count(host=h)))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._take()

    def busy_rate(self, host: str) -> tuple[float, int, float]:
        """(requests/s over the busy window, requests, window seconds) for one host."""
        samples = self.samples[host]
        final = samples[-1][1]
        first = next((i for i, (_, n) in enumerate(samples) if n > 0), None)
        if first is None or final == 0:
            return 0.0, 0, 0.0
        # The window opens at the last sample before the first request was seen
        # and closes at the first sample that saw the final count.
        t0 = samples[max(first - 1, 0)][0]
        t1 = next(t for t, n in samples if n == final)
        window = max(t1 - t0, 1e-9)
        return final / window, final, window


def run_rate_bound(per_host: int, cache_dir: Path, work: Path) -> dict[str, Any]:
    """Build (or load) the rate scenario, run the product against it; per-host figures."""
    scenario = rate_scenario(per_host, cache_dir)
    with run_network_in_thread(scenario) as net:
        dids = net.write_dids(work / "rate-dids.txt")
        hosts = [f"pds{i}" for i in range(HOSTS)]
        with _Sampler(net, hosts) as sampler:
            row, _ = run_product(
                net.plc_url,
                dids,
                work / "rate-out",
                ["--rate-limit", str(RATE)],
                work / "rate-product.log",
            )
        figures: dict[str, dict[str, Any]] = {}
        for h in hosts:
            rate, n, window = sampler.busy_rate(h)
            figures[h] = {
                "requests": n,
                "busy_s": round(window, 3),
                "requests_per_s": round(rate, 2),
                "of_budget": round(rate / RATE, 3),
            }
        total = sum(v["requests"] for v in figures.values())
    rates = [v["of_budget"] for v in figures.values()]
    wall = row.get("wall_s") or 0.0
    return {
        "budget_per_host": RATE,
        "hosts": HOSTS,
        "repos": scenario.accounts,
        "product": row,
        "per_host": figures,
        "min_of_budget": min(rates),
        "mean_of_budget": round(sum(rates) / len(rates), 3),
        "whole_run_requests_per_s_per_host": round(total / HOSTS / wall, 2) if wall else None,
    }
