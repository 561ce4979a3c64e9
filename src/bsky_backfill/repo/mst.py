"""Walk a repository's Merkle Search Tree: every (record key, record CID) in key order.

Where it sits in the flow: read_car -> read_commit -> **walk_mst(commit.data)**
-> records.transform. Only what this walk reaches is a record of the repo:
old exports also carry blocks of earlier commits and deleted records, which
are never looked at.

A node is `{"l": link | None, "e": [{"p": int, "k": bytes, "v": link, "t": link | None}]}`:
`l` is the subtree left of the first entry, each entry's `t` the subtree
between it and the next entry. Keys are prefix-compressed within a node: an
entry's key is the previous entry's first `p` bytes + `k`.

The walks are iterative with one explicit stack (no recursion, no nested
closure), so they have no depth limit and create no reference cycles that
would keep the decoded blocks alive while the garbage collector is paused.

`walk_mst` (`--no-verify`) only reads the tree. `walk_verified` (the default,
see `repo.verify`) also checks that it is well-formed: node and entry shapes,
prefix compression, and key heights against layers (a key's height is the
number of leading zero 2-bit chunks of sha256(key), fanout 4; a node on layer
L holds keys of height L and its subtrees are on layer L-1). Block hashes are
checked by `repo.verify.check_blocks`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Set
from typing import Any

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.repo import native

__all__ = ["Leaves", "key_height", "mst_leaves", "verified_leaves", "walk_mst", "walk_verified"]

_sha256 = hashlib.sha256


def _invalid(message: str) -> RepoInvalid:
    return RepoInvalid(message, code="InvalidMST", stage="decode")


def walk_mst(
    blocks: Mapping[bytes, Any],
    root: bytes,
    *,
    after: str = "",
    before: str | None = None,
    cut: int | None = None,
) -> Iterator[tuple[Any, bytes]]:
    """Yield `(key, value_cid)` for every leaf reachable from `root`, keys ascending.

    `key` is "collection/rkey" (ASCII); `value_cid` the raw CID bytes of the
    record block (which may be absent from a partial CAR: the caller decides).
    Raises RepoInvalid (InvalidMST) on a missing or malformed node, a node
    reached twice, or keys out of order (which would also mean duplicates).

    Walking a part of a tree (big repos, records/stream.py): every key must
    sort after `after` and before `before`; with `cut`, subtrees `cut` levels
    below `root` are not opened but yielded in their place, in key order, as
    `(depth, node_cid)` (an int first, where a leaf has its str key).
    """
    # Items are either a node still to open, (depth, CID), or a leaf ready to
    # yield, (key, CID), told apart by the key being a str. Opening a node
    # pushes, in reverse, l, then entry, t, entry, t ...; popping then visits
    # the tree in key order.
    stack: list[tuple[Any, bytes]] = [(0, root)]
    seen: set[bytes] = set()
    last = after
    while stack:
        item = stack.pop()
        if item[0].__class__ is str:
            key = item[0]
            if key <= last:
                raise _invalid(f"MST keys out of order: {key!r:.200} after {last!r:.200}")
            last = key
            yield item
            continue
        depth, cid = item
        if cut is not None and depth >= cut:
            yield item
            continue
        if cid in seen:
            raise _invalid("MST node reached twice")
        seen.add(cid)
        node = blocks.get(cid)
        if node is None:
            raise _invalid("MST node block missing from the CAR")
        if node.__class__ is not dict:
            raise _invalid(f"MST node is a {type(node).__name__}, not a map")
        entries = node.get("e")
        left = node.get("l")
        if entries.__class__ is not list:
            raise _invalid("MST node without an entry list")
        if left is not None and left.__class__ is not bytes:
            raise _invalid("MST node has a malformed left link")
        pending: list[Any] = []
        prev = b""
        child = depth + 1
        for e in entries:
            try:
                p = e["p"]
                k = e["k"]
                v = e["v"]
                t = e.get("t")
            except (KeyError, TypeError, AttributeError) as exc:
                raise _invalid(f"malformed MST entry: {e!r:.200}") from exc
            if (
                p.__class__ is not int
                or k.__class__ is not bytes
                or v.__class__ is not bytes
                or not 0 <= p <= len(prev)
                or (t is not None and t.__class__ is not bytes)
            ):
                raise _invalid(f"malformed MST entry: {e!r:.200}")
            prev = prev[:p] + k
            try:
                key = prev.decode("ascii")
            except UnicodeDecodeError as exc:
                raise _invalid(f"MST key is not ASCII: {prev!r:.200}") from exc
            pending.append((key, v))
            if t is not None:
                pending.append((child, t))
        pending.reverse()
        stack += pending
        if left is not None:
            stack.append((child, left))
    if before is not None and last >= before:
        raise _invalid(f"MST key {last!r:.200} sorts after the next key {before!r:.200}")


# -- leaves of wanted collections ----------------------------------------------

Leaves = tuple[list[str], list[bytes], int]
"""The keys and record CIDs of the leaves of wanted collections, in key order,
and the number of leaves of the tree (wanted or not)."""


def verified_leaves(
    blocks: Mapping[bytes, Any],
    root: bytes,
    nodes: set[bytes],
    wanted: Set[str],
    keys: dict[str, bytes] | None,
    *,
    layer: int | None = None,
    after: str = "",
    before: str | None = None,
) -> Leaves:
    """`walk_verified` of a whole tree (or a part's subtree), its leaves sorted out at once.

    Every key and its CID go to `keys` (the repo's key index, for refresh);
    the leaves whose collection is in `wanted` are returned. In C when built
    (repo/_native.c `walk_leaves`: one call per repo instead of a generator
    step, a tuple and a `partition` per key), else the Python walk below; both
    raise the same VerificationFailed with the same words.
    """
    walk = native.walk_leaves
    if walk is not None:
        got = walk(blocks, root, nodes, layer, after, before, wanted, keys)
        if got.__class__ is str:
            raise _failed(got)
        if got is not None:
            return got  # type: ignore[return-value]
    leaves = walk_verified(blocks, root, nodes, layer=layer, after=after, before=before)
    return mst_leaves(leaves, wanted, keys)


def mst_leaves(
    leaves: Iterable[tuple[str, bytes]], wanted: Set[str], keys: dict[str, bytes] | None
) -> Leaves:
    """A walk's `(key, CID)` pairs -> `Leaves` (and every pair into `keys`)."""
    out_keys: list[str] = []
    out_cids: list[bytes] = []
    n = 0
    for key, cid in leaves:
        n += 1
        if keys is not None:
            keys[key] = cid
        if key.partition("/")[0] in wanted:
            out_keys.append(key)
            out_cids.append(cid)
    return out_keys, out_cids, n


# -- verified walk ------------------------------------------------------------


def _failed(reason: str) -> RepoInvalid:
    # Same error as `repo.verify.failed` (which imports this module).
    return RepoInvalid(reason, code="VerificationFailed", stage="verify")


def key_height(key: bytes) -> int:
    """MST layer of a key: leading zero 2-bit chunks of sha256(key) (fanout 4)."""
    n = int.from_bytes(_sha256(key).digest(), "big")
    return (256 - n.bit_length()) >> 1


def walk_verified(
    blocks: Mapping[bytes, Any],
    root: bytes,
    nodes: set[bytes],
    *,
    layer: int | None = None,
    after: str = "",
    before: str | None = None,
    cut: int | None = None,
) -> Iterator[tuple[Any, bytes]]:
    """Like `walk_mst`, checking the tree's structure; adds every node CID to `nodes`.

    A part of a tree: `root` is then a subtree on `layer` (not the repo's
    root: it must not be empty), its keys between `after` and `before`; with
    `cut`, subtrees on layer `cut` or below are yielded as `(layer, node_cid)`
    instead of being opened.

    Raises VerificationFailed on a node that is missing, malformed (not a
    `{l, e}` map of `{p, k, v, t}` entries, or not valid DAG-CBOR), reached
    twice, empty below the root, or with a subtree below layer 0; on keys out
    of order, not ASCII or with a prefix that is not fully compressed; and,
    on any key whose height is not its node's layer.
    """
    # Stack items: (layer | None, node CID) still to open, or (key, value CID)
    # leaves to yield, told apart by the first item being a str. Layer None:
    # not known yet (the root's comes from its first key; an entry-less root
    # with a left subtree, which canonical trees trim, passes it down).
    stack: list[tuple[Any, bytes]] = [(layer, root)]
    is_root = layer is None
    last = after
    off_layer = native.off_layer or _off_layer
    while stack:
        item = stack.pop()
        if item[0].__class__ is str:
            key = item[0]
            if key <= last:
                raise _failed(f"MST keys out of order: {key!r:.200} after {last!r:.200}")
            last = key
            yield item
            continue
        layer, cid = item
        if cut is not None and layer is not None and layer <= cut:
            yield item
            continue
        if cid in nodes:
            raise _failed("an MST node is reached twice")
        nodes.add(cid)
        node = blocks.get(cid)
        if node is None:
            raise _failed("an MST node is missing from the CAR")
        try:
            if node.__class__ is not dict or len(node) != 2:
                raise KeyError
            entries = node["e"]
            left = node["l"]
        except KeyError:
            raise _failed(f"malformed MST node: {node!r:.200}") from None
        if entries.__class__ is not list or (left is not None and left.__class__ is not bytes):
            raise _failed(f"malformed MST node: {node!r:.200}")
        if entries:
            if layer is None:
                layer = key_height(_first_key(entries))
        elif left is None and (cid != root or not is_root):
            raise _failed("an MST node below the root is empty")
        child = None if layer is None else layer - 1
        pending: list[tuple[Any, bytes]] = []
        push = pending.append
        keys: list[bytes] = []
        prev = b""
        for e in entries:
            try:
                p = e["p"]
                k = e["k"]
                v = e["v"]
                t = e["t"]
            except (KeyError, TypeError, IndexError):
                raise _failed(f"malformed MST entry: {e!r:.200}") from None
            n = len(prev)
            if (
                e.__class__ is not dict
                or len(e) != 4
                or p.__class__ is not int
                or k.__class__ is not bytes
                or v.__class__ is not bytes
                or not 0 <= p <= n
            ):
                raise _failed(f"malformed MST entry: {e!r:.200}")
            if p < n and k and k[0] == prev[p]:
                raise _failed(f"MST key prefix not fully compressed: {e!r:.200}")
            prev = prev[:p] + k
            keys.append(prev)
            try:
                push((prev.decode("ascii"), v))
            except UnicodeDecodeError:
                raise _failed(f"MST key is not ASCII: {prev!r:.200}") from None
            if t is not None:
                if t.__class__ is not bytes or layer == 0:
                    raise _failed(f"malformed MST entry (subtree): {e!r:.200}")
                push((child, t))
        if keys:
            # One hash per key, all of a node's keys in one call.
            off = off_layer(keys, layer)
            if off >= 0:
                raise _failed(f"MST key {keys[off]!r:.200} is not on layer {layer}")
        pending.reverse()
        stack += pending
        if left is not None:
            if layer == 0:
                raise _failed("an MST node on layer 0 has a subtree")
            stack.append((child, left))
    if before is not None and last >= before:
        raise _failed(f"MST key {last!r:.200} sorts after the next key {before!r:.200}")


def _off_layer(keys: list[bytes], layer: int) -> int:
    """Index of the first key not of height `layer`, or -1 (the C twin: repo/native.py)."""
    lo, hi = _height_bounds(layer)
    sha = _sha256
    for i, key in enumerate(keys):
        # The digest compared with the layer's bounds as bytes: no bit counting.
        if not lo <= sha(key).digest() < hi:
            return i
    return -1


@functools.cache
def _height_bounds(layer: int) -> tuple[bytes, bytes]:
    """[lo, hi) of the sha256 digests (as 32 big-endian bytes) of keys of height `layer`.

    Height h = 2h or 2h+1 leading zero bits = a 256-bit number in
    [2^(254-2h), 2^(256-2h)): one bytes comparison instead of counting bits.
    """
    if not 0 <= layer <= 127:
        raise _failed(f"MST layer {layer} out of range")
    lo = (1 << (254 - 2 * layer)).to_bytes(32, "big")
    hi = (1 << (256 - 2 * layer)).to_bytes(32, "big") if layer else b"\xff" * 33
    return lo, hi


def _first_key(entries: list[Any]) -> bytes:
    first = entries[0]
    k = first.get("k") if first.__class__ is dict else None
    if k.__class__ is not bytes or first.get("p") != 0:
        raise _failed(f"malformed first MST entry: {first!r:.200}")
    key: bytes = k
    return key
