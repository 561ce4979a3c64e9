"""did:key parsing and atproto signature checks against the official interop vectors."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import libipld
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from bsky_backfill.identity.didkey import (
    CURVE_ORDER,
    KeyParseError,
    PublicKey,
    b58decode,
    b58encode,
    encode_did_key,
    key_from_verification_method,
    parse_did_key,
    verify_signature,
)
from tests.fixture_paths import FIXTURES

CRYPTO = FIXTURES


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _load(path: str) -> Any:
    return json.loads((CRYPTO / path).read_text())


SIGNATURES = _load("interop-tests/crypto/signature-fixtures.json")


@pytest.mark.parametrize("case", SIGNATURES, ids=[c["comment"] for c in SIGNATURES])
def test_signature_fixtures(case: dict[str, Any]) -> None:
    pub = parse_did_key(case["publicKeyDid"])
    assert pub.curve == ("p256" if case["algorithm"] == "ES256" else "k256")
    message, sig = _b64(case["messageBase64"]), _b64(case["signatureBase64"])
    assert verify_signature(pub, message, sig) is case["validSignature"]
    # The same key in the legacy DID-document form (bare compressed point).
    legacy = key_from_verification_method(
        {"type": case["didDocSuite"], "publicKeyMultibase": case["publicKeyMultibase"]}
    )
    assert legacy.compressed == pub.compressed


def test_w3c_didkey_k256() -> None:
    for case in _load("interop-tests/crypto/w3c_didkey_K256.json"):
        scalar = int(case["privateKeyBytesHex"], 16)
        private = ec.derive_private_key(scalar, ec.SECP256K1())
        assert encode_did_key(private.public_key()) == case["publicDidKey"]
        parsed = parse_did_key(case["publicDidKey"])
        assert parsed.curve == "k256"
        assert parsed.did_key == case["publicDidKey"]


def test_w3c_didkey_p256() -> None:
    for case in _load("interop-tests/crypto/w3c_didkey_P256.json"):
        scalar = int.from_bytes(b58decode(case["privateKeyBytesBase58"]), "big")
        private = ec.derive_private_key(scalar, ec.SECP256R1())
        assert encode_did_key(private.public_key()) == case["publicDidKey"]
        parsed = parse_did_key(case["publicDidKey"].removeprefix("did:key:"))
        assert parsed.curve == "p256"
        assert parsed.multibase == case["publicDidKey"].removeprefix("did:key:")


def _commit(car: str) -> tuple[bytes, bytes]:
    """(DAG-CBOR of the unsigned commit, signature) of a fixture CAR's root commit."""
    header, blocks = libipld.decode_car((CRYPTO / car).read_bytes())
    commit = dict(blocks[header["roots"][0]])
    sig = commit.pop("sig")
    return libipld.encode_dag_cbor(commit), sig


@pytest.mark.parametrize(
    "car, doc",
    [
        ("car/laravel-bluesky/bsky-app.car", "identity/did-docs/laravel-bluesky/bsky-app-did.json"),
        ("car/indigo/paul_staging.repo.car", "car/indigo/paul_staging.didDoc.json"),
        ("car/indigo/greenground.repo.car", "car/indigo/greenground.didDoc.json"),
    ],
)
def test_real_commit_signatures_verify(car: str, doc: str) -> None:
    unsigned, sig = _commit(car)
    key = key_from_verification_method(_load(doc)["verificationMethod"][0])
    assert verify_signature(key, unsigned, sig)
    assert not verify_signature(key, unsigned + b"\x00", sig)


def test_fakermaker_2023_p256_commit_is_high_s() -> None:
    """An early P-256 commit predates the low-S rule: strict mode rejects, lenient accepts."""
    unsigned, sig = _commit("car/indigo/fakermaker.repo.car")
    doc = _load("car/indigo/fakermaker.didDoc.json")
    key = key_from_verification_method(doc["verificationMethod"][0])
    assert key.curve == "p256"
    assert not verify_signature(key, unsigned, sig)
    assert verify_signature(key, unsigned, sig, allow_high_s=True)


def test_known_bad_commit_signature_fails() -> None:
    unsigned, sig = _commit(
        "car/indigo/bafyreieovfuizojpw3zresz7sx3nk4trm2by23pt5rxbey3jme4uo5ogiu.car"
    )
    doc = _load("car/indigo/did_plc_z5vnbioquyhivxirw3bbljmu.didDoc.json")
    key = key_from_verification_method(doc["verificationMethod"][0])
    assert not verify_signature(key, unsigned, sig)
    assert not verify_signature(key, unsigned, sig, allow_high_s=True)


def test_legacy_uncompressed_key_matches_current_multikey() -> None:
    legacy = _load("identity/did-docs/indigo/did_plc_doc_legacy.json")
    current = _load("identity/did-docs/indigo/did_plc_doc.json")
    old = key_from_verification_method(legacy["verificationMethod"][0])
    new = key_from_verification_method(current["verificationMethod"][0])
    assert old.curve == new.curve == "k256"
    assert old.compressed == new.compressed


def test_high_s_rejected_for_our_own_signatures() -> None:
    from bsky_backfill.simulate.keys import SigningKey

    for curve in ("p256", "k256"):
        signer = SigningKey.from_seed(b"test", curve)  # type: ignore[arg-type]
        sig = signer.sign(b"hello")
        assert verify_signature(signer.public, b"hello", sig)
        r, s = sig[:32], int.from_bytes(sig[32:], "big")
        high = r + (CURVE_ORDER[curve] - s).to_bytes(32, "big")
        assert not verify_signature(signer.public, b"hello", high)
        assert signer.sign(b"hello") == sig  # deterministic (RFC 6979)


@pytest.mark.parametrize(
    "bad",
    [
        "did:key:",
        "did:key:abc",
        "did:key:z1111",
        "zQ3sh",
        "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
    ],
)
def test_bad_did_keys_rejected(bad: str) -> None:
    with pytest.raises(KeyParseError):
        parse_did_key(bad)


def test_public_key_is_small_value_type() -> None:
    pub = parse_did_key("did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc")
    assert isinstance(pub, PublicKey)
    with pytest.raises(AttributeError):
        pub.curve = "p256"  # type: ignore[misc]


def test_base58btc_round_trips_and_refuses_other_alphabets() -> None:
    """Random bytes (leading zeros included) survive encode -> decode; characters outside
    the bitcoin alphabet ('0', 'O', 'I', 'l', non-ASCII) are a KeyParseError."""
    rng = random.Random(58)
    for _ in range(500):
        data = b"\x00" * rng.randrange(3) + rng.randbytes(rng.randrange(40))
        text = b58encode(data)
        assert b58decode(text) == data
        assert text.startswith("1" * (len(data) - len(data.lstrip(b"\x00"))))
    for bad in ("0abc", "O", "Il", "é1"):
        with pytest.raises(KeyParseError):
            b58decode(bad)
