"""The seed-style baseline: sequential listRecords paging with fixed pacing, as research did it.

Where it sits: `python -m bench` runs this module as a child process over a
subset of the simulated repos, to show what the original research pipeline
this project replaces would achieve on the same network. Per DID, one
request at a time, on one keep-alive connection per host (stdlib
`http.client` + `json`, no concurrency):

1. `GET {plc}/{did}`: the DID document; the `#atproto_pds` service endpoint;
2. `com.atproto.repo.describeRepo`: the repo's collections;
3. per wanted collection, `com.atproto.repo.listRecords?limit=100` paged by
   cursor until an empty page (the reference PDS ends every collection so).

Pacing: a fixed `time.sleep(PACE_S)` (0.05 s) after every request, the
politeness delay such scripts used instead of reading rate-limit headers
(20 requests/s at most per process, whatever the host allows). Rows (uri,
did, collection, rkey, cid, created_at, record JSON) are kept in memory and
written as one zstd Parquet file per collection at the end.

    python -m bench.baseline --plc URL --dids FILE --out DIR --result FILE.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.records.schema import TIMESTAMP

PACE_S = 0.05


class Client:
    """One keep-alive HTTP/1.1 connection per host, one request at a time, paced."""

    def __init__(self, pace_s: float) -> None:
        self.pace_s = pace_s
        self.requests = 0
        self._conns: dict[str, http.client.HTTPConnection] = {}

    def get(self, url: str) -> tuple[int, Any]:
        parts = urllib.parse.urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            conn = self._conns.get(parts.netloc)
            if conn is None:
                conn = self._conns[parts.netloc] = http.client.HTTPConnection(
                    parts.netloc, timeout=60
                )
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                del self._conns[parts.netloc]
                if attempt == 2:
                    raise
        self.requests += 1
        time.sleep(self.pace_s)
        return response.status, json.loads(body) if body else None


def pds_endpoint(doc: dict[str, Any]) -> str | None:
    for service in doc.get("service", []):
        if str(service.get("id", "")).endswith("#atproto_pds"):
            endpoint = service.get("serviceEndpoint")
            return endpoint if isinstance(endpoint, str) else None
    return None


def backfill(
    client: Client, plc: str, did: str, wanted: frozenset[str], rows: dict[str, list[Any]]
) -> int:
    """One DID, the seed way; returns the records it kept."""
    status, doc = client.get(f"{plc}/{did}")
    if status != 200 or not isinstance(doc, dict):
        return 0
    pds = pds_endpoint(doc)
    if pds is None:
        return 0
    q = urllib.parse.quote
    status, desc = client.get(f"{pds}/xrpc/com.atproto.repo.describeRepo?repo={q(did)}")
    if status != 200:
        return 0
    kept = 0
    for collection in desc.get("collections", []):
        if collection not in wanted:
            continue
        cursor = ""
        while True:
            url = (
                f"{pds}/xrpc/com.atproto.repo.listRecords?repo={q(did)}"
                f"&collection={q(collection)}&limit=100"
            )
            status, page = client.get(url + (f"&cursor={q(cursor)}" if cursor else ""))
            if status != 200:
                break
            records = page.get("records", [])
            out = rows.setdefault(collection, [])
            for rec in records:
                value = rec.get("value", {})
                created = value.get("createdAt")
                out.append(
                    (
                        rec["uri"],
                        did,
                        collection,
                        rec["uri"].rsplit("/", 1)[1],
                        rec["cid"],
                        created if isinstance(created, str) else None,
                        json.dumps(value, sort_keys=True),
                    )
                )
            kept += len(records)
            cursor = page.get("cursor") or ""
            if not records or not cursor:
                break
    return kept


def write(rows: dict[str, list[Any]], out: Path) -> None:
    names = ["uri", "did", "collection", "rkey", "cid", "created_at", "record"]
    for collection, items in rows.items():
        columns = list(zip(*items, strict=True))
        arrays = [pa.array(col, pa.string()) for col in columns]
        # The seed kept createdAt as text when it did not parse.
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
            arrays[5] = arrays[5].cast(TIMESTAMP)
        path = out / collection / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_arrays(arrays, names=names), path, compression="zstd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plc", required=True)
    parser.add_argument("--dids", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pace", type=float, default=PACE_S)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    dids = [d for d in args.dids.read_text().split() if d.startswith("did:")]
    client = Client(args.pace)
    rows: dict[str, list[Any]] = {}
    wanted = frozenset(DEFAULT_COLLECTIONS)
    start = time.perf_counter()
    records = sum(backfill(client, args.plc.rstrip("/"), did, wanted, rows) for did in dids)
    write(rows, args.out)
    seconds = time.perf_counter() - start
    result = {
        "repos": len(dids),
        "records": records,
        "requests": client.requests,
        "pace_s": args.pace,
        "loop_s": seconds,
    }
    args.result.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
