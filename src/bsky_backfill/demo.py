"""`bsky-backfill demo`: backfill the embedded simulated network and show what landed.

Where it sits: a thin driver over simulate/ (the network, on 127.0.0.1 in a
background thread) and engine/ (the real backfill, exactly as `run` does it,
with private hosts allowed because the simulated hosts are on loopback).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from rich.console import Console

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.manager import Backfill
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.output import duckdb_hint, print_summary
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.simulate import Scenario, run_network_in_thread


def run_demo(out: Path, *, accounts: int = 60, hosts: int = 4, seed: int = 2024) -> None:
    console = Console(highlight=False)
    scenario = Scenario(seed=seed, accounts=accounts, hosts=hosts)
    console.print(
        f"starting a simulated network: PLC directory + {hosts} PDS hosts on 127.0.0.1, "
        f"{accounts} accounts ..."
    )
    with run_network_in_thread(scenario) as net:
        truth = net.truth
        console.print(
            f"  {len(truth.input_dids)} DIDs (incl. taken-down, deactivated, tombstoned and "
            f"unknown ones), {len(truth.records):,} records; PLC at {net.plc_url}"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
            fh.write("\n".join(truth.input_dids) + "\n")
            dids_file = fh.name
        settings = RunSettings(
            out=str(out),
            plc_url=net.plc_url,
            collections=frozenset(DEFAULT_COLLECTIONS),
            allow_private_hosts=True,
            rate_limit=None,
        )
        source = DidSource.from_args([], dids_file)
        summary = asyncio.run(Backfill(settings, source).run())
        Path(dids_file).unlink(missing_ok=True)
    print_summary(summary, out)
    console.print(duckdb_hint(out))
