"""The signed commit at the root of a repository: its fields, checked for shape.

Where it sits in the flow: read_car -> **read_commit** -> MST walk. Signature
verification (later, `repo/verify`) works on the same `Commit` and the raw map.
Commit v3 is `{did, version: 3, data, rev, prev, sig}`; v2 (2023 exports) has no
`rev`. Only the shape is checked here, never trust.
"""

from __future__ import annotations

from dataclasses import dataclass

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.repo.car import CarBlocks
from bsky_backfill.syntax import is_valid_did

__all__ = ["Commit", "read_commit"]


@dataclass(frozen=True, slots=True)
class Commit:
    """What the rest of the flow needs from a commit.

    `data` is the raw CID of the MST root; `rev` is None for v2 commits.
    """

    did: str
    version: int
    data: bytes
    rev: str | None
    cid: bytes


def _invalid(message: str) -> RepoInvalid:
    return RepoInvalid(message, code="InvalidCommit", stage="decode")


def read_commit(car: CarBlocks) -> Commit:
    """Check the root block is a usable commit and pull out its fields."""
    c = car.commit
    did = c.get("did")
    version = c.get("version")
    data = c.get("data")
    rev = c.get("rev")
    if not isinstance(did, str) or not is_valid_did(did):
        raise _invalid(f"commit has no valid did: {did!r:.100}")
    if type(version) is not int or version not in (2, 3):
        raise _invalid(f"unsupported commit version {version!r:.20}")
    if not isinstance(data, bytes):
        raise _invalid("commit has no data (MST root) link")
    if rev is not None and not isinstance(rev, str):
        raise _invalid(f"commit rev is not a string: {rev!r:.40}")
    if version == 3 and rev is None:
        raise _invalid("commit v3 without rev")
    return Commit(did=did, version=version, data=data, rev=rev, cid=car.root)
