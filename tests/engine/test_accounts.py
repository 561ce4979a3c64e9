"""The `_accounts` table (issue 19, handles out): one row per repo landed or failed,
with the handle its DID document names, verified only when the run's input was
that handle; committed with its batch, so a run killed and resumed writes each
repo's row once; `bsky-backfill query` joins it with the records on `did`."""

from __future__ import annotations

import csv
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth, read_rows
from tests.engine.test_crash_resume import start_run

SCENARIO = Scenario(seed=97, accounts=12, hosts=2, mean_records=20, did_web=1)


def listing(net: Any, tmp_path: Path) -> tuple[Path, set[str]]:
    """A DIDs file with every other account that has a document listed by handle,
    the rest (and the tombstoned and unknown DIDs) by DID, plus a handle nobody
    has. Returns the file and the DIDs listed by handle."""
    by_handle = [
        a.did for a in net.accounts if a.handle and a.status not in ("tombstoned", "unknown")
    ][::2]
    handles = net.handles(by_handle)
    assert len(handles) == len(by_handle) >= 3
    lines = [*handles, "nobody.sim.test"]
    lines += [d for d in net.truth.input_dids if d not in by_handle]
    path = tmp_path / "accounts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, set(by_handle)


def check_accounts(out: Path, truth: Any, by_handle: set[str]) -> None:
    """Each input account has exactly one `_accounts` row, saying what happened to it."""
    rows = read_rows(out, "_accounts", "*")
    assert Counter(r["did"] for r in rows).most_common(1)[0][1] == 1, "a repo's row twice"
    got = {r["did"]: r for r in rows}
    assert set(got) == {*truth.input_dids, "nobody.sim.test"}
    whole = {d.did: d for d in truth.expected_dead_letters() if d.uri is None}
    verified = 0
    for did in truth.input_dids:
        row, acct, letter = got[did], truth.accounts.get(did), whole.get(did)
        assert row["status"] == (letter.code if letter else "landed"), did
        if letter is not None and letter.stage == "resolve":  # no document, no handle
            assert (row["handle"], row["pds"], row["handle_verified"]) == (None, None, False)
            continue
        assert acct is not None
        assert (row["handle"], row["pds"]) == (acct.handle.lower(), acct.host), did
        assert row["handle_verified"] is (did in by_handle), did
        verified += row["handle_verified"]
        assert row["rev"] == (acct.rev if letter is None else None), did
        assert row["fetched_at"] is not None
    assert verified == len(by_handle)
    nobody = got["nobody.sim.test"]
    assert (nobody["handle"], nobody["status"], nobody["handle_verified"], nobody["pds"]) == (
        "nobody.sim.test", "HandleNotFound", False, None,
    )  # fmt: skip
    statuses = Counter(r["status"] for r in rows)
    assert statuses["landed"] >= 3 and len(statuses) >= 3, statuses  # the scenario has both


def test_accounts_rows_for_handles_and_dids_and_the_join(tmp_path: Path) -> None:
    with run_network_in_thread(SCENARIO) as net:
        listed, by_handle = listing(net, tmp_path)
        out = tmp_path / "out"
        result = run_cli("run", "--dids", str(listed), "--out", str(out), "--plc-url",
                         net.plc_url, "--dns-server", net.dns_server, "--allow-private-hosts",
                         "--no-progress", "--rate-limit", "0")  # fmt: skip
        truth = net.truth
    assert result.returncode == 0, result.stderr
    check_accounts(out, truth, by_handle)
    # The join a researcher writes: posts per handle, from what the package installs.
    target = tmp_path / "per_handle.csv"
    sql = (
        "SELECT did, a.handle, a.handle_verified, count(*) AS n "
        "FROM accounts a JOIN posts USING (did) GROUP BY ALL ORDER BY did"
    )
    q = run_cli("query", "--out", str(out), "--to", str(target), sql)
    assert q.returncode == 0, q.stderr
    with target.open() as f:
        got = {
            r["did"]: (r["handle"], r["handle_verified"], int(r["n"])) for r in csv.DictReader(f)
        }
    posts = Counter(
        r.did for r in truth.expected_rows().values() if r.collection == "app.bsky.feed.post"
    )
    assert got == {
        did: (truth.accounts[did].handle.lower(), str(did in by_handle).lower(), n)
        for did, n in posts.items()
    }
    assert any(v == "true" for _, v, _ in got.values())
    assert any(v == "false" for _, v, _ in got.values())


def test_kill_9_and_resume_writes_each_accounts_row_once(tmp_path: Path) -> None:
    scenario = Scenario(seed=5, accounts=50, hosts=3, mean_records=40)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        listed, by_handle = listing(net, tmp_path)
        args = ["run", "--dids", str(listed), "--out", str(out), "--plc-url", net.plc_url,
                "--dns-server", net.dns_server, "--allow-private-hosts", "--no-progress",
                "--rate-limit", "25", "--host-concurrency", "2", "--commit-rows", "150",
                "--commit-seconds", "0.3"]  # fmt: skip
        # Killed as soon as a commit has landed rows (twice): between commits.
        at_kills: list[int] = []
        for _ in range(2):
            proc = start_run(args)
            seen = at_kills[-1] if at_kills else 0
            deadline = time.monotonic() + 60
            while proc.poll() is None and accounts_rows(out) <= seen:
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            at_kills.append(accounts_rows(out))
        final = run_cli(*args)
        truth = net.truth
    assert final.returncode == 0, final.stderr
    total = len(truth.input_dids) + 1
    assert any(0 < n < total for n in at_kills), f"no kill between commits: {at_kills}"
    check_accounts(out, truth, by_handle)
    assert_matches_truth(
        out,
        truth.expected_rows(),
        truth.expected_dead_letters() | {e for e in read_dead_handles(out)},
    )


def accounts_rows(out: Path) -> int:
    """`_accounts` rows committed and renamed into place so far."""
    if not any((out / "_accounts").glob("*.parquet")):
        return 0
    return len(read_rows(out, "_accounts", "did"))


def read_dead_handles(out: Path) -> set[Any]:
    from bsky_backfill.simulate import ExpectedDeadLetter

    return {
        ExpectedDeadLetter(d["did"], None, d["stage"], d["error"])
        for d in read_rows(out, "_deadletters", "did, stage, error")
        if d["did"] == "nobody.sim.test"
    }


def test_a_refresh_records_a_new_handle_and_keeps_a_verified_one(tmp_path: Path) -> None:
    from bsky_backfill.query import connect

    scenario = Scenario(seed=91, accounts=6, hosts=1, mean_records=10, did_web=0)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        active = [a for a in net.accounts if a.status == "active" and a.method == "plc"]
        kept, renamed = active[0], active[1]
        listed = tmp_path / "accounts.txt"
        others = [d for d in net.truth.input_dids if d != kept.did]
        listed.write_text("\n".join([kept.handle, *others]) + "\n")
        common = ["--out", str(out), "--plc-url", net.plc_url, "--allow-private-hosts",
                  "--no-progress", "--rate-limit", "0"]  # fmt: skip
        first = run_cli("run", "--dids", str(listed), "--dns-server", net.dns_server, *common)
        assert first.returncode == 0, first.stderr
        old_handle = renamed.handle
        net.account(renamed.did).handle = "renamed.sim.test"  # its document says so now
        refresh = run_cli("run", "--refresh", *common)
        assert refresh.returncode == 0, refresh.stderr
    con, _ = connect(out)
    now = {
        did: rest
        for did, *rest in con.sql(
            "SELECT did, handle, handle_verified, status FROM accounts"
        ).fetchall()
    }
    assert now[renamed.did] == ["renamed.sim.test", False, "landed"]
    assert now[kept.did] == [kept.handle, True, "landed"]  # still named by its document
    history, _ = connect(out, history=True)
    rows = history.sql(
        "SELECT handle FROM accounts WHERE did = ? ORDER BY fetched_at", params=[renamed.did]
    ).fetchall()
    assert rows == [(old_handle,), ("renamed.sim.test",)]
