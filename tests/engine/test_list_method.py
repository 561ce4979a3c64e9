"""`--method list` (describeRepo + listRecords): same rows as `--method car`, early
stop with --since, account states found through getRepoStatus."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from bsky_backfill.engine.list_fetch import tid_time
from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth, collections_in, read_rows

LIST_RECORDS = "com.atproto.repo.listRecords"
WANTED = ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow",
          "app.bsky.actor.profile")  # fmt: skip


def backfill(net: object, tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / name
    dids = tmp_path / "dids.txt"
    dids.write_text("\n".join(net.truth.input_dids) + "\n")  # type: ignore[attr-defined]
    result = run_cli(
        "run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,  # type: ignore[attr-defined]
        "--allow-private-hosts", "--no-progress", "--rate-limit", "0", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


# Provenance differs by design: when each was fetched, and list mode names no rev.
PROVENANCE = ("rev", "fetched_at")


def rows_by_uri(out: Path) -> dict[str, dict[str, object]]:
    """Every row by uri, without its provenance columns (present in every row)."""
    rows: dict[str, dict[str, object]] = {}
    for collection in collections_in(out):
        for row in read_rows(out, collection):
            assert all(name in row for name in PROVENANCE)
            rows[str(row["uri"])] = {k: v for k, v in row.items() if k not in PROVENANCE}
    return rows


def test_car_and_list_give_identical_rows(tmp_path: Path) -> None:
    scenario = Scenario(seed=31, accounts=20, hosts=2, mean_records=60)
    with run_network_in_thread(scenario) as net:
        car = backfill(net, tmp_path, "car", "--method", "car")
        listed = backfill(net, tmp_path, "list", "--method", "list")
        truth = net.truth
        list_requests = net.stats.count(endpoint=LIST_RECORDS)
    assert list_requests > 0
    assert collections_in(car) == collections_in(listed)
    car_rows, list_rows = rows_by_uri(car), rows_by_uri(listed)
    assert car_rows == list_rows  # every column of every row, the record JSON included
    # both equal the truth, dead letters included (status accounts via getRepoStatus)
    assert_matches_truth(listed, truth.expected_rows(), truth.expected_dead_letters())


def expected_list_requests(truth: object, since: dt.datetime) -> int:
    """What early stopping predicts: pages until one is entirely older than since."""
    total = 0
    for did, account in truth.accounts.items():  # type: ignore[attr-defined]
        if account.status != "active":
            continue
        by_collection: dict[str, list[object]] = {}
        for rec in truth.records_of(did):  # type: ignore[attr-defined]
            by_collection.setdefault(rec.collection, []).append(rec)
        for collection in WANTED:
            recs = sorted(by_collection.get(collection, []), key=lambda r: r.rkey, reverse=True)
            if not recs:
                continue  # describeRepo does not list it
            pages = [recs[i : i + 100] for i in range(0, len(recs), 100)]
            fetched = 0
            for page in pages:
                fetched += 1
                if all(
                    (tid_time(r.rkey) or since) < since
                    and (r.created_at is None or r.created_at < since)
                    for r in page
                ):
                    break
            else:
                fetched += 1  # the empty page after the last one
            total += fetched
    return total


def test_since_stops_paging_early(tmp_path: Path) -> None:
    scenario = Scenario(seed=32, accounts=12, hosts=2, mean_records=400, size_sigma=0.6,
                        statuses={}, tombstoned=0, unknown=0)  # fmt: skip
    since = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    with run_network_in_thread(scenario) as net:
        out = backfill(net, tmp_path, "list", "--method", "list",
                       "--collections", ",".join(WANTED), "--since", since.isoformat())  # fmt: skip
        requests = net.stats.count(endpoint=LIST_RECORDS)
        truth = net.truth
    predicted = expected_list_requests(truth, since)
    no_early_stop = sum(
        len(range(0, n, 100)) + 1
        for did in truth.accounts
        for n in [sum(1 for r in truth.records_of(did) if r.collection == c) for c in WANTED]
        if n and truth.accounts[did].status == "active"
    )
    assert requests == predicted
    assert predicted < no_early_stop, "the scenario does not exercise early stopping"
    expected = truth.expected_rows(WANTED, since)
    got = rows_by_uri(out)
    assert set(got) == set(expected)


def test_list_mode_resumes_a_big_repo_after_kill(tmp_path: Path) -> None:
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    scenario = Scenario(seed=33, accounts=3, hosts=1, mean_records=20, giant_repo=12_000,
                        statuses={}, tombstoned=0, unknown=0, did_web=0)  # fmt: skip
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        args = [
            "run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
            "--allow-private-hosts", "--no-progress", "--method", "list", "--rate-limit", "40",
            "--commit-rows", "100",
        ]  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "bsky_backfill", *args])
        state = out / "_state" / "state.sqlite"
        deadline = time.monotonic() + 120
        progress = None
        while progress is None and proc.poll() is None:
            assert time.monotonic() < deadline, "no progress row was committed"
            time.sleep(0.05)
            if state.exists():
                try:
                    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as con:
                        progress = con.execute(
                            "SELECT cursor FROM cursors WHERE source LIKE 'list:%'"
                        ).fetchone()
                except sqlite3.OperationalError:
                    progress = None
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = net.stats.count(endpoint=LIST_RECORDS)
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        second = net.stats.count(endpoint=LIST_RECORDS) - first
        truth = net.truth
    full = sum(
        len(range(0, n, 100)) + 1
        for did in truth.accounts
        for n in [
            sum(1 for r in truth.records_of(did) if r.collection == c)
            for c in {r.collection for r in truth.records_of(did)}
            if c.startswith("app.bsky.")
        ]
        if n
    )
    assert second <= full - 50, (first, second, full)  # >= 5000 landed records not refetched
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
    with sqlite3.connect(out / "_state" / "state.sqlite") as con:
        left = con.execute("SELECT count(*) FROM cursors WHERE source LIKE 'list:%'").fetchone()
    assert left == (0,), "progress rows of finished repos are removed"
