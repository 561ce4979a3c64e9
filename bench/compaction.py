"""`python -m bench.compaction`: what `bsky-backfill compact` does to files and reads.

1. **build** a run-shaped dataset: `--records` records (default 10M) of
   `--repos` repos (default records/100), created 2023-01..2025-12, landed
   through the product's own sink (`DatasetWriter`, one commit per
   `--commit-rows` records, default 50k: ~10k rows per file, the mean file of a
   whole-network run per issue 16's count of ~1M files for 15B rows). Rows are
   made in vectorised chunks of 500 repos (posts 20 %, likes 50 %, reposts
   15 %, follows 15 %; record JSON, typed columns and provenance as the product
   writes them), so each file covers nearly every DID and month, like a run's.
2. **before**: file count, mean file size; DuckDB's `io.total_bytes_read`
   (its JSON profile) for (a) all posts of 100 DIDs, (b) one month of likes,
   (c) a count of every record table, and as the reference for (a)/(b) a full
   scan of posts / likes (every column: `sum(hash(COLUMNS(*)))`).
3. **compact** in a child process (`bsky-backfill compact`): wall time,
   rows/s, peak RSS (bench/proc.py).
4. **after**: the same figures on the compacted dataset; the ratios.

Not a test: figures depend on the machine and its load (recorded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from bench.machine import machine_info
from bench.proc import ROOT, python_module, run_child
from bsky_backfill.models import RepoExtract
from bsky_backfill.records.schema import schema_for
from bsky_backfill.sinks import DatasetWriter, SinkConfig
from bsky_backfill.sinks.provenance import file_metadata
from bsky_backfill.state.base import RepoDone
from bsky_backfill.state.sqlite import SqliteStateStore

POST, LIKE = "app.bsky.feed.post", "app.bsky.feed.like"
REPOST, FOLLOW = "app.bsky.feed.repost", "app.bsky.graph.follow"
MIX = ((POST, 0.20), (LIKE, 0.50), (REPOST, 0.15), (FOLLOW, 0.15))
START = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
SPAN_US = 3 * 365 * 86_400 * 1_000_000
CHUNK_REPOS = 500
WORDS = pa.array(
    [
        "the",
        "a",
        "bluesky",
        "post",
        "today",
        "just",
        "feed",
        "new",
        "like",
        "love",
        "time",
        "people",
        "think",
        "good",
        "know",
        "really",
        "one",
        "see",
        "would",
        "make",
        "want",
        "thanks",
        "great",
        "day",
        "world",
        "back",
        "still",
        "work",
        "going",
        "atproto",
        "backfill",
        "dataset",
        "sky",
        "blue",
        "cloud",
        "morning",
        "night",
        "coffee",
        "music",
        "cat",
        "dog",
    ]
)
FETCHED = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)


# -- building the dataset ------------------------------------------------------------


def _did(idx: pa.Array) -> pa.Array:
    """The DID of repo number `idx`: digits reversed, so that neighbouring repos (one
    chunk, one commit) are far apart in DID order, as random did:plc's are in a run."""
    digits = pc.utf8_reverse(pc.utf8_lpad(pc.cast(idx, pa.string()), 11, "0"))
    return pc.binary_join_element_wise("did:plc:bench", digits, "")


def did_of(i: int) -> str:
    return f"did:plc:bench{f'{i:011d}'[::-1]}"


def _rand_int(n: int, high: int, seed: int) -> pa.Array:
    return pc.cast(pc.floor(pc.multiply(pc.random(n, initializer=seed), high)), pa.int64())


def _chunk_table(collection: str, n: int, base: int, repos: int, seed: int) -> pa.Table:
    did_idx = pc.add(_rand_int(n, CHUNK_REPOS, seed), base)
    did = _did(did_idx)
    micros = pc.add(_rand_int(n, SPAN_US, seed + 1), int(START.timestamp() * 1_000_000))
    created = pc.cast(micros, pa.timestamp("us", tz="UTC"))
    rkey = pc.binary_join_element_wise(
        pc.cast(micros, pa.string()), pc.cast(pa.array(range(n)), pa.string()), "-"
    )
    uri = pc.binary_join_element_wise("at://", did, "/", collection, "/", rkey, "")
    cid = pc.binary_join_element_wise(
        "bafyrei", pc.utf8_lpad(pc.cast(_rand_int(n, 10**15, seed + 2), pa.string()), 52, "q"), ""
    )
    stamp = pc.strftime(created, "%Y-%m-%dT%H:%M:%S.000Z")
    typ = f'{{"$type":"{collection}","createdAt":"'
    extra: list[pa.Array] = []
    if collection == POST:
        words = [pc.take(WORDS, _rand_int(n, len(WORDS), seed + 10 + i)) for i in range(12)]
        text = pc.binary_join_element_wise(*words, " ")
        record = pc.binary_join_element_wise(
            typ, stamp, '","langs":["en"],"text":"', text, '"}', ""
        )
        langs = pa.ListArray.from_arrays(
            pa.array(range(0, n + 1), pa.int32()), pa.repeat(pa.scalar("en"), n)
        )
        nulls = pa.nulls(n, pa.string())
        extra = [text, langs, nulls, nulls]
    elif collection in (LIKE, REPOST):
        target = _did(_rand_int(n, repos, seed + 3))
        subject = pc.binary_join_element_wise("at://", target, "/", POST, "/", rkey, "")
        record = pc.binary_join_element_wise(
            typ, stamp, '","subject":{"cid":"', cid, '","uri":"', subject, '"}}', ""
        )
        extra = [subject, cid]
    else:
        target = _did(_rand_int(n, repos, seed + 3))
        record = pc.binary_join_element_wise(typ, stamp, '","subject":"', target, '"}', "")
        extra = [target]
    arrays = [uri, did, pa.repeat(pa.scalar(collection), n), rkey, cid, created, record, *extra]
    return pa.Table.from_arrays(arrays, schema=schema_for(collection))


def build(out: Path, records: int, repos: int, commit_rows: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    store = SqliteStateStore(out / "_state" / "state.sqlite")
    store.set_meta("filter", json.dumps({"bench": "compaction"}))
    meta = file_metadata([c for c, _ in MIX], None, None, "car")
    cfg = SinkConfig(commit_rows=commit_rows, commit_seconds=float("inf"), file_metadata=meta)
    writer = DatasetWriter(out, store, cfg)
    per_chunk = records * CHUNK_REPOS // repos
    done = 0
    chunk = 0
    while done < records:
        n = min(per_chunk, records - done)
        tables = {
            c: _chunk_table(c, max(1, int(n * share)), chunk * CHUNK_REPOS, repos, chunk * 100 + i)
            for i, (c, share) in enumerate(MIX)
        }
        rows = sum(t.num_rows for t in tables.values())
        # One extract per chunk of 500 repos (its rows name 500 DIDs): the sink lays
        # out rows by commit, not by repo, so the files are what a run makes.
        did = f"did:plc:benchchunk{chunk:07d}"
        ex = RepoExtract(did, "3lbench", tables, [], fetched_at=FETCHED)
        writer.add(ex, RepoDone(did, "3lbench", rows))
        if writer.should_commit():
            writer.commit()
        done += rows
        chunk += 1
    writer.commit()
    writer.close()
    store.close()
    return {"records": done, "seconds": round(time.perf_counter() - t0, 1)}


# -- measuring -----------------------------------------------------------------------


def _files(out: Path) -> dict[str, Any]:
    sizes = [p.stat().st_size for p in out.glob("[!_]*/*.parquet")]
    return {"files": len(sizes), "bytes": sum(sizes), "mean_file_bytes": sum(sizes) // len(sizes)}


def _bytes_read(out: Path, sql: str, params: list[Any]) -> dict[str, Any]:
    prof = out.parent / "duckdb-profile.json"
    con = duckdb.connect(config={"threads": 2})
    con.execute("SET enable_profiling = 'json'")
    con.execute(f"SET profiling_output = '{prof}'")
    t0 = time.perf_counter()
    result = con.execute(sql, params).fetchall()
    seconds = time.perf_counter() - t0
    con.close()
    io = json.loads(prof.read_text())["io"]
    return {
        "bytes_read": io["total_bytes_read"],
        "seconds": round(seconds, 3),
        "rows": result[0][0],
    }


def _queries(out: Path, dids: list[str]) -> dict[str, Any]:
    posts = str(out / POST / "*.parquet")
    likes = str(out / LIKE / "*.parquet")
    everything = str(out / "[!_]*" / "*.parquet")
    scan = "SELECT count(*), sum(hash(COLUMNS(*))) FROM read_parquet(?, union_by_name=true)"
    month = "created_at >= TIMESTAMPTZ '2024-06-01 00:00:00+00' AND created_at < TIMESTAMPTZ '2024-07-01 00:00:00+00'"  # noqa: E501
    in_list = ", ".join(f"'{d}'" for d in dids)
    return {
        "a_posts_of_100_dids": _bytes_read(out, f"{scan} WHERE did IN ({in_list})", [posts]),
        "a1_posts_of_1_did": _bytes_read(out, f"{scan} WHERE did = '{dids[0]}'", [posts]),
        "a_ref_full_scan_posts": _bytes_read(out, scan, [posts]),
        "b_one_month_of_likes": _bytes_read(out, f"{scan} WHERE {month}", [likes]),
        "b_ref_full_scan_likes": _bytes_read(out, scan, [likes]),
        "c_full_count": _bytes_read(
            out, "SELECT count(*) FROM read_parquet(?, union_by_name=true)", [everything]
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--repos", type=int, default=0, help="default: records / 100")
    ap.add_argument("--commit-rows", type=int, default=50_000)
    ap.add_argument("--row-group-size", default="128MiB")
    ap.add_argument("--memory-limit", default="1GiB")
    ap.add_argument("--sort", choices=["month", "did"], default="month")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "compaction.json")
    args = ap.parse_args()
    repos = args.repos or max(CHUNK_REPOS, args.records // 100)
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-compaction-"))
    out = work / "out"
    try:
        built = build(out, args.records, repos, args.commit_rows)
        print(f"built {built['records']:,} records in {built['seconds']} s", flush=True)
        rng = random.Random(16)
        dids = sorted(did_of(i) for i in rng.sample(range(repos), 100))
        before = {**_files(out), "queries": _queries(out, dids)}
        argv = python_module("bsky_backfill", "compact", "--out", str(out), "--sort", args.sort)
        argv += ["--row-group-size", args.row_group_size, "--memory-limit", args.memory_limit]
        child = run_child(argv, work / "compact.log")
        if child.returncode != 0:
            raise SystemExit(f"compact failed: {child.tail()}")
        after = {**_files(out), "queries": _queries(out, dids)}
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    compaction = {
        "wall_s": round(child.wall_s, 1),
        "rows_per_s": int(built["records"] / child.wall_s),
        "peak_rss_mib": child.max_rss_bytes >> 20,
        "tree_rss_peak_mib": child.tree_rss_peak_bytes >> 20,
    }
    result = {
        "machine": machine_info(),
        "records": built["records"],
        "repos": repos,
        "commit_rows": args.commit_rows,
        "row_group_size": args.row_group_size,
        "sort": args.sort,
        "before": before,
        "after": after,
        "compaction": compaction,
    }
    _print(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


def _print(r: dict[str, Any]) -> None:
    b, a, c = r["before"], r["after"], r["compaction"]
    print(f"records {r['records']:,} in {r['repos']:,} repos; row groups "
          f"{r['row_group_size']}, sort {r['sort']}")  # fmt: skip
    print(f"files: {b['files']:,} (mean {b['mean_file_bytes'] / 2**20:.2f} MiB) -> "
          f"{a['files']:,} (mean {a['mean_file_bytes'] / 2**20:.1f} MiB): "
          f"{b['files'] / a['files']:.0f}x fewer")  # fmt: skip
    print(f"compaction: {c['wall_s']} s, {c['rows_per_s']:,} rows/s, peak RSS "
          f"{c['peak_rss_mib']} MiB (process tree {c['tree_rss_peak_mib']} MiB)")  # fmt: skip
    print(f"{'query':24} {'before MiB':>11} {'after MiB':>10} {'after/before':>12}")
    for name in b["queries"]:
        x, y = b["queries"][name]["bytes_read"], a["queries"][name]["bytes_read"]
        print(f"{name:24} {x / 2**20:11.1f} {y / 2**20:10.1f} {y / max(1, x):12.3f}")
    for q, ref in (("a_posts_of_100_dids", "a_ref_full_scan_posts"),
                   ("b_one_month_of_likes", "b_ref_full_scan_likes")):  # fmt: skip
        for when, d in (("before", b), ("after", a)):
            share = d["queries"][q]["bytes_read"] / max(1, d["queries"][ref]["bytes_read"])
            print(f"{q} {when}: {100 * share:.1f} % of a full scan's bytes")


if __name__ == "__main__":
    main()
