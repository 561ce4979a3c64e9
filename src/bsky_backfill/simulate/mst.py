"""Build an atproto Merkle Search Tree (MST) from a repo's sorted records.

Where this sits: `generator.py` hands each account's `(collection/rkey,
record CID)` pairs here; the resulting root CID goes into the signed commit
(`car.py`) and the node blocks into the CAR. The product walks the same tree
to learn each record's key, so the builder must be byte-exact with the
reference implementations (a test rebuilds a real repo's root CID). The nodes
are built by the package's one MST builder (`repo.build.build_nodes`, which a
refresh also uses); this module adds the simulator's own needs: the order a
reader meets the blocks in (one of the CAR block orders it serves).

The structure, per the atproto repository spec:

* a key's height is the number of leading zero 2-bit chunks of sha256(key)
  (fanout ~4); the root sits at the greatest height in the tree;
* a node is `{"l": left subtree CID | null, "e": [entry, ...]}` where each entry
  is `{"p": shared prefix length with the previous key in the node, "k": key
  suffix bytes, "v": record CID, "t": right subtree CID | null}`;
* a subtree between two entries of height h holds the keys between them at
  height h-1 (a node with no entries of its own, only `l`, appears when no key
  in that range reaches h-1); empty subtrees are null links;
* an empty repository is a single node `{"l": null, "e": []}`.

Builds bottom-up in one pass per level, so the cost is O(records x height).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from bsky_backfill.repo.build import Leaf, build_nodes, common_prefix_len, encode_block
from bsky_backfill.repo.mst import key_height

__all__ = ["MstTree", "build_mst", "common_prefix_len", "key_height"]


@dataclass(slots=True)
class MstTree:
    """A built tree: `root` CID, `nodes` (CID -> DAG-CBOR block), and a walk order.

    `order` lists node CIDs in pre-order with record CIDs in key order between
    them (node, left subtree, record, right subtree, ...): the order a reader
    walking the tree meets blocks, used as one of the CAR block orders.
    """

    root: bytes
    nodes: dict[bytes, bytes] = field(default_factory=dict)
    order: list[bytes] = field(default_factory=list)


def build_mst(items: Sequence[tuple[str, bytes]]) -> MstTree:
    """Build the MST for `items`: (key "collection/rkey", record CID), sorted by key, unique."""
    keys = [k.encode() for k, _ in items]
    for a, b in itertools.pairwise(keys):
        if a >= b:
            raise ValueError(f"MST keys must be sorted and unique: {a!r} >= {b!r}")
    leaves: list[Leaf] = [(k, v, key_height(k)) for k, (_, v) in zip(keys, items, strict=True)]
    tree = MstTree(root=b"")
    # Per node: its left subtree and its entries' (record CID, right subtree).
    shape: dict[bytes, tuple[bytes | None, list[tuple[bytes, bytes | None]]]] = {}

    def keep(
        cid: bytes, data: bytes, layer: int, under: list[Leaf], subs: list[bytes | None]
    ) -> None:
        tree.nodes[cid] = data
        values = [v for _, v, height in under if height >= layer]
        shape[cid] = (subs[0], list(zip(values, subs[1:], strict=True)))

    if not leaves:
        cid, data = encode_block({"l": None, "e": []})
        return MstTree(root=cid, nodes={cid: data}, order=[cid])
    tree.root = build_nodes(leaves, max(h for _, _, h in leaves), keep)
    # Pre-order with the records in between: node, left, (record, right) ...
    stack: list[tuple[bytes, bool]] = [(tree.root, True)]
    while stack:
        cid, is_node = stack.pop()
        tree.order.append(cid)
        if not is_node:
            continue
        left, entries = shape[cid]
        then: list[tuple[bytes, bool]] = [] if left is None else [(left, True)]
        for value, right in entries:
            then.append((value, False))
            if right is not None:
                then.append((right, True))
        stack.extend(reversed(then))
    return tree
