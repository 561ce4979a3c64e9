"""Walk a repository's Merkle Search Tree: every (record key, record CID) in key order.

Where it sits in the flow: read_car -> read_commit -> **walk_mst(commit.data)**
-> records.transform. Only what this walk reaches is a record of the repo:
old exports also carry blocks of earlier commits and deleted records, which
are never looked at.

A node is `{"l": link | None, "e": [{"p": int, "k": bytes, "v": link, "t": link | None}]}`:
`l` is the subtree left of the first entry, each entry's `t` the subtree
between it and the next entry. Keys are prefix-compressed within a node: an
entry's key is the previous entry's first `p` bytes + `k`.

The walk is iterative with one explicit stack (no recursion, no nested
closure), so it has no depth limit and creates no reference cycles that would
keep the decoded blocks alive while the garbage collector is paused. Layer
heights and block hashes are not checked here (that is verification).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from bsky_backfill.errors import RepoInvalid

__all__ = ["walk_mst"]


def _invalid(message: str) -> RepoInvalid:
    return RepoInvalid(message, code="InvalidMST", stage="decode")


def walk_mst(blocks: Mapping[bytes, Any], root: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield `(key, value_cid)` for every leaf reachable from `root`, keys ascending.

    `key` is "collection/rkey" (ASCII); `value_cid` the raw CID bytes of the
    record block (which may be absent from a partial CAR: the caller decides).
    Raises RepoInvalid (InvalidMST) on a missing or malformed node, a node
    reached twice, or keys out of order (which would also mean duplicates).
    """
    # Items are either a node CID still to open (bytes) or a leaf ready to
    # yield (tuple). Opening a node pushes, in reverse, l, then entry, t, entry,
    # t ...; popping then visits the tree in key order.
    stack: list[Any] = [root]
    seen: set[bytes] = set()
    last = ""
    while stack:
        item = stack.pop()
        if item.__class__ is tuple:
            key = item[0]
            if key <= last:
                raise _invalid(f"MST keys out of order: {key!r:.200} after {last!r:.200}")
            last = key
            yield item
            continue
        if item in seen:
            raise _invalid("MST node reached twice")
        seen.add(item)
        node = blocks.get(item)
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
                pending.append(t)
        pending.reverse()
        stack += pending
        if left is not None:
            stack.append(left)
