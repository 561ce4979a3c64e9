"""What changed in a repo since the revision that landed last time (`run --refresh`).

Where it sits: the refresh path of the worker (engine/refresh.py). Input is
a getRepo CAR, either a diff (`since=<rev>`: the new commit plus only the
blocks written after `rev`) or, where a host cannot diff, the whole repo;
plus `landed`, the key -> CID map of what the dataset already holds for the
repo. The walk starts at the new commit's MST root:

  * an MST node that is not in the CAR was not written since `rev`: the whole
    subtree under it is unchanged, and so is every key in its key range;
  * every entry of a node that is present is a key of the current repo: its
    record is new or changed when its CID differs from the landed one (its
    block is then in the CAR), unchanged otherwise;
  * a landed key that no present node holds and no unchanged range covers was
    deleted.

So a diff tells additions, updates and deletions exactly, without holding the
old tree: the landed dataset stands in for it.

Written here (not reused from repo/mst.py) because this walk must treat a
missing node as "unchanged range" rather than as a broken repo.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import libipld

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.repo.gcpause import gc_paused


@dataclass(slots=True)
class Changes:
    """The outcome of comparing a (diff) CAR with what landed."""

    rev: str | None
    changed: list[tuple[str, str, Any]] = field(default_factory=list)
    """(key, new CID, record or None when its block is missing) for new or changed keys."""
    replaced: dict[str, str] = field(default_factory=dict)
    """key -> landed CID of keys whose record changed (the old version is superseded)."""
    deleted: dict[str, str] = field(default_factory=dict)
    """key -> landed CID of keys the repo no longer has."""


def _keys(entries: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    previous = b""
    for entry in entries:
        key = previous[: entry["p"]] + entry["k"]
        previous = key
        yield key.decode("ascii"), entry


def compare(data: bytes, did: str, landed: Mapping[str, str]) -> Changes:
    """Walk the new commit's tree in `data` against `landed` (key -> CID string)."""
    with gc_paused():
        try:
            header, blocks = libipld.decode_car(data)
        except (ValueError, TypeError) as e:
            raise RepoInvalid(f"diff CAR cannot be read: {e}", code="InvalidCar") from e
        roots = header.get("roots") if isinstance(header, dict) else None
        commit = blocks.get(roots[0]) if roots else None
        if not isinstance(commit, dict) or not isinstance(commit.get("data"), bytes):
            raise RepoInvalid("diff CAR has no commit root", code="InvalidCommit")
        if commit.get("did") != did:
            raise RepoInvalid(
                f"commit is for {commit.get('did')!r}, not {did}",
                code="VerificationFailed",
                stage="verify",
            )
        rev = commit.get("rev") if isinstance(commit.get("rev"), str) else None
        changes = Changes(rev=rev)
        present: set[str] = set()
        unchanged: list[tuple[str, str]] = []  # (low, high) key ranges, exclusive; "" = open
        stack: list[tuple[bytes, str, str]] = [(commit["data"], "", "")]
        encode_cid = libipld.encode_cid
        while stack:
            cid, low, high = stack.pop()
            node = blocks.get(cid)
            if node is None:
                unchanged.append((low, high))
                continue
            if not isinstance(node, dict) or not isinstance(node.get("e"), list):
                raise RepoInvalid("malformed MST node in diff", code="InvalidMST")
            keyed = list(_keys(node["e"]))
            if node.get("l") is not None:
                stack.append((node["l"], low, keyed[0][0] if keyed else high))
            for i, (key, entry) in enumerate(keyed):
                present.add(key)
                value = encode_cid(entry["v"])
                if landed.get(key) != value:
                    changes.changed.append((key, value, blocks.get(entry["v"])))
                    if key in landed:
                        changes.replaced[key] = landed[key]
                if entry.get("t") is not None:
                    upper = keyed[i + 1][0] if i + 1 < len(keyed) else high
                    stack.append((entry["t"], key, upper))
        unchanged.sort()
        lows = [low for low, _ in unchanged]
        for landed_key, landed_cid in landed.items():
            if landed_key in present:
                continue
            # Ranges are disjoint: only the one with the greatest low below the key
            # can hold it ("" sorts first and means "open").
            i = bisect.bisect_left(lows, landed_key) - 1
            if not (i >= 0 and _inside(landed_key, unchanged[i])):
                changes.deleted[landed_key] = landed_cid
        changes.changed.sort()
        return changes


def _inside(key: str, span: tuple[str, str]) -> bool:
    low, high = span
    return (low == "" or low < key) and (high == "" or key < high)
