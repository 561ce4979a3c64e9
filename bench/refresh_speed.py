"""What a refresh costs, and what the key index costs the hot path.

Run: `.venv/bin/python bench/refresh_speed.py [--records N] [--changes K] [--repeat R]`.

1. **Key index on the hot path**: `extract_repo` of one N-record repo with the
   key index built and packed (the default) against the same call with the
   packing swapped for a no-op, runs interleaved; median of R each, ratio.
2. **Refresh against a fresh full extraction** (the baseline a refresh
   replaces): K records changed (a third deleted, a third edited, a third new);
   `refresh_diff` of the diff CAR (`getRepo since=` shape) against the stored
   index, the same with the whole repo and no index (the fallback), and
   `extract_repo` of the whole new repo; medians and ratios.
Not a test: numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import libipld

from bsky_backfill.engine.refresh import refresh_diff
from bsky_backfill.models import RecordFilter
from bsky_backfill.records import transform
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.repo.build import build_mst, build_repo, encode_block
from bsky_backfill.repo.diff import unpack_index
from bsky_backfill.simulate.keys import SigningKey

POST = "app.bsky.feed.post"
DID = "did:plc:benchrefreshbenchrefresh"
KEY = SigningKey.from_seed(b"bench-refresh", "k256")
FILT = RecordFilter(collections=frozenset({POST}))
_B32 = "234567abcdefghijklmnopqrstuvwxyz"


def _post(rng: random.Random) -> dict[str, Any]:
    return {"$type": POST, "text": f"post {rng.random()}", "createdAt": "2024-05-01T00:00:00.000Z"}


def _median(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--changes", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(1)
    key = lambda: f"{POST}/3k{''.join(rng.choice(_B32) for _ in range(11))}"  # noqa: E731
    old = {key(): _post(rng) for _ in range(args.records)}
    whole_old = build_repo(DID, old, sign=KEY.sign)

    # 1. the key index on the hot path
    pack = transform.packed_index
    on: list[float] = []
    off: list[float] = []
    for i in range(2 * args.repeat):
        transform.packed_index = pack if i % 2 else (lambda *a: b"")  # type: ignore[assignment]
        start = time.perf_counter()
        extract_repo(whole_old, DID, FILT, signing_key=KEY.did_key, verify=True)
        (on if i % 2 else off).append(time.perf_counter() - start)
    transform.packed_index = pack
    with_index, without = statistics.median(on), statistics.median(off)
    print(f"extract_repo, {args.records:,} records: with key index {with_index * 1e3:.1f} ms, "
          f"without {without * 1e3:.1f} ms, ratio {with_index / without:.3f}")  # fmt: skip

    # 2. a refresh against the full extraction it replaces
    landed = extract_repo(whole_old, DID, FILT, signing_key=KEY.did_key, verify=True)
    assert landed.keys is not None
    index, unlanded = unpack_index(landed.keys)
    new = dict(old)
    keys = sorted(old)
    third = max(1, args.changes // 3)
    for k in rng.sample(keys, third):
        new.pop(k)
    for k in rng.sample([k for k in keys if k in new], third):
        new[k] = _post(rng)
    for _ in range(third):
        new[key()] = _post(rng)
    old_blocks = set(build_mst({k: encode_block(v)[0] for k, v in old.items()})[1])
    old_blocks |= {encode_block(v)[0] for v in old.values()}
    diff = build_repo(DID, new, rev="3333333333333", sign=KEY.sign, drop=old_blocks)
    whole = build_repo(DID, new, rev="3333333333333", sign=KEY.sign)
    landed_text = {k: libipld.encode_cid(c) for k, c in index.items()}
    sign = {"signing_key": KEY.did_key, "verify": True}
    t_diff = _median(
        lambda: refresh_diff(diff, DID, FILT, index, unlanded=unlanded, **sign), args.repeat
    )
    t_whole = _median(
        lambda: refresh_diff(whole, DID, FILT, None, landed=landed_text, **sign), args.repeat
    )
    t_full = _median(lambda: extract_repo(whole, DID, FILT, **sign), args.repeat)
    print(f"refresh of {3 * third} changes in {args.records:,} records "
          f"(diff CAR {len(diff):,} bytes, whole {len(whole):,}):")  # fmt: skip
    print(f"  diff against the key index {t_diff * 1e3:.1f} ms "
          f"(ratio to a full extraction {t_diff / t_full:.3f})")  # fmt: skip
    print(f"  whole repo, no index       {t_whole * 1e3:.1f} ms "
          f"(ratio {t_whole / t_full:.3f})")  # fmt: skip
    print(f"  full extraction (baseline) {t_full * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
