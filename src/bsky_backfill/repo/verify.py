"""Verify a repository before anything from it lands: signature, tree, block hashes.

Where it sits in the flow: fetch -> read_car -> read_commit -> DID check ->
**verify_commit** -> `mst.walk_verified` (instead of `mst.walk_mst`) ->
**check_blocks** -> records.transform builds the rows. `records.transform`
drives it; `--no-verify` (RunSettings.verify False) skips all of it except the
DID check.

What is checked (atproto repository spec); every failure is a whole-repo
`RepoInvalid(code="VerificationFailed", stage="verify")` naming the reason:

* **Commit.** The signature over the DAG-CBOR of the commit without `sig`,
  against the `#atproto` key of the DID document (`did:key`, P-256 or
  secp256k1), 64-byte compact form, low-S. No key -> fail ("no #atproto key").
* **Tree** (`mst.walk_verified`). Every MST node present and a well-formed
  `{l, e}` map of `{p, k, v, t}` entries; keys strictly ascending over the
  whole walk; prefix compression consistent (`p` within the previous key and
  maximal); every key's height (leading zero 2-bit chunks of sha256(key),
  fanout 4) equal to its node's layer, each subtree one layer down.
* **Block hashes.** The commit, every MST node and every record that would
  land must hash (sha2-256, from the raw bytes of the CAR frame) to its CID.
  Unreachable leftovers of old exports and records of unwanted collections
  are not used, so they never fail a repo. When the used blocks are most of
  the CAR, every frame is hashed in one tight loop (cheaper than testing each
  for use); otherwise only the used ones.

Legacy commits (version 2, the 2023 format without `rev`) are accepted: the
network carried them until the v3 migration, and the fixtures hold signed
ones. Some of their signatures are high-S (P-256 signatures of early Go PDSes
predate the low-S rule), so for version 2 only a high-S signature is accepted;
each such repo is logged. Version 3 commits need low-S.

Record blocks that are absent or not valid DAG-CBOR are not a verification
failure: such a record cannot land, so `records.transform` dead-letters it
alone (stage decode) and the rest of the repo, still provably signed, lands.

secp256k1 signatures are checked with coincurve (libsecp256k1): ~40 us against
~400 us for OpenSSL's generic curve code, which would dominate small repos.
P-256 goes through `cryptography` (`identity.didkey`). Parsed keys are cached.
"""

from __future__ import annotations

import functools
import hashlib
import logging

import coincurve
import libipld
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.identity.didkey import (
    CURVE_ORDER,
    KeyParseError,
    PublicKey,
    parse_did_key,
    verify_signature,
)
from bsky_backfill.repo import native
from bsky_backfill.repo.car import DAG_CBOR_SHA256, CarBlocks, read_frame, read_varint
from bsky_backfill.repo.commit import Commit
from bsky_backfill.repo.mst import key_height, walk_verified

__all__ = [
    "check_blocks",
    "check_signature",
    "failed",
    "key_height",
    "mismatched_blocks",
    "verify_commit",
    "walk_verified",
]

log = logging.getLogger("bsky_backfill.verify")

_sha256 = hashlib.sha256
_K256_ORDER = CURVE_ORDER["k256"]


def failed(reason: str) -> RepoInvalid:
    """The one error verification raises: the repo is dead-lettered whole."""
    return RepoInvalid(reason, code="VerificationFailed", stage="verify")


# -- block hashes -------------------------------------------------------------


def check_blocks(data: bytes, car: CarBlocks, nodes: set[bytes], records: list[bytes]) -> None:
    """Fail unless the commit, every MST node and every landing record hash to their CIDs.

    `nodes` are the MST node CIDs the walk opened, `records` the CIDs of the
    records that would land. When they are most of the CAR (the usual getRepo
    with the default collections) every frame is hashed, which saves a
    membership test per block; otherwise only the used ones are.
    """
    used = 1 + len(nodes) + len(records)
    if used * 4 >= len(car.blocks) * 3:
        bad = mismatched_blocks(data)
    else:
        bad = mismatched_blocks(data, {car.root, *nodes, *records})
    if not bad:
        return
    if car.root in bad:
        raise failed("the commit block does not match its CID")
    if not bad.isdisjoint(nodes):
        raise failed("an MST node block does not match its CID")
    for cid in records:
        if cid in bad:
            raise failed(f"record block {libipld.encode_cid(cid)} does not match its CID")


def mismatched_blocks(data: bytes, only: set[bytes] | None = None) -> set[bytes]:
    """CIDs of the CAR's blocks (all, or those in `only`) whose bytes do not hash to them.

    A CID that is not sha2-256 cannot be checked and counts as mismatched.
    The loop is written for the common frame (1-2 byte length, 36-byte
    dag-cbor/sha2-256 CID): a slice, a hash and a compare per block; anything
    else takes the general `read_frame` path. The C twin (repo/native.py) does
    the common case in one call.
    """
    if native.mismatched is not None:
        found = native.mismatched(data, only)
        if found is not None:
            return found
    return _mismatched_py(data, only)


def _mismatched_py(data: bytes, only: set[bytes] | None) -> set[bytes]:
    """`mismatched_blocks` in Python (any CAR; the reference for the C loop)."""
    try:
        length, pos = read_varint(data, 0)
    except ValueError as e:
        raise failed(f"unreadable CAR framing: {e}") from e
    pos += length
    end = len(data)
    bad: set[bytes] = set()
    sha = _sha256
    prefix = DAG_CBOR_SHA256
    while pos < end:
        b = data[pos]
        if b < 0x80:
            start = pos + 1
            stop = start + b
        elif pos + 1 < end and data[pos + 1] < 0x80:
            start = pos + 2
            stop = start + ((b & 0x7F) | (data[pos + 1] << 7))
        else:
            pos = _check_frame(data, pos, bad, only)
            continue
        mid = start + 36
        if only is None:
            if stop > end or data[start:mid] != prefix + sha(data[mid:stop]).digest():
                stop = _check_frame(data, pos, bad, only)
        else:
            cid = data[start:mid]
            if cid in only:
                if stop > end or cid != prefix + sha(data[mid:stop]).digest():
                    stop = _check_frame(data, pos, bad, only)
            elif not cid.startswith(prefix):  # another CID form: maybe a used one
                stop = _check_frame(data, pos, bad, only)
        pos = stop
    if pos != end:
        raise failed("unreadable CAR framing: the last block runs past the end")
    return bad


def _check_frame(data: bytes, pos: int, bad: set[bytes], only: set[bytes] | None) -> int:
    """The general path for one frame: any CID form; returns where the next frame starts."""
    try:
        cid, start, stop = read_frame(data, pos)
    except ValueError as e:
        raise failed(f"unreadable CAR framing: {e}") from e
    if only is not None and cid not in only:
        return stop
    # CIDv1 (0x01 ...) or CIDv0 (bare multihash); multihash sha2-256 = 0x12 0x20 + digest.
    is_sha256 = cid[-34:-32] == b"\x12\x20" and (cid[0] == 1 or len(cid) == 34)
    if not is_sha256 or _sha256(data[start:stop]).digest() != cid[-32:]:
        bad.add(cid)
    return stop


# -- commit signature ---------------------------------------------------------


@functools.lru_cache(maxsize=16384)
def _load_key(did_key: str) -> tuple[PublicKey, coincurve.PublicKey | None]:
    """Parse a did:key once: (the key, its libsecp256k1 form when secp256k1)."""
    pub = parse_did_key(did_key)
    fast = coincurve.PublicKey(pub.compressed) if pub.curve == "k256" else None
    return pub, fast


def check_signature(did_key: str, data: bytes, sig: bytes, *, allow_high_s: bool = False) -> bool:
    """Whether `sig` (64-byte r||s) signs `data` under `did_key`; KeyParseError if unusable.

    Same rules as `identity.didkey.verify_signature` (which P-256 goes through);
    secp256k1 goes through libsecp256k1, which only accepts low-S: a high-S
    signature is normalised first when `allow_high_s`.
    """
    pub, fast = _load_key(did_key)
    if fast is None:
        return verify_signature(pub, data, sig, allow_high_s=allow_high_s)
    if len(sig) != 64:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < _K256_ORDER and 0 < s < _K256_ORDER):
        return False
    if s > _K256_ORDER // 2:
        if not allow_high_s:
            return False
        s = _K256_ORDER - s  # (r, n-s) is the same signature in low-S form
    try:
        return bool(fast.verify(encode_dss_signature(r, s), data))
    except (ValueError, TypeError):
        return False


def verify_commit(car: CarBlocks, commit: Commit, signing_key: str | None) -> None:
    """Check the commit's signature against `signing_key`; raise `failed(...)` if it is wrong.

    (The commit block's hash is checked with the others, by `check_blocks`.)
    """
    if signing_key is None:
        raise failed("no #atproto key in the DID document")
    raw = car.commit
    sig = raw.get("sig")
    if sig.__class__ is not bytes:
        raise failed("the commit carries no signature")
    unsigned = {k: v for k, v in raw.items() if k != "sig"}
    try:
        payload: bytes = libipld.encode_dag_cbor(unsigned)
    except (ValueError, TypeError, OverflowError) as e:
        raise failed(f"the commit cannot be re-encoded for its signature: {e}") from e
    legacy = commit.version == 2
    try:
        valid = check_signature(signing_key, payload, sig, allow_high_s=legacy)
    except KeyParseError as e:
        raise failed(f"unusable #atproto key {signing_key!r:.80}: {e}") from e
    if not valid:
        raise failed("the commit signature does not verify against the #atproto key")
    if legacy:
        log.info("%s: legacy version-2 commit accepted (high-S signatures allowed)", commit.did)
