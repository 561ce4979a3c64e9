"""Runs that last for days and never lose a repo by accident (issue 12), end to end on
the embedded network: outages of the PLC directory and of a host, a bug in a worker,
`--retry-failed`, one run per `--out`, data without state, exit status 3.

No wall-clock assertions: outages are switched on and off by the test, or last a
number of requests; the backoff cap is made small so retries come quickly; every
check counts something (requests the simulator saw, attempts in the store, rows).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from bsky_backfill import Backfill
from bsky_backfill.engine.decode_pool import Extractor
from bsky_backfill.identity.resolver import DidResolver, host_key
from bsky_backfill.simulate import Scenario, SimNetwork, run_network_in_thread
from bsky_backfill.sinks.superseded import CURRENT_DEAD_LETTERS
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth, collections_in, read_rows

# Fast retries: the first retry after ~0.05 s, host pauses of at most 0.3 s.
FAST = ("--retry-base", "0.05", "--retry-cap", "0.3")
HANG_GUARD_S = 240.0


def write_dids(tmp_path: Path, dids: list[str]) -> Path:
    path = tmp_path / "dids.txt"
    path.write_text("\n".join(dids) + "\n")
    return path


def run_args(net: SimNetwork, dids: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
        "--no-progress", *extra,
    ]  # fmt: skip


def start_cli(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """`bsky-backfill ARGS` in the background, its stderr into `log`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "bsky_backfill", "-v", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes] | None) -> None:
    """Poll until `check()`; the deadline only guards against a hang."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def state_rows(out: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the run's SQLite state (read-only, beside the live run: WAL allows it)."""
    path = out / "_state" / "state.sqlite"
    if not path.is_file():
        return []
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.OperationalError:  # being created
        return []
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        con.close()


def standing_dead_letters(out: Path) -> list[tuple[str, str | None, str, str]]:
    """The documented view: each repo's latest verdict once (sinks/superseded.py)."""
    con = duckdb.connect()
    try:
        if (out / "_superseded").is_dir():
            sql = CURRENT_DEAD_LETTERS.format(out=out)
        else:
            sql = f"SELECT * FROM read_parquet('{out}/_deadletters/**/*.parquet')"
        rows = con.execute(f"SELECT did, uri, stage, error FROM ({sql})").fetchall()
    finally:
        con.close()
    return [(str(d), u, str(s), str(e)) for d, u, s, e in rows]


def status_json(out: Path) -> dict[str, Any]:
    result = run_cli("status", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def small(seed: int, **kw: Any) -> Scenario:
    base: dict[str, Any] = dict(seed=seed, accounts=18, hosts=3, mean_records=10, did_web=1)
    base.update(kw)
    return Scenario(**base)


# -- the PLC directory goes down, then comes back ----------------------------------------------


def test_plc_down_then_up_lands_everything_in_the_same_run(tmp_path: Path) -> None:
    # The directory drops its first 40 requests (a burst of lookups, then one probe
    # per pause): without durable retries behind a breaker, DIDs were dead-lettered
    # `ResolveFailed` after three quick tries.
    scenario = small(51, plc_down_requests=40)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path, net.dids)
        result = run_cli(*run_args(net, dids, out, "--allow-private-hosts", *FAST))
        dropped = net.stats.faults().get(("plc", "outage"), 0)
        plc_ok = net.stats.count(host="plc", status=200)
        truth = net.truth
    assert result.returncode == 0, result.stderr
    assert dropped == 40, "the outage did not happen as scripted"
    assert plc_ok > 0
    assert "pausing this host" in result.stderr  # the directory's breaker opened
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
    assert not [r for r in read_rows(out, "_deadletters") if r["error"] == "ResolveFailed"]


# -- one host refuses connections while the others serve --------------------------------------


def test_a_host_that_is_down_is_paused_without_spending_attempts(tmp_path: Path) -> None:
    scenario = small(52, accounts=24, did_web=0)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        down = net.hosts[0]
        down.policy.down = True
        down_key = host_key(down.url)
        dids = write_dids(tmp_path, net.dids)
        proc = start_cli(
            *run_args(net, dids, out, "--allow-private-hosts", *FAST), log=tmp_path / "run.log"
        )
        try:
            others = [h for h in net.hosts if h is not down]
            other_repos = sum(
                1 for a in net.truth.accounts.values()
                if a.host_name in {h.name for h in others}
            )  # fmt: skip

            def others_finished() -> bool:
                rows = state_rows(
                    out,
                    """SELECT count(*) FROM repos WHERE state IN ('done', 'failed')
                       AND host IS NOT NULL AND host <> ?""",
                    down_key,
                )
                return bool(rows) and rows[0][0] >= other_repos

            def paused_in_store() -> bool:
                return bool(state_rows(out, "SELECT 1 FROM host_pauses WHERE host = ?", down_key))

            wait_for("the host's pause in the store", paused_in_store, proc)
            wait_for("the other hosts' repos", others_finished, proc)
            assert others_finished()  # while this host is still down: nobody waited for it

            def attempts() -> dict[str, int]:
                rows = state_rows(out, "SELECT did, attempts FROM repos WHERE host = ?", down_key)
                return {d: n for d, n in rows}

            before = attempts()
            assert before, "the down host's repos are not in the store"
            probes = net.stats.count(host=down.name, status=0)
            wait_for(
                "four more probes",
                lambda: net.stats.count(host=down.name, status=0) >= probes + 4,
                proc,
            )
            after = attempts()
            # Paused: probes went out and failed, and no repo spent an attempt on them.
            assert after == before, (before, after)
            assert max(after.values()) <= 1  # at most the failures that tripped the breaker

            status = run_cli("status", "--out", str(out))
            assert status.returncode == 0, status.stderr
            assert "paused hosts" in status.stdout and down_key in status.stdout
            assert "ConnectionError" in status.stdout and "UTC" in status.stdout

            down.policy.down = False  # back
            proc.wait(timeout=HANG_GUARD_S)
        finally:
            if proc.poll() is None:
                proc.kill()
        served = net.stats.count(host=down.name, endpoint="com.atproto.sync.getRepo", status=200)
        truth = net.truth
    log = (tmp_path / "run.log").read_text()
    assert proc.returncode == 0, log
    assert served > 0 and "answers again; resuming" in log
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
    assert status_json(out)["paused_hosts"] == []  # a finished run's pauses are over


# -- a bug in a worker -------------------------------------------------------------------------


def test_an_unexpected_exception_in_a_worker_is_retried_and_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = small(53, accounts=10, hosts=2, did_web=0)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        victim = next(
            a.did for a in net.accounts if a.status == "active" and a.repo and a.repo.records
        )
        real = Extractor.extract
        hits: list[str] = []

        async def extract(self: Extractor, data: bytes, did: str, *a: Any, **kw: Any) -> Any:
            if did == victim and len(hits) < 2:
                hits.append(did)
                raise KeyError("injected: a bug in this worker")  # twice, same place
            return await real(self, data, did, *a, **kw)

        monkeypatch.setattr(Extractor, "extract", extract)
        # ...and a bug in resolving another DID: retried from the store, never a spin
        other = next(a.did for a in net.accounts if a.status == "active" and a.did != victim)
        real_resolve = DidResolver.resolve
        lookups: list[str] = []

        async def resolve(self: DidResolver, did: str) -> Any:
            if did == other:
                lookups.append(did)
                if len(lookups) == 1:
                    raise AttributeError("injected: a bug in resolving")
            return await real_resolve(self, did)

        monkeypatch.setattr(DidResolver, "resolve", resolve)
        caplog.set_level(logging.INFO, logger="bsky_backfill")
        summary = Backfill(
            dids=net.dids, out=out, plc_url=net.plc_url, allow_private_hosts=True,
            retry_base=0.05, retry_cap=0.3,
        ).run()  # fmt: skip
        truth = net.truth
    assert hits == [victim, victim]
    assert lookups == [other, other]  # once failed, once resolved: no spin
    assert summary.repos_failed == len(
        {d.did for d in truth.expected_dead_letters() if d.uri is None}
    )
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())

    def tracebacks(text: str) -> int:
        return sum(1 for r in caplog.records if r.exc_info and text in str(r.exc_info[1]))

    assert tracebacks("a bug in this worker") == 1  # with its traceback once, then one line
    assert tracebacks("a bug in resolving") == 1
    assert any("again" in r.getMessage() and victim in r.getMessage() for r in caplog.records)
    [(attempts,)] = state_rows(out, "SELECT attempts FROM repos WHERE did = ?", victim)
    assert attempts == 2 and state_rows(out, "SELECT state FROM repos WHERE did = ?", victim) == [
        ("done",)
    ]


# -- --retry-failed after a forgotten --allow-private-hosts ------------------------------------


def test_retry_failed_after_a_forgotten_flag_lands_them_and_counts_once(tmp_path: Path) -> None:
    scenario = small(54, accounts=14, hosts=2)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path, net.dids)
        first = run_cli(*run_args(net, dids, out))  # the flag forgotten
        assert first.returncode == 3, first.stderr
        assert "most with BlockedPrivateAddress" in first.stderr
        before = status_json(out)
        assert before["failed_by_code"]["BlockedPrivateAddress"] > 0
        assert before["retry_command"] == f"bsky-backfill run --out {out} --retry-failed"
        text = run_cli("status", "--out", str(out)).stdout
        assert "failed repos" in text and f"--out {out} --retry-failed" in text
        blocked = before["failed_by_code"]["BlockedPrivateAddress"]
        # the same flags plus the one forgotten; the DIDs are in the state already
        second = run_cli(
            "run", "--out", str(out), "--plc-url", net.plc_url, "--no-progress",
            "--allow-private-hosts", "--retry-failed",
        )  # fmt: skip
        pds_requests = sum(net.stats.count(host=h.name) for h in net.hosts)
        truth = net.truth
    assert second.returncode == 0, second.stderr
    assert pds_requests > 0
    # every record landed once; the dead letters that stand are exactly the truth's
    expected_dead = truth.expected_dead_letters()
    rows = truth.expected_rows()
    standing = standing_dead_letters(out)
    assert len(standing) == len(set(standing))
    assert set(standing) == {(d.did, d.uri, d.stage, d.code) for d in expected_dead}
    raw = read_rows(out, "_deadletters", "error")
    assert sum(1 for r in raw if r["error"] == "BlockedPrivateAddress") == blocked  # history
    after = status_json(out)
    assert "BlockedPrivateAddress" not in after["failed_by_code"]
    assert "BlockedPrivateAddress" not in after["dead_letters_by_code"]
    assert after["superseded_by_code"] == {"BlockedPrivateAddress": blocked}
    by_code: dict[str, int] = {}
    for d in expected_dead:
        by_code[d.code] = by_code.get(d.code, 0) + 1
    assert after["dead_letters_by_code"] == by_code
    report = run_cli("report", "--out", str(out), "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["dead_letters_by_code"] == by_code
    # the rows themselves, each once (the dead letters: the standing view above)
    landed = {r["uri"] for c in collections_in(out) for r in read_rows(out, c, "uri")}
    assert landed == set(rows)


# -- one run per --out -------------------------------------------------------------------------


def test_two_runs_on_one_out_and_a_killed_run_resumes(tmp_path: Path) -> None:
    scenario = small(55, accounts=30, hosts=2, mean_records=20)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path, net.dids)
        # slow enough (2 requests/s per host) to still be running when we look
        args = run_args(net, dids, out, "--allow-private-hosts", "--rate-limit", "2")
        first = start_cli(*args, log=tmp_path / "first.log")
        try:
            wait_for(
                "repos in progress",
                lambda: bool(state_rows(out, "SELECT 1 FROM repos WHERE state = 'in_progress'")),
                first,
            )
            second = run_cli(*args)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in second.stderr
            assert "held by another run" in lines[0] and f"pid {first.pid}" in lines[0]
            assert socket.gethostname() in lines[0]
            assert json.loads(run_cli("status", "--out", str(out), "--json").stdout)["run"]
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
        st = status_json(out)
        assert st["in_progress"] > 0 and st["interrupted"] == st["in_progress"]
        assert st["run"] is None
        text = run_cli("status", "--out", str(out)).stdout
        assert f"{st['interrupted']} interrupted" in text and "0 in progress" in text
        third = run_cli(*run_args(net, dids, out, "--allow-private-hosts"))
        truth = net.truth
    assert third.returncode == 0, third.stderr
    assert "ended without releasing its lock" in third.stderr
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())


# -- data without state ------------------------------------------------------------------------


def tree(out: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*"))
    }


def test_data_without_state_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    scenario = small(56, accounts=8, hosts=2)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path, net.dids)
        args = run_args(net, dids, out, "--allow-private-hosts")
        assert run_cli(*args).returncode == 0
        for p in sorted((out / "_state").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (out / "_state").rmdir()
        before, requests = tree(out), net.stats.total()
        again = run_cli(*args)
        after_requests = net.stats.total()
    assert again.returncode == 2, again.stderr
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in again.stderr
    assert "holds Parquet data but no backfill state" in lines[0]
    assert "restore" in lines[0] and "another --out" in lines[0]
    assert tree(out) == before  # nothing written, not even a lock or a state directory
    assert after_requests == requests


# -- exit status 3 -----------------------------------------------------------------------------


def test_a_wrong_plc_url_exits_3_naming_the_code_and_the_retry(tmp_path: Path) -> None:
    scenario = small(57, accounts=8, hosts=2, did_web=0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    wrong = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    sock.close()
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = write_dids(tmp_path, [d for d in net.dids if d.startswith("did:plc:")])
        result = run_cli(
            "run", "--dids", str(dids), "--out", str(out), "--plc-url", wrong, "--no-progress",
            "--allow-private-hosts", "--unreachable-after", "1s", *FAST,
        )  # fmt: skip
        pds_requests = sum(net.stats.count(host=h.name) for h in net.hosts)
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bsky-backfill: nothing landed:")
    assert "most with ResolveFailed" in last and f"--out {out} --retry-failed" in last
    assert pds_requests == 0
    letters = read_rows(out, "_deadletters")
    assert letters and {(r["stage"], r["error"]) for r in letters} == {("resolve", "ResolveFailed")}
