"""Record block -> atproto JSON: the Python path against the C one, CPU per record.

Run: `python bench/native_json.py [--records 100000] [--rounds 5]`.

Where it sits: the `record` column of every landed record is its atproto JSON.
The Python path decodes the block into Python objects and serialises them
(`libipld.decode_dag_cbor` + `records.json.to_json_bytes`, orjson); the native
record path (issue #18) writes the same bytes straight from the DAG-CBOR
(`records/native/json.c`, `cbor_json`, which also runs the `cb_check` subset
check). Inputs: the record blocks of a simulated network (posts in several
scripts with facets, embeds and replies, likes, follows, profiles, lists).
The check alone (`cbor_check`, which includes the call overhead too) is
timed as well: in the native pass it runs once per record for all parts. The
loops run `--rounds` times, interleaved so drift on a shared machine hits
them alike; each figure is the lowest process CPU time (time.process_time).
The outputs are compared once first: a benchmark of different answers would
mean nothing. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import libipld

from bsky_backfill.records import native
from bsky_backfill.records.json import to_json_bytes
from bsky_backfill.simulate import Scenario, generate


def sim_records(count: int) -> list[bytes]:
    """About `count` record blocks of a deterministic simulated network."""
    accounts = max(count // 100, 1)
    content = generate(Scenario(seed=18, accounts=accounts, hosts=2, mean_records=100))
    blocks = []
    for acct in content.accounts:
        if acct.repo is None:
            continue
        car = acct.repo.car
        for rows in acct.repo.records.values():
            blocks += [car[start:stop] for _, _, start, stop in rows]
    return blocks


def python_pass(blocks: list[bytes]) -> float:
    """CPU seconds of decode + orjson over every block."""
    decode = libipld.decode_dag_cbor
    start = time.process_time()
    for block in blocks:
        to_json_bytes(decode(block))
    return time.process_time() - start


def native_pass(blocks: list[bytes], fn: Callable[[bytes], object] | None) -> float:
    """CPU seconds of `fn` (cbor_json: check + write; cbor_check: the check alone)."""
    assert fn is not None
    start = time.process_time()
    for block in blocks:
        fn(block)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if native.cbor_json is None:
        raise SystemExit("bsky_backfill.records._native is not built (or switched off)")
    blocks = sim_records(args.records)
    fn = native.cbor_json
    declined = 0
    for block in blocks:
        out = fn(block)
        if out is None:
            declined += 1
        elif out != to_json_bytes(libipld.decode_dag_cbor(block)):
            raise SystemExit(f"outputs differ on {block.hex()}")
    py_best = c_best = check_best = float("inf")
    for _ in range(args.rounds):
        py_best = min(py_best, python_pass(blocks))
        c_best = min(c_best, native_pass(blocks, native.cbor_json))
        check_best = min(check_best, native_pass(blocks, native.cbor_check))
    n = len(blocks)
    size = sum(map(len, blocks)) / n
    print(f"records: {n} (mean {size:.0f} bytes of DAG-CBOR), declined by cb_check: {declined}")
    print(f"python  decode_dag_cbor + to_json_bytes: {py_best / n * 1e6:7.3f} us CPU/record")
    print(f"native  cbor_json:                       {c_best / n * 1e6:7.3f} us CPU/record")
    print(f"        of which cb_check (cbor_check):  {check_best / n * 1e6:7.3f} us CPU/record")
    print(f"ratio python / native: {py_best / c_best:.2f}x  (best of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
