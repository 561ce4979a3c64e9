"""Deterministic signing keys for simulated accounts.

Where this sits: the generator gives every simulated account a key derived
from the scenario seed; `car.py` signs each repo commit with it and the PLC /
did:web documents publish its did:key, so the product can verify commits
exactly as it would on the real network.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from bsky_backfill.identity.didkey import CURVE_ORDER, Curve, PublicKey

_CURVES: dict[Curve, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "k256": ec.SECP256K1()}


@dataclass(frozen=True)
class SigningKey:
    """A private key that signs the atproto way: 64-byte `r || s`, low S."""

    curve: Curve
    private: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def from_seed(cls, seed: bytes | str, curve: Curve = "k256") -> SigningKey:
        """Derive the private scalar from sha256(seed), so one seed always gives one key."""
        raw = seed.encode() if isinstance(seed, str) else seed
        return _derive(raw, curve)

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.curve, self.private.public_key())

    @property
    def did_key(self) -> str:
        return self.public.did_key

    def sign(self, data: bytes) -> bytes:
        """Sign sha256(data); RFC 6979 nonces keep the output a function of the key and data."""
        der = self.private.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        r, s = decode_dss_signature(der)
        n = CURVE_ORDER[self.curve]
        # atproto rejects high-S signatures; (r, n - s) is the equivalent low-S one.
        if s > n // 2:
            s = n - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@functools.lru_cache(maxsize=4096)
def _derive(seed: bytes, curve: Curve) -> SigningKey:
    # Cached: deriving a secp256k1 key costs ~1.5 ms, and simulated accounts share keys.
    n = CURVE_ORDER[curve]
    scalar = int.from_bytes(hashlib.sha256(seed).digest(), "big") % (n - 1) + 1
    return SigningKey(curve, ec.derive_private_key(scalar, _CURVES[curve]))
