"""`python -m bench.scale`: does the cost per repo stay flat from 1k to 1M DIDs?

The same per-repo work at several input sizes (default 1k, 100k, 1M DIDs), on
a network whose accounts are made on demand (`simulate/bulk.py`: tiny signed
repos, a PLC export of any length, constant memory in this process). Per size,
each figure from its own child process (`bench.proc`: wall, CPU, peak RSS):

1. **enumeration**: `PlcExportSource` pages the whole export into a fresh
   SQLite store (and, with PostgreSQL, a fresh schema): DIDs/s, and the
   store's size per repo afterwards.
2. **claims**: from that filled store, claim-and-commit cycles as the
   scheduler and a worker do them (`pending_hosts`, `claim` 4 at a time, then
   one `commit` marking them done per 64 repos), for a fixed number of repos,
   by 1 and by 3 processes at once: claims/s.
3. **product**: `bsky-backfill run --all-from-plc` over the whole export, stopped
   (SIGTERM) once the export is read and a fixed number of repos is fetched:
   peak RSS of the product process (sampled from /proc), repos/s.

Targets (issue 13): claims/s and peak RSS flat within 20 % from the smallest
to the largest size; the README's projection of 40M repos comes from the
measured slope. Not a test: figures depend on the machine (load recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

from bench.machine import machine_info
from bench.proc import ROOT, python_module, run_children

DEFAULT_SCALES = (1_000, 100_000, 1_000_000)
CLAIMS = 20_000
"""Repos claimed (and committed) per claims measurement, whatever the size."""
FETCHED = 1_000
"""Repos the product fetches before it is stopped, whatever the size (the smallest
size's all): the same work at every size, so what differs is the size alone."""
HOSTS = 64
PG_URL = os.environ.get("BSKY_BACKFILL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


# -- children ---------------------------------------------------------------------------


def _open(store: str) -> Any:
    from bsky_backfill.state.open import open_store

    if store.startswith("postgresql://"):
        return open_store(store, Path("unused"))
    return open_store(None, Path(store))


def child_enumerate(plc_url: str, store_url: str) -> dict[str, Any]:
    """Page the whole export into the store; DIDs and seconds of the paging alone."""
    from bsky_backfill.engine.enumerate import PlcExportSource, run_source
    from bsky_backfill.xrpc.client import HttpSettings, XrpcClient

    store = _open(store_url)

    async def go() -> Any:
        async with XrpcClient(HttpSettings(), allow_private=True) as client:
            source = PlcExportSource(client, plc_url, allow_private=True)
            return await run_source(source, store)

    started = time.perf_counter()
    result = asyncio.run(go())
    seconds = time.perf_counter() - started
    total = sum(store.counts().values())
    store.close()
    return {"dids": total, "seconds": seconds, "offered": result.offered}


def child_claims(store_url: str, claims: int, index: int, procs: int) -> dict[str, Any]:
    """Claim-and-commit `claims` repos the way the engine does; claims/s."""
    from bsky_backfill.state.base import RepoDone

    store = _open(store_url)
    now = dt.datetime.now(dt.UTC)
    got = 0
    done: list[RepoDone] = []
    started = time.perf_counter()
    while got < claims:
        hosts = [h for h in store.pending_hosts(now) if zlib.crc32(h.encode()) % procs == index]
        if not hosts:
            break
        for host in hosts:
            for task in store.claim(host, 4, now):
                done.append(RepoDone(did=task.did, rev=None, records=0))
                got += 1
            if len(done) >= 64:
                store.commit([], done, [], [])
                done = []
            if got >= claims:
                break
    if done:
        store.commit([], done, [], [])
    seconds = time.perf_counter() - started
    store.close()
    return {"claims": got, "seconds": seconds}


# -- the parent --------------------------------------------------------------------------


def _store_bytes(store_url: str) -> int:
    if store_url.startswith("postgresql://"):
        import psycopg

        schema = store_url.rsplit("schema=", 1)[1]
        with psycopg.connect(PG_URL) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'm')",
                (schema,),
            ).fetchone()
        return int(row[0]) if row else 0
    path = Path(store_url)
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def _drop_schema(store_url: str) -> None:
    import psycopg

    schema = store_url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _json_child(argv: list[str], log: Path) -> tuple[dict[str, Any], Any]:
    [res] = run_children([(argv, log)], timeout_s=7200)
    if res.returncode != 0:
        raise RuntimeError(f"{argv[3:5]} failed: {res.tail()}")
    return json.loads(res.stdout.strip().splitlines()[-1]), res


def measure_store(kind: str, store_url: str, plc_url: str, work: Path) -> dict[str, Any]:
    enum, res = _json_child(
        python_module("bench.scale", "child-enumerate", plc_url, store_url), work / "enum.log"
    )
    row: dict[str, Any] = {
        "store": kind,
        "dids": enum["dids"],
        "enumeration_dids_per_s": enum["dids"] / enum["seconds"],
        "enumeration_peak_rss_mib": res.max_rss_bytes / 2**20,
        "store_bytes_per_repo": _store_bytes(store_url) / max(1, enum["dids"]),
    }
    for procs in (1, 3):
        share = max(1, min(CLAIMS, enum["dids"] // 2) // procs)
        jobs = [
            (
                python_module(
                    "bench.scale", "child-claims", store_url, str(share), str(i), str(procs)
                ),
                work / f"claims-{procs}-{i}.log",
            )
            for i in range(procs)
        ]
        results = run_children(jobs, timeout_s=7200)
        outs = [json.loads(r.stdout.strip().splitlines()[-1]) for r in results]
        total = sum(o["claims"] for o in outs)
        row[f"claims_per_s_{procs}p"] = total / max(o["seconds"] for o in outs)
    return row


def measure_product(plc_url: str, export: Any, work: Path) -> dict[str, Any]:
    """The product over the whole export, stopped after FETCHED repos: peak RSS."""
    out = work / "out"
    argv = python_module(
        "bsky_backfill", "run", "--all-from-plc", "--plc-url", plc_url, "--out", str(out),
        "--allow-private-hosts", "--no-progress", "--rate-limit", "0",
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    want = min(FETCHED, export.accounts)
    while not export.export_exhausted or export.get_repo_served < want:
        if proc.poll() is not None:
            raise RuntimeError(f"the product ended early: {proc.communicate()[1][-600:]!r}")
        peak = max(peak, _rss(proc.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    fetched = export.get_repo_served
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    return {"product_peak_rss_mib": peak / 2**20, "product_repos_per_s": fetched / seconds}


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "child-enumerate":
        print(json.dumps(child_enumerate(args[1], args[2])))
        return 0
    if args and args[0] == "child-claims":
        print(json.dumps(child_claims(args[1], int(args[2]), int(args[3]), int(args[4]))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--scales", default=",".join(map(str, DEFAULT_SCALES)))
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    opts = parser.parse_args(args)
    from bsky_backfill.simulate.bulk import BulkNetwork

    rows: list[dict[str, Any]] = []
    for n in [int(s) for s in opts.scales.split(",")]:
        net = BulkNetwork(n, hosts=HOSTS)
        with net.serve_in_thread(), tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            work = Path(tmp)
            stores = [("sqlite", str(work / "state.sqlite"))]
            if not opts.no_postgres:
                stores.append(("postgresql", f"{PG_URL}?schema=bench_{uuid.uuid4().hex[:12]}"))
            for kind, url in stores:
                try:
                    row = {"scale": n, **measure_store(kind, url, net.plc_url, work)}
                finally:
                    if kind == "postgresql":
                        _drop_schema(url)
                if kind == "sqlite":
                    row.update(measure_product(net.plc_url, net, work))
                rows.append(row)
                print(json.dumps({k: round(v, 1) if isinstance(v, float) else v
                                  for k, v in row.items()}), flush=True)  # fmt: skip
    result = {"machine": machine_info(), "rows": rows, "projection": project(rows)}
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["projection"], indent=2))
    return 0


def project(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures for 40M repos, extrapolated from the smallest and largest size measured
    as a power law (value ~ size^k): flat figures stay flat, linear growth stays linear."""
    import math

    target = 40_000_000
    out: dict[str, Any] = {"repos": target}
    for kind in ("sqlite", "postgresql"):
        got = sorted((r for r in rows if r["store"] == kind), key=lambda r: r["scale"])
        if len(got) < 2:
            continue
        lo, hi = got[0], got[-1]
        span = math.log(hi["scale"] / lo["scale"])

        def at(
            key: str, lo: dict[str, Any] = lo, hi: dict[str, Any] = hi, span: float = span
        ) -> float:
            k = math.log(hi[key] / lo[key]) / span
            return float(hi[key] * (target / hi["scale"]) ** k)

        for key in ("claims_per_s_1p", "claims_per_s_3p", "enumeration_dids_per_s"):
            out[f"{key}_{kind}"] = at(key)
            out[f"{key}_{kind}_ratio_{hi['scale']}_vs_{lo['scale']}"] = hi[key] / lo[key]
        out[f"store_gib_{kind}"] = hi["store_bytes_per_repo"] * target / 2**30
        if kind == "sqlite":
            out["product_peak_rss_mib"] = at("product_peak_rss_mib")
            out["product_rss_ratio"] = hi["product_peak_rss_mib"] / lo["product_peak_rss_mib"]
    return out


if __name__ == "__main__":
    sys.exit(main())
