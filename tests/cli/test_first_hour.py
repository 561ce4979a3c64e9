"""The first minutes at the terminal: help, verbosity anywhere, and a start line that
says what the run is about to do."""

from __future__ import annotations

from pathlib import Path

from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli


def test_bare_command_prints_help_and_exits_0() -> None:
    result = run_cli()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: bsky-backfill")
    for command in ("run", "status", "query", "simulate", "report", "demo"):
        assert f"  {command} " in result.stdout
    assert result.stderr == ""


def test_verbose_after_the_subcommand_gives_debug_lines_and_a_start_line(tmp_path: Path) -> None:
    with run_network_in_thread(Scenario(seed=5, accounts=4, hosts=1, mean_records=5)) as net:
        active = [a for a in net.accounts if a.status == "active"]
        listed = tmp_path / "study.txt"
        listed.write_text(f"{active[0].did}\n@{active[1].handle}\n")
        result = run_cli("run", "--dids", str(listed), "--out", str(tmp_path / "out"),
                         "--plc-url", net.plc_url, "--dns-server", net.dns_server,
                         "--allow-private-hosts", "--collections", "app.bsky.feed.post",
                         "--since", "2024-01-01", "-vv")  # fmt: skip
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first == (
        f"backfilling 2 accounts from {listed}, 1 of them handles: app.bsky.feed.post, "
        f"createdAt in [2024-01-01T00:00:00+00:00, now); method car; into {tmp_path / 'out'}"
    )
    assert f"landed {active[0].did}" in result.stderr
    assert f"handle {active[1].handle} is {active[1].did}" in result.stderr
    assert "DEBUG" in result.stderr
