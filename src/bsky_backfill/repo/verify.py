"""Verify a repository before anything from it lands: signature, tree, block hashes.

Where it sits in the flow: fetch -> read_car -> read_commit -> (DID check) ->
**verify_commit** -> **walk_verified** (instead of `mst.walk_mst`) ->
records.transform, which also refuses a landing record whose block is in the
`mismatched_blocks` set. `--no-verify` skips all of it except the DID check.

What is checked (atproto repository spec), every failure a whole-repo
`RepoInvalid(code="VerificationFailed", stage="verify")` naming the reason:

* **Block hashes.** Every block of the CAR is re-hashed from its raw bytes
  (sha2-256, the hash of every atproto CID) in one pass over the CAR framing;
  blocks that do not match are remembered, and the repo fails as soon as one
  of them is *used*: the commit, an MST node, or a record that would land.
  Unreachable leftovers of old exports, and records of unwanted collections,
  never fail a repo. Hashing everything in one tight loop costs less than
  building an index to hash only the used blocks (measured; see README).
* **Commit.** The signature over the DAG-CBOR of the commit without `sig`,
  against the `#atproto` key of the DID document (`did:key`, P-256 or
  secp256k1), 64-byte compact form, low-S. No key -> fail ("no #atproto key").
* **Tree.** Every MST node present, a well-formed `{l, e}` map whose entries
  are `{p, k, v, t}`; keys strictly ascending over the whole walk; prefix
  compression consistent (`p` at most the previous key's length and maximal);
  every key's height (leading zero 2-bit chunks of sha256(key), fanout 4)
  equal to its node's layer, each subtree exactly one layer down.

Legacy commits (version 2, the 2023 format without `rev`) are accepted: the
network carried them until the v3 migration, and the fixtures hold signed
ones. Their signatures may be high-S (P-256 signatures of early Go PDSes
predate the low-S rule), so for version 2 only a high-S signature is accepted;
each such repo is logged. Version 3 commits need low-S.

Record blocks that are absent or not valid DAG-CBOR are not a verification
failure: such a record cannot land, so `records.transform` dead-letters it
alone (stage decode) and the rest of the repo, still provably signed, lands.

secp256k1 signatures are checked with coincurve (libsecp256k1): ~40 us against
~400 us for OpenSSL's generic curve code, which would dominate small repos.
P-256 uses `cryptography` via `identity.didkey`. Parsed keys are cached.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

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
from bsky_backfill.repo.car import DAG_CBOR_SHA256, CarBlocks, read_frame, read_varint
from bsky_backfill.repo.commit import Commit

__all__ = [
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


def mismatched_blocks(data: bytes) -> set[bytes]:
    """CIDs of the CAR's blocks whose bytes do not hash to them (usually empty).

    A CID that is not sha2-256 cannot be checked and counts as mismatched.
    The loop is written for the common frame (1-2 byte length, 36-byte
    dag-cbor/sha2-256 CID): one slice, one hash, one compare per block;
    anything else takes the general `read_frame` path.
    """
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
            stop = _check_frame(data, pos, bad)
            pos = stop
            continue
        mid = start + 36
        if stop > end or data[start:mid] != prefix + sha(data[mid:stop]).digest():
            stop = _check_frame(data, pos, bad)
        pos = stop
    return bad


def _check_frame(data: bytes, pos: int, bad: set[bytes]) -> int:
    """The general path for one frame: any CID form; returns where the next frame starts."""
    try:
        cid, start, stop = read_frame(data, pos)
    except ValueError as e:
        raise failed(f"unreadable CAR framing: {e}") from e
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


def verify_commit(car: CarBlocks, commit: Commit, signing_key: str | None, bad: set[bytes]) -> None:
    """Check the commit block's hash and signature; raise `failed(...)` if either is wrong."""
    if car.root in bad:
        raise failed("the commit block does not match its CID")
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


# -- MST structure ------------------------------------------------------------


def key_height(key: bytes) -> int:
    """MST layer of a key: leading zero 2-bit chunks of sha256(key) (fanout 4)."""
    n = int.from_bytes(_sha256(key).digest(), "big")
    return (256 - n.bit_length()) >> 1


def walk_verified(
    blocks: Mapping[bytes, Any], root: bytes, bad: set[bytes]
) -> Iterator[tuple[str, bytes]]:
    """Like `mst.walk_mst` (every `(key, value CID)` in key order), checking the tree as it goes.

    Raises `failed(...)` on a node that is missing, mismatched, malformed,
    reached twice, at the wrong layer, or holds keys out of order, with a
    wrongly compressed prefix or of the wrong height.
    """
    # Stack items: (layer | None, node CID) still to open, or (key, value CID)
    # leaves to yield (told apart by the key being a str). Opening a node pushes
    # its children in reverse, so popping visits the tree in key order. Layer
    # None: not known yet (the root's comes from its first key).
    stack: list[tuple[Any, bytes]] = [(None, root)]
    seen: set[bytes] = set()
    last = ""
    sha = _sha256
    while stack:
        item = stack.pop()
        if item[0].__class__ is str:
            key = item[0]
            if key <= last:
                raise failed(f"MST keys out of order: {key!r:.200} after {last!r:.200}")
            last = key
            yield item
            continue
        layer, cid = item
        if cid in seen:
            raise failed("an MST node is reached twice")
        seen.add(cid)
        if bad and cid in bad:
            raise failed("an MST node block does not match its CID")
        node = blocks.get(cid)
        if node is None:
            raise failed("an MST node is missing from the CAR")
        if node.__class__ is not dict or len(node) != 2 or "e" not in node or "l" not in node:
            raise failed(f"malformed MST node: {node!r:.200}")
        entries = node["e"]
        left = node["l"]
        if entries.__class__ is not list or (left is not None and left.__class__ is not bytes):
            raise failed(f"malformed MST node: {node!r:.200}")
        if not entries:
            if left is None and cid != root:
                raise failed("an MST node below the root is empty")
        elif layer is None:
            layer = _first_key_height(entries)
        child = None if layer is None else layer - 1
        pending: list[tuple[Any, bytes]] = []
        subtrees = False
        prev = b""
        for e in entries:
            try:
                if e.__class__ is not dict or len(e) != 4:
                    raise KeyError
                p = e["p"]
                k = e["k"]
                v = e["v"]
                t = e["t"]
            except KeyError:
                raise failed(f"malformed MST entry: {e!r:.200}") from None
            if (
                p.__class__ is not int
                or k.__class__ is not bytes
                or v.__class__ is not bytes
                or (t is not None and t.__class__ is not bytes)
                or not 0 <= p <= len(prev)
            ):
                raise failed(f"malformed MST entry: {e!r:.200}")
            if p < len(prev) and k and k[0] == prev[p]:
                raise failed(f"MST key prefix not fully compressed: {e!r:.200}")
            prev = prev[:p] + k
            # Most keys sit on layer 0: height 0 = the first 2 bits of the hash not zero.
            if layer == 0:
                if sha(prev).digest()[0] < 0x40:
                    raise failed(f"MST key {prev!r:.200} is not on layer 0")
            elif key_height(prev) != layer:
                raise failed(f"MST key {prev!r:.200} is not on layer {layer}")
            try:
                pending.append((prev.decode("ascii"), v))
            except UnicodeDecodeError:
                raise failed(f"MST key is not ASCII: {prev!r:.200}") from None
            if t is not None:
                pending.append((child, t))
                subtrees = True
        if left is not None:
            subtrees = True
        if subtrees and child is not None and child < 0:
            raise failed("an MST node on layer 0 has a subtree")
        pending.reverse()
        stack += pending
        if left is not None:
            stack.append((child, left))


def _first_key_height(entries: list[Any]) -> int:
    first = entries[0]
    k = first.get("k") if first.__class__ is dict else None
    if k.__class__ is not bytes or first.get("p") != 0:
        raise failed(f"malformed first MST entry: {first!r:.200}")
    return key_height(k)
