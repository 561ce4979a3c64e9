"""Against limits as the reference PDS enforces them (`@atproto/xrpc-server`): a global
per-IP limiter and a per-route one, every request charged to both, each answer naming
the tightest, `RateLimit-Reset` floored to the second (so a window really ends up to
a second after the second it names). Zero 429s, and >= 90 % of every full window of
the limiter that binds is used (counted per window by the simulator)."""

from __future__ import annotations

from pathlib import Path

from bsky_backfill.simulate import RateLimit, Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth

GET_REPO = "com.atproto.sync.getRepo"
LIST_RECORDS = "com.atproto.repo.listRecords"


def check_binding(windows_per_host: list[list[int]], limit: int) -> None:
    for windows in windows_per_host:
        full = windows[:-1]  # the last window is whatever work was left
        assert len(full) >= 2, windows
        assert all(used >= 0.9 * limit for used in full), windows
        assert all(used <= limit for used in windows), windows


def test_car_mode_uses_the_global_budget_with_zero_429s(tmp_path: Path) -> None:
    # getRepo's limiter is reported first (5 left < 9), the global one binds: 10 per
    # 4 s against 6 per second for the route. The route's 1-second windows make the
    # floored reset matter: a client that sends at the named second meets a 429.
    limit = 10
    scenario = Scenario(
        seed=61, accounts=44, hosts=2, mean_records=5, did_web=0, statuses={},
        tombstoned=0, unknown=0, empty_repos=0,
        rate_limit=RateLimit(limit=limit, window_s=4.0, get_repo_limit=1000, reference=True,
                             routes={GET_REPO: (6, 1.0)}),
    )  # fmt: skip
    out_windows: list[list[int]] = []
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        out = tmp_path / "out"
        result = run_cli(
            "run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
            "--no-progress", "--allow-private-hosts", "--rate-limit", "0",
            "--host-concurrency", "4",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert net.stats.count(status=429) == 0
        for host in net.hosts:
            out_windows.append(host.policy.windows("global"))
            route = host.policy.windows(GET_REPO)
            assert all(used <= 6 for used in route), route
        truth = net.truth
    check_binding(out_windows, limit)
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())


def test_list_mode_uses_the_global_budget_with_zero_429s(tmp_path: Path) -> None:
    # listRecords has a route limiter (8 per second, reported first: 7 left < 11);
    # describeRepo only the global one (12 per 3 s), which binds.
    limit = 12
    scenario = Scenario(
        seed=62, accounts=16, hosts=2, mean_records=60, did_web=0, tombstoned=0, unknown=0,
        rate_limit=RateLimit(limit=limit, window_s=3.0, get_repo_limit=None, reference=True,
                             routes={LIST_RECORDS: (8, 1.0)}),
    )  # fmt: skip
    out_windows: list[list[int]] = []
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        out = tmp_path / "out"
        result = run_cli(
            "run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
            "--no-progress", "--allow-private-hosts", "--rate-limit", "0",
            "--host-concurrency", "4", "--method", "list",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert net.stats.count(status=429) == 0
        for host in net.hosts:
            out_windows.append(host.policy.windows("global"))
            route = host.policy.windows(LIST_RECORDS)
            assert all(used <= 8 for used in route), route
        truth = net.truth
    check_binding(out_windows, limit)
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
