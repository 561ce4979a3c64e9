"""`run --refresh`: after the repos change, a refresh lands exactly the new records
and records the deleted ones in `_deletions`; nothing is fetched twice."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import collections_in, read_rows

GET_REPO = "com.atproto.sync.getRepo"
POST = "app.bsky.feed.post"


def current_view(out: Path) -> dict[str, dict[str, object]]:
    """Rows minus the (uri, cid) pairs `_deletions` supersedes; uri must be unique there."""
    gone = {(d["uri"], d["cid"]) for d in read_rows(out, "_deletions")}
    view: dict[str, dict[str, object]] = {}
    for collection in collections_in(out):
        for row in read_rows(out, collection):
            if (row["uri"], row["cid"]) in gone:
                continue
            assert row["uri"] not in view, f"two current versions of {row['uri']}"
            view[str(row["uri"])] = row
    return view


def car_sizes(out: Path) -> dict[str, int | None]:
    """Each landed repo's recorded CAR size (the state store's `car_bytes`)."""
    with contextlib.closing(sqlite3.connect(out / "_state" / "state.sqlite")) as con:
        rows = con.execute("SELECT did, car_bytes FROM repos WHERE state = 'done'").fetchall()
    return dict(rows)


def record_files(out: Path) -> list[Path]:
    """Every committed file but `_accounts` (sinks/accounts.py)."""
    return sorted(p for p in out.rglob("*.parquet") if "_accounts" not in p.parts)


def test_refresh_lands_new_records_and_records_deletions(tmp_path: Path) -> None:
    scenario = Scenario(seed=51, accounts=12, hosts=2, mean_records=30, did_web=1)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        args = ["run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
                "--allow-private-hosts", "--no-progress", "--rate-limit", "0"]  # fmt: skip
        first = run_cli(*args)
        assert first.returncode == 0, first.stderr
        # Every repo fetched whole has its size recorded: the next run starts the
        # biggest first (state store `claim`).
        sizes = car_sizes(out)
        assert sizes and all(n is not None and n > 0 for n in sizes.values()), sizes
        before = current_view(out)
        landed = net.truth.expected_rows()
        with_posts = sorted({r.did for r in landed.values() if r.collection == POST})
        posts = sorted(
            r for r in landed.values() if r.did == with_posts[0] and r.collection == POST
        )
        grown = [net.mutate(with_posts[1], add_posts=3), net.mutate(with_posts[2], add_posts=120)]
        shrunk = net.mutate(with_posts[0], delete_uris=(posts[0].uri,))
        requests_before = net.stats.count(endpoint=GET_REPO)
        refresh_args = ["run", "--refresh", "--out", str(out), "--plc-url", net.plc_url,
                        "--allow-private-hosts", "--no-progress", "--rate-limit", "0"]  # fmt: skip
        refresh = run_cli(*refresh_args)
        assert refresh.returncode == 0, refresh.stderr
        refetched = net.stats.count(endpoint=GET_REPO) - requests_before
        assert car_sizes(out) == sizes  # a refresh fetches diffs: the sizes stay
        files_after_refresh = record_files(out)
        seen = len(read_rows(out, "_accounts", "did"))
        again = run_cli(*refresh_args)
        assert again.returncode == 0, again.stderr
        # nothing changed since: no new rows, no new deletions, no new files but
        # `_accounts`, which says when each repo was last checked (a row per repo)
        assert record_files(out) == files_after_refresh
        checked = len(read_rows(out, "_accounts", "did")) - seen
        truth = net.truth
        done = sum(1 for d in truth.accounts if truth.fetchable(d))
    assert checked == done
    # every finished repo was asked once for what changed since its rev
    assert refetched == done
    view = current_view(out)
    expected = truth.expected_rows()
    assert set(view) == set(expected)
    for uri, rec in expected.items():
        assert view[uri]["cid"] == rec.cid
    added = {r.uri for m in grown for r in m.added}
    assert added <= set(view) and not added & set(before)
    deletions = read_rows(out, "_deletions")
    assert [(d["uri"], d["reason"], d["cid"]) for d in deletions] == [
        (posts[0].uri, "deleted", posts[0].cid)
    ]
    assert deletions[0]["rev"] == shrunk.new_rev
    # rows appended, never rewritten: everything from before is still in the files
    all_rows = {str(r["uri"]) for c in collections_in(out) for r in read_rows(out, c)}
    assert set(before) <= all_rows
