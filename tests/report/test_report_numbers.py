"""`bsky-backfill report` on a real simulator backfill: its numbers equal direct DuckDB
queries over the Parquet files (and the simulator's own ground truth)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb

from bsky_backfill.report import build_report
from tests.conftest import run_cli
from tests.dataset import collections_in, parquet_glob
from tests.report.conftest import COLLECTIONS, Dataset


def _con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def _all_records(out: Path) -> str:
    globs = ", ".join(f"'{parquet_glob(out, c)}'" for c in collections_in(out))
    return f"read_parquet([{globs}], hive_partitioning = true, union_by_name = true)"


def direct_numbers(out: Path) -> dict[str, Any]:
    """The report's numbers, computed here with plain DuckDB and sqlite3 queries."""
    con = _con()
    records = _all_records(out)
    per_collection = {
        c: (int(n), int(nulls))
        for c, n, nulls in con.execute(
            f"""SELECT collection, count(*), count(*) FILTER (WHERE created_at IS NULL)
                FROM {records} GROUP BY collection"""
        ).fetchall()
    }
    per_month = {
        (c, f"{y:04d}-{m:02d}"): int(n)
        for c, y, m, n in con.execute(
            f"""SELECT collection, year(created_at), month(created_at), count(*)
                FROM {records} WHERE created_at IS NOT NULL GROUP BY ALL"""
        ).fetchall()
    }
    per_did = dict(con.execute(f"SELECT did, count(*) FROM {records} GROUP BY did").fetchall())
    dead = {
        (s, e): int(n)
        for s, e, n in con.execute(
            "SELECT stage, error, count(*) FROM read_parquet(?) GROUP BY ALL",
            [parquet_glob(out, "_deadletters")],
        ).fetchall()
    }
    db = sqlite3.connect(out / "_state" / "state.sqlite")
    host_of = dict(db.execute("SELECT did, host FROM repos WHERE host IS NOT NULL"))
    repos: Counter[tuple[str, str]] = Counter()
    for host, state, n in db.execute(
        "SELECT host, state, count(*) FROM repos WHERE host IS NOT NULL GROUP BY host, state"
    ):
        repos[host, state] = n
    db.close()
    records_by_host: Counter[str] = Counter()
    for did, n in per_did.items():
        records_by_host[host_of[did]] += n
    hosts = {
        host: {
            "records": records_by_host[host],
            "repos": sum(n for (h, _), n in repos.items() if h == host),
            "done": repos[host, "done"],
            "failed": repos[host, "failed"],
            "pending": repos[host, "pending"] + repos[host, "in_progress"],
        }
        for host in {h for h, _ in repos}
    }
    return {"collections": per_collection, "months": per_month, "hosts": hosts, "dead": dead}


def numbers_of(report: dict[str, Any]) -> dict[str, Any]:
    """The same shape, from `report --json`."""
    return {
        "collections": {
            c["collection"]: (c["records"], c["no_created_at"]) for c in report["collections"]
        },
        "months": {(m["collection"], m["month"]): m["records"] for m in report["months"]},
        "hosts": {
            h["host"]: {k: h[k] for k in ("records", "repos", "done", "failed", "pending")}
            for h in report["hosts"]
        },
        "dead": {(d["stage"], d["code"]): d["count"] for d in report["dead_letters"]},
    }


def test_json_numbers_equal_direct_duckdb(dataset: Dataset) -> None:
    result = run_cli("report", "--out", str(dataset.out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    want = direct_numbers(dataset.out)
    # the dataset exercises every part of the report
    assert len(want["collections"]) >= 4 and len(want["hosts"]) == 3
    assert any(nulls for _, nulls in want["collections"].values()), "no null created_at"
    assert want["dead"]
    assert numbers_of(report) == want
    assert report["records_total"] == sum(n for n, _ in want["collections"].values())
    assert report["dead_letters_total"] == sum(want["dead"].values())
    codes: Counter[str] = Counter()
    for (_, code), n in want["dead"].items():
        codes[code] += n
    assert report["dead_letters_by_code"] == dict(codes)
    # sorted as shown: months within a collection ascending, hosts by records
    assert [h["records"] for h in report["hosts"]] == sorted(
        (h["records"] for h in report["hosts"]), reverse=True
    )


def test_numbers_match_ground_truth(dataset: Dataset) -> None:
    """Independent of the Parquet files: what the simulator says should have landed."""
    report = build_report(dataset.out)
    rows = dataset.truth.expected_rows(COLLECTIONS)
    by_collection = Counter(r.collection for r in rows.values())
    assert {c.collection: c.records for c in report.collections} == dict(by_collection)
    no_created = Counter(r.collection for r in rows.values() if r.created_at is None)
    assert {c.collection: c.no_created_at for c in report.collections if c.no_created_at} == (
        dict(no_created)
    )
    months = Counter(
        (r.collection, r.created_at.strftime("%Y-%m"))
        for r in rows.values()
        if r.created_at is not None
    )
    assert {(m.collection, m.month): m.records for m in report.months} == dict(months)
    accounts = dataset.truth.accounts
    by_host = Counter(urlsplit(accounts[r.did].host or "").netloc for r in rows.values())
    assert {h.host: h.records for h in report.hosts if h.records} == dict(by_host)
    dead = Counter((d.stage, d.code) for d in dataset.truth.expected_dead_letters(COLLECTIONS))
    assert {(d.stage, d.code): d.count for d in report.dead_letters} == dict(dead)


def test_terminal_tables_and_html_page(dataset: Dataset, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    result = run_cli("report", "--out", str(dataset.out), "--html", str(page))
    assert result.returncode == 0, result.stderr
    report = build_report(dataset.out)
    for title in ("records per collection", "records per month", "top PDS hosts", "dead letters"):
        assert title in result.stdout
    assert f"{report.records_total:,} records" in result.stdout
    assert f"wrote {page}" in result.stdout
    html = page.read_text()
    for hook in ("chart-records-over-time", "chart-dead-letters", "table-months", "table-hosts"):
        assert f'id="{hook}"' in html
    # self-contained: nothing to fetch, nothing to run
    assert "<script" not in html and "src=" not in html and "href=" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_report_without_state_store(dataset: Dataset, tmp_path: Path) -> None:
    """Parquet copied elsewhere without OUT/_state: numbers still there, hosts unknown."""
    copy = tmp_path / "copy"
    shutil.copytree(dataset.out, copy, ignore=shutil.ignore_patterns("_state"))
    with_state = build_report(dataset.out)
    alone = build_report(copy)
    assert not alone.has_state and alone.hosts == []
    assert alone.collections == with_state.collections
    assert alone.months == with_state.months
    assert alone.dead_letters == with_state.dead_letters
    assert not (copy / "_state").exists()  # a report writes nothing


def test_unusable_out_or_html_exits_2(dataset: Dataset, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "app.bsky.feed.post").mkdir(parents=True)  # a table dir with no file yet
    page = tmp_path / "no-such-dir" / "page.html"
    cases = [
        ("report", "--out", str(tmp_path / "missing")),
        ("report", "--out", str(empty)),
        ("report", "--out", str(dataset.out), "--html", str(page)),
        ("report", "--out", str(dataset.out), "--html", str(tmp_path)),
    ]
    for args in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "error" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
    assert not page.parent.exists()
