"""Provenance (sinks/provenance.py): every record row carries the revision it came
from and when it was fetched; every file carries the tool version and the run's
filters. Checked on the CAR path, the big-repo path (parts built in helper
processes), a refresh and `--method list`."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq

from bsky_backfill import __version__
from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import as_utc, collections_in, read_rows

POST = "app.bsky.feed.post"


def _store_revs(out: Path) -> dict[str, str | None]:
    with sqlite3.connect(out / "_state" / "state.sqlite") as con:
        rows = con.execute("SELECT did, rev FROM repos WHERE state = 'done'").fetchall()
    return dict(rows)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _all_rows(out: Path) -> list[dict[str, object]]:
    return [r for c in collections_in(out) for r in read_rows(out, c)]


def _assert_file_metadata(out: Path, method: str) -> int:
    files = sorted(out.rglob("*.parquet"))
    for path in files:
        meta = pq.read_metadata(path).metadata
        assert meta[b"bsky_backfill.version"] == __version__.encode(), path
        filt = json.loads(meta[b"bsky_backfill.filter"])
        assert filt["method"] == method and POST in filt["collections"], (path, filt)
    return len(files)


def test_rev_and_fetched_at_on_car_big_repo_and_refresh_rows(tmp_path: Path) -> None:
    scenario = Scenario(seed=161, accounts=10, hosts=2, mean_records=40, giant_repo=3_000)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        common = ["--out", str(out), "--plc-url", net.plc_url, "--allow-private-hosts",
                  "--no-progress", "--rate-limit", "0"]  # fmt: skip
        # a small --stream-size sends the giant (and other larger repos) down the
        # big-repo path, with a helper process building parts
        t0 = _now()
        first = run_cli("run", "--dids", str(dids), "--stream-size", "64KiB",
                        "--workers", "2", *common)  # fmt: skip
        t1 = _now()
        assert first.returncode == 0, first.stderr
        revs = _store_revs(out)
        rows = _all_rows(out)
        assert len(rows) > 3_000
        # the giant went the big-repo way: a writer of its own, files holding it alone
        per_did: dict[str, int] = {}
        for row in rows:
            per_did[str(row["did"])] = per_did.get(str(row["did"]), 0) + 1
        giant = max(per_did, key=per_did.__getitem__)
        alone = [
            p
            for p in (out / POST).glob("*.parquet")
            if set(pq.read_table(p, columns=["did"]).column("did").to_pylist()) == {giant}
        ]
        assert alone  # (a small repo shares its files with the batch)
        for row in rows:
            assert row["rev"] is not None and row["rev"] == revs[str(row["did"])], row["uri"]
            fetched = as_utc(row["fetched_at"])  # type: ignore[arg-type]
            assert fetched is not None and t0 <= fetched <= t1, (row["uri"], fetched)
        first_uris = {str(r["uri"]) for r in rows}

        with_posts = sorted({str(r["did"]) for r in rows if r["collection"] == POST})
        grown = net.mutate(with_posts[0], add_posts=5)
        t2 = _now()
        refresh = run_cli("run", "--refresh", *common)
        t3 = _now()
        assert refresh.returncode == 0, refresh.stderr
    revs = _store_revs(out)
    assert revs[grown.did] == grown.new_rev
    new = [r for r in _all_rows(out) if str(r["uri"]) not in first_uris]
    assert {str(r["uri"]) for r in new} == {r.uri for r in grown.added}
    for row in new:
        assert row["rev"] == grown.new_rev
        fetched = as_utc(row["fetched_at"])  # type: ignore[arg-type]
        assert fetched is not None and t2 <= fetched <= t3
    # every file, _deadletters and _deletions included, says what made it
    assert _assert_file_metadata(out, "car") > 3


def test_list_mode_rows_have_fetched_at_and_no_rev(tmp_path: Path) -> None:
    scenario = Scenario(seed=162, accounts=6, hosts=1, mean_records=30)
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        t0 = _now()
        result = run_cli("run", "--dids", str(dids), "--method", "list", "--out", str(out),
                         "--plc-url", net.plc_url, "--allow-private-hosts", "--no-progress",
                         "--rate-limit", "0")  # fmt: skip
        t1 = _now()
        assert result.returncode == 0, result.stderr
    rows = _all_rows(out)
    assert rows
    for row in rows:
        # listRecords names no revision: null rather than a guess
        assert row["rev"] is None
        fetched = as_utc(row["fetched_at"])  # type: ignore[arg-type]
        assert fetched is not None and t0 <= fetched <= t1
    assert _assert_file_metadata(out, "list") >= 1
