"""The simulator's MST builder is byte-exact: interop vectors and real repos' root CIDs."""

from __future__ import annotations

import json

import libipld
import pytest

from bsky_backfill.repo.build import build_mst as build_repo_mst
from bsky_backfill.simulate.ids import cid_for_block
from bsky_backfill.simulate.mst import build_mst, common_prefix_len, key_height
from tests.fixture_paths import FIXTURES
from tests.simulate.mstwalk import walk_mst


def test_key_heights() -> None:
    cases = json.loads((FIXTURES / "interop-tests/mst/key_heights.json").read_text())
    for case in cases:
        assert key_height(case["key"].encode()) == case["height"], case


def test_common_prefix() -> None:
    cases = json.loads((FIXTURES / "interop-tests/mst/common_prefix.json").read_text())
    for case in cases:
        got = common_prefix_len(case["left"].encode(), case["right"].encode())
        assert got == case["len"], case


@pytest.mark.parametrize(
    "car",
    [
        "car/laravel-bluesky/bsky-app.car",
        "car/indigo/bnewbold.robocracy.org.20250310005405.car",
        "car/arroba/snarfed2.car",
        "car/rsky/valid_repo.car",
        "car/dnproto/msttest-06-reply.car",
        "car/dnproto/msttest-01-new.car",
        "car/indigo/greenground.repo.car",
    ],
)
def test_rebuild_real_repo_root(car: str) -> None:
    """Walk a real repo's MST, rebuild it from its (key, CID) pairs: same root, same nodes."""
    header, blocks = libipld.decode_car((FIXTURES / car).read_bytes())
    commit = blocks[header["roots"][0]]
    items = walk_mst(blocks, commit["data"])
    tree = build_mst(items)
    assert tree.root == commit["data"]
    # The package's other builder (repo/build.py: tests, and a refresh's rebuilt old
    # tree, repo/diff.py) agrees node for node.
    root, nodes = build_repo_mst({key: cid for key, cid in items})
    assert root == commit["data"] and set(nodes) == set(tree.nodes)
    for cid, data in tree.nodes.items():
        assert cid in blocks, "built a node the real repo does not have"
        assert cid_for_block(data) == cid
    # Pre-order walk: every node once, every record once, root first.
    assert tree.order[0] == tree.root
    assert set(tree.order) == set(tree.nodes) | {v for _, v in items}


def test_big_repo_has_intermediate_nodes() -> None:
    """bsky.app's 604 keys span 5 levels; the rebuilt node count matches the README (139)."""
    header, blocks = libipld.decode_car(
        (FIXTURES / "car/laravel-bluesky/bsky-app.car").read_bytes()
    )
    items = walk_mst(blocks, blocks[header["roots"][0]]["data"])
    assert len(items) == 604
    assert len(build_mst(items).nodes) == 139


def test_empty_tree_is_one_empty_node() -> None:
    tree = build_mst([])
    assert libipld.decode_dag_cbor(tree.nodes[tree.root]) == {"l": None, "e": []}
    assert libipld.encode_cid(tree.root) == (
        "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
    )


def test_rejects_unsorted_or_duplicate_keys() -> None:
    cid = cid_for_block(b"\xa0")
    with pytest.raises(ValueError):
        build_mst([("b/1", cid), ("a/1", cid)])
    with pytest.raises(ValueError):
        build_mst([("a/1", cid), ("a/1", cid)])
