"""Fuzz: the C MST walk (`_native.walk_leaves`) and the Python walk agree on hostile trees.

`repo.mst.verified_leaves` walks the tree in C when the extension is built
and in Python otherwise; both must give the same leaves, the same nodes and
key index, or fail with the same words. The trees here are real fixture
repos and built ones, then damaged node by node as a hostile host could
(shapes, prefix compression, key order and layers, links to missing, wrong
or repeated nodes), and walked with random bounds, layers and wanted
collections. Deterministic (fixed seeds): a failure names the seed.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import libipld
import pytest

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.repo import native
from bsky_backfill.repo.build import build_repo
from bsky_backfill.repo.car import read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.lazy import LazyBlocks, read_car_lazy
from bsky_backfill.repo.mst import mst_leaves, walk_verified
from tests.ci import in_ci
from tests.fixture_paths import CARS

pytestmark = pytest.mark.skipif(
    not native.NATIVE and not in_ci(), reason="C extension not built here"
)

COLLECTIONS = ["app.bsky.feed.like", "app.bsky.feed.post", "app.bsky.graph.follow", "x.y.z"]
SEEDS = range(12)
Walked = tuple[object, set[bytes], dict[str, bytes]]
"""What a walk gave (leaves or the failure's words), its nodes and its key index."""
MUTANTS_PER_SEED = 120


def _walk_both(
    blocks: dict[bytes, Any],
    root: bytes,
    layer: int | None,
    after: str,
    before: str | None,
    wanted: frozenset[str],
) -> tuple[Walked, Walked]:
    """The Python walk and the C walk of the same tree, each with its own nodes and keys."""
    assert native.walk_leaves is not None
    py_nodes: set[bytes] = set()
    py_keys: dict[str, bytes] = {}
    try:
        leaves = walk_verified(blocks, root, py_nodes, layer=layer, after=after, before=before)
        py: object = mst_leaves(leaves, wanted, py_keys)
    except RepoInvalid as e:
        py = str(e)
    c_nodes: set[bytes] = set()
    c_keys: dict[str, bytes] = {}
    c = native.walk_leaves(blocks, root, c_nodes, layer, after, before, wanted, c_keys)
    assert c is not None, "the C walk refused a dict of blocks"
    return (py, py_nodes, py_keys), (c, c_nodes, c_keys)


def _assert_alike(
    blocks: dict[bytes, Any],
    root: bytes,
    what: str,
    *,
    layer: int | None = None,
    after: str = "",
    before: str | None = None,
    wanted: frozenset[str] = frozenset(COLLECTIONS),
) -> object:
    (py, py_nodes, py_keys), (c, c_nodes, c_keys) = _walk_both(
        blocks, root, layer, after, before, wanted
    )
    assert c == py, what
    if not isinstance(py, str):  # on failure, how far each got is not part of the contract
        assert c_nodes == py_nodes, what
        assert c_keys == py_keys and list(c_keys) == list(py_keys), what
    return py


def _repo(rng: random.Random, n: int) -> tuple[dict[bytes, Any], bytes]:
    records = {}
    for i in range(n):
        collection = rng.choice(COLLECTIONS)
        rkey = f"3l{rng.randrange(10**11):011d}" if rng.random() < 0.9 else f"k{i}~x.-_:"
        records[f"{collection}/{rkey}"] = {"$type": collection, "i": i}
    car = read_car(build_repo("did:plc:abcdefghijklmnopqrstuvwx", records))
    return car.blocks, read_commit(car).data


def _nodes(blocks: dict[bytes, Any]) -> list[bytes]:
    return [cid for cid, b in blocks.items() if isinstance(b, dict) and set(b) == {"e", "l"}]


_JUNK: list[Any] = [None, 0, -1, 1, 2**70, True, False, 1.5, "", "x", b"", b"\xff\x80", [], {}, [1]]


def _damage(
    rng: random.Random, blocks: dict[bytes, Any], root: bytes
) -> tuple[str, dict[bytes, Any]]:
    out = dict(blocks)
    nodes = _nodes(out) or [root]
    cid = rng.choice(nodes)
    node = copy.deepcopy(out.get(cid))
    kind = rng.choice(["node", "entry", "p", "k", "v", "t", "l", "drop", "order", "extra", "self"])
    entries = node.get("e") if isinstance(node, dict) else None
    entry = rng.choice(entries) if isinstance(entries, list) and entries else None
    if kind == "node":
        node = rng.choice([*_JUNK, {"e": [], "l": None}, {"e": node and node.get("e")}])
    elif kind == "entry" and isinstance(entries, list):
        entries.insert(rng.randrange(len(entries) + 1), rng.choice(_JUNK))
    elif kind in ("p", "k", "v", "t") and entry is not None:
        if rng.random() < 0.3:
            entry.pop(kind, None)
        elif kind == "p":
            entry["p"] = rng.choice([*_JUNK, entry["p"] + 1, max(0, entry["p"] - 1), 0, 300])
        elif kind == "k":
            entry["k"] = rng.choice([*_JUNK, entry["k"] + b"\x00", entry["k"][:1], b"\xc3\xa9"])
        else:
            entry[kind] = rng.choice([*_JUNK, rng.choice(nodes), root, rng.randbytes(36)])
    elif kind == "l" and isinstance(node, dict):
        node["l"] = rng.choice([*_JUNK, rng.choice(nodes), root, rng.randbytes(36)])
    elif kind == "drop":
        out.pop(rng.choice(nodes), None)
        return kind, out
    elif kind == "order" and isinstance(entries, list) and len(entries) > 1:
        i = rng.randrange(len(entries) - 1)
        entries[i], entries[i + 1] = entries[i + 1], entries[i]
    elif kind == "extra" and isinstance(node, dict):
        target = entry if entry is not None and rng.random() < 0.5 else node
        target["z"] = 1
    elif kind == "self" and isinstance(node, dict):
        node["l"] = cid  # a node that is its own subtree: reached twice
    out[cid] = node
    return kind, out


def test_intact_trees_walk_alike() -> None:
    rng = random.Random(7)
    for n in (0, 1, 2, 5, 40, 300, 2000):
        blocks, root = _repo(rng, n)
        got = _assert_alike(blocks, root, f"{n} records")
        assert not isinstance(got, str) and got[2] == n  # type: ignore[index]
    for path in sorted(CARS.rglob("*.car")):
        car = read_car(path.read_bytes())
        try:
            root = read_commit(car).data
        except RepoInvalid:
            continue
        _assert_alike(car.blocks, root, path.name)


@pytest.mark.parametrize("seed", SEEDS)
def test_damaged_trees_fail_alike(seed: int) -> None:
    rng = random.Random(seed)
    failures = 0
    for i in range(MUTANTS_PER_SEED):
        blocks, root = _repo(rng, rng.choice([3, 30, 200]))
        kind, damaged = _damage(rng, blocks, root)
        wanted = frozenset(rng.sample(COLLECTIONS, rng.randint(0, len(COLLECTIONS))))
        got = _assert_alike(damaged, root, f"seed {seed} mutant {i} ({kind})", wanted=wanted)
        failures += isinstance(got, str)
    # The damage is real: most mutants are refused (some land on unreached blocks).
    assert failures > MUTANTS_PER_SEED // 3


@pytest.mark.parametrize("seed", range(4))
def test_subtrees_with_bounds_and_layers_alike(seed: int) -> None:
    rng = random.Random(100 + seed)
    for i in range(60):
        blocks, root = _repo(rng, rng.choice([50, 400]))
        start = rng.choice(_nodes(blocks))
        keys = sorted(k for k, _ in walk_verified(blocks, root, set()))
        after = rng.choice(["", *rng.sample(keys, 2)])
        before = rng.choice([None, *rng.sample(keys, 2), "~"])
        layer = rng.choice([None, 0, 1, 2, 3])
        _assert_alike(blocks, start, f"seed {seed} #{i}", layer=layer, after=after, before=before)


def test_other_shapes_are_left_to_python() -> None:
    assert native.walk_leaves is not None
    blocks, root = _repo(random.Random(1), 10)
    common: list[Any] = [blocks, root, set(), None, "", None, frozenset(COLLECTIONS), {}]
    odd = {
        0: list(blocks.items()),  # neither a dict of blocks nor a mapping (repo/lazy.py)
        1: bytearray(root),
        2: frozenset(),
        3: 128,  # a layer no key can have
        4: "é",  # a bound that is not ASCII
        5: b"x",
        6: list(COLLECTIONS),
        7: [],
    }
    for i, value in odd.items():
        args = list(common)
        args[i] = value
        assert native.walk_leaves(*args) is None, i
    assert native.walk_leaves(*common) is not None


def test_lazy_blocks_walk_as_a_dict_does() -> None:
    """The C walk reads a `LazyBlocks` (blocks decoded on access, repo/lazy.py) as it
    reads the dict of a whole decoded CAR: same leaves, nodes and key index."""
    rng = random.Random(7)
    records = {f"{COLLECTIONS[i % len(COLLECTIONS)]}/{i:013d}": {"i": i} for i in range(400)}
    car = build_repo("did:plc:lazywalk", records)
    whole = read_car(car)
    lazy = read_car_lazy(car)
    root = read_commit(whole).data
    wanted = frozenset(rng.sample(COLLECTIONS, 2))
    assert native.walk_leaves is not None
    got = []
    for blocks in (whole.blocks, lazy.blocks):
        nodes: set[bytes] = set()
        keys: dict[str, bytes] = {}
        got.append(
            (native.walk_leaves(blocks, root, nodes, None, "", None, wanted, keys), nodes, keys)
        )
    assert got[0] == got[1]
    assert got[0][0] is not None and len(got[0][0][0]) > 0


def _lazy(blocks: dict[bytes, Any], garbage: bytes | None = None) -> LazyBlocks:
    """The same blocks as a `LazyBlocks` over their DAG-CBOR bytes end to end
    (`garbage`: one node's bytes replaced by something libipld cannot decode)."""
    data = bytearray()
    index: dict[bytes, int] = {}
    for cid, value in blocks.items():
        raw = garbage if garbage is not None and cid == next(iter(_nodes(blocks)), None) else None
        raw = raw if raw is not None else libipld.encode_dag_cbor(value)
        index[cid] = len(data) << 32 | len(raw)
        data += raw
    return LazyBlocks(bytes(data), index)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_damaged_trees_walk_alike_through_lazy_blocks(seed: int) -> None:
    """The C walk's own reading of a `LazyBlocks` (index and bytes, libipld's decoder;
    repo/_native.c `lazy_node`) against the Python walk through the same mapping,
    on damaged trees and on a node whose bytes do not decode."""
    rng = random.Random(seed)
    failures = compared = 0
    for i in range(MUTANTS_PER_SEED // 2):
        blocks, root = _repo(rng, rng.choice([3, 30, 200]))
        kind, damaged = _damage(rng, blocks, root)
        garbage = rng.choice([None, None, b"\xff\xfe", b"\xa1", b""])
        try:
            lazy = _lazy(damaged, garbage)
        except (ValueError, TypeError, OverflowError):
            continue  # a value DAG-CBOR cannot hold (e.g. an int past 64 bits)
        wanted = frozenset(rng.sample(COLLECTIONS, rng.randint(0, len(COLLECTIONS))))
        py_nodes: set[bytes] = set()
        py_keys: dict[str, bytes] = {}
        try:
            leaves = walk_verified(lazy, root, py_nodes)
            py: object = mst_leaves(leaves, wanted, py_keys)
        except RepoInvalid as e:
            py = str(e)
        c_nodes: set[bytes] = set()
        c_keys: dict[str, bytes] = {}
        assert native.walk_leaves is not None
        c = native.walk_leaves(lazy, root, c_nodes, None, "", None, wanted, c_keys)
        assert c == py, f"seed {seed} mutant {i} ({kind}, garbage {garbage!r})"
        if not isinstance(py, str):
            assert (c_nodes, c_keys) == (py_nodes, py_keys)
        failures += isinstance(py, str)
        compared += 1
    assert compared > MUTANTS_PER_SEED // 4 and failures > compared // 4
