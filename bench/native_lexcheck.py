"""Lexicon validation per record: the Python check against C's `lex_check`.

Run: `.venv/bin/python -m bench.native_lexcheck [--records 50000] [--rounds 5]`.

Inputs: simulator posts and likes (`bsky_backfill.simulate.content.Content`:
text in several scripts, facets, replies, image/external/quote embeds with
blob links; likes with strongRefs), about half each, DAG-CBOR encoded once.
Timed, CPU per record (time.process_time, the lowest of `--rounds` passes so
neighbours on a shared machine move it less):

- `python check`: `record_checks(name, trust_created_at=True)[0]` on the
  libipld-decoded record (what records/columns.py runs today);
- `decode`: `libipld.decode_dag_cbor` of the block, which the Python check
  needs first and the native path does not;
- `cbor_check`: cb.h's subset check alone (the native path runs it anyway);
- `lex_check`: cbor_check plus lex_valid (records/native/lexcheck.c) on the
  block, through one Python call each;
- `lex_valid`: lex_check minus lex_check under a schema of one empty object
  (the call, cbor_check and a one-byte walk): the walk alone, what the native
  pass (pass.c, calling lex_valid from C) pays per record on top of cbor_check.

Also printed: how many records C accepted, and how many the Python check
accepted that C left undecided (records/native/lexcheck.c lists when). Not a
test: figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from collections.abc import Callable
from typing import Any

import libipld

from bsky_backfill.records import native
from bsky_backfill.records.validate import record_checks
from bsky_backfill.records.validate_native import native_check
from bsky_backfill.repo.build import cid_for
from bsky_backfill.simulate.content import LIKE, POST, Content, Pools, PostRef


def _records(count: int, seed: int) -> dict[str, list[bytes]]:
    """`count` simulator posts and likes (about half each), as DAG-CBOR blocks."""
    rng = random.Random(seed)
    accounts = [(f"did:plc:{i:024d}".replace("0", "a"), f"user{i}.example.com") for i in range(300)]
    pools = Pools(accounts=accounts)
    writers = [Content(rng, pools, did) for did, _handle in accounts[:50]]
    blocks: dict[str, list[bytes]] = {POST: [], LIKE: []}
    start = 1_700_000_000_000_000
    for i in range(count):
        who = writers[i % len(writers)]
        micros = start + i * 7_919_000
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(micros // 1_000_000))
        created += f".{micros % 1_000_000 // 1000:03d}Z"
        if rng.random() < 0.5:
            value, parent = who.post(created)
            block = libipld.encode_dag_cbor(value)
            uri = f"at://{who.did}/{POST}/{i:013d}"
            cid = libipld.encode_cid(cid_for(value))
            root = (uri, cid) if parent is None else (parent.root_uri, parent.root_cid)
            pools.add_post(PostRef(uri, cid, *root), rng)
            who.own_posts.append(PostRef(uri, cid, *root))
            blocks[POST].append(block)
        else:
            blocks[LIKE].append(libipld.encode_dag_cbor(who.like(created)))
    return blocks


def _best(rounds: int, items: list[Any], call: Callable[[Any], Any]) -> float:
    """The lowest CPU seconds of `rounds` passes of `call` over `items`."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for item in items:
            call(item)
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    lex_check, cbor_check, lex_compile = native.lex_check, native.cbor_check, native.lex_compile
    if lex_check is None or cbor_check is None or lex_compile is None:
        raise SystemExit("bsky_backfill.records._native is not built: nothing to compare")
    blocks = _records(args.records, args.seed)
    print(f"records: {sum(len(b) for b in blocks.values())}, rounds: {args.rounds}, CPU ns/record")
    print(f"{'collection':<20} {'n':>6} {'python check':>13} {'decode':>8} {'cbor_check':>11}"
          f" {'lex_check':>10} {'lex_valid':>10} {'speed-up':>9} {'C accepted':>11}"
          f" {'undecided':>10}")  # fmt: skip
    empty = lex_compile((("object", ()),))
    for collection, items in blocks.items():
        checks = record_checks(collection, trust_created_at=True)
        schema = native_check(collection)
        assert checks is not None and schema is not None
        fast = checks[0]
        decoded = [libipld.decode_dag_cbor(b) for b in items]
        accepted = sum(bool(lex_check(schema, b)) for b in items)
        python_ok = sum(bool(fast(r)) for r in decoded)
        n = len(items)
        t_py = _best(args.rounds, decoded, fast) / n * 1e9
        t_dec = _best(args.rounds, items, libipld.decode_dag_cbor) / n * 1e9
        t_cb = _best(args.rounds, items, cbor_check) / n * 1e9
        t_lex = _best(args.rounds, items, functools.partial(lex_check, schema)) / n * 1e9
        t_empty = _best(args.rounds, items, functools.partial(lex_check, empty)) / n * 1e9
        print(
            f"{collection:<20} {n:>6} {t_py:>13.0f} {t_dec:>8.0f} {t_cb:>11.0f} {t_lex:>10.0f}"
            f" {t_lex - t_empty:>10.0f} {t_py / t_lex:>8.1f}x {accepted:>11}"
            f" {python_ok - accepted:>10}"
        )


if __name__ == "__main__":
    main()
