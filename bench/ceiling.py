"""The no-network ceiling: the same CARs from disk -> decode -> MST walk -> rows -> Parquet.

Where it sits: `python -m bench` writes every served repo's CAR to a folder
(`bench.cars.dump_cars`) and runs this module as a child process, once per
variant, so its peak RSS and CPU are measured alone:

* `extract`: the product's own hot path, `records.transform.extract_repo`,
  per repo, then pyarrow Parquet writes (zstd, 128k-row groups, like the sink);
* `extract-verify`: the same with verification on (signature, block hashes,
  MST structure), as the product runs by default;
* `tight`: `bench.tight.TightExtractor`, a hand-tightened loop producing the
  same tables (same schema, same rows), to show what the product could reach;
* `decode-floor`: `libipld.decode_car` of every CAR and nothing else (GC off:
  no walk, no checks, no rows, no Parquet), the floor per record that issue
  18's target is measured against (product CPU per record <= 2x this, in the
  same run). Its `records` are the manifest's record counts.

Neither does HTTP, DID resolution, state transactions or fsync: that is the
point of a ceiling. Timed: from the first file read to the last Parquet file
closed (interpreter start-up and imports excluded, which the product pays).

    python -m bench.ceiling --cars DIR --out DIR --variant extract --result FILE.json
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libipld
import pyarrow as pa
import pyarrow.parquet as pq

from bench.tight import TightExtractor
from bsky_backfill.errors import RepoInvalid
from bsky_backfill.models import DeadLetter, RecordFilter
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.sinks.deadletters import dead_letter_table

ROW_GROUP_ROWS = 128 * 1024
VARIANTS = ("extract", "extract-verify", "tight", "decode-floor")


class ParquetSink:
    """One zstd Parquet file per collection; tables buffered up to a row group, like the sink."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._pending: dict[str, list[pa.Table]] = {}
        self._pending_rows: dict[str, int] = {}
        self.rows = 0

    def add(self, collection: str, table: pa.Table) -> None:
        self.rows += table.num_rows
        pending = self._pending.setdefault(collection, [])
        pending.append(table)
        n = self._pending_rows.get(collection, 0) + table.num_rows
        self._pending_rows[collection] = n
        if n >= ROW_GROUP_ROWS:
            self._flush(collection)

    def _flush(self, collection: str) -> None:
        tables = self._pending.pop(collection, [])
        self._pending_rows[collection] = 0
        if not tables:
            return
        t = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        writer = self._writers.get(collection)
        if writer is None:
            path = self.out / collection / "part-0.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = self._writers[collection] = pq.ParquetWriter(
                path, t.schema, compression="zstd"
            )
        writer.write_table(t, row_group_size=ROW_GROUP_ROWS)

    def close(self, dead_letters: list[DeadLetter]) -> None:
        for collection in list(self._pending):
            self._flush(collection)
        for writer in self._writers.values():
            writer.close()
        if dead_letters:
            path = self.out / "_deadletters" / "part-0.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(dead_letter_table(dead_letters), path, compression="zstd")


@dataclass(frozen=True)
class CarFile:
    """One repo of the manifest `bench.cars.dump_cars` writes."""

    did: str
    path: Path
    records: int
    signing_key: str


def read_manifest(cars: Path) -> list[CarFile]:
    """The CARs in the order `dump_cars` wrote them (tab-separated, one per line)."""
    out = []
    for line in (cars / "manifest.tsv").read_text().splitlines():
        did, name, records, key = line.split("\t")
        out.append(CarFile(did, cars / name, int(records), key))
    return out


def shard_items(items: list[CarFile], index: int, count: int) -> list[CarFile]:
    """Shard `index` of `count`, balanced by records (biggest repo first to the lightest
    shard), each shard in manifest order. One giant repo still bounds its shard."""
    load = [0] * count
    owner: dict[str, int] = {}
    for item in sorted(items, key=lambda c: -c.records):
        i = load.index(min(load))
        owner[item.did] = i
        load[i] += max(item.records, 1)
    return [item for item in items if owner[item.did] == index]


def run(cars: Path, out: Path, variant: str, shard: tuple[int, int]) -> dict[str, Any]:
    """Extract every CAR of the manifest (this shard of it) into `out`; the figures."""
    filt = RecordFilter(collections=frozenset(DEFAULT_COLLECTIONS))
    items = shard_items(read_manifest(cars), *shard)
    if variant == "decode-floor":
        return _decode_floor(items)
    sink = ParquetSink(out)
    dead: list[DeadLetter] = []
    tight = TightExtractor(filt, sink.add) if variant == "tight" else None
    verify = variant == "extract-verify"
    read_bytes = failed = 0
    start = time.perf_counter()
    for item in items:
        data = item.path.read_bytes()
        read_bytes += len(data)
        try:
            if tight is not None:
                tight.add_repo(data, item.did)
                continue
            result = extract_repo(data, item.did, filt, signing_key=item.signing_key, verify=verify)
        except RepoInvalid as e:
            failed += 1
            dead.append(DeadLetter(item.did, None, e.stage, e.code, str(e)))
            continue
        finally:
            del data
        for collection, table in result.tables.items():
            sink.add(collection, table)
        dead.extend(result.dead_letters)
    if tight is not None:
        tight.flush()
        dead.extend(tight.dead_letters)
    sink.close(dead)
    loop_s = time.perf_counter() - start
    return {
        "variant": variant,
        "repos": len(items),
        "repos_failed": failed,
        "records": sink.rows,
        "dead_letters": len(dead),
        "car_bytes": read_bytes,
        "loop_s": loop_s,
        "fallback_repos": tight.fallbacks if tight is not None else None,
    }


def _decode_floor(items: list[CarFile]) -> dict[str, Any]:
    """Decode every CAR with libipld and drop it: the per-record floor of any Python
    tool built on libipld (`loop_cpu_s` is the loop's own CPU, start-up excluded)."""
    read_bytes = 0
    gc.disable()
    start, cpu = time.perf_counter(), time.process_time()
    try:
        for item in items:
            data = item.path.read_bytes()
            read_bytes += len(data)
            libipld.decode_car(data)
    finally:
        gc.enable()
    return {
        "variant": "decode-floor",
        "repos": len(items),
        "repos_failed": 0,
        "records": sum(item.records for item in items),
        "dead_letters": 0,
        "car_bytes": read_bytes,
        "loop_s": time.perf_counter() - start,
        "loop_cpu_s": time.process_time() - cpu,
        "fallback_repos": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", choices=VARIANTS, default="extract")
    parser.add_argument("--shard", default="0/1", help="i/n: the i-th of n shards (by records)")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    i, n = (int(x) for x in args.shard.split("/"))
    figures = run(args.cars, args.out, args.variant, (i, n))
    args.result.write_text(json.dumps(figures))


if __name__ == "__main__":
    main()
