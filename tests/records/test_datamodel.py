"""No floats in the atproto data model: the C walk and its Python twin agree, and a
record holding one is dead-lettered, not landed."""

from __future__ import annotations

import math
import random
from typing import Any

import libipld
import pytest

from bsky_backfill.models import RecordFilter
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.records.datamodel import MAX_DEPTH, has_float, py_has_float
from bsky_backfill.repo import native


def value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 6 else 4)
    if kind == 0:
        return rng.choice([None, True, False, 0, -(2**63), 2**64, "x", b"\x01"])
    if kind == 1:
        return rng.choice([0.5, -0.0, math.nan, math.inf, 1e300])
    if kind in (2, 3):
        return rng.choice(["1.5", "text", "", 7])
    if kind == 4:
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(i): value(rng, depth + 1) for i in range(rng.randrange(4))}


def test_native_and_python_twins_agree() -> None:
    rng = random.Random(1510)
    floats = 0
    for _ in range(20_000):
        v = value(rng)
        want = py_has_float(v)
        floats += want
        assert has_float(v) is want
        if native.has_float is not None:
            assert native.has_float(v) is want
    assert 0 < floats < 20_000


def test_depth_limit_is_the_same_in_both() -> None:
    deep: Any = 1.5
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    assert py_has_float(deep) is False
    if native.has_float is not None:
        assert native.has_float(deep) is False
    shallow: Any = 1.5
    for _ in range(MAX_DEPTH - 1):
        shallow = {"k": shallow}
    assert py_has_float(shallow) is True
    if native.has_float is not None:
        assert native.has_float(shallow) is True


@pytest.mark.parametrize("twin", ["native", "python"])
def test_a_float_record_is_dead_lettered(twin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if twin == "python":
        monkeypatch.setattr(native, "has_float", None)
    did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
    cols = RecordColumns(did, RecordFilter(frozenset({"app.bsky.feed.post"})))
    post = {"$type": "app.bsky.feed.post", "text": "x", "createdAt": "2024-01-01T00:00:00Z"}
    decoded = libipld.decode_dag_cbor(libipld.encode_dag_cbor({**post, "embed": {"w": 0.5}}))
    cols.add("app.bsky.feed.post", "3kabcdefghij2", "bafy", post)
    cols.add("app.bsky.feed.post", "3kabcdefghij3", "bafy", decoded)
    tables, letters = cols.finish()
    assert tables["app.bsky.feed.post"].num_rows == 1
    assert [(d.uri, d.stage, d.error) for d in letters] == [
        (f"at://{did}/app.bsky.feed.post/3kabcdefghij3", "validate", "InvalidRecord")
    ]
