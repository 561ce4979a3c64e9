"""Build an atproto Merkle Search Tree (MST) from a repo's sorted records.

Where this sits: `generator.py` hands each account's `(collection/rkey,
record CID)` pairs here; the resulting root CID goes into the signed commit
(`car.py`) and the node blocks into the CAR. The product walks the same tree
to learn each record's key, so the builder must be byte-exact with the
reference implementations (a test rebuilds a real repo's root CID).

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
from typing import Any

import libipld

from bsky_backfill.repo.mst import key_height
from bsky_backfill.simulate.ids import cid_for_block


def common_prefix_len(a: bytes, b: bytes) -> int:
    """Length of the shared byte prefix of `a` and `b` (used for key compression)."""
    n = min(len(a), len(b))
    # XOR the common-length prefixes as big-endian ints: the highest set bit sits
    # in the first differing byte. Much faster than a Python loop over bytes.
    x = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return n - (x.bit_length() + 7) // 8


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


class _Builder:
    def __init__(self, keys: list[bytes], values: list[bytes]) -> None:
        self.keys = keys
        self.values = values
        self.heights = [key_height(k) for k in keys]
        self.tree = MstTree(root=b"")

    def node(self, lo: int, hi: int, level: int) -> bytes:
        """Encode the node at `level` covering keys[lo:hi] (all of height <= level)."""
        heights, keys, values, order = self.heights, self.keys, self.values, self.tree.order
        at_level = [i for i in range(lo, hi) if heights[i] == level]
        slot = len(order)
        order.append(b"")  # the node precedes its children; filled in once encoded
        entries: list[dict[str, Any]] = []
        if not at_level:
            left: bytes | None = self.node(lo, hi, level - 1)
        else:
            first = at_level[0]
            left = self.node(lo, first, level - 1) if first > lo else None
            prev = b""
            for j, i in enumerate(at_level):
                order.append(values[i])
                end = at_level[j + 1] if j + 1 < len(at_level) else hi
                right = self.node(i + 1, end, level - 1) if end > i + 1 else None
                key = keys[i]
                p = common_prefix_len(prev, key)
                entries.append({"p": p, "k": key[p:], "v": values[i], "t": right})
                prev = key
        data = libipld.encode_dag_cbor({"l": left, "e": entries})
        cid = cid_for_block(data)
        self.tree.nodes[cid] = data
        order[slot] = cid
        return cid


def build_mst(items: Sequence[tuple[str, bytes]]) -> MstTree:
    """Build the MST for `items`: (key "collection/rkey", record CID), sorted by key, unique."""
    keys = [k.encode() for k, _ in items]
    for a, b in itertools.pairwise(keys):
        if a >= b:
            raise ValueError(f"MST keys must be sorted and unique: {a!r} >= {b!r}")
    builder = _Builder(keys, [v for _, v in items])
    if not keys:
        data = libipld.encode_dag_cbor({"l": None, "e": []})
        cid = cid_for_block(data)
        return MstTree(root=cid, nodes={cid: data}, order=[cid])
    builder.tree.root = builder.node(0, len(keys), max(builder.heights))
    return builder.tree
