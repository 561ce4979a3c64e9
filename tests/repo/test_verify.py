"""Repository verification (`repo/verify.py`, `mst.walk_verified`) through `extract_repo`.

Real signed exports from the fixtures must verify (and the one the fixtures'
README names as badly signed must not); interop vectors check signatures and
key heights through the product's own code; hand-built repos, validly signed,
check each structural rule and each block-hash rule on its own.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import libipld
import pytest

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.identity.didkey import CURVE_ORDER, Curve
from bsky_backfill.identity.document import signing_key_from_method
from bsky_backfill.models import RecordFilter, RepoExtract
from bsky_backfill.records.stream import stream_repo
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.repo.build import build_mst, build_repo, encode_block, write_car
from bsky_backfill.repo.car import frame_car, read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.mst import key_height
from bsky_backfill.repo.verify import check_signature
from bsky_backfill.simulate.car import encode_signed_commit
from bsky_backfill.simulate.ids import cid_for_block
from bsky_backfill.simulate.keys import SigningKey
from tests.fixture_paths import FIXTURES

pytestmark = pytest.mark.usefixtures("verify_loops")  # C loops and Python twins

POST, LIKE = "app.bsky.feed.post", "app.bsky.feed.like"
# Verification is what these tests are about: the hand-made records (a 20 kB
# post, likes of "at://x") are not lexicon-valid, so lexicon validation is off.
ALL = RecordFilter(collections=frozenset({POST, LIKE, "app.bsky.graph.follow"}), validate=False)
POSTS = RecordFilter(collections=frozenset({POST}), validate=False)
EVERYTHING = RecordFilter(
    collections=frozenset(
        {
            "app.bsky.actor.profile",
            "app.bsky.feed.generator",
            LIKE,
            POST,
            "app.bsky.feed.repost",
            "app.bsky.feed.threadgate",
            "app.bsky.graph.block",
            "app.bsky.graph.follow",
            "app.bsky.graph.list",
            "app.bsky.graph.listitem",
            "chat.bsky.actor.declaration",
        }
    )
)
DID = "did:plc:verifyverifyverifyverify"
KEY = SigningKey.from_seed(b"verify-tests", "k256")


def _json(rel: str) -> Any:
    return json.loads((FIXTURES / rel).read_text())


def _doc_key(rel: str) -> str:
    key = signing_key_from_method(_json(rel)["verificationMethod"][0])
    assert key is not None
    return key


def _plc_key(rel: str) -> str:
    ops = [op for op in _json(rel) if not op["nullified"]]
    key: str = ops[-1]["operation"]["verificationMethods"]["atproto"]
    return key


# CAR -> (the #atproto key, records in the current MST), keys as the fixtures README names them.
SIGNED: dict[str, tuple[Callable[[], str], int]] = {
    "laravel-bluesky/bsky-app.car": (
        lambda: _doc_key("identity/did-docs/laravel-bluesky/bsky-app-did.json"),
        604,
    ),
    "indigo/paul_staging.repo.car": (lambda: _doc_key("car/indigo/paul_staging.didDoc.json"), 185),
    "indigo/fakermaker.repo.car": (lambda: _doc_key("car/indigo/fakermaker.didDoc.json"), 142),
    "indigo/greenground.repo.car": (lambda: _doc_key("car/indigo/greenground.didDoc.json"), 2),
    "indigo/divy.repo.car": (
        lambda: _legacy_k256(
            "zQYEBzXeuTM9UR3rfvNag6L3RNAs5pQZyYPsomTsgQhsxLdEgCrPTLgFna8yqCnxPpNT7DBk6Ym3dgPKNu86vt9GR"
        ),
        6,
    ),
    "indigo/bnewbold.robocracy.org.20250310005405.car": (
        lambda: _plc_key("identity/plc/go-didplc/log_bnewbold_robocracy.json"),
        38,
    ),
    "arroba/snarfed2.car": (lambda: "did:key:zQ3shuteTZT6t9ek6UcKu7UfVES2AJgpadj2bT5zD8NHFqLce", 5),
}
BAD_SIG_CAR = "indigo/bafyreieovfuizojpw3zresz7sx3nk4trm2by23pt5rxbey3jme4uo5ogiu.car"


def _legacy_k256(multibase: str) -> str:
    key = signing_key_from_method(
        {"type": "EcdsaSecp256k1VerificationKey2019", "publicKeyMultibase": multibase}
    )
    assert key is not None
    return key


def _car(rel: str) -> tuple[bytes, str]:
    data = (FIXTURES / "car" / rel).read_bytes()
    return data, read_commit(read_car(data)).did


def _verify(
    data: bytes, did: str = DID, key: str | None = None, filt: RecordFilter = ALL
) -> RepoExtract:
    return extract_repo(data, did, filt, signing_key=key or KEY.did_key, verify=True)


def _fails(data: bytes, did: str = DID, key: str | None = None, filt: RecordFilter = ALL) -> str:
    with pytest.raises(RepoInvalid) as err:
        _verify(data, did, key, filt)
    assert (err.value.code, err.value.stage) == ("VerificationFailed", "verify")
    return str(err.value)


# -- real exports --------------------------------------------------------------


@pytest.mark.parametrize("rel", sorted(SIGNED))
def test_signed_fixture_repos_verify(rel: str) -> None:
    data, did = _car(rel)
    key, records = SIGNED[rel]
    verified = _verify(data, did, key(), EVERYTHING)
    assert verified.records_seen == records
    plain = extract_repo(data, did, EVERYTHING)
    assert verified.row_count == plain.row_count
    assert len(verified.dead_letters) == len(plain.dead_letters)


def test_the_badly_signed_fixture_fails() -> None:
    data, did = _car(BAD_SIG_CAR)
    key = _doc_key("car/indigo/did_plc_z5vnbioquyhivxirw3bbljmu.didDoc.json")
    assert "signature does not verify" in _fails(data, did, key)
    assert extract_repo(data, did, EVERYTHING).records_seen == 6  # --no-verify still reads it


def test_greenground_signature_holds_for_the_commit_did_not_the_doc_did() -> None:
    """The fixture's DID document is for another DID than its commit (README): the
    doc's key verifies the commit, but the repo is not the doc's DID's repo."""
    data, commit_did = _car("indigo/greenground.repo.car")
    doc = _json("car/indigo/greenground.didDoc.json")
    key = _doc_key("car/indigo/greenground.didDoc.json")
    assert doc["id"] != commit_did
    assert _verify(data, commit_did, key).row_count == 2
    assert "not the requested" in _fails(data, doc["id"], key)


def test_wrong_missing_or_unusable_key() -> None:
    data, did = _car("laravel-bluesky/bsky-app.car")
    other = _doc_key("car/indigo/paul_staging.didDoc.json")
    assert "signature does not verify" in _fails(data, did, other)
    with pytest.raises(RepoInvalid, match="no #atproto key") as err:
        extract_repo(data, did, ALL, signing_key=None, verify=True)
    assert err.value.code == "VerificationFailed"
    assert "unusable #atproto key" in _fails(data, did, "did:key:zNotAKey")


def _high_s(sig: bytes, curve: Curve) -> bytes:
    s = int.from_bytes(sig[32:], "big")
    return sig[:32] + (CURVE_ORDER[curve] - s).to_bytes(32, "big")


_UNSIGNED_PROBE = b"probe"


def _high_s_signer(signer: SigningKey, curve: Curve) -> Callable[[bytes], bytes]:
    return lambda data: _high_s(signer.sign(data), curve)


def test_high_s_accepted_only_for_legacy_v2_commits() -> None:
    # fakermaker: a 2023 v2 commit with a high-S P-256 signature (see test_didkey).
    data, did = _car("indigo/fakermaker.repo.car")
    key = _doc_key("car/indigo/fakermaker.didDoc.json")
    assert _verify(data, did, key, EVERYTHING).records_seen == 142
    curves: tuple[Curve, ...] = ("k256", "p256")
    for curve in curves:
        signer = SigningKey.from_seed(b"high-s", curve)
        low_sig = signer.sign(_UNSIGNED_PROBE)
        low = build_repo(DID, {f"{POST}/3l2222222222a": _post()}, sign=signer.sign)
        high = build_repo(
            DID, {f"{POST}/3l2222222222a": _post()}, sign=_high_s_signer(signer, curve)
        )
        assert _high_s(low_sig, curve) != low_sig
        assert _verify(low, key=signer.did_key).row_count == 1
        assert "signature does not verify" in _fails(high, key=signer.did_key)


def test_no_verify_skips_signature_but_not_the_did_check() -> None:
    data = build_repo(DID, {f"{POST}/3l2222222222a": _post()})  # 64 zero bytes for a signature
    assert "signature" in _fails(data)
    assert extract_repo(data, DID, ALL, verify=False).row_count == 1
    with pytest.raises(RepoInvalid, match="not the requested") as err:
        extract_repo(data, "did:plc:someoneelsesomeoneelsesom", ALL, verify=False)
    assert err.value.code == "VerificationFailed"


# -- interop vectors through the product's path ---------------------------------


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def test_interop_signature_fixtures() -> None:
    cases = _json("interop-tests/crypto/signature-fixtures.json")
    assert {c["validSignature"] for c in cases} == {True, False}
    for case in cases:
        message, sig = _b64(case["messageBase64"]), _b64(case["signatureBase64"])
        legacy = signing_key_from_method(
            {"type": case["didDocSuite"], "publicKeyMultibase": case["publicKeyMultibase"]}
        )
        for key in (case["publicKeyDid"], legacy):
            assert key is not None
            assert check_signature(key, message, sig) is case["validSignature"], case["comment"]


def test_interop_did_keys_parse_on_the_verify_path() -> None:
    for name in ("w3c_didkey_K256.json", "w3c_didkey_P256.json"):
        for case in _json(f"interop-tests/crypto/{name}"):
            assert check_signature(case["publicDidKey"], b"x", bytes(64)) is False


def test_interop_key_heights() -> None:
    cases = _json("interop-tests/mst/key_heights.json")
    assert max(c["height"] for c in cases) >= 8
    for case in cases:
        assert key_height(case["key"].encode()) == case["height"], case


def test_tree_of_interop_example_keys_and_deep_keys_verifies() -> None:
    keys = (FIXTURES / "interop-tests/mst/example_keys.txt").read_text().split()
    deep = [c["key"] for c in _json("interop-tests/mst/key_heights.json") if "/" in c["key"]]
    records = {k: {"$type": "x", "i": i} for i, k in enumerate([*keys, *deep])}
    got = _verify(build_repo(DID, records, sign=KEY.sign))
    assert got.records_seen == len(records)


# -- tree structure --------------------------------------------------------------


def _keys_of_height(height: int, n: int, prefix: str = f"{POST}/3l") -> list[bytes]:
    out, i = [], 0
    while len(out) < n:
        key = f"{prefix}{i:011d}".encode()
        if key_height(key) == height:
            out.append(key)
        i += 1
    return out


def _signed_car(data_root: bytes, blocks: list[tuple[bytes, bytes]], did: str = DID) -> bytes:
    unsigned = {"did": did, "version": 3, "data": data_root, "rev": "3l2222222222a", "prev": None}
    commit = encode_signed_commit(unsigned, KEY.sign(libipld.encode_dag_cbor(unsigned)))
    commit_cid = cid_for_block(commit)
    return write_car(commit_cid, [(commit_cid, commit), *blocks])


def _node(entries: list[tuple[bytes, bytes | None]], left: bytes | None = None) -> dict[str, Any]:
    """An MST node over (full key, subtree) pairs, canonical prefix compression."""
    out, prev = [], b""
    for key, tree in entries:
        p = 0
        while p < min(len(prev), len(key)) and prev[p] == key[p]:
            p += 1
        out.append({"k": key[p:], "p": p, "t": tree, "v": RECORD_CID})
        prev = key
    return {"e": out, "l": left}


def _post(text: str = "hello") -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": "2024-05-01T00:00:00.000Z"}


RECORD_CID, RECORD = encode_block(_post())


def _cid(node: dict[str, Any]) -> bytes:
    return encode_block(node)[0]


def _tree_car(root: dict[str, Any], *children: dict[str, Any]) -> bytes:
    blocks = [encode_block(n) for n in (root, *children)]
    return _signed_car(blocks[0][0], [*blocks, (RECORD_CID, RECORD)])


def test_a_hand_built_tree_verifies() -> None:
    (low,) = _keys_of_height(0, 1, prefix=f"{LIKE}/3l")  # likes sort before posts
    (high,) = _keys_of_height(1, 1)
    child = _node([(low, None)])
    child_cid = encode_block(child)[0]
    assert low < high
    assert _verify(_tree_car(_node([(high, None)], left=child_cid), child)).records_seen == 2


def _bad_trees() -> dict[str, tuple[bytes, str]]:
    k0 = _keys_of_height(0, 3)
    k1 = _keys_of_height(1, 2)
    (k2,) = _keys_of_height(2, 1)
    leaf = _node([(k0[0], None)])
    leaf_cid = encode_block(leaf)[0]
    uncompressed = _node([(k0[0], None), (k0[1], None)])
    uncompressed["e"][1] = {**uncompressed["e"][1], "p": 0, "k": k0[1]}
    extra_field = _node([(k0[0], None)])
    extra_field["e"][0]["x"] = 1
    empty = {"e": [], "l": None}
    a, b = sorted(k1)
    like_leaf = _node([(_keys_of_height(0, 1, prefix=f"{LIKE}/3l")[0], None)])  # sorts first
    like_leaf_cid = _cid(like_leaf)
    return {
        "wrong height": (
            _tree_car(_node([(b, None)], left=_cid(_node([(a, None)]))), _node([(a, None)])),
            "layer",
        ),
        "mixed heights": (_tree_car(_node([(k0[0], None), (k1[0], None)])), "layer"),
        "skipped layer": (_tree_car(_node([(k2, None)], left=leaf_cid), leaf), "layer"),
        "unsorted": (_tree_car(_node([(k0[1], None), (k0[0], None)])), "order"),
        "prefix": (_tree_car(uncompressed), "compressed"),
        "extra field": (_tree_car(extra_field), "malformed MST entry"),
        "missing node": (_tree_car(_node([(k1[0], None)], left=leaf_cid)), "missing"),
        "empty inner node": (
            _tree_car(_node([(k1[0], None)], left=encode_block(empty)[0]), empty),
            "empty",
        ),
        "subtree on layer 0": (_tree_car(_node([(k0[1], leaf_cid)]), leaf), "subtree"),
        "reached twice": (
            _tree_car(_node([(a, like_leaf_cid), (b, None)], left=like_leaf_cid), like_leaf),
            "twice",
        ),
    }


BAD_TREES = _bad_trees()


@pytest.mark.parametrize("name", sorted(BAD_TREES))
def test_malformed_trees_fail_verification(name: str) -> None:
    data, reason = BAD_TREES[name]
    assert reason in _fails(data)


@pytest.mark.parametrize("name", sorted(BAD_TREES))
def test_malformed_trees_fail_when_cut_into_parts(name: str) -> None:
    """The big-repo path walks subtrees as separate parts (records/stream.py): cut
    at every layer, each malformation is still caught."""
    data, reason = BAD_TREES[name]
    with pytest.raises(RepoInvalid) as err:
        list(stream_repo(data, DID, ALL, signing_key=KEY.did_key, verify=True, split_layer=0))
    assert (err.value.code, err.value.stage) == ("VerificationFailed", "verify")
    # A subtree reached twice is two parts whose keys cannot both sit in their bounds.
    reasons = (reason, "order") if name == "reached twice" else (reason,)
    assert any(r in str(err.value) for r in reasons), str(err.value)


# -- block hashes ------------------------------------------------------------------


def _rewrite(data: bytes, change: Callable[[bytes, bytes], bytes | None]) -> bytes:
    """The CAR with each block passed through `change(cid, block)` (None drops it)."""
    header, frames = frame_car(data)
    root = libipld.decode_dag_cbor(header)["roots"][0]
    blocks = []
    for cid, start, stop in frames:
        new = change(cid, data[start:stop])
        if new is not None:
            blocks.append((cid, new))
    return write_car(root, blocks)


def _repo(posts: int = 6, likes: int = 30, big: bool = False) -> tuple[bytes, dict[str, bytes]]:
    records: dict[str, Any] = {f"{POST}/3l{i:011d}": _post(f"post {i}") for i in range(posts)}
    like = {
        "$type": LIKE,
        "subject": {"uri": "at://x", "cid": "y"},
        "createdAt": "2024-05-01T00:00:00Z",
    }
    records.update({f"{LIKE}/3l{i:011d}": {**like, "i": i} for i in range(likes)})
    if big:  # a block over 16 KiB: a 3-byte frame length, the general framing path
        records[f"{POST}/3lbig00000000"] = _post("x" * 20_000)
    cids = {k: encode_block(v)[0] for k, v in records.items()}
    orphan = encode_block(_post("deleted"))
    return build_repo(DID, records, sign=KEY.sign, extra_blocks=[orphan]), cids


def _flip(block: bytes) -> bytes:
    return block[:-1] + bytes([block[-1] ^ 1])


@pytest.mark.parametrize("filt", [ALL, POSTS], ids=["hash every block", "hash used blocks"])
def test_tampered_blocks(filt: RecordFilter) -> None:
    data, cids = _repo(big=True)
    assert _verify(data, filt=filt).row_count == (37 if filt is ALL else 7)
    post, like = cids[f"{POST}/3l00000000003"], cids[f"{LIKE}/3l00000000003"]
    big = cids[f"{POST}/3lbig00000000"]
    tampered_post = _rewrite(data, lambda c, b: _flip(b) if c == post else b)
    assert "record block" in _fails(tampered_post, filt=filt)
    tampered_big = _rewrite(data, lambda c, b: _flip(b) if c == big else b)
    assert "record block" in _fails(tampered_big, filt=filt)
    tampered_like = _rewrite(data, lambda c, b: _flip(b) if c == like else b)
    if filt is POSTS:  # an unwanted record never lands, so its block is not checked
        assert _verify(tampered_like, filt=filt).row_count == 7
    else:
        assert "record block" in _fails(tampered_like, filt=filt)
    car = read_car(data)
    root, node = car.root, read_commit(car).data
    # A changed commit is caught by its signature (checked first) or its hash.
    assert "commit" in _fails(_rewrite(data, lambda c, b: _flip(b) if c == root else b))
    assert "MST node" in _fails(_rewrite(data, lambda c, b: _flip(b) if c == node else b))
    orphan = encode_block(_post("deleted"))[0]
    tampered_orphan = _rewrite(data, lambda c, b: _flip(b) if c == orphan else b)
    assert _verify(tampered_orphan, filt=filt).row_count == (37 if filt is ALL else 7)


def test_raw_frames_match_libipld_and_hash_to_their_cids() -> None:
    import hashlib

    data, _ = _car("laravel-bluesky/bsky-app.car")
    _, frames = frame_car(data)
    _, blocks = libipld.decode_car(data)
    assert [cid for cid, _, _ in frames] == list(blocks)
    assert all(hashlib.sha256(data[s:e]).digest() == cid[4:] for cid, s, e in frames)


# -- record blocks missing or undecodable --------------------------------------------


@pytest.mark.parametrize("verify", [True, False])
def test_a_missing_or_undecodable_record_dead_letters_only_that_record(verify: bool) -> None:
    garbage = b"\xa1\x64note\x58\x40" + bytes(8)  # announces 64 bytes, holds 8
    gone = encode_block(_post("gone"))[0]
    records = {f"{POST}/3l{i:011d}": _post(f"post {i}") for i in range(5)}
    leaves = {k: encode_block(v)[0] for k, v in records.items()}
    leaves[f"{POST}/3lbad00000000"] = cid_for_block(garbage)
    leaves[f"{POST}/3lgone0000000"] = gone
    root, nodes = build_mst(leaves)
    blocks = [*nodes.items(), (cid_for_block(garbage), garbage)]
    blocks += [encode_block(v) for v in records.values()]
    data = _signed_car(root, blocks)
    got = extract_repo(data, DID, ALL, signing_key=KEY.did_key, verify=verify)
    assert got.row_count == 5
    letters = {(d.uri, d.stage, d.error) for d in got.dead_letters}
    assert letters == {
        (f"at://{DID}/{POST}/3lbad00000000", "decode", "InvalidRecordBlock"),
        (f"at://{DID}/{POST}/3lgone0000000", "decode", "RecordBlockMissing"),
    }
    bad_commit = _rewrite(data, lambda c, b: garbage if b[:1] == b"\xa6" else b)
    with pytest.raises(RepoInvalid, match="not valid DAG-CBOR") as err:
        extract_repo(bad_commit, DID, ALL, signing_key=KEY.did_key, verify=verify)
    assert (err.value.code, err.value.stage) == ("InvalidCar", "decode")
