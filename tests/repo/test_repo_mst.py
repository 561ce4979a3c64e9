"""MST walk over every real CAR fixture, plus malformed trees built on purpose.

Expected counts are the fixtures README table (an independent walk with
libipld 3.5.0), hard-coded here as data.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import libipld
import pytest

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.repo.build import build_mst, encode_block, write_car
from bsky_backfill.repo.car import read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.mst import walk_mst
from tests.fixture_paths import CARS

# file -> (records per collection, MST nodes) from the fixtures README.
EXPECTED: dict[str, dict[str, int]] = {
    "laravel-bluesky/bsky-app.car": {
        "app.bsky.actor.profile": 1,
        "app.bsky.feed.generator": 6,
        "app.bsky.feed.like": 50,
        "app.bsky.feed.post": 472,
        "app.bsky.feed.repost": 25,
        "app.bsky.feed.threadgate": 1,
        "app.bsky.graph.block": 1,
        "app.bsky.graph.follow": 2,
        "app.bsky.graph.list": 2,
        "app.bsky.graph.listitem": 43,
        "chat.bsky.actor.declaration": 1,
    },
    "indigo/fakermaker.repo.car": {
        "app.bsky.actor.profile": 1,
        "app.bsky.feed.like": 22,
        "app.bsky.feed.post": 26,
        "app.bsky.feed.repost": 15,
        "app.bsky.graph.follow": 78,
    },
    "indigo/paul_staging.repo.car": {
        "app.bsky.actor.profile": 1,
        "app.bsky.feed.like": 60,
        "app.bsky.feed.post": 101,
        "app.bsky.feed.repost": 15,
        "app.bsky.graph.follow": 8,
    },
    "indigo/bnewbold.robocracy.org.20250310005405.car": {
        "app.bsky.actor.profile": 1,
        "app.bsky.feed.like": 2,
        "app.bsky.feed.post": 23,
        "app.bsky.feed.repost": 1,
        "app.bsky.graph.follow": 3,
        "blue.linkat.board": 1,
        "com.atproto.lexicon.record": 1,
        "com.atproto.lexicon.schema": 5,
        "net.bnewbold.demo.mushroom": 1,
    },
    "indigo/bafyreieovfuizojpw3zresz7sx3nk4trm2by23pt5rxbey3jme4uo5ogiu.car": {
        "app.bsky.actor.profile": 1,
        "app.bsky.feed.post": 5,
    },
    "rsky/valid_repo.car": {
        "app.bsky.actor.profile": 1,
        "app.bsky.feed.post": 4,
        "app.bsky.graph.follow": 1,
    },
    "indigo/divy.repo.car": {"app.bsky.graph.follow": 5, "app.bsky.system.declaration": 1},
    "arroba/snarfed2.car": {
        "app.bsky.actor.profile": 1,
        "app.bsky.feed.like": 1,
        "app.bsky.graph.follow": 2,
        "chat.bsky.actor.declaration": 1,
    },
    "dnproto/msttest-06-reply.car": {
        "app.bsky.actor.profile": 1,
        "app.bsky.feed.like": 1,
        "app.bsky.feed.post": 2,
    },
    "dnproto/msttest-05-firstlike.car": {
        "app.bsky.actor.profile": 1,
        "app.bsky.feed.like": 1,
        "app.bsky.feed.post": 1,
    },
    "dnproto/msttest-04-firstpost.car": {"app.bsky.actor.profile": 1, "app.bsky.feed.post": 1},
    "indigo/greenground.repo.car": {"app.bsky.graph.follow": 2},
    "dnproto/msttest-03-setprofile.car": {"app.bsky.actor.profile": 1},
    "dnproto/msttest-01-new.car": {},
}
# The partial repo: its first MST node is absent, so the walk must fail.
BROKEN = {"indigo/repo_slice.car"}

# Legacy records that old exports still carry but the current MST no longer reaches.
UNREACHABLE_COLLECTIONS = {"app.bsky.feed.vote", "app.bsky.graph.confirmation"}


def _walk(rel: str) -> tuple[Any, list[tuple[str, bytes]]]:
    car = read_car((CARS / rel).read_bytes())
    return car, list(walk_mst(car.blocks, read_commit(car).data))


def test_every_car_fixture_is_covered() -> None:
    found = {str(p.relative_to(CARS)) for p in CARS.rglob("*.car")}
    assert found == set(EXPECTED) | BROKEN


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_walk_counts_match_readme(rel: str) -> None:
    car, leaves = _walk(rel)
    counts = Counter(key.partition("/")[0] for key, _ in leaves)
    assert dict(counts) == EXPECTED[rel]
    keys = [k for k, _ in leaves]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    # Every reachable record block is present in these complete exports.
    assert all(cid in car.blocks for _, cid in leaves)


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_rebuilt_mst_has_the_same_root(rel: str) -> None:
    """Independent check of key reconstruction: rebuilding gives the same root CID."""
    car, leaves = _walk(rel)
    root, _ = build_mst(dict(leaves))
    assert root == read_commit(car).data


@pytest.mark.parametrize("rel", ["indigo/paul_staging.repo.car", "indigo/fakermaker.repo.car"])
def test_history_blocks_are_ignored(rel: str) -> None:
    car, leaves = _walk(rel)
    reachable = {cid for _, cid in leaves}
    # The file holds far more blocks than records + nodes: old commits, old
    # nodes and deleted records, none of which may surface.
    assert len(car.blocks) > len(reachable) * 2
    loose_types = {
        b.get("$type")
        for cid, b in car.blocks.items()
        if isinstance(b, dict) and cid not in reachable and "$type" in b
    }
    assert {k.partition("/")[0] for k, _ in leaves}.isdisjoint(UNREACHABLE_COLLECTIONS)
    if rel.endswith("paul_staging.repo.car"):
        assert loose_types >= UNREACHABLE_COLLECTIONS


def test_repo_slice_missing_node_is_repo_invalid() -> None:
    car = read_car((CARS / "indigo/repo_slice.car").read_bytes())
    with pytest.raises(RepoInvalid) as err:
        list(walk_mst(car.blocks, read_commit(car).data))
    assert err.value.code == "InvalidMST"
    assert err.value.stage == "decode"


# --- malformed trees ----------------------------------------------------------

LINK = encode_block({"x": 1})[0]


def _walk_nodes(root_node: Any, *more: Any) -> list[tuple[str, bytes]]:
    blocks = {}
    root_cid, data = encode_block(root_node)
    blocks[root_cid] = libipld.decode_dag_cbor(data)
    for node in more:
        cid, data = encode_block(node)
        blocks[cid] = libipld.decode_dag_cbor(data)
    return list(walk_mst(blocks, root_cid))


def _entry(k: bytes, p: int = 0, t: bytes | None = None) -> dict[str, Any]:
    return {"k": k, "p": p, "v": LINK, "t": t}


def test_prefix_compression() -> None:
    node = {"l": None, "e": [_entry(b"a.b.c/1"), _entry(b"2", 6), _entry(b"d.e.f/x", 0)]}
    assert [k for k, _ in _walk_nodes(node)] == ["a.b.c/1", "a.b.c/2", "d.e.f/x"]


@pytest.mark.parametrize(
    "node",
    [
        ["not", "a", "map"],
        {"l": None},
        {"l": "x", "e": []},
        {"l": None, "e": [{"p": 0, "k": b"a/b"}]},  # no value
        {"l": None, "e": [_entry(b"a/b", p=1)]},  # prefix longer than previous key
        {"l": None, "e": [{"p": 0, "k": "a/b", "v": LINK, "t": None}]},  # key not bytes
        {"l": None, "e": [{"p": 0, "k": b"a/b", "v": "bafy", "t": None}]},  # value not a link
        {"l": None, "e": [_entry(b"b/1"), _entry(b"a/1")]},  # out of order
        {"l": None, "e": [_entry(b"a/1"), _entry(b"1", 2)]},  # duplicate key
        {"l": None, "e": [_entry("\u00e9/1".encode())]},  # not ASCII
        {"l": None, "e": ["entry"]},
    ],
)
def test_malformed_nodes(node: Any) -> None:
    with pytest.raises(RepoInvalid) as err:
        _walk_nodes(node)
    assert err.value.code == "InvalidMST"


def test_missing_subtree() -> None:
    node = {"l": LINK, "e": [_entry(b"a/1")]}  # LINK is not in the block map
    with pytest.raises(RepoInvalid, match="missing"):
        _walk_nodes(node)


def test_node_reached_twice_and_cycles() -> None:
    sub = {"l": None, "e": [_entry(b"b/1")]}
    sub_cid = encode_block(sub)[0]
    twice = {"l": sub_cid, "e": [_entry(b"c/1", t=sub_cid)]}
    with pytest.raises(RepoInvalid):
        _walk_nodes(twice, sub)
    # No hash check happens at decode time, so a CAR can map a CID to a node
    # that links back to itself: the walk must stop, not loop.
    cid = LINK
    car = write_car(cid, [(cid, libipld.encode_dag_cbor({"l": cid, "e": []}))])
    blocks = read_car(car).blocks
    with pytest.raises(RepoInvalid, match="twice"):
        list(walk_mst(blocks, cid))


def test_deep_tree_is_not_recursive() -> None:
    # A chain of 5000 single-child nodes: a recursive walk would overflow.
    blocks: dict[bytes, Any] = {}
    child: bytes | None = None
    for i in range(5000):
        node = {"l": child, "e": [_entry(f"c/{i:05d}".encode())]} if i else {"l": None, "e": []}
        cid, data = encode_block(node)
        blocks[cid] = libipld.decode_dag_cbor(data)
        child = cid
    assert child is not None
    keys = [k for k, _ in walk_mst(blocks, child)]
    assert len(keys) == 4999 and keys == sorted(keys)
