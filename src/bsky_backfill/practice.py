"""`bsky-backfill simulate`: keep the embedded network up to practise `run` against it.

Where it sits: a thin driver over simulate/ (the network, on 127.0.0.1 in a
background thread, exactly as `demo` starts it). It writes the network's
account list to a DIDs file, prints the `run` command that backfills it
(PLC URL, that file, `--allow-private-hosts` because every host is on
loopback, and `--dns-server`: the network's own DNS answers its handles), then
serves until SIGINT/SIGTERM. The same seed gives the same
accounts and records, so a practice dataset can be rebuilt and compared.
"""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path
from types import FrameType

import click

from bsky_backfill.errors import UsageError
from bsky_backfill.simulate import Scenario, run_network_in_thread


def check_writable_file(path: Path, flag: str) -> None:
    """A file we can create (before the network starts, so bad input costs nothing)."""
    if path.is_dir() or not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: not a file in an existing directory")


def serve(
    dids_file: Path, out: str, *, accounts: int, hosts: int, seed: int, handles: bool = False
) -> None:
    """Start the network, write `dids_file` (its accounts' handles with `handles`),
    print the `run` command, serve until stopped."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    scenario = Scenario(seed=seed, accounts=accounts, hosts=hosts)
    click.echo(f"starting a simulated network: {accounts} accounts on {hosts} PDS hosts ...")
    try:
        with run_network_in_thread(scenario) as net:
            truth = net.truth
            listed = [f"@{h}" for h in net.handles()] if handles else truth.input_dids
            if handles:
                dids_file.write_text("# simulated network handles\n" + "\n".join(listed) + "\n")
            else:
                net.write_dids(dids_file)
            command = [
                "bsky-backfill", "run", "--dids", str(dids_file), "--plc-url", net.plc_url,
                "--dns-server", net.dns_server, "--allow-private-hosts", "--out", out,
            ]  # fmt: skip
            click.echo(f"PLC directory  {net.plc_url}")
            click.echo(f"PDS hosts      {' '.join(net.host_urls)}")
            click.echo(f"DNS (handles)  {net.dns_server}")
            what = "handles" if handles else "DIDs"
            click.echo(
                f"accounts       {len(listed)} {what} in {dids_file} "
                f"({len(truth.records):,} records; some accounts are taken down, "
                "deactivated or unknown, as on the real network)"
            )
            click.echo("backfill it with:")
            click.echo("  " + shlex.join(command))
            click.echo("serving until Ctrl-C")
            while not stop.wait(0.5):
                pass
            served = net.stats.total()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(f"stopped after answering {served:,} requests")
