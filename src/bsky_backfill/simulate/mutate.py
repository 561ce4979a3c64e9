"""Change a simulated repo after it was built: new posts, deleted records, a new commit.

Where this sits: tests of `run --refresh` call `mutate_account` between two
runs. The account's previous `RepoImage`s are kept in `SimAccount.history`,
so `getRepo?since=<rev>` can answer with a diff CAR: the new commit plus every
block that the repo at `rev` did not have (new MST nodes, new records), as the
reference PDS does. The ground truth is updated in place, and what changed is
returned so a test can say exactly what a refresh must land and record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import libipld

from bsky_backfill.simulate.accounts import SimAccount
from bsky_backfill.simulate.car import RepoImage, build_repo, encode_car
from bsky_backfill.simulate.ids import cid_for_block, cid_str, datetime_to_micros, tid
from bsky_backfill.simulate.truth import GroundTruth, RecordTruth

POST = "app.bsky.feed.post"


@dataclass(frozen=True, slots=True)
class Mutation:
    """What one mutation did to one repo."""

    did: str
    old_rev: str
    new_rev: str
    added: tuple[RecordTruth, ...]
    deleted: tuple[RecordTruth, ...]


def car_blocks(car: bytes) -> list[tuple[bytes, bytes]]:
    """(CID, data) of every block of a CAR we wrote (CIDv1 sha2-256: 36 bytes)."""
    blocks: list[tuple[bytes, bytes]] = []
    pos = 0

    def uvarint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            byte = car[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    header_len = uvarint()
    pos += header_len
    while pos < len(car):
        size = uvarint()
        cid, data = car[pos : pos + 36], car[pos + 36 : pos + size]
        blocks.append((cid, data))
        pos += size
    return blocks


def diff_car(new: RepoImage, old: RepoImage) -> bytes:
    """The new commit and every block the old repo did not have."""
    had = {cid for cid, _ in car_blocks(old.car)}
    fresh = [(cid, data) for cid, data in car_blocks(new.car) if cid not in had]
    return encode_car(new.commit_cid, fresh)


def mutate_account(
    acct: SimAccount,
    truth: GroundTruth,
    *,
    add_posts: int = 0,
    delete_uris: tuple[str, ...] = (),
    when: dt.datetime | None = None,
) -> Mutation:
    """Add `add_posts` new posts and delete `delete_uris`, as one new signed commit."""
    image = acct.repo
    if image is None:
        raise ValueError(f"{acct.did} has no repo to change")
    items: dict[str, tuple[bytes, bytes]] = {}
    for collection, rows in image.records.items():
        for rkey, cid, start, end in rows:
            items[f"{collection}/{rkey}"] = (cid, image.car[start:end])
    prefix = f"at://{acct.did}/"
    deleted = []
    by_uri = {r.uri: r for r in truth.records if r.did == acct.did}
    for uri in delete_uris:
        key = uri[len(prefix) :]
        if key not in items:
            raise KeyError(f"{uri} is not in the repo")
        del items[key]
        deleted.append(by_uri[uri])
    moment = when or dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    base_us = datetime_to_micros(moment)
    added = []
    for n in range(add_posts):
        micros = base_us + n * 1000
        rkey = tid(micros, 7)
        created = dt.datetime.fromtimestamp(micros / 1e6, dt.UTC)
        created_text = created.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        text = f"new after the first backfill #{n} ✨"
        record = {"$type": POST, "text": text, "createdAt": created_text, "langs": ["en"]}
        block = libipld.encode_dag_cbor(record)
        cid = cid_for_block(block)
        items[f"{POST}/{rkey}"] = (cid, block)
        created_us = datetime_to_micros(
            dt.datetime.fromisoformat(created_text.replace("Z", "+00:00"))
        )
        added.append(
            RecordTruth(
                uri=f"{prefix}{POST}/{rkey}", did=acct.did, collection=POST, rkey=rkey,
                cid=cid_str(cid), created_us=created_us, text=text, valid=True, langs=("en",),
            )
        )  # fmt: skip
    new_rev = tid(max(base_us + add_posts * 1000, datetime_to_micros(dt.datetime.now(dt.UTC))), 9)
    if new_rev <= image.rev:
        raise ValueError("the new revision must sort after the old one")
    records = sorted((key, cid, block) for key, (cid, block) in items.items())
    new_image = build_repo(acct.did, new_rev, records, acct.signing_key)
    acct.history.append(image)
    acct.repo = new_image
    gone = {r.uri for r in deleted}
    truth.records[:] = [r for r in truth.records if r.uri not in gone]
    truth.records.extend(added)
    truth.accounts[acct.did] = dataclasses.replace(
        truth.accounts[acct.did], rev=new_rev, records=new_image.record_count
    )
    return Mutation(acct.did, image.rev, new_rev, tuple(added), tuple(deleted))
