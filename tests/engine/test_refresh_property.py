"""Seeded property test of the refresh path: after each refresh the current view
equals a fresh full extraction of the new repo, row for row, and the dead
letters that stand (written minus superseded) are the fresh extraction's.

Random sequences of creates, updates and deletes (some records invalid, some
outside the time window) over repos of random sizes; each step lands the diff
CAR (`getRepo since=` shape: the new commit and the blocks the old repo did not
have) through `refresh_diff` against the key index the previous step stored,
applies its rows and `_deletions` to the view, and compares with
`extract_repo` of the whole new repo.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from bsky_backfill.engine.refresh import NeedsWholeRepo, refresh_diff
from bsky_backfill.models import RecordFilter, RepoExtract
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.repo.build import build_mst, build_repo, encode_block
from bsky_backfill.repo.diff import unpack_index
from bsky_backfill.simulate.keys import SigningKey
from bsky_backfill.sinks.storage import DELETIONS, SUPERSEDED

POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"
FOLLOW = "app.bsky.graph.follow"
FILT = RecordFilter(
    collections=frozenset({POST, LIKE}), since=dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
)
DID = "did:plc:propertypropertyproperty"
KEY = SigningKey.from_seed(b"refresh-property", "k256")
_B32 = "234567abcdefghijklmnopqrstuvwxyz"


def _record(rng: random.Random, collection: str) -> dict[str, Any]:
    year = 2023 if rng.random() < 0.1 else 2024  # some outside the window
    created = f"{year}-0{rng.randint(1, 9)}-01T00:00:00.000Z"
    if collection == POST:
        text: Any = f"post {rng.random()}" if rng.random() > 0.05 else 12345  # some invalid
        return {"$type": POST, "text": text, "createdAt": created}
    if collection == LIKE:
        subject = {"uri": f"at://{DID}/{POST}/3kaaaaaaaaaaa", "cid": _CID}
        return {"$type": LIKE, "subject": subject, "createdAt": created}
    return {"$type": FOLLOW, "subject": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "createdAt": created}


_CID = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"


def _key(rng: random.Random) -> str:
    collection = rng.choice((POST, POST, LIKE, FOLLOW))
    return f"{collection}/3k{''.join(rng.choice(_B32) for _ in range(11))}"


def _rows(extract: RepoExtract) -> dict[str, str]:
    """uri -> cid of every row of the wanted tables."""
    out: dict[str, str] = {}
    for name, table in extract.tables.items():
        if name in (DELETIONS, SUPERSEDED):
            continue
        for uri, cid in zip(table["uri"].to_pylist(), table["cid"].to_pylist(), strict=True):
            assert uri not in out
            out[uri] = cid
    return out


def _letters(extract: RepoExtract) -> dict[str, tuple[str | None, str, str]]:
    """uri -> (cid, code, stage) of the record dead letters."""
    out: dict[str, tuple[str | None, str, str]] = {}
    for d in extract.dead_letters:
        assert d.uri is not None and d.uri not in out
        out[d.uri] = (d.cid, d.error, d.stage)
    return out


def _blocks(records: dict[str, Any]) -> set[bytes]:
    leaves = {k: encode_block(v)[0] for k, v in records.items()}
    return set(build_mst(leaves)[1]) | set(leaves.values())


@pytest.mark.parametrize("whole_path", [False, True], ids=["diff", "whole"])
@pytest.mark.parametrize("seed", range(12))
def test_current_view_equals_a_fresh_extraction(seed: int, whole_path: bool) -> None:
    rng = random.Random(seed)
    size = rng.choice((0, 5, 40, 300, 2000)) if seed else 15_000
    records = {_key(rng): None for _ in range(size)}
    records = {k: _record(rng, k.partition("/")[0]) for k in records}
    first = extract_repo(build_repo(DID, records, sign=KEY.sign), DID, FILT,
                         signing_key=KEY.did_key, verify=True)  # fmt: skip
    view = _rows(first)
    standing = _letters(first)
    blob = first.keys
    wholes: list[int] = []
    for step in range(4):
        new = dict(records)
        existing = sorted(new)
        for _ in range(rng.choice((1, 3, 10, 40))):
            op = rng.random()
            if op < 0.4 or not existing:
                k = _key(rng)
                new[k] = _record(rng, k.partition("/")[0])
            elif op < 0.7:
                k = rng.choice(existing)
                new[k] = _record(rng, k.partition("/")[0])
            else:
                new.pop(rng.choice(existing), None)
        if existing and rng.random() < 0.5:  # a run of neighbours goes
            start = rng.randrange(len(existing))
            for k in existing[start : start + rng.randint(2, 30)]:
                new.pop(k, None)
        rev = f"3l{step + 2}{'2' * 10}"
        diff = build_repo(DID, new, rev=rev, sign=KEY.sign, drop=_blocks(records))
        assert blob is not None
        index, unlanded = unpack_index(blob)
        whole = build_repo(DID, new, rev=rev, sign=KEY.sign)
        try:
            if whole_path:
                # A repo with no key index: the whole repo against the dataset.
                prefix = f"at://{DID}/"
                landed = {u[len(prefix) :]: c for u, c in view.items()}
                judged = {(u, c): f"{st}/{e}" for u, (c, e, st) in standing.items() if c}
                got = refresh_diff(whole, DID, FILT, None, landed=landed, judged=judged,
                                   signing_key=KEY.did_key, verify=True)  # fmt: skip
            else:
                got = refresh_diff(diff, DID, FILT, index, unlanded=unlanded,
                                   signing_key=KEY.did_key, verify=True)  # fmt: skip
        except NeedsWholeRepo:
            wholes.append(step)
            # A new record with the content (so the CID) of one the repo had: the
            # diff carries no block for it. The whole repo against the same index.
            got = refresh_diff(whole, DID, FILT, index, unlanded=unlanded,
                               signing_key=KEY.did_key, verify=True)  # fmt: skip
        deletions = got.tables.get(DELETIONS)
        for row in [] if deletions is None else deletions.to_pylist():
            assert view.pop(row["uri"]) == row["cid"], "a deletion of a row not in the view"
        for uri, cid in _rows(got).items():
            assert uri not in view, "a new row for a uri still in the view"
            view[uri] = cid
        superseded = got.tables.get(SUPERSEDED)
        for row in [] if superseded is None else superseded.to_pylist():
            assert standing.pop(row["uri"])[1] == row["error"]
        for uri, letter in _letters(got).items():
            assert uri not in standing, "a second standing dead letter for one record"
            standing[uri] = letter
        fresh = extract_repo(whole, DID, FILT,
                             signing_key=KEY.did_key, verify=True)  # fmt: skip
        assert view == _rows(fresh)
        # Each record's latest verdict stands, once: as a fresh extraction judges.
        assert standing == _letters(fresh)
        assert got.keys is not None and fresh.keys is not None
        assert unpack_index(got.keys) == unpack_index(fresh.keys)
        records, blob = new, got.keys
    if seed == 1 and not whole_path:
        assert wholes, "the fallback to the whole repo was not exercised"
