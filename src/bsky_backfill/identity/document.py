"""Read a DID document: the `#atproto_pds` endpoint and the `#atproto` signing key.

Where it sits: identity resolution (resolver.py: did:plc and did:web) fetches
a document; this module picks the two things the backfill needs out of it.
Services and keys are chosen by their `id` fragment, never by position: real
documents list other services first.

The signing key is normalised to a `did:key:z...` string (what verification
later parses), also for the legacy `EcdsaSecp256k1VerificationKey2019` /
`EcdsaSecp256r1VerificationKey2019` forms, whose multibase holds a bare
(possibly uncompressed) point without a multicodec prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import libipld

from bsky_backfill.errors import ResolveError

# Multicodec varint prefixes of did:key public keys.
_K256_PREFIX = b"\xe7\x01"
_P256_PREFIX = b"\x80\x24"
_LEGACY_PREFIXES = {
    "EcdsaSecp256k1VerificationKey2019": _K256_PREFIX,
    "EcdsaSecp256r1VerificationKey2019": _P256_PREFIX,
}


@dataclass(frozen=True, slots=True)
class DidDocInfo:
    """What the backfill takes from a DID document."""

    did: str
    pds: str
    signing_key: str | None
    handle: str | None


def _fragment_matches(entry_id: object, did: str, fragment: str) -> bool:
    return isinstance(entry_id, str) and entry_id in (f"#{fragment}", f"{did}#{fragment}")


def _compress_point(point: bytes) -> bytes:
    """SEC1 uncompressed (0x04|x|y) -> compressed (0x02/0x03|x); compressed passes through."""
    if len(point) == 65 and point[0] == 4:
        x, y = point[1:33], point[33:]
        return bytes([2 + (y[-1] & 1)]) + x
    return point


def signing_key_from_method(method: dict[str, Any]) -> str | None:
    """One verificationMethod entry -> `did:key:z...`, or None when unusable."""
    multibase = method.get("publicKeyMultibase")
    if not isinstance(multibase, str) or not multibase.startswith("z") or len(multibase) > 256:
        return None
    kind = method.get("type")
    if kind == "Multikey":
        return f"did:key:{multibase}"
    prefix = _LEGACY_PREFIXES.get(kind) if isinstance(kind, str) else None
    if prefix is None:
        return None
    try:
        _, raw = libipld.decode_multibase(multibase)
    except ValueError:
        return None
    return "did:key:" + libipld.encode_multibase("z", prefix + _compress_point(bytes(raw)))


def _entries(doc: dict[str, Any], name: str) -> list[Any]:
    """A list-valued field; anything else (a number, a map, true) counts as absent."""
    value = doc.get(name)
    return value if isinstance(value, list) else []


def parse_did_document(did: str, doc: object) -> DidDocInfo:
    """Validate a DID document for `did` and pull out endpoint and key.

    Raises ResolveError (terminal, stage resolve) when the document is not for
    this DID or has no usable `#atproto_pds` service, and nothing else: a
    document is a stranger's JSON, and any shape of it maps to a code here.
    """
    try:
        return _parse(did, doc)
    except ResolveError:
        raise
    except Exception as e:  # a shape nobody foresaw: still the document's fault
        raise ResolveError(
            f"DID document cannot be read ({type(e).__name__}: {e})", code="InvalidDidDocument"
        ) from e


def _parse(did: str, doc: object) -> DidDocInfo:
    if not isinstance(doc, dict):
        raise ResolveError("DID document is not a JSON object", code="InvalidDidDocument")
    if doc.get("id") != did:
        raise ResolveError(
            f"DID document id {doc.get('id')!r:.200} does not match {did}",
            code="InvalidDidDocument",
        )
    pds: str | None = None
    for service in _entries(doc, "service"):
        if not isinstance(service, dict):
            continue
        if _fragment_matches(service.get("id"), did, "atproto_pds"):
            endpoint = service.get("serviceEndpoint")
            if isinstance(endpoint, str) and endpoint:
                pds = endpoint.rstrip("/")
            break
    if pds is None:
        raise ResolveError("DID document has no #atproto_pds service", code="NoPdsEndpoint")
    if len(pds) > 2048:
        raise ResolveError("the #atproto_pds endpoint is too long", code="InvalidEndpoint")
    key: str | None = None
    for method in _entries(doc, "verificationMethod"):
        if isinstance(method, dict) and _fragment_matches(method.get("id"), did, "atproto"):
            key = signing_key_from_method(method)
            break
    handle = None
    for aka in _entries(doc, "alsoKnownAs"):
        if isinstance(aka, str) and aka.startswith("at://"):
            handle = aka[5:]
            break
    return DidDocInfo(did=did, pds=pds, signing_key=key, handle=handle)
