"""`run --refresh` resolves each DID again and verifies against the key it has now.

One account rotates its signing key and commits with the new one: the refresh
lands its new posts (the key stored at the first run would refuse them).
Another commits with its old key after its document named a new one (what a
forged diff looks like): its refresh is dead-lettered at stage verify and its
landed rows stay as they were.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from bsky_backfill.identity.resolver import host_key
from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import read_rows
from tests.engine.test_refresh import current_view

POST = "app.bsky.feed.post"
GET_REPO = "com.atproto.sync.getRepo"


def _rotate(net: object, did: str, seed: bytes) -> None:
    acct = net.account(did)  # type: ignore[attr-defined]
    acct.key_seed = seed
    for cached in ("signing_key", "published_key"):
        acct.__dict__.pop(cached, None)


def test_refresh_verifies_against_the_current_key(tmp_path: Path) -> None:
    scenario = Scenario(seed=91, accounts=8, hosts=2, mean_records=30, did_web=0)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        common = ["--out", str(out), "--plc-url", net.plc_url, "--allow-private-hosts",
                  "--no-progress", "--rate-limit", "0"]  # fmt: skip
        first = run_cli("run", "--dids", str(dids), *common)
        assert first.returncode == 0, first.stderr
        landed = net.truth.expected_rows()
        posters = sorted({r.did for r in landed.values() if r.collection == POST})
        rotated, forged = posters[0], posters[1]
        _rotate(net, rotated, b"rotated-key")
        grown = net.mutate(rotated, add_posts=2)
        before = {u: r for u, r in current_view(out).items() if f"at://{forged}/" in u}
        net.mutate(forged, add_posts=2)  # signed with the old key ...
        _rotate(net, forged, b"someone-else")  # ... which its document no longer names
        refresh = run_cli("run", "--refresh", *common)
        assert refresh.returncode == 0, refresh.stderr
    view = current_view(out)
    assert {r.uri for r in grown.added} <= set(view)
    assert {u: r for u, r in view.items() if f"at://{forged}/" in u} == before
    letters = [d for d in read_rows(out, "_deadletters") if d["did"] == forged]
    assert [(d["stage"], d["error"], d["uri"]) for d in letters] == [
        ("verify", "VerificationFailed", None)
    ]
    assert not [d for d in read_rows(out, "_deadletters") if d["error"] == "InternalError"]
    status = json.loads(run_cli("status", "--json", "--out", str(out)).stdout)
    assert status["failed_by_code"]["VerificationFailed"] == 1


def test_refresh_follows_an_account_to_its_new_host(tmp_path: Path) -> None:
    """An account that moved to another PDS since it landed: the refresh asks the
    new host (through that host's slot) and the store names the new host."""
    scenario = Scenario(seed=92, accounts=8, hosts=2, mean_records=30, did_web=0)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        common = ["--out", str(out), "--plc-url", net.plc_url, "--allow-private-hosts",
                  "--no-progress", "--rate-limit", "0"]  # fmt: skip
        first = run_cli("run", "--dids", str(dids), *common)
        assert first.returncode == 0, first.stderr
        posters = sorted(
            {r.did for r in net.truth.expected_rows().values() if r.collection == POST}
        )
        mover = posters[0]
        acct = net.account(mover)
        old, new = acct.host_index, 1 - acct.host_index
        del net.hosts[old].accounts[mover]
        acct.host_index = new
        net.hosts[new].accounts[mover] = acct
        grown = net.mutate(mover, add_posts=2)
        old_host, new_host = host_key(net.hosts[old].url), host_key(net.hosts[new].url)
        asked_new = net.stats.count(host=net.hosts[new].name, endpoint=GET_REPO)
        refresh = run_cli("run", "--refresh", *common)
        assert refresh.returncode == 0, refresh.stderr
        truth = net.truth.expected_rows()
        assert net.stats.count(host=net.hosts[new].name, endpoint=GET_REPO) > asked_new
    view = current_view(out)
    assert {r.uri for r in grown.added} <= set(view)
    assert {u for u in view if f"at://{mover}/" in u} == {u for u in truth if f"at://{mover}/" in u}
    with sqlite3.connect(out / "_state" / "state.sqlite") as db:
        [(host, state)] = db.execute("SELECT host, state FROM repos WHERE did = ?", (mover,))
    assert (host, state) == (new_host, "done") and new_host != old_host
