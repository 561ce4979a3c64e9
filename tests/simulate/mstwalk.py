"""A tiny MST walker for tests only, independent of the product's repo/ package.

Walks a decoded CAR's blocks (libipld: CID links are raw bytes) from an MST root
and returns (key, value CID) pairs in key order, checking the structural rules
on the way so a malformed tree fails loudly.
"""

from __future__ import annotations

from typing import Any


def walk_mst(blocks: dict[bytes, Any], root: bytes) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []

    def visit(cid: bytes) -> None:
        node = blocks[cid]
        assert set(node) == {"l", "e"}, node.keys()
        if node["l"] is not None:
            visit(node["l"])
        prev = b""
        for entry in node["e"]:
            assert set(entry) == {"p", "k", "v", "t"}, entry.keys()
            key = prev[: entry["p"]] + entry["k"]
            out.append((key.decode(), entry["v"]))
            prev = key
            if entry["t"] is not None:
                visit(entry["t"])

    visit(root)
    keys = [k for k, _ in out]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), "MST keys out of order"
    return out
