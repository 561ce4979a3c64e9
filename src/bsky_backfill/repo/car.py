"""Read a repository CAR file into its root CID and decoded blocks.

Where it sits in the flow: fetch (getRepo bytes) -> **read_car** -> commit check
(`repo.commit`) -> verification (`repo.verify`, which also reads the raw frames
here) -> MST walk (`repo.mst`) -> records (`records.transform`). This module is
the one boundary where libipld's errors become `RepoInvalid`.

libipld decodes every block to plain Python objects (dict, list, str, int,
bytes); CID links inside them are raw CID bytes (b"\\x01\\x71\\x12\\x20..."). It
does not check that a block hashes to its CID (that is `repo.verify`), and it
gives no access to a block's raw bytes. So the CAR v1 framing is also parsed
here (`frame_car`, a few lines): `varint(len(header)) header` (DAG-CBOR
`{roots, version}`), then per block `varint(len(cid) + len(data)) cid data`.

Two decode paths. The fast one is one `libipld.decode_car` call in native
code. libipld rejects the whole CAR when a single block is not valid DAG-CBOR;
only then, the slow path frames the CAR here and decodes block by block, so a
bad *record* block costs that record only (it becomes `Undecodable`, and
`records.transform` dead-letters it) instead of the whole repo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import libipld

from bsky_backfill.errors import RepoInvalid, TransientError
from bsky_backfill.repo.gcpause import gc_paused

__all__ = ["CarBlocks", "Undecodable", "frame_car", "read_car", "read_frame"]

# CIDv1, dag-cbor, sha2-256, 32-byte digest: every block of an atproto repo.
DAG_CBOR_SHA256 = b"\x01\x71\x12\x20"


@dataclass(frozen=True, slots=True)
class CarBlocks:
    """A decoded CAR: the single root CID (the signed commit) and every block.

    `blocks` maps raw CID bytes -> decoded DAG-CBOR value, or an `Undecodable`
    for a block that is not valid DAG-CBOR (slow path only). `commit` is the
    root block, already checked to be a map.
    """

    root: bytes
    blocks: dict[bytes, Any]

    @property
    def commit(self) -> dict[str, Any]:
        commit: dict[str, Any] = self.blocks[self.root]
        return commit


class TruncatedCar(ValueError):
    """The CAR ends inside a frame: the body was cut short."""


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands in for a block whose bytes are not valid DAG-CBOR; `reason` says why."""

    reason: str


def _invalid(message: str) -> RepoInvalid:
    return RepoInvalid(message, code="InvalidCar", stage="decode")


def read_car(data: bytes) -> CarBlocks:
    """Decode a CARv1 repository export; raise RepoInvalid if it is unreadable.

    The root must be exactly one CID whose block is present and is a map (the
    commit). Everything else about the commit is checked by `repo.commit`.
    """
    try:
        with gc_paused():
            header, blocks = libipld.decode_car(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        # libipld reports every malformation (truncation, bad varint, unsupported
        # codec, invalid DAG-CBOR) as ValueError; the others guard odd inputs.
        # If only some blocks are bad, the block-by-block path still reads it.
        try:
            with gc_paused():
                header, blocks = _decode_block_by_block(data)
        except TruncatedCar as cut:
            # A body that ends mid-frame was cut short on the way (a dropped
            # connection behind a proxy that still ended the response cleanly):
            # worth another try, unlike a CAR that is malformed in itself.
            raise TransientError(f"CAR cut short: {cut}", code="TruncatedBody") from e
        except ValueError:
            raise _invalid(f"cannot decode CAR: {e}") from e
    roots = header.get("roots") if isinstance(header, dict) else None
    if not isinstance(roots, list) or len(roots) != 1 or not isinstance(roots[0], bytes):
        raise _invalid(f"CAR header must name exactly one root CID, got {roots!r:.100}")
    root = roots[0]
    commit = blocks.get(root)
    if commit is None:
        raise _invalid("the root (commit) block is missing from the CAR")
    if isinstance(commit, Undecodable):
        raise _invalid(f"the root (commit) block is not valid DAG-CBOR: {commit.reason}")
    if not isinstance(commit, dict):
        raise _invalid(f"the root block is a {type(commit).__name__}, not a commit map")
    return CarBlocks(root=root, blocks=blocks)


def _decode_block_by_block(data: bytes) -> tuple[Any, dict[bytes, Any]]:
    """The slow path: frame the CAR here, decode each block alone (ValueError if unframeable)."""
    header_bytes, frames = frame_car(data)
    header = libipld.decode_dag_cbor(header_bytes)
    decode = libipld.decode_dag_cbor
    blocks: dict[bytes, Any] = {}
    for cid, start, stop in frames:
        try:
            blocks[cid] = decode(data[start:stop])
        except (ValueError, TypeError, OverflowError, RecursionError) as e:
            blocks[cid] = Undecodable(str(e)[:200])
    return header, blocks


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Unsigned LEB128 at `pos`: (value, position after it). ValueError if cut short."""
    value = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or oversized varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def cid_length(data: bytes, pos: int) -> int:
    """Length in bytes of the binary CID starting at `pos` (v0 or v1)."""
    if data.startswith(DAG_CBOR_SHA256, pos):
        return 36
    if data.startswith(b"\x12\x20", pos):
        return 34  # CIDv0: a bare sha2-256 multihash
    p = pos
    for _ in range(3):  # version, codec, multihash code
        _, p = read_varint(data, p)
    size, p = read_varint(data, p)
    return p - pos + size


def read_frame(data: bytes, pos: int) -> tuple[bytes, int, int]:
    """The block frame at `pos`: (CID bytes, data start, data stop). ValueError if malformed."""
    length, start = read_varint(data, pos)
    stop = start + length
    if stop > len(data):
        raise TruncatedCar(f"CAR block frame at byte {pos} runs past the end of the body")
    if length == 0:
        raise ValueError(f"CAR block frame at byte {pos} is empty")
    cid_end = start + cid_length(data, start)
    if cid_end > stop:
        raise ValueError(f"CAR block frame at byte {pos} is shorter than its CID")
    return data[start:cid_end], cid_end, stop


def frame_car(data: bytes) -> tuple[bytes, list[tuple[bytes, int, int]]]:
    """Split a CAR v1 into its header bytes and (CID, start, stop) per block, in file order.

    Nothing is decoded; `data[start:stop]` is a block's raw bytes. ValueError
    on a truncated or malformed frame.
    """
    length, pos = read_varint(data, 0)
    if length == 0 or pos + length > len(data):
        # Not called a cut body: a header is a few dozen bytes, so a body shorter
        # than its header is far more likely garbage than a cut download.
        raise ValueError("CAR header is empty or runs past the end of the body")
    header = data[pos : pos + length]
    pos += length
    frames = []
    end = len(data)
    while pos < end:
        cid, start, stop = read_frame(data, pos)
        frames.append((cid, start, stop))
        pos = stop
    return header, frames
