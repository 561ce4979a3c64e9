"""did:key and atproto public keys: parse, encode, verify commit signatures.

Where this sits in the flow: identity resolution (PLC or did:web) yields a DID
document whose `#atproto` verification method holds the account's signing key;
`repo/` verifies the commit signature of every fetched repository against that
key with `verify_signature`. The simulated network (`simulate/`) uses
`encode_did_key` to publish the keys it signs with.

Two curves are used in atproto: P-256 (`ES256`, multicodec 0x1200, did:keys
start `zDn`) and secp256k1 (`ES256K`, multicodec 0xe7, did:keys start `zQ3s`).
Current DID documents carry a `Multikey` (the did:key body: multibase of
multicodec + compressed point); legacy documents carry
`EcdsaSecp256{k,r}1VerificationKey2019` with the bare point (compressed or
uncompressed) and the curve given by the type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import libipld
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

Curve = Literal["p256", "k256"]

DID_KEY_PREFIX = "did:key:"

# Multicodec codes as unsigned varints: p256-pub 0x1200, secp256k1-pub 0xe7.
_P256_MULTICODEC = b"\x80\x24"
_K256_MULTICODEC = b"\xe7\x01"

# Group orders; a signature with s > n/2 is "high-S" and atproto rejects it
# (it would make signatures malleable: (r, n-s) verifies too).
CURVE_ORDER: dict[Curve, int] = {
    "p256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "k256": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
}

_CURVES: dict[Curve, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "k256": ec.SECP256K1()}

_LEGACY_TYPES: dict[str, Curve] = {
    "EcdsaSecp256r1VerificationKey2019": "p256",
    "EcdsaSecp256k1VerificationKey2019": "k256",
}


class KeyParseError(ValueError):
    """A did:key or multibase key string that is not a usable atproto key."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An atproto signing key: its curve and the `cryptography` key object."""

    curve: Curve
    key: ec.EllipticCurvePublicKey

    @property
    def compressed(self) -> bytes:
        """The 33-byte SEC1 compressed point."""
        return self.key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)

    @property
    def did_key(self) -> str:
        return encode_did_key(self)

    @property
    def multibase(self) -> str:
        """The did:key body (`z...`), as published in a Multikey verification method."""
        return encode_did_key(self)[len(DID_KEY_PREFIX) :]


def b58encode(data: bytes) -> str:
    """Base58btc (bitcoin alphabet); leading zero bytes become '1's. libipld's multibase
    codec (Rust) does the arithmetic: no hand-written base58 to get wrong."""
    return str(libipld.encode_multibase("z", data))[1:]


def b58decode(text: str) -> bytes:
    """The bytes of base58btc `text` (without the multibase 'z'); KeyParseError if it
    is not base58btc."""
    try:
        _, data = libipld.decode_multibase("z" + text)
    except ValueError:
        raise KeyParseError(f"invalid base58btc text {text[:60]!r}") from None
    return bytes(data)


def _curve_of(key: ec.EllipticCurvePublicKey) -> Curve:
    if isinstance(key.curve, ec.SECP256R1):
        return "p256"
    if isinstance(key.curve, ec.SECP256K1):
        return "k256"
    raise KeyParseError(f"unsupported curve {key.curve.name}")


def _load_point(curve: Curve, point: bytes) -> PublicKey:
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[curve], point)
    except ValueError as e:
        raise KeyParseError(f"invalid {curve} point: {e}") from e
    return PublicKey(curve, key)


def encode_did_key(public_key: PublicKey | ec.EllipticCurvePublicKey) -> str:
    """`did:key:z...` for a P-256 or secp256k1 public key (compressed point form)."""
    key = public_key.key if isinstance(public_key, PublicKey) else public_key
    curve = _curve_of(key)
    prefix = _P256_MULTICODEC if curve == "p256" else _K256_MULTICODEC
    point = key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    return DID_KEY_PREFIX + "z" + b58encode(prefix + point)


def parse_did_key(text: str) -> PublicKey:
    """Parse `did:key:z...` or a bare Multikey `z...` into a `PublicKey`."""
    body = text[len(DID_KEY_PREFIX) :] if text.startswith(DID_KEY_PREFIX) else text
    if not body.startswith("z"):
        raise KeyParseError("did:key must use base58btc multibase ('z' prefix)")
    raw = b58decode(body[1:])
    if raw.startswith(_P256_MULTICODEC):
        return _load_point("p256", raw[len(_P256_MULTICODEC) :])
    if raw.startswith(_K256_MULTICODEC):
        return _load_point("k256", raw[len(_K256_MULTICODEC) :])
    raise KeyParseError("did:key is neither P-256 nor secp256k1")


def parse_legacy_multibase(multibase: str, key_type: str) -> PublicKey:
    """A legacy `EcdsaSecp256{k,r}1VerificationKey2019` key: bare point, curve from the type."""
    curve = _LEGACY_TYPES.get(key_type)
    if curve is None:
        raise KeyParseError(f"unsupported verification method type {key_type!r}")
    if not multibase.startswith("z"):
        raise KeyParseError("legacy key must use base58btc multibase ('z' prefix)")
    return _load_point(curve, b58decode(multibase[1:]))


def key_from_verification_method(method: Mapping[str, Any]) -> PublicKey:
    """The key in one DID-document verification method, current (`Multikey`) or legacy form."""
    multibase = method.get("publicKeyMultibase")
    if not isinstance(multibase, str):
        raise KeyParseError("verification method has no publicKeyMultibase")
    key_type = method.get("type")
    if key_type == "Multikey":
        return parse_did_key(multibase)
    if isinstance(key_type, str) and key_type in _LEGACY_TYPES:
        return parse_legacy_multibase(multibase, key_type)
    raise KeyParseError(f"unsupported verification method type {key_type!r}")


def is_low_s(curve: Curve, s: int) -> bool:
    return 0 < s <= CURVE_ORDER[curve] // 2


def verify_signature(
    pub: PublicKey, data: bytes, sig: bytes, *, allow_high_s: bool = False
) -> bool:
    """True iff `sig` is a valid atproto signature of `data` (ECDSA over sha256(data)).

    atproto signatures are the 64-byte compact `r || s` form with low S; DER
    encodings and high-S signatures are rejected even when mathematically valid.
    `allow_high_s` is the lenient mode (like indigo's): some 2023 commits, e.g.
    P-256 ones from early Go PDSes, predate the low-S rule.
    """
    if len(sig) != 64:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if r == 0 or s == 0 or (not allow_high_s and not is_low_s(pub.curve, s)):
        return False
    try:
        pub.key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
