"""Signed commits and CAR v1 files: one account's records -> the bytes getRepo serves.

Where this sits: the last step of building a simulated repo. `generator.py`
passes the sorted `(collection/rkey, CID, block)` triples; `build_repo` builds
the MST (`mst.py`), signs a v3 commit over its root, and frames everything as
a CAR v1 whose single root is the commit. The PDS server streams `RepoImage.car`
and answers listRecords from the record blocks inside it (no second copy).

CAR v1 framing: `varint(len(header)) header` with header = DAG-CBOR
`{"roots": [commit], "version": 1}`, then per block `varint(len(cid) +
len(data)) cid data`. libipld reads CARs but does not write them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import libipld

from bsky_backfill.simulate.ids import cid_for_block
from bsky_backfill.simulate.keys import SigningKey
from bsky_backfill.simulate.mst import build_mst

# 64 bytes that libipld cannot mistake for a CID (it tags any bytes that parse as one).
_SIG_PLACEHOLDER = b"\xff" * 64


def varint(n: int) -> bytes:
    """Unsigned LEB128, as CAR and multiformats use."""
    if n < _SMALL:
        return _VARINTS[n]
    return _varint(n)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Block frames are almost always shorter than 16 KiB: precomputed, one lookup each.
_SMALL = 1 << 14
_VARINTS = [_varint(i) for i in range(_SMALL)]


def encode_signed_commit(unsigned: dict[str, object], sig: bytes) -> bytes:
    """DAG-CBOR of `unsigned` plus `"sig": sig`, with `sig` always a plain byte string.

    libipld writes any bytes value that happens to parse as a CID as a tag-42
    link, and about one random signature in a few thousand starts like one
    (0x01 ...). So the commit is encoded with a placeholder that cannot parse,
    then the placeholder's 64 bytes are swapped for the real signature.
    """
    if len(sig) != 64:
        raise ValueError("atproto signatures are 64 bytes")
    encoded = libipld.encode_dag_cbor({**unsigned, "sig": _SIG_PLACEHOLDER})
    marker = b"\x58\x40" + _SIG_PLACEHOLDER  # CBOR byte string, 1-byte length 64
    at = encoded.find(marker)
    if at < 0 or encoded.find(marker, at + 1) >= 0:
        raise RuntimeError("signature placeholder not found exactly once")
    start = at + 2
    return encoded[:start] + sig + encoded[start + 64 :]


def sign_commit(did: str, data: bytes, rev: str, key: SigningKey) -> tuple[bytes, bytes]:
    """A v3 commit `{did, version, data, rev, prev: null, sig}`: returns (CID, block)."""
    unsigned: dict[str, object] = {"did": did, "version": 3, "data": data, "rev": rev, "prev": None}
    sig = key.sign(libipld.encode_dag_cbor(unsigned))
    block = encode_signed_commit(unsigned, sig)
    return cid_for_block(block), block


def encode_car(root: bytes, blocks: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A CAR v1 with one root from (CID, data) pairs, in the order given."""
    parts, _ = _frame(root, blocks)
    return b"".join(parts)


def _frame(
    root: bytes, blocks: Iterable[tuple[bytes, bytes]]
) -> tuple[list[bytes], dict[bytes, tuple[int, int]]]:
    header = libipld.encode_dag_cbor({"roots": [root], "version": 1})
    parts = [varint(len(header)), header]
    offset = len(parts[0]) + len(header)
    spans: dict[bytes, tuple[int, int]] = {}
    for cid, data in blocks:
        if cid in spans:
            continue  # identical records share one block
        prefix = varint(len(cid) + len(data)) + cid
        parts.append(prefix)
        parts.append(data)
        offset += len(prefix)
        spans[cid] = (offset, offset + len(data))
        offset += len(data)
    return parts, spans


@dataclass(slots=True)
class RepoImage:
    """One account's repository as served: the CAR bytes plus an index of its records.

    `records` maps collection -> [(rkey, record CID, start, end)] sorted by rkey,
    where `car[start:end]` is the record's DAG-CBOR block.
    """

    did: str
    rev: str
    commit_cid: bytes
    data_cid: bytes
    car: bytes
    commit_block: bytes
    records: dict[str, list[tuple[str, bytes, int, int]]] = field(default_factory=dict)

    @property
    def record_count(self) -> int:
        return sum(len(v) for v in self.records.values())


def build_repo(
    did: str,
    rev: str,
    records: Sequence[tuple[str, bytes, bytes]],
    key: SigningKey,
    *,
    orphans: Sequence[tuple[bytes, bytes]] = (),
    block_order: Literal["dfs", "cid"] = "dfs",
    commit_did: str | None = None,
    drop: Collection[bytes] = (),
    replace: Mapping[bytes, bytes] | None = None,
    drop_mst_node: bool = False,
    unlisted: Collection[bytes] = (),
) -> RepoImage:
    """Build the MST, commit and CAR for `records`: (key, CID, block), sorted by key.

    `orphans` are extra (CID, block) pairs the MST does not reach, like the
    leftovers of deleted records in old exports; readers must ignore them.
    Damage for verification tests (defaults: none): `commit_did` is the DID
    the signed commit names (default `did`); `drop` leaves record blocks out
    of the CAR; `replace` serves other bytes under a record's CID (after
    signing); `drop_mst_node` leaves out one MST node (the first non-root
    one in walk order, else the root). Dropped and `unlisted` records are
    not in the listRecords index.
    """
    tree = build_mst([(k, c) for k, c, _ in records])
    commit_cid, commit = sign_commit(commit_did or did, tree.root, rev, key)
    data_by_cid = {c: d for _, c, d in records}
    data_by_cid.update(tree.nodes)
    if replace:
        data_by_cid.update(replace)
    left_out = set(drop)
    if drop_mst_node:
        inner = [c for c in tree.order if c in tree.nodes and c != tree.root]
        left_out.add(inner[0] if inner else tree.root)
    body = [(c, data_by_cid[c]) for c in tree.order if c not in left_out]
    body.extend(orphans)
    if block_order == "cid":
        body.sort()
    parts, spans = _frame(commit_cid, [(commit_cid, commit), *body])
    car = b"".join(parts)
    index: dict[str, list[tuple[str, bytes, int, int]]] = {}
    hidden = left_out.union(unlisted)
    for k, c, _ in records:
        if c in hidden:
            continue
        collection, rkey = k.split("/", 1)
        start, end = spans[c]
        index.setdefault(collection, []).append((rkey, c, start, end))
    return RepoImage(did, rev, commit_cid, tree.root, car, commit, index)
