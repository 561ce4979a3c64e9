"""repo/diff.py: the refresh diff equals the set difference of two real MSTs.

Seeded property test: random sequences of creates, updates and deletes on repos
of random sizes (a few up to tens of thousands of keys, so trees have several
layers); after each step the diff of the old tree (rebuilt from its key index)
against the new tree (its new nodes only, as a `getRepo since=` diff CAR
carries them) must equal the set difference, key for key. Then hostile trees:
every malformed node is a `VerificationFailed`, never a crash or a hang.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import libipld
import pytest

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.repo.build import build_mst, encode_block
from bsky_backfill.repo.diff import OldTree, diff_trees, new_index

COLLECTIONS = ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow")
_B32 = "234567abcdefghijklmnopqrstuvwxyz"


def _key(rng: random.Random) -> str:
    return f"{rng.choice(COLLECTIONS)}/3k{''.join(rng.choice(_B32) for _ in range(11))}"


def _value(rng: random.Random) -> bytes:
    return b"\x01\x71\x12\x20" + hashlib.sha256(rng.randbytes(8)).digest()


def _tree(keys: dict[str, bytes]) -> tuple[bytes, dict[bytes, Any]]:
    root, nodes = build_mst(keys)
    return root, {cid: libipld.decode_dag_cbor(data) for cid, data in nodes.items()}


def _check(old_keys: dict[str, bytes], new_keys: dict[str, bytes]) -> None:
    old = OldTree(old_keys)
    root, nodes = _tree(new_keys)
    diff_blocks = {cid: n for cid, n in nodes.items() if cid not in old.nodes}
    changes = diff_trees(old, diff_blocks, root)
    assert changes.deleted == {k: v for k, v in old_keys.items() if k not in new_keys}
    assert changes.added == {k: v for k, v in new_keys.items() if k not in old_keys}
    assert changes.updated == {
        k: (old_keys[k], v) for k, v in new_keys.items() if k in old_keys and old_keys[k] != v
    }
    assert new_index(old_keys, changes) == new_keys
    assert changes.opened <= set(diff_blocks)


def _mutate(rng: random.Random, keys: dict[str, bytes]) -> dict[str, bytes]:
    new = dict(keys)
    existing = list(new)
    for _ in range(rng.choice((1, 2, 5, 20, 80))):
        op = rng.random()
        if op < 0.4 or not existing:
            new[_key(rng)] = _value(rng)
        elif op < 0.7:
            new[rng.choice(existing)] = _value(rng)
        else:
            new.pop(rng.choice(existing), None)
    # Runs of neighbouring keys go together (what grows an unchanged subtree's range).
    if existing and rng.random() < 0.3:
        ordered = sorted(existing)
        start = rng.randrange(len(ordered))
        for k in ordered[start : start + rng.randint(2, 40)]:
            new.pop(k, None)
    return new


@pytest.mark.parametrize("seed", range(120))
def test_diff_equals_set_difference(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice((0, 1, 3, 10, 60, 300, 1500)) if seed % 20 else 20_000 + seed * 50
    keys = {_key(rng): _value(rng) for _ in range(size)}
    for _ in range(3 if size < 5000 else 2):
        new = _mutate(rng, keys)
        _check(keys, new)
        keys = new


def test_every_deletion_next_to_unchanged_subtrees() -> None:
    """The issue's case: deleting keys beside an unchanged subtree grows its range."""
    rng = random.Random(7)
    keys = {_key(rng): _value(rng) for _ in range(3000)}
    ordered = sorted(keys)
    for i in range(0, len(ordered), 37):
        new = {k: v for k, v in keys.items() if k != ordered[i]}
        old = OldTree(keys)
        root, nodes = _tree(new)
        changes = diff_trees(old, {c: n for c, n in nodes.items() if c not in old.nodes}, root)
        assert changes.deleted == {ordered[i]: keys[ordered[i]]}
        assert not changes.added and not changes.updated


def test_from_and_to_empty() -> None:
    rng = random.Random(3)
    keys = {_key(rng): _value(rng) for _ in range(200)}
    _check({}, keys)
    _check(keys, {})
    _check({}, {})


# -- hostile trees ------------------------------------------------------------


def _hostile(mangle: Any) -> None:
    rng = random.Random(11)
    old_keys = {_key(rng): _value(rng) for _ in range(400)}
    new_keys = dict(old_keys)
    new_keys[_key(rng)] = _value(rng)
    old = OldTree(old_keys)
    root, nodes = _tree(new_keys)
    blocks = {c: n for c, n in nodes.items() if c not in old.nodes}
    root = mangle(root, blocks)
    with pytest.raises(RepoInvalid) as info:
        diff_trees(old, blocks, root)
    assert info.value.code == "VerificationFailed"
    assert info.value.stage == "verify"


def _edit_root(edit: Any) -> Any:
    def mangle(root: bytes, blocks: dict[bytes, Any]) -> bytes:
        node = blocks[root]
        edit(node)
        cid, _ = encode_block(node)
        blocks[cid] = node
        return cid

    return mangle


@pytest.mark.parametrize(
    "edit",
    [
        lambda n: n["e"][0].pop("p"),
        lambda n: n["e"][0].__setitem__("k", b"\xff\xfe"),
        lambda n: n["e"][0].__setitem__("v", "not a cid"),
        lambda n: n["e"][0].__setitem__("t", 5),
        lambda n: n.__setitem__("e", "entries"),
        lambda n: n.pop("l"),
        lambda n: n["e"].reverse(),
        lambda n: n.__setitem__("l", b"\x01\x71\x12\x20" + bytes(32)),
    ],
    ids=["no-p", "non-ascii", "bad-cid", "bad-subtree", "no-list", "no-l", "order", "missing"],
)
def test_malformed_node_is_verification_failed(edit: Any) -> None:
    _hostile(_edit_root(edit))


def test_node_naming_itself_as_subtree_ends() -> None:
    """A node whose left link is itself (a cycle a hostile host can write): an error, at once."""

    def mangle(root: bytes, blocks: dict[bytes, Any]) -> bytes:
        # The cycle: a node's left link is its own CID. A real CID cannot name
        # itself, so the host lies about the block's CID (the hash check of the
        # CAR catches that too; the walk must end on its own first).
        fake = b"\x01\x71\x12\x20" + bytes(31) + b"\x01"
        node = dict(blocks[root])
        node["l"] = fake
        blocks[fake] = node
        return fake

    _hostile(mangle)


def test_node_not_a_map() -> None:
    def mangle(root: bytes, blocks: dict[bytes, Any]) -> bytes:
        blocks[root] = [1, 2, 3]
        return root

    _hostile(mangle)


@pytest.mark.parametrize(
    "keys",
    [
        {},
        {"app.bsky.feed.post/a": b"\x01\x71\x12\x20" + bytes(32)},
        {"a/b\nc": b"\x01\x71\x12\x20" + bytes(32), "a/d": b"\x01\x71\x12\x20" + bytes(32)},
        {"a/b": b"\x01\x55\x12\x20" + bytes(32), "a/c": b"\x01\x71\x12\x20" + bytes(31)},
    ],
    ids=["empty", "one", "newline-in-key", "odd-cids"],
)
def test_key_index_round_trips(keys: dict[str, bytes]) -> None:
    from bsky_backfill.repo.diff import pack_index, unpack_index

    verdicts = {"x/y": "validate/InvalidRecord", "x/z": ""}
    assert unpack_index(pack_index(keys, verdicts)) == (keys, verdicts)
    assert unpack_index(pack_index(keys)) == (keys, {})


def test_a_damaged_key_index_is_a_typed_error() -> None:
    from bsky_backfill.repo.diff import pack_index, unpack_index

    blob = pack_index({"a/b": b"\x01\x71\x12\x20" + bytes(32)})
    for damaged in (blob[:-5], b"\x00" + blob, libipld.encode_dag_cbor({"k": 1})):
        with pytest.raises(RepoInvalid):
            unpack_index(damaged)
