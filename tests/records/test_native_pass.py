"""The native record pass (records/native/pass.c) against the Python path, repo by repo.

`extract_repo` and `extract_part` send a repo's wanted records through the C
pass first and the records it declines through `RecordColumns.add_many`; with
`records.native.records_pass` set to None everything takes the Python path,
the reference. Both must give the same tables (compared as sorted rows: the
native rows come first, so the order within a table may differ), the same
dead letters in the same order, the same records outside the window and the
same key index, on the simulator's repos (damaged ones included), on the
fixtures' real CARs and on records made to hit each rule, with validation on
and off and with a time window. Each case also checks that the native pass
landed rows at all, so that declining everything cannot pass for agreement.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from typing import Any

import pyarrow as pa
import pytest

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.models import RecordFilter, RepoExtract
from bsky_backfill.records import columns as columns_module
from bsky_backfill.records import native
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.repo.build import build_repo
from bsky_backfill.repo.car import read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.lazy import read_car_lazy
from bsky_backfill.simulate.generator import generate
from bsky_backfill.simulate.scenario import Scenario
from tests.ci import in_ci
from tests.fixture_paths import CARS

pytestmark = pytest.mark.skipif(
    native.records_pass is None and not in_ci(),
    reason="records._native not built (required under CI)",
)

ALL_KNOWN = frozenset(
    DEFAULT_COLLECTIONS
    | {
        "app.bsky.actor.profile",
        "app.bsky.feed.generator",
        "app.bsky.graph.list",
        "app.bsky.graph.listitem",
        "app.bsky.feed.threadgate",
        "app.bsky.feed.postgate",
        "chat.bsky.actor.declaration",
        "com.example.thing",
    }
)

FILTERS = {
    "default": RecordFilter(collections=ALL_KNOWN),
    "no-validate": RecordFilter(collections=ALL_KNOWN, validate=False),
    "window": RecordFilter(
        collections=ALL_KNOWN,
        since=dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
        until=dt.datetime(2024, 9, 1, tzinfo=dt.UTC),
    ),
}


@functools.cache
def _simulated() -> list[tuple[bytes, str]]:
    content = generate(Scenario(seed=4242, accounts=30, hosts=2, mean_records=150))
    return [(a.repo.car, a.did) for a in content.accounts if a.repo is not None]


def _both(
    data: bytes, did: str, filt: RecordFilter, verify: bool
) -> tuple[RepoExtract, RepoExtract, int]:
    """(native, python) extractions, and how many rows the native pass landed."""
    landed = 0
    real_finish = columns_module.RecordColumns.finish

    def counting_finish(self: Any) -> Any:
        nonlocal landed
        landed += sum(len(rows.common[0]) for rows in self._native)
        return real_finish(self)

    columns_module.RecordColumns.finish = counting_finish  # type: ignore[method-assign]
    try:
        fast = extract_repo(data, did, filt, verify=verify)
    finally:
        columns_module.RecordColumns.finish = real_finish  # type: ignore[method-assign]
    saved = native.records_pass
    native.records_pass = None
    try:
        slow = extract_repo(data, did, filt, verify=verify)
    finally:
        native.records_pass = saved
    return fast, slow, landed


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    # Timestamps as integers: a valid createdAt may lie outside Python's datetime range.
    columns = [
        (c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c).to_pylist()
        for c in table.columns
    ]
    return sorted(zip(*columns, strict=True), key=repr)


def _assert_same(fast: RepoExtract, slow: RepoExtract) -> None:
    assert fast.rev == slow.rev
    assert sorted(fast.tables) == sorted(slow.tables)
    for name, table in slow.tables.items():
        got = fast.tables[name]
        assert got.schema == table.schema, name
        assert _rows(got) == _rows(table), name
    strip = [(d.uri, d.stage, d.error, d.message, d.cid, d.record) for d in fast.dead_letters]
    assert strip == [
        (d.uri, d.stage, d.error, d.message, d.cid, d.record) for d in slow.dead_letters
    ]
    assert fast.records_seen == slow.records_seen
    assert fast.keys == slow.keys


@pytest.mark.parametrize("mode", sorted(FILTERS))
def test_simulated_repos_land_alike(mode: str) -> None:
    landed = total = 0
    for data, did in _simulated():
        fast, slow, native_rows = _both(data, did, FILTERS[mode], verify=False)
        _assert_same(fast, slow)
        landed += native_rows
        total += sum(t.num_rows for t in slow.tables.values())
    assert total > 300
    # Most rows take the native path (it declines only what is not the common case).
    assert landed >= total * 0.9, (landed, total)


def test_fixture_cars_land_alike() -> None:
    landed = total = 0
    for path in sorted(CARS.rglob("*.car")):
        data = path.read_bytes()
        try:
            did = read_commit(read_car(data)).did
        except Exception:  # a fixture that is not a whole repo
            continue
        for filt in FILTERS.values():
            try:
                fast, slow, native_rows = _both(data, did, filt, verify=False)
            except RepoInvalid as e:  # a partial repo: both paths must refuse it alike
                saved = native.records_pass
                native.records_pass = None
                try:
                    with pytest.raises(RepoInvalid) as slow_error:
                        extract_repo(data, did, filt)
                finally:
                    native.records_pass = saved
                assert (e.code, str(e)) == (slow_error.value.code, str(slow_error.value))
                continue
            _assert_same(fast, slow)
            landed += native_rows
            total += sum(t.num_rows for t in slow.tables.values())
    assert landed > 0 and total > 0


def _odd_records() -> dict[str, Any]:
    """Records that hit each rule of the pass: declines, nulls, shapes of typed fields."""
    link = bytes.fromhex("01711220") + bytes(range(32))
    at = "2024-05-01T12:00:00.123456789Z"
    ref = {"uri": "at://did:plc:abc/app.bsky.feed.post/3kabc", "cid": "bafyreib2rxk3rh6kzwq"}
    post = "app.bsky.feed.post"
    like = "app.bsky.feed.like"
    follow = "app.bsky.graph.follow"
    return {
        f"{post}/3kaaaaaaaaaa2": {"$type": post, "text": "plain", "createdAt": at},
        f"{post}/3kaaaaaaaaaa3": {
            "$type": post,
            "text": 'hi \u2028 "q" \\ \x01 🦋',
            "createdAt": "2024-05-01T14:00:00+02:00",
            "langs": ["en", "ja"],
            "reply": {"root": ref, "parent": {"uri": 5}},
            "embed": {
                "$type": "app.bsky.embed.recordWithMedia",
                "record": {"record": ref},
                "media": {
                    "$type": "app.bsky.embed.images",
                    "images": [
                        {
                            "alt": "",
                            "image": {
                                "$type": "blob",
                                "ref": link,
                                "mimeType": "image/png",
                                "size": 1,
                            },
                        }
                    ],
                },
            },
            "facets": [
                {
                    "index": {"byteStart": 0, "byteEnd": 2},
                    "features": [
                        {"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:abc"},
                        {"$type": "app.bsky.richtext.facet#link", "uri": "https://x.example"},
                        {"$type": "app.bsky.richtext.facet#tag", "tag": "t1"},
                    ],
                },
                {"index": {"byteStart": 0, "byteEnd": 1}, "features": "nope"},
            ],
            "tags": ["t2"],
        },
        f"{post}/3kaaaaaaaaaa4": {"$type": post, "text": "x", "createdAt": at, "langs": ["en", 3]},
        f"{post}/3kaaaaaaaaaa5": {"$type": post, "text": "x", "createdAt": "yesterday"},
        f"{post}/3kaaaaaaaaaa6": {"$type": "app.bsky.feed.like", "createdAt": at},
        f"{post}/not-a-tid": {"$type": post, "text": "x", "createdAt": at},
        f"{post}/3kaaaaaaaaaa7": {"$type": post, "text": "x", "createdAt": at, "n": 1.5},
        f"{post}/3kaaaaaaaaaa8": {
            "$type": post,
            "text": "x",
            "createdAt": at,
            "embed": {
                "$type": "app.bsky.embed.external",
                "external": {"uri": "https://e.example", "title": "", "description": ""},
            },
        },
        f"{post}/3kaaaaaaaaaa9": {"$type": post, "text": "x", "createdAt": "0000-01-01T00:00:00Z"},
        f"{like}/3kaaaaaaaaaa2": {"$type": like, "subject": ref, "createdAt": at},
        f"{like}/3kaaaaaaaaaa3": {"$type": like, "subject": "at://x", "createdAt": at},
        f"{follow}/3kaaaaaaaaaa2": {"$type": follow, "subject": "did:plc:abc", "createdAt": at},
        f"{follow}/3kaaaaaaaaaa3": {
            "$type": follow,
            "subject": {"did": "did:plc:abc"},
            "createdAt": at,
        },
        "app.bsky.actor.profile/self": {"$type": "app.bsky.actor.profile", "displayName": "me"},
        "com.example.thing/a": {"$type": "com.example.thing", "createdAt": at, "b": b"\x05\x06"},
        "com.example.thing/b": {"$type": "com.example.thing"},
    }


@pytest.mark.parametrize("mode", sorted(FILTERS))
def test_records_made_for_each_rule_land_alike(mode: str) -> None:
    did = "did:plc:oddrecords"
    data = build_repo(did, _odd_records())
    fast, slow, landed = _both(data, did, FILTERS[mode], verify=False)
    _assert_same(fast, slow)
    assert landed >= 3


def test_the_native_pass_is_built_and_used_under_ci() -> None:
    if in_ci():
        assert native.NATIVE and native.records_pass is not None
    data, did = _simulated()[0]
    _, _, landed = _both(data, did, FILTERS["no-validate"], verify=False)
    assert landed > 0


@pytest.mark.parametrize("seed", range(6))
def test_mutated_record_blocks_land_alike(seed: int) -> None:
    """Bytes flipped, cut or inserted inside record blocks (the CAR's framing kept, so
    the repo still reads): whatever each damaged record becomes (a record of another
    shape, invalid DAG-CBOR, a float, a wrong $type...), both paths land it, dead-letter
    it or leave it out alike, and nothing crashes."""
    rng = random.Random(seed)
    data, did = sorted(_simulated(), key=lambda repo: len(repo[0]))[-1 - seed % 5]
    car = read_car_lazy(data)
    index = car.blocks.index
    commit = read_commit(car)
    records = {
        cid
        for cid in index
        if cid != car.root and not _is_node(car.blocks[cid]) and cid != commit.data
    }
    spans = sorted(index[c] for c in records)
    mutated = bytearray(data)
    for packed in rng.sample(spans, min(60, len(spans))):
        start, length = packed >> 32, packed & 0xFFFFFFFF
        for _ in range(rng.randint(1, 3)):
            at = start + rng.randrange(length)
            mutated[at] = rng.choice([rng.randrange(256), 0xF9, 0xD8, 0x1F, 0x7F, 0x00])
    letters = landed = 0
    for filt in FILTERS.values():
        fast, slow, native_rows = _both(bytes(mutated), did, filt, verify=False)
        _assert_same(fast, slow)
        letters += len(slow.dead_letters)
        landed += native_rows
    assert letters > 0 and landed > 0  # the damage was seen, and the rest landed natively


def _is_node(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"e", "l"}
