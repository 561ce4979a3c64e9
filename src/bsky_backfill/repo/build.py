"""Build repository CARs: the writing side of `repo.car` + `repo.mst`.

Where it sits in the flow: the embedded simulated network (`simulate/`)
serves getRepo from these, tests build partial or broken repos with them, and
benchmarks build large ones; on the backfill path, a refresh rebuilds the tree
it landed from its key index with `build_nodes` (repo/diff.py). The MST
follows the atproto spec (SHA-256 key heights in 2-bit chunks, fanout 4,
per-node prefix compression, canonical DAG-CBOR), so a repo built from the
records of a real export reproduces that export's MST root CID.

Signing is a callback (`sign(unsigned_commit_bytes) -> signature`): key
handling belongs to whoever owns the keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import libipld

from bsky_backfill.repo.mst import key_height

__all__ = [
    "build_mst",
    "build_nodes",
    "build_repo",
    "cid_for",
    "common_prefix_len",
    "encode_block",
    "key_height",
    "write_car",
]

_CID_PREFIX = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32 bytes


def encode_block(obj: Any) -> tuple[bytes, bytes]:
    """DAG-CBOR encode `obj`: (raw CID bytes, block bytes)."""
    data: bytes = libipld.encode_dag_cbor(obj)
    return _CID_PREFIX + hashlib.sha256(data).digest(), data


def cid_for(obj: Any) -> bytes:
    """Raw CID bytes of `obj` encoded as DAG-CBOR."""
    return encode_block(obj)[0]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def write_car(root: bytes, blocks: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A CARv1 with one root: header, then (CID, block bytes) in the given order."""
    header: bytes = libipld.encode_dag_cbor({"version": 1, "roots": [root]})
    parts = [_varint(len(header)), header]
    for cid, data in blocks:
        parts += [_varint(len(cid) + len(data)), cid, data]
    return b"".join(parts)


Leaf = tuple[bytes, bytes, int]
"""An MST leaf: key, value CID, key height."""
NodeSink = Callable[[bytes, bytes, int, list[Leaf], list[bytes | None]], None]
"""Called once per node built: (CID, block bytes, layer, the subtree's leaves, the
node's subtrees: `l` first, then each entry's `t`)."""


def common_prefix_len(a: bytes, b: bytes) -> int:
    """Length of the shared byte prefix of `a` and `b` (an entry's `p`)."""
    n = min(len(a), len(b))
    # XOR the common-length prefixes as big-endian ints: the highest set bit sits
    # in the first differing byte. Much faster than a Python loop over bytes.
    x = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return n - (x.bit_length() + 7) // 8


def build_nodes(items: list[Leaf], layer: int, emit: NodeSink) -> bytes:
    """The (sub)tree over sorted `items` on `layer`: its root CID; every node is
    handed to `emit`. The one MST builder of the package: the simulator's trees
    (simulate/mst.py) and a refresh's old tree (repo/diff.py) are built here.

    Keys of this layer become entries; the runs of lower keys around them become
    subtrees one layer down: before the first entry -> "l", after entry i -> entry
    i's "t". Recursion depth <= 128 (key heights)."""
    entries: list[dict[str, Any]] = []
    groups: list[list[Leaf]] = [[]]
    prev = b""
    for leaf in items:
        key, value, height = leaf
        if height < layer:
            groups[-1].append(leaf)
            continue
        p = common_prefix_len(prev, key)
        entries.append({"k": key[p:], "p": p, "v": value, "t": None})
        groups.append([])
        prev = key
    subs = [build_nodes(g, layer - 1, emit) if g else None for g in groups]
    for entry, sub in zip(entries, subs[1:], strict=True):
        entry["t"] = sub
    cid, data = encode_block({"l": subs[0], "e": entries})
    emit(cid, data, layer, items, subs)
    return cid


def build_mst(leaves: Mapping[str, bytes]) -> tuple[bytes, dict[bytes, bytes]]:
    """MST over `key -> value CID`: (root CID, {node CID: node bytes})."""
    items = sorted((k.encode("ascii"), v, key_height(k.encode("ascii"))) for k, v in leaves.items())
    out: dict[bytes, bytes] = {}
    top = max((h for _, _, h in items), default=0)

    def keep(cid: bytes, data: bytes, *_: object) -> None:
        out[cid] = data

    return build_nodes(items, top, keep), out


def build_repo(
    did: str,
    records: Mapping[str, Any],
    *,
    rev: str = "2222222222222",
    sign: Callable[[bytes], bytes] | None = None,
    drop: Iterable[bytes] = (),
    extra_blocks: Iterable[tuple[bytes, bytes]] = (),
) -> bytes:
    """A getRepo-style CAR of commit v3 for `did` holding `records` ("collection/rkey" -> value).

    `sign` gets the DAG-CBOR of the unsigned commit (default: 64 zero bytes,
    which no verifier accepts). `drop` leaves out blocks by CID (for partial
    repos); `extra_blocks` adds unreferenced blocks (e.g. stale history).
    """
    blocks: dict[bytes, bytes] = {}
    leaves: dict[str, bytes] = {}
    for key, value in records.items():
        cid, data = encode_block(value)
        blocks[cid] = data
        leaves[key] = cid
    data_root, nodes = build_mst(leaves)
    blocks.update(nodes)
    unsigned = {"did": did, "version": 3, "data": data_root, "rev": rev, "prev": None}
    sig = sign(libipld.encode_dag_cbor(unsigned)) if sign else bytes(64)
    commit_cid, commit = encode_block({**unsigned, "sig": sig})
    dropped = set(drop)
    body = [(commit_cid, commit)]
    body += [(c, d) for c, d in blocks.items() if c not in dropped]
    body += list(extra_blocks)
    return write_car(commit_cid, body)
