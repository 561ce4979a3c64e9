"""`bsky-backfill simulate`: a practice network that stays up; its printed `run` command works."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from pathlib import Path

from bsky_backfill.simulate import Scenario, generate
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth

SEED, ACCOUNTS, HOSTS = 7, 12, 2


def read_until_run_command(proc: subprocess.Popen[str]) -> tuple[list[str], list[str]]:
    """The printed `run` command (argv) and the PDS host URLs, from simulate's stdout."""
    assert proc.stdout is not None
    hosts: list[str] = []
    for line in proc.stdout:
        if line.startswith("PDS hosts"):
            hosts = line.split()[2:]
        if line.startswith("  bsky-backfill run "):
            return shlex.split(line), hosts
    raise AssertionError(f"simulate ended without a run command: {proc.wait()}")


def test_simulate_serves_the_printed_run_command_until_ctrl_c(tmp_path: Path) -> None:
    dids = tmp_path / "practice.txt"
    out = tmp_path / "practice-data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bsky_backfill", "simulate", "--dids", str(dids), "--out",
         str(out), "--accounts", str(ACCOUNTS), "--hosts", str(HOSTS), "--seed", str(SEED)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        command, hosts = read_until_run_command(proc)
        assert command[:2] == ["bsky-backfill", "run"]
        assert "--allow-private-hosts" in command
        assert command[command.index("--dids") + 1] == str(dids)
        result = run_cli(*command[1:])
        assert result.returncode == 0, result.stderr
        # Twice: the network serves on for as long as one practises.
        again = run_cli(*command[1:])
        assert again.returncode == 0, again.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stdout.strip().splitlines()[-1].startswith("stopped after answering")

    listed = [line for line in dids.read_text().splitlines() if not line.startswith("#")]
    web_dids = [d for d in listed if d.startswith("did:web:")]
    truth = generate(Scenario(seed=SEED, accounts=ACCOUNTS, hosts=HOSTS), web_dids, hosts).truth
    assert sorted(truth.input_dids) == sorted(listed)
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())


def test_simulate_refuses_an_unwritable_dids_file(tmp_path: Path) -> None:
    result = run_cli("simulate", "--dids", str(tmp_path / "no" / "such" / "dids.txt"))
    assert result.returncode == 2
    assert result.stderr.startswith("bsky-backfill: error: --dids ")
    assert "Traceback" not in result.stderr
