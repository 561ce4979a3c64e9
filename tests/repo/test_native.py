"""The C loops of verification (`repo/_native.c`) answer exactly as their Python twins.

Both are run on the same inputs: every fixture CAR, CARs with a tampered
block, a duplicated block, another CID form, a cut-short body; and the
interop key-height vectors. Where the C code does not handle a CAR's shape
it must say so (None), never guess. In CI the extension must have been
built: a silent fallback would make the benchmark measure the slow path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bsky_backfill.repo import native
from bsky_backfill.repo.build import build_repo, encode_block, write_car
from bsky_backfill.repo.car import frame_car
from bsky_backfill.repo.lazy import _frame_index, _frame_index_py
from bsky_backfill.repo.mst import _off_layer, key_height
from bsky_backfill.repo.verify import _mismatched_py, mismatched_blocks
from tests.ci import assert_sanitized_build_loaded, in_ci, require_in_ci
from tests.fixture_paths import FIXTURES

DID = "did:plc:abcdefghijklmnopqrstuvwx"
CARS = sorted((FIXTURES / "car").rglob("*.car"))

needs_native = pytest.mark.skipif(
    not native.NATIVE and not in_ci(), reason="C extension not built here"
)


def test_the_extension_is_built() -> None:
    if not native.NATIVE:
        require_in_ci("bsky_backfill.repo._native was not built (C compiler, OpenSSL headers)")
    assert native.mismatched is not None and native.frame_index is not None


def test_the_pure_python_switch_turns_every_loop_off() -> None:
    """`BSKY_BACKFILL_PURE_PYTHON` (the whole-pipeline test runs with it) really
    leaves every C function unused, in a fresh interpreter as a run starts one."""
    code = (
        "from bsky_backfill.repo import native as n; from bsky_backfill.records import formats; "
        "print(n.NATIVE, n.mismatched, n.frame_index, n.off_layer, n.has_float, n.walk_leaves, "
        "formats.NATIVE, formats.FORMATS == formats.PYTHON)"
    )
    env = {**os.environ, native.PURE_PYTHON_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "None", "None", "None", "None", "None", "False", "True"]


def test_the_sanitized_build_is_the_one_loaded() -> None:
    """Under `make sanitize` (BSKY_BACKFILL_NATIVE_FROM set) the extension in use is the
    ASan/UBSan build, not the installed one: otherwise the sanitizer checks nothing."""
    assert_sanitized_build_loaded("bsky_backfill.repo._native")


def _repo(n: int = 300) -> bytes:
    records = {f"app.bsky.feed.post/3l{i:011d}": {"$type": "x", "i": i} for i in range(n)}
    return build_repo(DID, records)


def _tamper(car: bytes, nth: int) -> tuple[bytes, bytes]:
    """Flip the last byte of the nth block's data: (new CAR, that block's CID)."""
    _, frames = frame_car(car)
    cid, _, stop = frames[nth]
    out = bytearray(car)
    out[stop - 1] ^= 0x01
    return bytes(out), cid


def _both(data: bytes, only: set[bytes] | None = None) -> set[bytes]:
    assert native.mismatched is not None
    fast = native.mismatched(data, only)
    slow = _mismatched_py(data, only)
    assert fast == slow
    return fast


@needs_native
@pytest.mark.parametrize("path", CARS, ids=lambda p: p.name)
def test_fixture_cars_hash_alike(path: Path) -> None:
    data = path.read_bytes()
    assert native.mismatched is not None and native.frame_index is not None
    fast = native.mismatched(data, None)
    if fast is None:  # a shape the C loop leaves to Python: allowed, never a wrong answer
        return
    assert fast == _mismatched_py(data, None)
    index = native.frame_index(data)
    assert index is not None and index == _frame_index_py(data)


@needs_native
def test_tampered_blocks_are_found_by_both() -> None:
    car = _repo()
    assert _both(car) == set()
    bad, cid = _tamper(car, 5)
    assert _both(bad) == {cid}
    bad2, cid2 = _tamper(bad, 40)
    assert _both(bad2) == {cid, cid2}
    # Only the used blocks: a tampered block outside `only` is not looked at.
    assert _both(bad2, {cid2}) == {cid2}
    assert _both(bad2, set()) == set()
    _, frames = frame_car(car)
    some = {c for c, _, _ in frames[:10]}
    assert _both(bad2, some) == {cid}


@needs_native
def test_other_shapes_are_left_to_python() -> None:
    assert native.mismatched is not None and native.frame_index is not None
    car = _repo(50)
    # A raw-codec CIDv1 block: not the common frame.
    raw = b"\x01\x55\x12\x20" + bytes(32)
    _, frames = frame_car(car)
    blocks = [(c, car[s:e]) for c, s, e in frames]
    odd = write_car(frames[0][0], [*blocks, (raw, b"hello")])
    assert native.mismatched(odd, None) is None
    assert native.frame_index(odd) is None
    assert mismatched_blocks(odd) == {raw}  # the public function still answers
    # Cut short inside the last frame.
    assert native.mismatched(car[:-3], None) is None
    assert native.frame_index(car[:-3]) is None
    # An empty body, a header running past the end.
    assert native.mismatched(b"", None) is None
    assert native.frame_index(b"\x7f\x00") is None


@needs_native
def test_duplicate_blocks_keep_the_first_location() -> None:
    assert native.frame_index is not None
    cid, block = encode_block({"a": 1})
    car = write_car(cid, [(cid, block), (cid, block)])
    fast = native.frame_index(car)
    assert fast is not None
    assert fast == _frame_index_py(car) == _frame_index(car)
    assert len(fast[1]) == 1


@needs_native
def test_key_layers_alike() -> None:
    assert native.off_layer is not None
    cases = json.loads((FIXTURES / "interop-tests/mst/key_heights.json").read_text())
    for case in cases:
        key = case["key"].encode()
        assert key_height(key) == case["height"]
        for layer in range(10):
            expected = -1 if layer == case["height"] else 0
            assert native.off_layer([key], layer) == _off_layer([key], layer) == expected
    keys = [c["key"].encode() for c in cases if c["height"] == 0]
    assert len(keys) >= 2
    mixed = [*keys, b"blue"]  # "blue" has height 1
    assert native.off_layer(mixed, 0) == _off_layer(mixed, 0) == len(keys)
    assert native.off_layer([], 3) == _off_layer([], 3) == -1
    with pytest.raises(TypeError):
        native.off_layer(["not bytes"], 0)  # type: ignore[list-item]
