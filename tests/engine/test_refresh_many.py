"""`run --refresh` through the CLI on many changed repos: every deletion is found.

The issue's scenario, scaled to the test budget: 25 repos change (10 gain
posts, 15 lose runs of neighbouring posts, which is what grows an unchanged
subtree's key range); the refresh takes the dataset's own filters when none
are given and says so; other filters exit 2 naming the choices.
"""

from __future__ import annotations

import json
from pathlib import Path

from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import read_rows
from tests.engine.test_refresh import current_view

POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"


def test_every_deletion_of_25_changed_repos_is_recorded(tmp_path: Path) -> None:
    scenario = Scenario(seed=77, accounts=60, hosts=2, mean_records=80)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        common = ["--out", str(out), "--plc-url", net.plc_url, "--allow-private-hosts",
                  "--no-progress", "--rate-limit", "0"]  # fmt: skip
        first = run_cli("run", "--dids", str(dids), "--collections", f"{POST},{LIKE}", *common)
        assert first.returncode == 0, first.stderr
        landed = net.truth.expected_rows()
        by_did: dict[str, list[str]] = {}
        for rec in landed.values():
            if rec.collection == POST:
                by_did.setdefault(rec.did, []).append(rec.uri)
        rich = sorted(d for d, uris in by_did.items() if len(uris) >= 7)
        assert len(rich) >= 15
        for did in sorted(set(by_did) - set(rich[:15]))[:10]:
            net.mutate(did, add_posts=5)
        gone: set[str] = set()
        for i, did in enumerate(rich[:15]):
            uris = sorted(by_did[did])
            start = i % max(1, len(uris) - 6)
            run = tuple(uris[start : start + 5])  # neighbours in key order
            net.mutate(did, delete_uris=run)
            gone |= set(run)

        other = run_cli("run", "--refresh", "--collections", POST, *common)
        assert other.returncode == 2
        assert "--collections" in other.stderr and "without" in other.stderr
        assert "Traceback" not in other.stderr

        refresh = run_cli("run", "--refresh", *common)
        assert refresh.returncode == 0, refresh.stderr
        assert refresh.stderr.count("using the dataset's own filters") == 1
        assert "refresh: 50 new, 0 updated, 75 deleted records" in refresh.stdout
        truth = net.truth.expected_rows()
    deletions = read_rows(out, "_deletions")
    deleted = {d["uri"] for d in deletions if d["reason"] == "deleted"}
    assert deleted == gone, f"{len(deleted & gone)} of {len(gone)} deletions recorded"
    view = current_view(out)
    wanted = {u: r for u, r in truth.items() if r.collection in (POST, LIKE)}
    assert set(view) == set(wanted)
    for uri, rec in wanted.items():
        assert view[uri]["cid"] == rec.cid
    # `report` and `status` count the current view and say what left it.
    report = json.loads(run_cli("report", "--json", "--out", str(out)).stdout)
    assert report["records_total"] == len(view)
    assert (report["deleted_total"], report["updated_total"]) == (75, 0)
    posts = next(c for c in report["collections"] if c["collection"] == POST)
    assert posts["deleted"] == 75
    assert posts["records"] == sum(1 for u in view if f"/{POST}/" in u)
    status = json.loads(run_cli("status", "--json", "--out", str(out)).stdout)
    assert sum(status["records_by_collection"].values()) == len(view)
    assert status["deleted_by_collection"] == {POST: 75}
