"""The enumeration sources through the real CLI: `--all-from-plc`, `--from-relay`, `--pds`
land exactly what the truth says, with downloads and listings in one run."""

from __future__ import annotations

from pathlib import Path

from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import collections_in, read_rows


def landed(out: Path) -> set[str]:
    return {str(r["uri"]) for c in collections_in(out) for r in read_rows(out, c)}


def run(net: object, out: Path, *source: str) -> None:
    result = run_cli(
        "run", *source, "--out", str(out), "--plc-url", net.plc_url,  # type: ignore[attr-defined]
        "--allow-private-hosts", "--no-progress", "--rate-limit", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_all_from_plc(tmp_path: Path) -> None:
    with run_network_in_thread(Scenario(seed=101, accounts=16, hosts=2, did_web=1)) as net:
        run(net, tmp_path / "out", "--all-from-plc")
        truth = net.truth
        resolves = net.stats.count(endpoint="resolve")
    plc_dids = [d for d, a in truth.accounts.items() if a.method == "plc"]
    assert landed(tmp_path / "out") == set(truth.expected_rows(dids=plc_dids))
    assert resolves == 0  # identities came from the export, no per-DID lookups
    letters = {(r["did"], r["error"]) for r in read_rows(tmp_path / "out", "_deadletters")}
    for did, account in truth.accounts.items():
        if account.method == "plc" and account.status in ("takendown", "deactivated"):
            assert (did, f"Repo{account.status.capitalize()}") in letters


def test_from_relay_finds_what_the_relay_misses(tmp_path: Path) -> None:
    scenario = Scenario(seed=102, accounts=20, hosts=3, relay=True, relay_miss_fraction=0.4)
    with run_network_in_thread(scenario) as net:
        run(net, tmp_path / "out", "--from-relay", net.relay_url)
        truth = net.truth
    hosted = [d for d, a in truth.accounts.items() if a.host is not None]
    assert landed(tmp_path / "out") == set(truth.expected_rows(dids=hosted))


def test_pds_lists_one_host(tmp_path: Path) -> None:
    with run_network_in_thread(Scenario(seed=103, accounts=16, hosts=2)) as net:
        host = net.hosts[0]
        run(net, tmp_path / "out", "--pds", host.url)
        truth = net.truth
    on_host = [d for d, a in truth.accounts.items() if a.host == host.url]
    assert landed(tmp_path / "out") == set(truth.expected_rows(dids=on_host))
