"""`run --refresh` through the CLI on many changed repos: every deletion is found.

The issue's scenario, scaled to the test budget: 25 repos change (10 gain
posts, 15 lose runs of neighbouring posts, which is what grows an unchanged
subtree's key range); the refresh takes the dataset's own filters when none
are given and says so; other filters exit 2 naming the choices.
"""

from __future__ import annotations

import json
from pathlib import Path

from bsky_backfill.repo.diff import unpack_index
from bsky_backfill.simulate import Scenario, run_network_in_thread
from bsky_backfill.state.sqlite import SqliteStateStore
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
    page = out.parent / "report.html"
    report = json.loads(run_cli("report", "--json", "--out", str(out), "--html", str(page)).stdout)
    html = page.read_text()
    assert "<th>deleted</th><th>updated</th>" in html and "75 deleted" in html
    assert report["records_total"] == len(view)
    assert (report["deleted_total"], report["updated_total"]) == (75, 0)
    posts = next(c for c in report["collections"] if c["collection"] == POST)
    assert posts["deleted"] == 75
    assert posts["records"] == sum(1 for u in view if f"/{POST}/" in u)
    status = json.loads(run_cli("status", "--json", "--out", str(out)).stdout)
    assert sum(status["records_by_collection"].values()) == len(view)
    assert status["deleted_by_collection"] == {POST: 75}


def test_big_repos_keep_a_key_index_and_refresh_lazily(tmp_path: Path) -> None:
    """With a tiny --stream-size every repo takes the big-repo path (parts); their
    merged key index lets the refresh diff them, and the diffs, over the size too,
    are read lazily from their spooled files: every change lands, exactly."""
    scenario = Scenario(seed=78, accounts=20, hosts=2, mean_records=60)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        common = ["--out", str(out), "--plc-url", net.plc_url, "--allow-private-hosts",
                  "--no-progress", "--rate-limit", "0", "--stream-size", "1KiB"]  # fmt: skip
        first = run_cli("run", "--dids", str(dids), *common)
        assert first.returncode == 0, first.stderr
        by_did: dict[str, list[str]] = {}
        for rec in net.truth.expected_rows().values():
            if rec.collection == POST:
                by_did.setdefault(rec.did, []).append(rec.uri)
        changed = sorted(d for d, uris in by_did.items() if len(uris) >= 3)[:4]
        assert len(changed) >= 2
        gone: set[str] = set()
        for did in changed:
            run = tuple(sorted(by_did[did])[:2])
            net.mutate(did, delete_uris=run, add_posts=2)
            gone |= set(run)
        # Landed on the big-repo path, each with the merged index of its parts.
        with SqliteStateStore(out / "_state" / "state.sqlite") as store:
            for did in changed:
                blob = store.repo_keys(did)
                assert blob is not None
                assert {f"at://{did}/{k}" for k in unpack_index(blob)[0]} >= set(by_did[did])
        whole_fetches = net.stats.count(endpoint="com.atproto.sync.getRepo")
        refresh = run_cli("run", "--refresh", *common)
        assert refresh.returncode == 0, refresh.stderr
        n = len(changed)
        assert f"refresh: {2 * n} new, 0 updated, {2 * n} deleted records" in refresh.stdout
        truth = net.truth.expected_rows()
        assert net.stats.count(endpoint="com.atproto.sync.getRepo") > whole_fetches
    assert {d["uri"] for d in read_rows(out, "_deletions")} == gone
    view = current_view(out)
    assert set(view) == set(truth)
    for uri, rec in truth.items():
        assert view[uri]["cid"] == rec.cid
