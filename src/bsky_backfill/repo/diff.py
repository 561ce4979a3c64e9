"""What changed in a repo since the revision that landed last time (`run --refresh`).

Where it sits: the refresh path of the worker (engine/refresh.py). Inputs:
a getRepo CAR, usually a diff (`since=<rev>`: the new commit plus only the
blocks written after `rev`), and the repo's key index at `rev` (every MST key
-> record CID, kept in the state store by the commit that landed it: see
`state.base.StateStore.repo_keys`).

The old tree is rebuilt from the key index (`OldTree`: the MST is a pure
function of its keys and values, so the rebuilt nodes carry the very CIDs the
host's old nodes had). The new tree's nodes are the diff CAR's blocks plus
the old ones it still links to. `diff_trees` then walks both trees together,
top layer first:

  * a node CID on the same layer in both trees is one unchanged subtree: it
    holds the same keys on both sides (content addressing) and is skipped;
  * every other node is opened; its keys are keys of its tree.

So a key of the old tree that is absent from the new one is found whatever
the shape of either tree: no key is ever inferred from a key *range* (the
earlier range-based walk missed deletions next to an unchanged subtree, whose
range grows when its neighbour goes).

Bounded on any input: every node is opened at most once per side (a node
reached twice, e.g. one naming itself as its subtree, is an error), layers go
strictly down from at most 127, and the work is linear in the nodes opened.
A new-tree node opened here is checked as `mst.walk_verified` checks one
(shape, prefix compression, key heights against the layer, key order within
its bounds); an unchanged subtree's keys are checked against its bounds by
their span, known from the rebuild. Every failure is a `RepoInvalid` with
code `VerificationFailed`, stage `verify`: the refresh of that repo is
dead-lettered, nothing lands.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import libipld

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.repo.build import Leaf, build_nodes
from bsky_backfill.repo.mst import key_height

__all__ = [
    "Changes",
    "OldTree",
    "diff_trees",
    "failed",
    "merge_indexes",
    "new_index",
    "pack_index",
    "unpack_index",
]

_CID_PREFIX = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32 bytes


def failed(reason: str) -> RepoInvalid:
    """The one error a diff raises: the repo's refresh is dead-lettered whole."""
    return RepoInvalid(reason, code="VerificationFailed", stage="verify")


@dataclass(slots=True)
class Changes:
    """Keys (\"collection/rkey\") whose record CID (raw bytes) differs between two trees."""

    added: dict[str, bytes] = field(default_factory=dict)
    """key -> new CID of keys only the new tree has."""
    updated: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    """key -> (old CID, new CID) of keys both trees have with different records."""
    deleted: dict[str, bytes] = field(default_factory=dict)
    """key -> old CID of keys only the old tree has."""
    unchanged: dict[str, bytes] = field(default_factory=dict)
    """Filled by callers that compare against something other than an old tree."""
    opened: set[bytes] = field(default_factory=set)
    """CIDs of the new tree's nodes that were opened (their blocks must be hash-checked)."""


@dataclass(slots=True)
class _Node:
    layer: int
    left: bytes | None
    entries: list[tuple[str, bytes, bytes | None]]  # key, value CID, right subtree
    span: tuple[str, str] | None  # smallest and greatest key of the subtree


class OldTree:
    """The MST of a key index, rebuilt: node CID -> node, each with its subtree's key span."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self.nodes: dict[bytes, _Node] = {}
        items = sorted((k.encode("ascii"), v) for k, v in keys.items())
        leaves = [(k, v, key_height(k)) for k, v in items]
        top = max((h for _, _, h in leaves), default=0)
        self.root = build_nodes(leaves, top, self._keep)
        self.keys = dict(keys)

    def _keep(
        self, cid: bytes, _data: bytes, layer: int, items: list[Leaf], subs: list[bytes | None]
    ) -> None:
        """Each rebuilt node, with its entries and its subtree's key span (repo/build.py
        builds the tree, so the CIDs are the ones the account's own tree had)."""
        span = (items[0][0].decode("ascii"), items[-1][0].decode("ascii")) if items else None
        mine = [(k.decode("ascii"), v) for k, v, h in items if h >= layer]
        node_entries = [(k, v, sub) for (k, v), sub in zip(mine, subs[1:], strict=True)]
        self.nodes[cid] = _Node(layer, subs[0], node_entries, span)


def _decode_node(node: Any, cid: bytes, expected: int | None) -> _Node:
    """A new-tree node checked for shape (as `mst.walk_verified` does one node)."""
    if node is None:
        raise failed("an MST node of the new tree is neither in the diff nor in the old tree")
    if node.__class__ is not dict or len(node) != 2 or "e" not in node or "l" not in node:
        raise failed(f"malformed MST node: {node!r:.200}")
    raw, left = node["e"], node["l"]
    if raw.__class__ is not list or (left is not None and left.__class__ is not bytes):
        raise failed(f"malformed MST node: {node!r:.200}")
    entries: list[tuple[str, bytes, bytes | None]] = []
    keys: list[bytes] = []
    prev = b""
    for e in raw:
        if e.__class__ is not dict or len(e) != 4:
            raise failed(f"malformed MST entry: {e!r:.200}")
        p, k, v, t = e.get("p"), e.get("k"), e.get("v"), e.get("t", b"")
        if (
            p.__class__ is not int
            or k.__class__ is not bytes
            or v.__class__ is not bytes
            or (t is not None and t.__class__ is not bytes)
            or not 0 <= p <= len(prev)
        ):
            raise failed(f"malformed MST entry: {e!r:.200}")
        if p < len(prev) and k and k[0] == prev[p]:
            raise failed(f"MST key prefix not fully compressed: {e!r:.200}")
        prev = prev[:p] + k
        try:
            key = prev.decode("ascii")
        except UnicodeDecodeError:
            raise failed(f"MST key is not ASCII: {prev!r:.200}") from None
        if keys and prev <= keys[-1]:
            raise failed(f"MST keys out of order: {key!r:.200}")
        keys.append(prev)
        entries.append((key, v, t))
    if keys:
        layer = key_height(keys[0])
        if any(key_height(k) != layer for k in keys[1:]):
            raise failed("MST keys of one node are on different layers")
    elif expected is not None:
        # A layer without keys in this range: a node holding only its left
        # subtree (the builder makes these, as the reference implementation does).
        if left is None:
            raise failed("an MST node below the root is empty")
        layer = expected
    else:
        # The root of an empty tree, or (not canonical, but accepted as
        # `mst.walk_verified` does) an entry-less root over its left subtree.
        layer = 0 if left is None else -1
    if expected is not None and layer != expected:
        raise failed(f"an MST node is on layer {layer}, not {expected}")
    if layer == 0 and (left is not None or any(t is not None for _, _, t in entries)):
        raise failed("an MST node on layer 0 has a subtree")
    return _Node(layer, left, entries, None)


def diff_trees(old: OldTree, blocks: Mapping[bytes, Any], root: bytes) -> Changes:
    """Every key whose record differs between `old` and the tree at `root`.

    `blocks` are decoded blocks (CID -> DAG-CBOR value) of the new tree's
    nodes that are not in `old` (a diff CAR); a node in neither is an error.
    """
    changes = Changes()
    if root == old.root:
        return changes
    old_keys: dict[str, bytes] = {}
    new_keys: dict[str, bytes] = {}
    # Per layer, the nodes still to look at on each side, with their bounds
    # (exclusive; "" = open) on the new side.
    old_front: dict[int, set[bytes]] = {}
    new_front: dict[int, dict[bytes, tuple[str, str]]] = {}
    seen: set[bytes] = set()

    node = _new_node(blocks, old, root, None, seen, changes)
    while node.layer == -1:  # entry-less root: descend to what it holds
        assert node.left is not None
        root = node.left
        node = _new_node(blocks, old, root, None, seen, changes)
    new_front.setdefault(node.layer, {})[root] = ("", "")
    old_root = old.nodes[old.root]
    old_front.setdefault(old_root.layer, set()).add(old.root)
    new_cache: dict[bytes, _Node] = {root: node}

    layer = max([*old_front, *new_front])
    while layer >= 0:
        olds = old_front.pop(layer, set())
        news = new_front.pop(layer, {})
        for cid in olds:
            if cid in news:
                continue  # one unchanged subtree: the same keys on both sides
            n = old.nodes[cid]
            for key, value, _ in n.entries:
                old_keys[key] = value
            children = [n.left, *(t for _, _, t in n.entries)]
            old_front.setdefault(layer - 1, set()).update(c for c in children if c is not None)
        for cid, (low, high) in news.items():
            if cid in olds:
                span = old.nodes[cid].span
                if (
                    span is None
                    or not _within(span[0], low, high)
                    or not _within(span[1], low, high)
                ):
                    raise failed("an unchanged MST subtree is out of key order in the new tree")
                continue
            cached = new_cache.pop(cid, None)
            n = cached if cached is not None else _new_node(blocks, old, cid, layer, seen, changes)
            bounds = [low, *(k for k, _, _ in n.entries), high]
            for key, value, _ in n.entries:
                if not _within(key, low, high):
                    raise failed(f"MST key {key!r:.200} is outside its subtree's bounds")
                new_keys[key] = value
            below = new_front.setdefault(layer - 1, {})
            links = [n.left, *(t for _, _, t in n.entries)]
            for i, child in enumerate(links):
                if child is not None:
                    if child in below:
                        raise failed("an MST node is reached twice")
                    below[child] = (bounds[i], bounds[i + 1])
        layer -= 1
    if any(old_front.values()) or any(new_front.values()):
        raise failed("an MST subtree below layer 0")
    for key, value in new_keys.items():
        before = old_keys.pop(key, None)
        if before is None:
            changes.added[key] = value
        elif before != value:
            changes.updated[key] = (before, value)
    changes.deleted = old_keys
    return changes


def _new_node(
    blocks: Mapping[bytes, Any],
    old: OldTree,
    cid: bytes,
    layer: int | None,
    seen: set[bytes],
    changes: Changes,
) -> _Node:
    if cid in seen:
        raise failed("an MST node is reached twice")
    seen.add(cid)
    if cid in old.nodes:
        # Not on the same layer as in the old tree (else it was skipped), or the root.
        n = old.nodes[cid]
        if layer is not None and n.layer != layer:
            raise failed(f"an MST node is on layer {n.layer}, not {layer}")
        return n
    changes.opened.add(cid)
    return _decode_node(blocks.get(cid), cid, layer)


def _within(key: str, low: str, high: str) -> bool:
    return (low == "" or low < key) and (high == "" or key < high)


def new_index(old: Mapping[str, bytes], changes: Changes) -> dict[str, bytes]:
    """The key index of the new tree: the old one with `changes` applied."""
    gone = changes.deleted
    out = {k: v for k, v in old.items() if k not in gone}
    out.update(changes.added)
    out.update({k: new for k, (_, new) in changes.updated.items()})
    return out


def pack_index(keys: Mapping[str, bytes], unlanded: Mapping[str, str] | None = None) -> bytes:
    """A key index as stored (`state.base.RepoDone.keys`): DAG-CBOR of
    `{"k": zlib(keys, one a line), "c": their record CIDs, "n": {key: verdict}}`
    where `n` names the keys of wanted collections that have no row, with the
    `stage/code` of their dead letter ("" for a record outside the time
    window): a refresh records no deletion for a row that never landed, and
    supersedes the dead letter of a record that changed or went. `c` is the
    CIDs' bytes end to end when all are 36 bytes long (dag-cbor/sha2-256,
    every record CID in practice), else a list.

    Built on the hot path of every repo: keys compress ~10x at zlib's fastest
    level, CIDs (random bytes) are not compressed at all."""
    cids = list(keys.values())
    packed: bytes | list[bytes] = b"".join(cids)
    if len(packed) != 36 * len(cids):
        packed = cids
    text = "\n".join(keys)
    names: bytes | list[str] = zlib.compress(text.encode("ascii"), 1)
    if text.count("\n") != max(0, len(cids) - 1):
        names = list(keys)  # a key with a newline in it (a hostile repo): kept apart
    return bytes(
        libipld.encode_dag_cbor(
            {
                "k": names,
                "c": packed,
                "n": dict(unlanded or {}),
            }
        )
    )


def unpack_index(blob: bytes) -> tuple[dict[str, bytes], dict[str, str]]:
    """`pack_index` undone: (keys, unlanded); a damaged index is an error of the
    store, not of the repo."""
    try:
        index = libipld.decode_dag_cbor(blob)
        unlanded = index["n"]
        if not isinstance(unlanded, dict):
            raise ValueError("`n` is not a map")
        packed = index["c"]
        if isinstance(packed, bytes):
            cids = [packed[i : i + 36] for i in range(0, len(packed), 36)]
        else:
            cids = list(packed)
        if isinstance(index["k"], list):
            names = index["k"]
        else:
            names = zlib.decompress(index["k"]).decode("ascii").split("\n") if cids else []
        if len(cids) != len(names):
            raise ValueError(f"{len(names)} keys but {len(cids)} CIDs")
    except (zlib.error, ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise RepoInvalid(f"stored key index unreadable: {e}", code="InternalError") from e
    return dict(zip(names, cids, strict=True)), unlanded


def unlanded_keys(
    keys: Iterable[str], wanted: frozenset[str], landed: Iterable[str], verdicts: Mapping[str, str]
) -> dict[str, str]:
    """Keys of wanted collections among `keys` that are not in `landed` (row keys),
    each with its verdict from `verdicts` (key -> "stage/code"; "" if none)."""
    rows = set(landed)
    return {k: verdicts.get(k, "") for k in keys if k not in rows and k.partition("/")[0] in wanted}


def verdicts_of(did: str, letters: Iterable[Any]) -> dict[str, str]:
    """key -> "stage/code" of record dead letters (`models.DeadLetter`) of `did`."""
    prefix = f"at://{did}/"
    return {
        d.uri[len(prefix) :]: f"{d.stage}/{d.error}"
        for d in letters
        if d.uri is not None and d.uri.startswith(prefix)
    }


def merge_indexes(parts: Iterable[bytes]) -> bytes:
    """One key index from the indexes of a big repo's parts (disjoint key sets),
    without building the key map: keys as text, CIDs as bytes, end to end."""
    blobs = list(parts)
    texts: list[bytes] = []
    cids: list[bytes] = []
    unlanded: dict[str, str] = {}
    for blob in blobs:
        try:
            index = libipld.decode_dag_cbor(blob)
            names, packed, n = index["k"], index["c"], index["n"]
        except (ValueError, TypeError, KeyError) as e:
            raise RepoInvalid(f"a part's key index is unreadable: {e}", code="InternalError") from e
        if not isinstance(names, bytes) or not isinstance(packed, bytes):
            # An odd part (a key with a newline, a CID of another length): the slow way.
            return _merge_slowly(blobs)
        if packed:
            texts.append(zlib.decompress(names))
            cids.append(packed)
        unlanded.update(n)
    return bytes(
        libipld.encode_dag_cbor(
            {"k": zlib.compress(b"\n".join(texts), 1), "c": b"".join(cids), "n": unlanded}
        )
    )


def _merge_slowly(blobs: list[bytes]) -> bytes:
    keys: dict[str, bytes] = {}
    unlanded: dict[str, str] = {}
    for blob in blobs:
        k, n = unpack_index(blob)
        keys.update(k)
        unlanded.update(n)
    return pack_index(keys, unlanded)
