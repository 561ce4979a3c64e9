"""`run --refresh` resolves each DID again and verifies against the key it has now.

One account rotates its signing key and commits with the new one: the refresh
lands its new posts (the key stored at the first run would refuse them).
Another commits with its old key after its document named a new one (what a
forged diff looks like): its refresh is dead-lettered at stage verify and its
landed rows stay as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import read_rows
from tests.engine.test_refresh import current_view

POST = "app.bsky.feed.post"


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
