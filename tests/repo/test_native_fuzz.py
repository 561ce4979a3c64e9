"""Fuzz: the C loops (`repo/_native.c`) and their Python twins agree on hostile CARs.

Every CAR from a host is untrusted bytes, and the C code reads them first. A
seeded generator mutates real and built CARs (bit flips, cuts, inserted and
deleted bytes, duplicated and dropped frames, corrupted varints, spliced
CARs, pure noise) and checks, for each: the C function returns what the
Python loop returns, or None ("not my shape"), and never an answer where the
Python loop raises. Key layers are compared on random keys. Deterministic
(fixed seeds), so a failure names the seed and mutation that found it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from bsky_backfill.repo import native
from bsky_backfill.repo.build import build_repo
from bsky_backfill.repo.car import frame_car
from bsky_backfill.repo.lazy import _frame_index_py
from bsky_backfill.repo.mst import _off_layer
from bsky_backfill.repo.verify import _mismatched_py
from tests.ci import in_ci
from tests.fixture_paths import CARS

pytestmark = pytest.mark.skipif(
    not native.NATIVE and not in_ci(), reason="C extension not built here"
)

SEEDS = range(8)
MUTANTS_PER_SEED = 150


def _bases() -> list[bytes]:
    cars = [p.read_bytes() for p in sorted(CARS.rglob("*.car")) if p.stat().st_size < 300_000]
    records = {f"app.bsky.feed.post/3l{i:011d}": {"$type": "x", "i": i} for i in range(120)}
    cars.append(build_repo("did:plc:abcdefghijklmnopqrstuvwx", records))
    return cars


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _mutate(rng: random.Random, car: bytes, other: bytes) -> tuple[str, bytes]:
    data = bytearray(car)
    kind = rng.choice(
        ["flip", "cut", "insert", "delete", "dup_frame", "drop_frame", "varint", "splice", "noise"]
    )
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "cut":
        del data[rng.randrange(len(data)) :]
    elif kind == "insert":
        i = rng.randrange(len(data) + 1)
        data[i:i] = rng.randbytes(rng.randint(1, 40))
    elif kind == "delete":
        i = rng.randrange(len(data))
        del data[i : i + rng.randint(1, 40)]
    elif kind in ("dup_frame", "drop_frame", "varint"):
        try:
            _, frames = frame_car(car)
        except Exception:
            return kind, bytes(data)
        if not frames:
            return kind, bytes(data)
        cid, start, stop = rng.choice(frames)
        head = start - len(cid)
        # The frame's varint ends where the CID starts; find its first byte.
        begin = head - 1
        while begin > 0 and data[begin - 1] & 0x80:
            begin -= 1
        frame = bytes(data[begin:stop])
        if kind == "dup_frame":
            at = rng.choice([f[2] for f in frames])
            data[at:at] = frame
        elif kind == "drop_frame":
            del data[begin:stop]
        else:
            length = rng.choice([0, 1, 35, stop - head + 1, stop - head - 1, 2**31, 2**63 - 1])
            data[begin:head] = _varint(length)
    elif kind == "splice":
        i = rng.randrange(len(data))
        j = rng.randrange(len(other))
        data = data[:i] + other[j:]
    else:
        data = bytearray(rng.randbytes(rng.randint(0, 300)))
    return kind, bytes(data)


def _agree(
    fast: Callable[[bytes], object | None], slow: Callable[[bytes], object], data: bytes
) -> None:
    got = fast(data)
    try:
        want = slow(data)
    except Exception:
        assert got is None, "C answered where the Python loop fails"
        return
    assert got is None or got == want


@pytest.mark.parametrize("seed", SEEDS)
def test_mutated_cars(seed: int) -> None:
    assert native.mismatched is not None and native.frame_index is not None
    mismatched, frame_index = native.mismatched, native.frame_index
    rng = random.Random(seed)
    bases = _bases()
    answered = 0
    for n in range(MUTANTS_PER_SEED):
        car, other = rng.choice(bases), rng.choice(bases)
        kind, data = _mutate(rng, car, other)
        try:
            _agree(lambda d: mismatched(d, None), lambda d: _mismatched_py(d, None), data)
            _agree(frame_index, _frame_index_py, data)
            answered += mismatched(data, None) is not None
        except AssertionError as e:
            raise AssertionError(f"seed {seed}, mutant {n} ({kind}): {e}") from e
    # The mutations must leave some CARs readable, or the comparison is empty.
    assert answered > MUTANTS_PER_SEED // 10


@pytest.mark.parametrize("seed", SEEDS)
def test_random_keys_layers(seed: int) -> None:
    assert native.off_layer is not None
    rng = random.Random(seed)
    for _ in range(300):
        keys = [rng.randbytes(rng.randint(0, 48)) for _ in range(rng.randint(0, 12))]
        layer = rng.randint(0, 6)
        assert native.off_layer(keys, layer) == _off_layer(keys, layer), (keys, layer)
