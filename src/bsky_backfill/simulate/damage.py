"""Damaged repositories, for tests of the product's verification.

Where this sits: `writer.RepoWriter.write` calls `plan_damage` for an account
whose `damage` is one of `scenario.DAMAGE_KNOBS`, just before `car.build_repo`,
and passes the result on (changed items, build options); the generator copies
what the truth needs (`GroundTruth.broken_records`, `AccountTruth.damage`).

* `tampered_record`: one valid app.bsky record is served with other bytes
  (an extra field) under its signed CID. Verification must fail the repo
  when that record's collection is wanted.
* `foreign_commit`: the commit, validly signed with the account's key,
  names another DID. The DID check must fail the repo (verifying or not).
* `missing_mst_node`: one MST node is left out of the CAR. Verifying, the
  repo fails verification; with `--no-verify` the walk cannot go on (decode,
  InvalidMST).
* `broken_records`: one valid app.bsky record block is left out of the CAR
  (RecordBlockMissing) and another is replaced, before signing, by bytes that
  are not valid DAG-CBOR under their own CID (InvalidRecordBlock): only those
  two records fail, at stage decode; the rest of the repo is signed and lands.
  Neither is listed by listRecords, so the truth holds for getRepo only.

The records picked are the first eligible ones in key order (no randomness,
so the rest of the account's content is the same as without damage).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import libipld

from bsky_backfill.simulate.ids import cid_for_block, plc_did
from bsky_backfill.simulate.truth import APP_BSKY_COLLECTIONS, RecordTruth

Item = tuple[str, bytes, bytes]  # (collection/rkey, record CID, block)


@dataclass
class Damage:
    """What to build instead: items, extra `build_repo` options, and what the truth learns."""

    items: list[Item]
    options: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None
    """The damage applied (None when the repo had nothing to damage)."""
    uri: str | None = None
    """The tampered record (`tampered_record`)."""
    broken: dict[str, str] = field(default_factory=dict)
    """uri -> dead-letter code of the records that cannot land (`broken_records`)."""


def plan_damage(kind: str | None, did: str, items: list[Item], truths: list[RecordTruth]) -> Damage:
    """The damage `kind` does to a repo of `items` (sorted by key), given their truth rows."""
    if kind is None:
        return Damage(items)
    if kind == "foreign_commit":
        return Damage(items, {"commit_did": plc_did(f"{did}:foreign".encode())}, kind)
    if kind == "missing_mst_node":
        return Damage(items, {"drop_mst_node": True}, kind)
    valid = {t.uri for t in truths if t.valid and t.collection in APP_BSKY_COLLECTIONS}
    eligible = [i for i, (key, _, _) in enumerate(items) if f"at://{did}/{key}" in valid]
    if kind == "tampered_record" and eligible:
        key, cid, block = items[eligible[0]]
        value = libipld.decode_dag_cbor(block)
        altered: bytes = libipld.encode_dag_cbor({**value, "tampered": True})
        return Damage(items, {"replace": {cid: altered}}, kind, uri=f"at://{did}/{key}")
    if kind == "broken_records" and len(eligible) >= 2:
        items = list(items)
        missing_key, missing_cid, _ = items[eligible[0]]
        bad_key = items[eligible[1]][0]
        # A map announcing a 64-byte string followed by only 32 bytes: truncated CBOR.
        garbage = b"\xa1\x64note\x58\x40" + hashlib.sha256(bad_key.encode()).digest()
        bad_cid = cid_for_block(garbage)
        items[eligible[1]] = (bad_key, bad_cid, garbage)
        broken = {
            f"at://{did}/{missing_key}": "RecordBlockMissing",
            f"at://{did}/{bad_key}": "InvalidRecordBlock",
        }
        options = {"drop": {missing_cid}, "unlisted": {bad_cid}}
        return Damage(items, options, kind, broken=broken)
    if kind not in ("tampered_record", "broken_records"):
        raise ValueError(f"unknown damage {kind!r}")
    return Damage(items)  # too few eligible records: nothing damaged
