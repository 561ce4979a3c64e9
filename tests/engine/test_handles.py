"""Accounts listed by handle: resolved through DNS (the simulated network's own, over
UDP, or its resolver hook), checked against the DID document, and landed exactly as
the same accounts listed by DID; a handle that is not its DID's is a dead letter."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from bsky_backfill import Backfill
from bsky_backfill.simulate import ExpectedDeadLetter, Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth, read_rows
from tests.state.pg import fresh_schema_url

SCENARIO = Scenario(seed=97, accounts=10, hosts=2, mean_records=20, did_web=1)


def test_a_file_of_handles_lands_what_the_file_of_dids_lands(tmp_path: Path) -> None:
    with run_network_in_thread(SCENARIO) as net:
        truth = net.truth
        # Every account with a document (a tombstoned DID has none to confirm a handle).
        dids = [a.did for a in net.accounts if a.status != "tombstoned"]
        handles = net.handles(dids)
        assert len(handles) == len(dids)
        lines = [f"@{handles[0].upper()}", f"https://bsky.app/profile/{handles[1]}",
                 *(f"  {h}  # a participant" for h in handles[2:])]  # fmt: skip
        listed = tmp_path / "handles.csv"
        listed.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8-sig"))
        out = tmp_path / "out"
        result = run_cli("run", "--dids", str(listed), "--out", str(out), "--plc-url",
                         net.plc_url, "--dns-server", net.dns_server, "--allow-private-hosts",
                         "--no-progress", "--rate-limit", "0")  # fmt: skip
        assert result.returncode == 0, result.stderr
        asked = net.stats.count(host="dns", endpoint="txt")
    assert asked == len(handles)
    assert_matches_truth(
        out, truth.expected_rows(dids=dids), truth.expected_dead_letters(dids=dids)
    )


@pytest.mark.parametrize("queue", ["sqlite", "postgresql"])
def test_mismatched_and_unknown_handles_are_dead_letters(tmp_path: Path, queue: str) -> None:
    with contextlib.ExitStack() as stack:
        queue_url = stack.enter_context(fresh_schema_url()) if queue == "postgresql" else None
        check_handles(tmp_path, queue_url)


def check_handles(tmp_path: Path, queue_url: str | None) -> None:
    with run_network_in_thread(SCENARIO) as net:
        honest, other = [a for a in net.accounts if a.status == "active" and a.method == "plc"][:2]
        assert net.dns is not None
        # DNS says `liar` is `honest`'s DID; that DID's document names another handle.
        net.dns.records["_atproto.liar.sim.test"] = [f"did={honest.did}"]
        net.dns.records["_atproto.twice.sim.test"] = [f"did={honest.did}", f"did={other.did}"]
        out = tmp_path / "out"
        summary = Backfill(
            dids=[honest.handle, "liar.sim.test", "nobody.sim.test", "twice.sim.test"],
            out=out, plc_url=net.plc_url, allow_private_hosts=True, rate_limit=0,
            handle_txt=net.resolve_txt, queue=queue_url,
        ).run()  # fmt: skip
        truth = net.truth
    dead = read_rows(out, "_deadletters", "did, uri, stage, error, message")
    assert sorted((d["did"], d["stage"], d["error"]) for d in dead) == [
        ("liar.sim.test", "resolve", "HandleMismatch"),
        ("nobody.sim.test", "resolve", "HandleNotFound"),
        ("twice.sim.test", "resolve", "HandleNotFound"),
    ]
    liar = next(d for d in dead if d["did"] == "liar.sim.test")
    assert honest.did in liar["message"] and honest.handle in liar["message"]
    # The honest handle landed its account, exactly.
    assert_matches_truth(
        out,
        truth.expected_rows(dids=[honest.did]),
        {
            *truth.expected_dead_letters(dids=[honest.did]),
            *(ExpectedDeadLetter(d["did"], None, "resolve", d["error"]) for d in dead),
        },
    )
    assert summary.repos_total == 4 and summary.repos_failed == 3
    # `_accounts` (this store's handle columns): the honest handle verified, the
    # unresolved inputs under the handle given.
    accounts = read_rows(out, "_accounts", "did, handle, handle_verified, status")
    assert sorted(tuple(a.values()) for a in accounts) == sorted([
        (honest.did, honest.handle, True, "landed"),
        ("liar.sim.test", "liar.sim.test", False, "HandleMismatch"),
        ("nobody.sim.test", "nobody.sim.test", False, "HandleNotFound"),
        ("twice.sim.test", "twice.sim.test", False, "HandleNotFound"),
    ])  # fmt: skip
