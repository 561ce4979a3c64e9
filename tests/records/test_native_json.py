"""The C record JSON (`records/native/json.c`, `cbor_json`) is byte for byte its Python twin.

The twin is `records.json.to_json_bytes(libipld.decode_dag_cbor(block))`. The
C side first runs `cb_check` (records/native/cbor.h), which accepts a subset
of DAG-CBOR and declines the rest (`cbor_json` answers None, the Python path
decides). So every test asserts two things: whatever cb_check accepts,
libipld decodes (without a float) and the two JSON texts are equal; and
cb_check accepts exactly the documented subset, no less (a decline costs
speed) and no more (an acceptance outside it would be a wrong answer).
Inputs: every block of the fixture CARs, simulator-generated repos, the
interop data-model vectors, hypothesis-generated values (any unicode keys and
strings, ints across and just outside the accepted range, bytes, links,
nesting around CB_MAX_DEPTH), seeded mutations of valid blocks, and
hand-made blocks outside the subset. Under `make sanitize` this file runs
against the ASan/UBSan build.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import json
import random
from functools import cache
from typing import Any

import libipld
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bsky_backfill.records import native
from bsky_backfill.records.datamodel import py_has_float
from bsky_backfill.records.json import to_json_bytes
from bsky_backfill.repo.car import frame_car
from bsky_backfill.simulate import Scenario, generate
from tests.ci import assert_sanitized_build_loaded, in_ci, require_in_ci
from tests.fixture_paths import CARS, INTEROP

pytestmark = pytest.mark.skipif(
    native.cbor_json is None and not in_ci(), reason="C extension not built here"
)

CB_MAX_DEPTH = 128  # records/native/cbor.h
PROFILE = settings(max_examples=600, deadline=None, derandomize=True, database=None)
DATA_MODEL = INTEROP / "data-model"


def _c_json(block: bytes | memoryview) -> bytes | None:
    fn = native.cbor_json
    assert fn is not None
    return fn(block)


_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]


def _c_json_exact(block: bytes) -> bytes | None:
    """cbor_json on a copy in a malloc'd buffer of exactly the block's size.

    A Python bytes object lives in pymalloc's arenas and ends in a NUL, so
    reading a byte or two past its end goes unseen even under ASan; under
    `make sanitize` malloc is ASan's, with a red zone right after the copy.
    """
    address = _libc.malloc(max(len(block), 1))
    assert address
    try:
        ctypes.memmove(address, block, len(block))
        return _c_json(memoryview((ctypes.c_char * len(block)).from_address(address)).cast("B"))
    finally:
        _libc.free(address)


def _agree(block: bytes) -> bool:
    """Whether the C side accepted `block`; if it did, its JSON is Python's (asserted)."""
    out = _c_json(block)
    assert _c_json_exact(block) == out
    check = native.cbor_check
    assert check is not None
    assert check(block) is (out is not None)
    if out is None:
        return False
    decoded = libipld.decode_dag_cbor(block)  # accepted: libipld must read it too
    assert not py_has_float(decoded), block.hex()
    assert out == to_json_bytes(decoded), block.hex()
    return True


def _fixture_blocks() -> list[bytes]:
    blocks = []
    for path in sorted(CARS.rglob("*.car")):
        data = path.read_bytes()
        _, frames = frame_car(data)
        blocks += [data[start:stop] for _, start, stop in frames]
    for car in json.loads((CARS / "atproto" / "car-file-fixtures.json").read_text()):
        blocks += [_b64(block["bytes"]) for block in car["blocks"]]
    return blocks


@cache
def _sim_records() -> list[bytes]:
    """Every record block of a small simulated network (posts in several scripts,
    facets, embeds with blob links, replies, profiles, lists, invalid ones)."""
    content = generate(Scenario(seed=18, accounts=60, hosts=2, mean_records=80, invalid_rate=0.05))
    out = []
    for acct in content.accounts:
        if acct.repo is None:
            continue
        for rows in acct.repo.records.values():
            out += [acct.repo.car[start:stop] for _, _, start, stop in rows]
    return out


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _from_json(value: Any) -> Any:
    """atproto JSON -> the data model ({"$link"} -> CID bytes, {"$bytes"} -> bytes)."""
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$link"} and isinstance(value["$link"], str):
            body = value["$link"][1:].upper()
            return base64.b32decode(body + "=" * (-len(body) % 8))
        if set(value) == {"$bytes"} and isinstance(value["$bytes"], str):
            return _b64(value["$bytes"])
        return {k: _from_json(v) for k, v in value.items()}
    return value


# -- the build in use ------------------------------------------------------------


def test_the_extension_is_built() -> None:
    if native.cbor_json is None:
        require_in_ci("bsky_backfill.records._native was not built (C compiler)")
    assert native.cbor_json.__class__ is type(len)


def test_the_sanitized_build_is_the_one_loaded() -> None:
    """Under `make sanitize` the module in use is the ASan/UBSan build's."""
    assert_sanitized_build_loaded("bsky_backfill.records._native")


def test_bytes_like_blocks_and_wrong_types() -> None:
    block = libipld.encode_dag_cbor({"text": "hé\n", "n": -5, "l": [True, None]})
    expected = to_json_bytes(libipld.decode_dag_cbor(block))
    assert expected == b'{"l":[true,null],"n":-5,"text":"h\xc3\xa9\\n"}'
    assert _c_json(block) == expected
    fn = native.cbor_json
    assert fn is not None
    assert fn(bytearray(block)) == expected
    assert fn(memoryview(b"xx" + block)[2:]) == expected
    with pytest.raises(TypeError):
        fn("a1616101")  # type: ignore[arg-type]


# -- real inputs -------------------------------------------------------------------


def test_every_fixture_car_block() -> None:
    blocks = _fixture_blocks()
    accepted = [block for block in blocks if _agree(block)]
    assert len(blocks) > 2000
    # What is declined: only commits whose signature happens to start with a
    # byte a CID may start with (cb_check's byte-string rule), nothing else.
    for block in blocks:
        if _c_json(block) is None:
            value = libipld.decode_dag_cbor(block)
            assert isinstance(value, dict) and value["sig"][:1] in (b"\x00", b"\x01", b"\x12")
    assert len(accepted) > len(blocks) - 20


def test_every_simulated_record() -> None:
    records = _sim_records()
    assert len(records) > 3000
    for block in records:
        assert _agree(block), libipld.decode_dag_cbor(block)


def test_interop_data_model_fixtures() -> None:
    cases = json.loads((DATA_MODEL / "data-model-fixtures.json").read_text())
    assert len(cases) == 3
    for case in cases:
        assert _agree(_b64(case["cbor_base64"])), case


@pytest.mark.parametrize("name", ["data-model-valid.json", "data-model-invalid.json"])
def test_interop_data_model_json(name: str) -> None:
    """The JSON vectors, encoded with libipld: floats declined, the rest equal."""
    seen = 0
    for case in json.loads((DATA_MODEL / name).read_text()):
        try:
            value = _from_json(case["json"])
            block = libipld.encode_dag_cbor(value)
        except ValueError:
            continue  # no data-model value (a malformed $link or $bytes)
        seen += 1
        accepted = _agree(block)
        assert accepted is not py_has_float(value), case["note"]
    assert seen >= 5


# -- hypothesis: random data-model values ------------------------------------------

# Text that orders differently by length first (DAG-CBOR) and bytewise (orjson):
# "b" < "aa" in one, "aa" < "b" in the other; non-ASCII and astral characters
# compare by their UTF-8 bytes (U+FFFF before U+1F600, unlike UTF-16).
SPECIAL_TEXT = [
    "", "a", "b", "z", "aa", "ab", "ba", "A", "Z", "~", "$type", "$link", "$bytes",
    "\x7f", "é", "e\u0301", "\u2028", "\u2029", "\ufeff", "\ufffe", "\uffff",
    "😀", "\U0001f600a", "\U0010ffff", "日本語", "/", "\\", '"', '\\"', "\x00", "\x1f",
    "\b\t\n\f\r\x0b", "</script>",
]  # fmt: skip
CONTROL = "".join(chr(i) for i in range(0x20)) + '"\\/\x7f\u2028\u2029\uffff😀é'
CHARS = st.characters(codec="utf-8")  # every code point but surrogates
TEXT = (
    st.text(CHARS, max_size=40)
    | st.sampled_from(SPECIAL_TEXT)
    | st.text(st.sampled_from(CONTROL), max_size=40)
)
EDGE_INTS = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
             -1, -24, -25, -256, -257, -65537, -(2**32) - 1, -(2**63) + 1, -(2**63),
             -(2**63) - 1, -(2**64)]  # fmt: skip
INTS = st.integers(-(2**64), 2**64 - 1) | st.sampled_from(EDGE_INTS)


def _cid(version_codec: bytes, digest: bytes) -> bytes:
    return version_codec + b"\x12\x20" + digest


DIGEST = st.binary(min_size=32, max_size=32)
LINKS = st.builds(_cid, st.sampled_from([b"\x01\x71", b"\x01\x55"]), DIGEST)
# CIDs libipld encodes as links but the native path does not read: dag-pb,
# CIDv0, a short identity-like digest, a CID with bytes after it.
OTHER_LINKS = (
    st.builds(_cid, st.just(b"\x01\x70"), DIGEST)
    | st.builds(lambda d: b"\x12\x20" + d, DIGEST)
    | st.builds(lambda d: b"\x01\x71\x12\x05" + d[:5], DIGEST)
    | st.builds(lambda d, tail: _cid(b"\x01\x71", d) + tail, DIGEST, st.binary(min_size=1))
)
BYTES = (
    st.binary(max_size=70)
    | st.builds(
        lambda first, rest: bytes([first]) + rest, st.sampled_from([0, 1, 0x12]), st.binary()
    )
    | st.builds(lambda d: b"\x01\x71\x12\x20" + d[:31], DIGEST)  # a CID cut short: plain bytes
)
LEAVES = st.none() | st.booleans() | INTS | TEXT | BYTES | LINKS | OTHER_LINKS


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=6) | st.dictionaries(TEXT, children, max_size=8)


VALUES = st.recursive(LEAVES, _containers, max_leaves=40)


def _is_link(value: bytes) -> bool:
    """Whether libipld writes these bytes as a link (tag 42): when they parse as a CID."""
    try:
        libipld.encode_cid(value)
    except ValueError:
        return False
    return True


def _inside(value: Any, depth: int = 0) -> bool:
    """Whether `value`, encoded by libipld, is in cbor.h's accepted subset."""
    if depth > CB_MAX_DEPTH:
        return False
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, int):
        return -(2**63) <= value <= 2**64 - 1
    if isinstance(value, bytes):
        if _is_link(value):
            return (
                len(value) == 36
                and value[:2] in (b"\x01\x71", b"\x01\x55")
                and (value[2:4] == b"\x12\x20")
            )
        return value[:1] not in (b"\x00", b"\x01", b"\x12")
    if isinstance(value, list):
        return all(_inside(v, depth + 1) for v in value)
    assert isinstance(value, dict)
    return all(_inside(v, depth + 1) for v in value.values())


def _exactly_the_subset(value: Any) -> None:
    block = libipld.encode_dag_cbor(value)
    assert _agree(block) is _inside(value), (value, block.hex())


@PROFILE
@given(VALUES)
@example({"b": 1, "aa": 2, "é": 3, "z": 4, "\uffff": 5, "😀": 6, "": 7})
@example("".join(chr(i) for i in range(0x80)) + "\u2028\u2029\uffff\U0010ffff")
@example([2**64 - 1, -(2**63), 0, 23, 24, -24, -25])
@example([-(2**63) - 1])
@example({"x": b""})
@example(b"\x00" + b"a" * 40)
def test_random_values(value: Any) -> None:
    _exactly_the_subset(value)


@settings(PROFILE, max_examples=300)
@given(st.dictionaries(TEXT, LEAVES, min_size=20, max_size=300))
def test_big_maps(value: dict[str, Any]) -> None:
    """Maps past the insertion-sort size (json.c sorts those with qsort)."""
    _exactly_the_subset(value)


def _random_key(rng: random.Random) -> str:
    return rng.choice(SPECIAL_TEXT) + "".join(
        chr(rng.choice([rng.randrange(0x20, 0x80), rng.randrange(0xA0, 0xD800), 0x1F600]))
        for _ in range(rng.randrange(4))
    )


def _random_map(rng: random.Random, size: int, inner: int) -> dict[str, Any]:
    leaves = [None, True, 0, -(2**63), 2**64 - 1, "x", "\x00\u2028", b"\x02", b"", []]
    return {
        _random_key(rng): _random_map(rng, size, inner - 1)
        if inner > 0 and rng.random() < 0.5
        else rng.choice(leaves)
        for _ in range(size)
    }


def test_nested_big_maps() -> None:
    """More live map entries than json_write keeps on its frame (64): its entry
    stack moves to the heap while outer maps are half written."""
    rng = random.Random(64)
    for _ in range(10):
        value = {_random_key(rng): _random_map(rng, rng.randrange(25, 45), 2) for _ in range(4)}
        _exactly_the_subset(value)


@PROFILE
@given(
    st.lists(
        st.sampled_from(["list", "map"]), min_size=CB_MAX_DEPTH - 4, max_size=CB_MAX_DEPTH + 4
    ),
    TEXT,
    LEAVES | st.just([]) | st.just({}),
)
def test_nesting_around_the_limit(shape: list[str], key: str, leaf: Any) -> None:
    value = leaf
    for kind in shape:
        value = [value] if kind == "list" else {key: value}
    _exactly_the_subset(value)


def test_nesting_limit_exactly() -> None:
    leaf: Any = 1
    for levels in range(CB_MAX_DEPTH - 2, CB_MAX_DEPTH + 3):
        value = leaf
        for _ in range(levels):
            value = [value]
        assert _agree(libipld.encode_dag_cbor(value)) is (levels <= CB_MAX_DEPTH)


@settings(PROFILE, max_examples=60)
@given(
    st.text(CHARS, min_size=1000, max_size=5000) | st.text(st.sampled_from(CONTROL), min_size=3000)
)
def test_long_strings(text: str) -> None:
    """Long strings (the output buffer grows; escapes up to six bytes per input byte)."""
    _exactly_the_subset({"text": text, "t": [text, text]})


def test_large_record() -> None:
    rng = random.Random(18)
    value = {
        f"k{i}{chr(rng.randrange(0x20, 0x3000))}": "\x01" * rng.randrange(200)
        + "x" * rng.randrange(5000)
        for i in range(3000)
    }
    value["blob"] = b"\x02" * 300_000
    assert _agree(libipld.encode_dag_cbor(value))


# -- mutated blocks ---------------------------------------------------------------


def _mutations(block: bytes, rng: random.Random) -> list[bytes]:
    """A few seeded damages of one block: flips, cuts, insertions, deletions."""
    out = []
    n = len(block)
    for _ in range(4):
        i = rng.randrange(n)
        out.append(block[:i] + bytes([rng.randrange(256)]) + block[i + 1 :])
    i = rng.randrange(n)
    out.append(block[:i] + bytes([block[i] ^ (1 << rng.randrange(8))]) + block[i + 1 :])
    out.append(block[: rng.randrange(n)])
    i = rng.randrange(n + 1)
    out.append(block[:i] + bytes([rng.randrange(256)]) + block[i:])
    i = rng.randrange(n)
    out.append(block[:i] + block[i + 1 :])
    i, j = sorted(rng.randrange(n + 1) for _ in range(2))
    out.append(block[:j] + block[i:j] + block[j:])
    out.append(block + bytes([rng.randrange(256)]))
    return out


def test_mutated_blocks_never_crash_and_agree_when_accepted() -> None:
    rng = random.Random(1818)
    bases = _sim_records()[:1500] + _fixture_blocks()[::3]
    accepted = tried = 0
    for block in bases:
        for mutant in _mutations(block, rng):
            tried += 1
            accepted += _agree(mutant)
    # Many mutants stay inside the subset (a changed letter, a changed int):
    # those were compared; the rest were declined without a crash.
    assert tried > 10_000
    assert tried // 20 < accepted < tried


# Raw CBOR, not only what libipld writes: every major type and head width,
# non-shortest heads, reserved and indefinite heads, floats, simple values,
# tags, keys in any order and of any type, invalid UTF-8, links of every kind.


def _head(rng: random.Random, major: int, arg: int, canonical: bool) -> bytes:
    if not canonical and rng.random() < 0.5:
        if rng.random() < 0.2:
            return bytes([major << 5 | rng.choice([28, 29, 30, 31])])
        width = rng.choice([1, 2, 4, 8])
        if arg < 1 << (8 * width):
            return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[width]]) + arg.to_bytes(
                width, "big"
            )
    if arg < 24:
        return bytes([major << 5 | arg])
    width, ai = next((w, a) for w, a in ((1, 24), (2, 25), (4, 26), (8, 27)) if arg < 1 << (8 * w))
    return bytes([major << 5 | ai]) + arg.to_bytes(width, "big")


def _raw_text(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.35:
        return rng.choice(SPECIAL_TEXT).encode()
    if r < 0.8:
        points = [rng.randrange(0x80), rng.randrange(0x800), rng.randrange(0xD800)]
        points.append(rng.randrange(0xE000, 0x110000))
        return "".join(chr(rng.choice(points)) for _ in range(rng.randrange(6))).encode()
    return rng.randbytes(rng.randrange(6))  # mostly not UTF-8


def _raw_item(rng: random.Random, depth: int, canonical: bool) -> bytes:
    major = rng.randrange(8) if depth < 6 else rng.choice([0, 1, 2, 3, 7])
    head = _head
    if major in (0, 1):
        arg = rng.choice([*(abs(i) for i in EDGE_INTS if abs(i) < 2**64), rng.getrandbits(64)])
        return head(rng, major, arg, canonical)
    if major == 2:
        data = rng.randbytes(rng.randrange(12))
        if rng.random() < 0.3:
            data = bytes([rng.choice([0, 1, 0x12, 2, 0xFF])]) + rng.randbytes(rng.randrange(40))
        return head(rng, 2, len(data), canonical) + data
    if major == 3:
        data = _raw_text(rng)
        return head(rng, 3, len(data), canonical) + data
    if major == 4:
        n = rng.randrange(5)
        return head(rng, 4, n, canonical) + b"".join(
            _raw_item(rng, depth + 1, canonical) for _ in range(n)
        )
    if major == 5:
        keys = [_raw_text(rng) for _ in range(rng.randrange(5))]
        if rng.random() < 0.8:
            keys = sorted(set(keys), key=lambda k: (len(k), k))  # DAG-CBOR order
        out = head(rng, 5, len(keys), canonical)
        for key in keys:
            if rng.random() < 0.95:
                out += head(rng, 3, len(key), canonical) + key
            else:
                out += _raw_item(rng, 5, canonical)  # a key of any kind
            out += _raw_item(rng, depth + 1, canonical)
        return out
    if major == 6:
        tag = 42 if rng.random() < 0.8 else rng.choice([0, 1, 24, 41, 43, 55799])
        if rng.random() < 0.6:
            codec = rng.choice([0x71, 0x55, 0x70])
            payload = bytes([0, 1, codec, 0x12, rng.choice([0x20, 0x20, 0x05])]) + rng.randbytes(32)
            if rng.random() < 0.2:
                payload = payload[: rng.randrange(len(payload) + 1)]
            return head(rng, 6, tag, canonical) + head(rng, 2, len(payload), canonical) + payload
        return head(rng, 6, tag, canonical) + _raw_item(rng, depth + 1, canonical)
    r = rng.random()
    if r < 0.6:
        return bytes([0xE0 | rng.choice([20, 21, 22, 23, 0, 19])])
    if r < 0.8:
        return bytes([0xF8, rng.randrange(256)])
    width = rng.choice([2, 4, 8])
    return bytes([0xE0 | {2: 25, 4: 26, 8: 27}[width]]) + rng.randbytes(width)


def test_raw_random_cbor() -> None:
    rng = random.Random(4242)
    accepted = tried = 0
    for _ in range(30_000):
        block = _raw_item(rng, 0, rng.random() < 0.7)
        r = rng.random()
        if r < 0.05:
            block += b"\x00"
        elif r < 0.1:
            block = block[:-1]
        tried += 1
        accepted += _agree(block)
    assert tried // 5 < accepted < tried - tried // 5


# -- declined by construction ---------------------------------------------------------

LINK = "d82a5825" + "0001711220" + "ab" * 32  # a dag-cbor CIDv1 link


@pytest.mark.parametrize(
    "hex_block",
    [
        "f93c00",  # float16 1.0
        "fa3f800000",  # float32
        "fb3ff8000000000000",  # float64
        "a16161fb3ff8000000000000",  # a float inside a map
        "f7",  # undefined
        "f0",  # simple value 16
        "f818",  # simple value 24, two-byte form
        "f820",  # simple value 32
        "f814",  # false, non-shortest
        "d8194100",  # tag 25
        "c1",  # tag 1 with nothing after it
        "c11a00000000",  # tag 1 (epoch time)
        "d82a4100",  # tag 42 on a byte string that is no CID
        "d82a5825" + "0001701220" + "ab" * 32,  # tag 42 on a dag-pb CID
        "d82a5823" + "001220" + "ab" * 32,  # tag 42 on a CIDv0
        "d82a5826" + "0001711220" + "ab" * 33,  # tag 42, a byte after the CID
        "d82a5825" + "0001711220" + "ab" * 31,  # tag 42 cut short
        "d82a5825" + "0101711220" + "ab" * 32,  # tag 42 without the 0x00 prefix
        "d82a7825" + "61" * 37,  # tag 42 on text
        "d9002a5825" + "0001711220" + "ab" * 32,  # tag 42, non-shortest tag head
        "5f4100ff",  # indefinite byte string
        "7f6161ff",  # indefinite text
        "9f01ff",  # indefinite array
        "bf616101ff",  # indefinite map
        "1800",  # 0 in a two-byte head
        "1817",  # 23 in a two-byte head
        "1900ff",  # 255 in a three-byte head
        "1a0000ffff",  # 65535 in five bytes
        "1b00000000ffffffff",  # 2^32-1 in nine bytes
        "3b8000000000000000",  # -2^63-1
        "3bffffffffffffffff",  # -2^64
        "5800",  # empty bytes, non-shortest
        "7800",  # empty text, non-shortest
        "9800",  # empty array, non-shortest
        "b800",  # empty map, non-shortest
        "1c",  # reserved additional info 28
        "1d",
        "1e",
        "a2616201616101",  # keys out of order ("b" before "a")
        "a26261610161620a",  # "aa" before "b": bytewise order, not DAG-CBOR's
        "a2616101616102",  # a duplicate key
        "a10101",  # an integer key
        "a1410101",  # a byte-string key
        "a1f601",  # a null key
        "a1780161" + "01",  # a key with a non-shortest head
        "62c3",  # text cut inside a character
        "62c0af",  # overlong '/'
        "63eda080",  # a surrogate (U+D800)
        "64f4908080",  # above U+10FFFF
        "61ff",  # not UTF-8 at all
        "61" + "80",  # a lone continuation byte
        "a161ff01",  # an invalid key
        "4100",  # bytes starting 0x00
        "420102",  # bytes starting 0x01 (could read as a CID)
        "421220",  # bytes starting 0x12 (could read as a CIDv0)
        "0000",  # trailing bytes
        "a0ff",  # trailing break
        "",  # nothing
        "82",  # array cut short
        "8201",
        "a161",
        "a16161",  # map value missing
        "5a00010000",  # bytes longer than the block
        "9bffffffffffffffff",  # absurd array length
        "bbffffffffffffffff",  # absurd map length
        "81" * (CB_MAX_DEPTH + 1) + "01",  # too deep
        "a16161" * (CB_MAX_DEPTH + 1) + "01",  # too deep (maps)
    ],
)
def test_declined(hex_block: str) -> None:
    block = bytes.fromhex(hex_block)
    assert _c_json(block) is None
    check = native.cbor_check
    assert check is not None and check(block) is False


@pytest.mark.parametrize(
    ("hex_block", "expected"),
    [
        ("f4", b"false"),
        ("f5", b"true"),
        ("f6", b"null"),
        ("17", b"23"),
        ("1818", b"24"),
        ("1bffffffffffffffff", b"18446744073709551615"),
        ("3b7fffffffffffffff", b"-9223372036854775808"),
        ("20", b"-1"),
        ("40", b'{"$bytes":""}'),
        ("4102", b'{"$bytes":"Ag"}'),
        ("43ffeedd", b'{"$bytes":"/+7d"}'),
        ("60", b'""'),
        ("80", b"[]"),
        ("a0", b"{}"),
        ("81" * CB_MAX_DEPTH + "01", b"[" * CB_MAX_DEPTH + b"1" + b"]" * CB_MAX_DEPTH),
        ("a2616201626161f6", b'{"aa":null,"b":1}'),
        (LINK, None),
    ],
)
def test_accepted_by_hand(hex_block: str, expected: bytes | None) -> None:
    block = bytes.fromhex(hex_block)
    assert _agree(block)
    if expected is not None:
        assert _c_json(block) == expected


def test_link_text() -> None:
    digest = hashlib.sha256(b"record").digest()
    for prefix in (b"\x01\x71", b"\x01\x55"):
        cid = _cid(prefix, digest)
        block = libipld.encode_dag_cbor({"ref": cid})
        expected = b'{"ref":{"$link":"' + libipld.encode_cid(cid).encode() + b'"}}'
        assert _c_json(block) == expected
        assert _agree(block)
