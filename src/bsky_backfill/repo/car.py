"""Read a repository CAR file into its root CID and decoded blocks.

Where it sits in the flow: fetch (getRepo bytes) -> **read_car** -> commit check
(`repo.commit`) -> MST walk (`repo.mst`) -> records (`records.transform`).
This module is the one boundary where libipld's errors become `RepoInvalid`.

libipld decodes every block to plain Python objects (dict, list, str, int,
bytes); CID links inside them are raw CID bytes (b"\\x01\\x71\\x12\\x20..."). It
does not check that a block hashes to its CID: that is verification's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import libipld

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.repo.gcpause import gc_paused

__all__ = ["CarBlocks", "read_car"]


@dataclass(frozen=True, slots=True)
class CarBlocks:
    """A decoded CAR: the single root CID (the signed commit) and every block.

    `blocks` maps raw CID bytes -> decoded DAG-CBOR value. `commit` is the root
    block, already checked to be a map.
    """

    root: bytes
    blocks: dict[bytes, Any]

    @property
    def commit(self) -> dict[str, Any]:
        commit: dict[str, Any] = self.blocks[self.root]
        return commit


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
        raise _invalid(f"cannot decode CAR: {e}") from e
    roots = header.get("roots") if isinstance(header, dict) else None
    if not isinstance(roots, list) or len(roots) != 1 or not isinstance(roots[0], bytes):
        raise _invalid(f"CAR header must name exactly one root CID, got {roots!r:.100}")
    root = roots[0]
    commit = blocks.get(root)
    if commit is None:
        raise _invalid("the root (commit) block is missing from the CAR")
    if not isinstance(commit, dict):
        raise _invalid(f"the root block is a {type(commit).__name__}, not a commit map")
    return CarBlocks(root=root, blocks=blocks)
