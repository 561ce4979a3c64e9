"""CAR framing and whole simulated repos, read back with libipld and an independent MST walk."""

from __future__ import annotations

import base64
import json

import libipld
import pytest

from bsky_backfill.identity.didkey import parse_did_key, verify_signature
from bsky_backfill.simulate import Scenario, generate
from bsky_backfill.simulate.car import encode_car, encode_signed_commit, varint
from bsky_backfill.simulate.ids import cid_for_block
from bsky_backfill.simulate.keys import SigningKey
from tests.fixture_paths import FIXTURES
from tests.simulate.mstwalk import walk_mst


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def test_car_writer_matches_reference_vector() -> None:
    """atproto's own CAR round-trip vector: our framing produces the exact same bytes."""
    case = json.loads((FIXTURES / "car/atproto/car-file-fixtures.json").read_text())[0]
    root = libipld.decode_cid(case["root"])
    blocks = [(_raw_cid(b["cid"]), _b64(b["bytes"])) for b in case["blocks"]]
    assert encode_car(_raw_cid(case["root"]), blocks) == _b64(case["car"])
    assert root["codec"] == 0x71


def _raw_cid(text: str) -> bytes:
    parsed = libipld.decode_cid(text)
    mh = parsed["hash"]
    return (
        varint(parsed["version"])
        + varint(parsed["codec"])
        + varint(mh["code"])
        + varint(mh["size"])
        + mh["digest"]
    )


def test_varint() -> None:
    assert varint(0) == b"\x00"
    assert varint(127) == b"\x7f"
    assert varint(128) == b"\x80\x01"
    assert varint(300) == b"\xac\x02"


def test_signature_that_looks_like_a_cid_stays_bytes() -> None:
    """libipld tags any bytes that parse as a CID; a commit's sig must stay a byte string."""
    unsigned: dict[str, object] = {
        "did": "did:plc:abc",
        "version": 3,
        "data": cid_for_block(b"\xa0"),
        "rev": "3lc6y2qeo2227",
        "prev": None,
    }
    sig = b"\x01" + b"\x00" * 63  # parses as a (silly) CID
    assert libipld.encode_dag_cbor(sig)[:2] == b"\xd8\x2a"  # what we are guarding against
    block = encode_signed_commit(unsigned, sig)
    decoded = libipld.decode_dag_cbor(block)
    assert decoded["sig"] == sig
    assert libipld.encode_dag_cbor({k: v for k, v in decoded.items() if k != "sig"}) == (
        libipld.encode_dag_cbor(unsigned)
    )
    assert b"\x58\x40\x01" in block  # plain 64-byte byte string


@pytest.fixture(scope="module")
def built() -> object:
    scenario = Scenario(
        seed=7, accounts=12, hosts=2, mean_records=40, orphan_rate=0.5, bad_signature=1
    )
    return generate(scenario, web_dids=["did:web:localhost%3A1", "did:web:localhost%3A2"])


def test_every_repo_round_trips(built: object) -> None:
    content = built
    truth = content.truth  # type: ignore[attr-defined]
    checked = 0
    for acct in content.accounts:  # type: ignore[attr-defined]
        if acct.repo is None:
            continue
        header, blocks = libipld.decode_car(acct.repo.car)
        assert header == {"version": 1, "roots": [acct.repo.commit_cid]}
        commit = dict(blocks[acct.repo.commit_cid])
        assert commit["did"] == acct.did and commit["version"] == 3 and commit["prev"] is None
        assert commit["rev"] == acct.repo.rev == truth.accounts[acct.did].rev
        sig = commit.pop("sig")
        key = parse_did_key(truth.accounts[acct.did].signing_key)
        valid = verify_signature(key, libipld.encode_dag_cbor(commit), sig)
        assert valid is (not acct.bad_signature), acct.did
        assert valid is truth.accounts[acct.did].signature_valid
        for cid, block in blocks.items():  # every other block re-encodes to its CID
            if cid != acct.repo.commit_cid:  # (a sig may look like a CID to libipld)
                assert cid_for_block(libipld.encode_dag_cbor(block)) == cid
        walked = dict(walk_mst(blocks, commit["data"]))
        expected = {f"{r.collection}/{r.rkey}": r for r in truth.records_of(acct.did)}
        assert set(walked) == set(expected)
        for key_, rec in expected.items():
            assert libipld.encode_cid(walked[key_]) == rec.cid
            value = blocks[walked[key_]]
            if rec.valid:
                assert value["$type"] == rec.collection
            if rec.text is not None:
                assert value["text"] == rec.text
        reachable = {libipld.encode_cid(c) for c in walked.values()}
        present = {libipld.encode_cid(c) for c in blocks}
        assert not reachable & truth.unreachable_cids
        checked += 1
        orphans = present & truth.unreachable_cids
        assert orphans <= present - reachable
    assert checked >= 10
    assert truth.unreachable_cids, "orphan_rate=0.5 should leave some unreachable blocks"


def test_signing_key_from_seed_is_stable() -> None:
    a = SigningKey.from_seed("seed", "k256")
    b = SigningKey.from_seed(b"seed", "k256")
    assert a.did_key == b.did_key and a.did_key.startswith("did:key:zQ3s")
    assert SigningKey.from_seed("seed", "p256").did_key.startswith("did:key:zDn")
