"""A hostile network on the simulator: published and header-less rate limits, faults,
private addresses. Every test compares the dataset with the simulator's truth."""

from __future__ import annotations

from pathlib import Path

from bsky_backfill.simulate import Faults, RateLimit, Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth, collections_in, read_rows

GET_REPO = "com.atproto.sync.getRepo"


def base_args(net: object, dids: Path, out: Path) -> list[str]:
    return [
        "run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,  # type: ignore[attr-defined]
        "--no-progress",
    ]  # fmt: skip


def write_dids(tmp_path: Path, dids: list[str]) -> Path:
    path = tmp_path / "dids.txt"
    path.write_text("\n".join(dids) + "\n")
    return path


def test_published_budget_zero_429s_and_at_least_90_percent_used(tmp_path: Path) -> None:
    limit = 5
    scenario = Scenario(
        seed=21, accounts=34, hosts=2, mean_records=8, did_web=0, statuses={},
        tombstoned=0, unknown=0, empty_repos=0,
        rate_limit=RateLimit(limit=1000, window_s=1.5, get_repo_limit=limit),
    )  # fmt: skip
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path, net.truth.input_dids)
        # our own limit off: only the server's published budget paces the run
        result = run_cli(
            *base_args(net, dids, out), "--allow-private-hosts", "--rate-limit", "0",
            "--host-concurrency", "4",
        )  # fmt: skip
        truth = net.truth
        assert result.returncode == 0, result.stderr
        assert net.stats.count(status=429) == 0
        for host in net.hosts:
            windows = host.policy.windows(GET_REPO)
            full = windows[:-1]  # the last window is whatever work was left
            assert len(full) >= 2, windows
            assert all(used >= 0.9 * limit for used in full), windows
            assert all(used <= limit for used in windows), windows
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())


def test_header_less_html_429s_back_off_and_complete(tmp_path: Path) -> None:
    scenario = Scenario(
        seed=22, accounts=24, hosts=2, mean_records=8, did_web=0,
        rate_limit=RateLimit(limit=1000, window_s=1.0, get_repo_limit=4, html_429=True,
                             headers=False),
    )  # fmt: skip
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path, net.truth.input_dids)
        result = run_cli(*base_args(net, dids, out), "--allow-private-hosts", "--rate-limit", "0")
        throttled = net.stats.count(status=429)
        truth = net.truth
    assert result.returncode == 0, result.stderr
    assert throttled > 0, "the scenario never throttled: nothing was tested"
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())


def test_fault_storm_lands_everything_exactly_once(tmp_path: Path) -> None:
    scenario = Scenario(
        seed=23, accounts=60, hosts=3, mean_records=20, invalid_rate=0.03, broken_records=1,
        faults=Faults(error_rate=0.08, hang_rate=0.05, hang_s=5.0, truncate_rate=0.06,
                      short_car_rate=0.05, seed=1),
        rate_limit=RateLimit(limit=1000, window_s=1.0, get_repo_limit=8),
    )  # fmt: skip
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path, net.truth.input_dids)
        result = run_cli(
            *base_args(net, dids, out), "--allow-private-hosts", "--rate-limit", "0",
            "--read-timeout", "0.5", "--retry-base", "0.05", "--max-attempts", "10",
        )  # fmt: skip
        faults = net.stats.faults()
        truth = net.truth
    assert result.returncode == 0, result.stderr
    kinds = {kind for (_, kind) in faults}
    assert {"error", "hang", "truncate", "short_car"} <= kinds, faults
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())


def test_private_pds_is_refused_without_a_single_request(tmp_path: Path) -> None:
    scenario = Scenario(seed=24, accounts=10, hosts=2, mean_records=5)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path, net.truth.input_dids)
        result = run_cli(*base_args(net, dids, out))  # no --allow-private-hosts
        pds_requests = sum(net.stats.count(host=h.name) for h in net.hosts)
        web_requests = sum(net.stats.count(host=f"web{i}") for i in range(scenario.did_web))
        truth = net.truth
    # Nothing landed: exit 3, naming the commonest code and the command that retries.
    assert result.returncode == 3, result.stderr
    assert "most with BlockedPrivateAddress" in result.stderr
    assert "--retry-failed" in result.stderr and "Traceback" not in result.stderr
    assert pds_requests == 0
    assert web_requests == 0
    letters = read_rows(out, "_deadletters")
    by_did = {row["did"]: row for row in letters}
    for did, account in truth.accounts.items():
        row = by_did[did]
        if account.status in ("tombstoned", "unknown"):
            assert row["error"] == "DidNotFound"
            continue
        assert row["error"] == "BlockedPrivateAddress", row
        assert row["stage"] == ("resolve" if account.method == "web" else "fetch")
        assert "127.0.0.1" in row["message"] or "localhost" in row["message"]
    assert len(by_did) == len(truth.input_dids)


def test_list_heavy_run_keeps_to_the_shared_budget(tmp_path: Path) -> None:
    """listRecords, describeRepo and getRepoStatus share the general bucket."""
    limit = 12
    scenario = Scenario(
        seed=25, accounts=10, hosts=2, mean_records=150, did_web=0, tombstoned=0, unknown=0,
        rate_limit=RateLimit(limit=limit, window_s=1.5, get_repo_limit=1000),
    )  # fmt: skip
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path, net.truth.input_dids)
        result = run_cli(
            *base_args(net, dids, out), "--allow-private-hosts", "--rate-limit", "0",
            "--method", "list", "--host-concurrency", "3",
        )  # fmt: skip
        truth = net.truth
        assert result.returncode == 0, result.stderr
        assert net.stats.count(status=429) == 0
        for host in net.hosts:
            windows = host.policy.windows("com.atproto.repo.listRecords")
            full = windows[:-1]
            assert len(full) >= 2, windows
            assert all(used >= 0.9 * limit for used in full), windows
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())


def test_repos_over_the_size_limit_are_dead_lettered(tmp_path: Path) -> None:
    scenario = Scenario(seed=26, accounts=12, hosts=2, mean_records=40, giant_repo=3000)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path, net.truth.input_dids)
        sizes = {
            did: len(net.account(did).repo.car)
            for did in net.truth.input_dids
            if did in net.truth.accounts and net.truth.fetchable(did)
        }
        limit = sorted(sizes.values())[-3]  # the two biggest repos are over it
        result = run_cli(*base_args(net, dids, out), "--allow-private-hosts",
                         "--max-car-size", str(limit))  # fmt: skip
        truth = net.truth
    assert result.returncode == 0, result.stderr
    too_big = {did for did, size in sizes.items() if size > limit}
    assert len(too_big) == 2
    letters = read_rows(out, "_deadletters")
    assert {r["did"] for r in letters if r["error"] == "RepoTooLarge"} == too_big
    kept = [d for d in truth.input_dids if d not in too_big]
    expected = truth.expected_rows(dids=kept)
    got = {r["uri"] for c in collections_in(out) for r in read_rows(out, c)}
    assert got == set(expected)
