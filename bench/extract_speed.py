"""How fast is the hot path? records/s of `extract_repo`, GC paused vs GC running.

Run: `.venv/bin/python bench/extract_speed.py [--repeat 200] [--car PATH] [--synthetic N]
[--heap N]`.

Default input is the real @bsky.app export (604 records, 11 collections)
extracted `--repeat` times; `--synthetic N` also builds one large repo of N
generated posts/likes/follows with `repo.build` and extracts it. "GC on"
swaps the collector pause for a no-op, to show what the pause buys; the
gain grows with the live heap of the process (`--heap N` keeps N small
containers alive, as a busy engine process would).
Not a test: numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from bsky_backfill.models import RecordFilter
from bsky_backfill.records import transform
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS, KNOWN_COLLECTIONS
from bsky_backfill.repo import car as car_module
from bsky_backfill.repo.build import build_repo
from bsky_backfill.repo.car import read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.gcpause import gc_paused

ROOT = Path(__file__).resolve().parents[1]
BSKY_APP = ROOT / "tests" / "fixtures" / "atproto" / "car" / "laravel-bluesky" / "bsky-app.car"
FILTER = RecordFilter(collections=KNOWN_COLLECTIONS | DEFAULT_COLLECTIONS)


def _rate(data: bytes, did: str, repeat: int) -> tuple[float, int]:
    rows = 0
    start = time.perf_counter()
    for _ in range(repeat):
        rows += transform.extract_repo(data, did, FILTER).row_count
    return rows / (time.perf_counter() - start), rows // repeat


def _measure(data: bytes, repeat: int, label: str) -> None:
    did = read_commit(read_car(data)).did
    transform.extract_repo(data, did, FILTER)  # warm up imports and caches
    for mode, pause in (("GC paused", gc_paused), ("GC on", _no_pause)):
        # Swap the pause where the hot path looks it up (bench-only patching).
        setattr(transform, "gc_paused", pause)  # noqa: B010
        setattr(car_module, "gc_paused", pause)  # noqa: B010
        try:
            best = max(_rate(data, did, repeat)[0] for _ in range(3))
        finally:
            setattr(transform, "gc_paused", gc_paused)  # noqa: B010
            setattr(car_module, "gc_paused", gc_paused)  # noqa: B010
        rows = _rate(data, did, 1)[1]
        print(f"{label:40s} {mode:10s} {best:>10,.0f} records/s  ({rows} rows/repo)")


def _no_pause() -> contextlib.nullcontext[None]:
    return contextlib.nullcontext()


def synthetic_repo(n: int) -> bytes:
    """A repo of `n` records: 60% posts, 30% likes, 10% follows, realistic sizes."""
    did = "did:plc:benchbenchbenchbenchbenc"
    records = {}
    makers: list[tuple[str, Callable[[int], dict[str, object]]]] = [
        ("app.bsky.feed.post", _post),
        ("app.bsky.feed.post", _post),
        ("app.bsky.feed.like", _like),
        ("app.bsky.feed.post", _post),
        ("app.bsky.graph.follow", _follow),
        ("app.bsky.feed.post", _post),
        ("app.bsky.feed.like", _like),
        ("app.bsky.feed.post", _post),
        ("app.bsky.feed.like", _like),
        ("app.bsky.feed.post", _post),
    ]
    for i in range(n):
        collection, make = makers[i % len(makers)]
        records[f"{collection}/3l{i:011d}"] = make(i)
    return build_repo(did, records)


def _ts(i: int) -> str:
    return f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00.{i % 1000:03d}Z"


def _post(i: int) -> dict[str, object]:
    return {
        "$type": "app.bsky.feed.post",
        "text": f"post number {i} " + "lorem ipsum dolor sit amet " * (1 + i % 5),
        "langs": ["en"],
        "createdAt": _ts(i),
    }


def _like(i: int) -> dict[str, object]:
    uri = f"at://did:plc:someoneelsesomeoneelsesom/app.bsky.feed.post/3l{i:011d}"
    cid = "bafyreih2ppgdoc5jhjsbj5yxvqezymbndbe522vexpiic6l72o3ge7tswy"
    return {"$type": "app.bsky.feed.like", "subject": {"uri": uri, "cid": cid}, "createdAt": _ts(i)}


def _follow(i: int) -> dict[str, object]:
    return {"$type": "app.bsky.graph.follow", "subject": "did:plc:x", "createdAt": _ts(i)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--car", type=Path, default=BSKY_APP)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--synthetic", type=int, default=0, metavar="N")
    parser.add_argument("--heap", type=int, default=0, metavar="N")
    args = parser.parse_args()
    heap = [{"i": i} for i in range(args.heap)]
    _measure(args.car.read_bytes(), args.repeat, f"{args.car.name} x{args.repeat}")
    if args.synthetic:
        data = synthetic_repo(args.synthetic)
        label = f"synthetic {args.synthetic} records ({len(data) // 1024} KiB)"
        _measure(data, 3, label)
    del heap


if __name__ == "__main__":
    main()
