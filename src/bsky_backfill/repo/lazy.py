"""A CAR read lazily: a frame index, and blocks decoded when the walk asks for them.

Where it sits: the big-repo path (records/stream.py). `libipld.decode_car`
turns a whole CAR into Python objects at once, which for a 1M-record, ~400 MB
repo means several GB of memory. Here only the framing is read up front (a
compact offset per block), and each MST node or record is decoded when it is
reached, then dropped; `LazyBlocks` is a read-only Mapping, so the same MST
walks and checks (repo/mst.py, repo/verify.py) run on it unchanged.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Iterator, Mapping
from hashlib import sha256
from typing import Any

import libipld

from bsky_backfill.errors import RepoInvalid, TransientError
from bsky_backfill.repo import native
from bsky_backfill.repo.car import (
    DAG_CBOR_SHA256,
    CarBlocks,
    TruncatedCar,
    Undecodable,
    read_frame,
    read_varint,
)
from bsky_backfill.repo.verify import failed

_DECODE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError)


class LazyBlocks(Mapping[bytes, Any]):
    """CID -> decoded block, decoded on each access from the CAR bytes."""

    def __init__(
        self, data: bytes | mmap.mmap, index: dict[bytes, int], *, verify: bool = False
    ) -> None:
        self._data = data
        self._index = index  # cid -> start << 32 | length (one int per block: compact)
        self._decode = libipld.decode_dag_cbor
        self.verify = verify
        """Check each block's bytes against its CID when it is read: only the blocks
        the walk and the wanted records touch are hashed, once, with no second pass."""

    @property
    def data(self) -> bytes | mmap.mmap:
        """The CAR's bytes (or its mapped file): the C walk reads node blocks
        from them through `index` (repo/_native.c `lazy_node`)."""
        return self._data

    @property
    def index(self) -> dict[bytes, int]:
        """CID -> `start << 32 | length` of its block in the CAR."""
        return self._index

    def __getitem__(self, cid: bytes) -> Any:
        packed = self._index[cid]
        start = packed >> 32
        raw = self._data[start : start + (packed & 0xFFFFFFFF)]
        if self.verify and (not cid.startswith(DAG_CBOR_SHA256) or sha256(raw).digest() != cid[4:]):
            raise failed(f"block {libipld.encode_cid(cid)} does not match its CID")
        try:
            return self._decode(raw)
        except _DECODE_ERRORS as e:
            return Undecodable(str(e)[:200])

    def get(self, cid: bytes, default: Any = None) -> Any:
        if cid not in self._index:
            return default
        return self[cid]

    def __contains__(self, cid: object) -> bool:
        return cid in self._index

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


@contextlib.contextmanager
def map_file(path: str) -> Iterator[mmap.mmap]:
    """A CAR file mapped read-only: its pages are read as blocks are (big repos are
    read this way rather than into memory; `madvise(MADV_DONTNEED)` drops them)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        yield mm


def _frame_index(data: bytes | mmap.mmap) -> tuple[bytes, dict[bytes, int]]:
    """Like `frame_car`, straight into the compact index (no list of frames: for a
    million blocks that list alone is a few hundred MB).

    The loop is written out for the shape every atproto block has (a 1-3 byte
    length, then a 36-byte dag-cbor/sha2-256 CIDv1): a call per frame would cost
    more than the rest of the indexing. Anything else goes through `read_frame`.
    The C twin (repo/native.py) does the common case in one call.
    """
    if native.frame_index is not None:
        found = native.frame_index(data)  # type: ignore[arg-type]  # any buffer
        if found is not None:
            return found
    # The C indexer reads a mapped file in place; the Python loop wants bytes.
    return _frame_index_py(data if isinstance(data, bytes) else data[:])


def _frame_index_py(data: bytes) -> tuple[bytes, dict[bytes, int]]:
    """`_frame_index` in Python (any CAR; the reference for the C loop)."""
    length, pos = read_varint(data, 0)
    if length == 0 or pos + length > len(data):
        raise ValueError("CAR header is empty or runs past the end of the body")
    header = data[pos : pos + length]
    pos += length
    index: dict[bytes, int] = {}
    setdefault = index.setdefault
    end = len(data)
    prefix = DAG_CBOR_SHA256
    while pos < end:
        b0 = data[pos]
        if b0 < 0x80:
            size, start = b0, pos + 1
        elif pos + 1 < end and data[pos + 1] < 0x80:
            size, start = (b0 & 0x7F) | data[pos + 1] << 7, pos + 2
        elif pos + 2 < end and data[pos + 2] < 0x80:
            size = (b0 & 0x7F) | (data[pos + 1] & 0x7F) << 7 | data[pos + 2] << 14
            start = pos + 3
        else:
            size = -1
            start = pos
        stop = start + size
        if size > 36 and stop <= end and data.startswith(prefix, start):
            setdefault(data[start : start + 36], (start + 36) << 32 | (size - 36))
            pos = stop
            continue
        cid, data_start, stop = read_frame(data, pos)  # the general (and failing) cases
        setdefault(cid, data_start << 32 | (stop - data_start))
        pos = stop
    return header, index


def read_car_lazy(data: bytes | mmap.mmap, *, verify: bool = False) -> CarBlocks:
    """Frame `data` (bytes, or a mapped file) and return a CarBlocks whose blocks
    decode (and, with `verify`, are checked against their CIDs) on demand."""
    try:
        header_bytes, index = _frame_index(data)
        header = libipld.decode_dag_cbor(header_bytes)
    except TruncatedCar as e:
        raise TransientError(f"CAR cut short: {e}", code="TruncatedBody") from e
    except _DECODE_ERRORS as e:
        raise RepoInvalid(f"cannot decode CAR: {e}", code="InvalidCar", stage="decode") from e
    roots = header.get("roots") if isinstance(header, dict) else None
    if not isinstance(roots, list) or len(roots) != 1 or not isinstance(roots[0], bytes):
        raise RepoInvalid("CAR header must name exactly one root CID", code="InvalidCar")
    blocks = LazyBlocks(data, index, verify=verify)
    commit = blocks.get(roots[0])
    if not isinstance(commit, dict):
        raise RepoInvalid("the root (commit) block is missing or not a map", code="InvalidCar")
    return CarBlocks(roots[0], blocks)  # type: ignore[arg-type]
