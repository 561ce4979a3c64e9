"""Identifiers the simulated network mints: TIDs, CIDs, did:plc strings.

Where this sits: shared helpers below `generator.py`, `mst.py` and `car.py`.
CIDs are handled in libipld's Python form: the raw binary CID
(`0x01 codec 0x12 0x20 digest`), which `libipld.encode_dag_cbor` writes as a
tag-42 link.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import libipld

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DAY_US = 86_400_000_000
_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
_B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"

DAG_CBOR_PREFIX = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32 bytes
RAW_PREFIX = b"\x01\x55\x12\x20"  # CIDv1, raw (blobs), sha2-256, 32 bytes


# Two base32-sortable characters per 10 bits: a TID is one char + six pairs (65 bits).
_TID_PAIRS = [a + b for a in _TID_ALPHABET for b in _TID_ALPHABET]


def tid(micros: int, clock_id: int) -> str:
    """The 13-character sortable TID for a microsecond timestamp and a 10-bit clock id."""
    n = ((micros & ((1 << 53) - 1)) << 10) | (clock_id & 0x3FF)
    p = _TID_PAIRS
    return (
        _TID_ALPHABET[n >> 60]
        + p[(n >> 50) & 1023]
        + p[(n >> 40) & 1023]
        + p[(n >> 30) & 1023]
        + p[(n >> 20) & 1023]
        + p[(n >> 10) & 1023]
        + p[n & 1023]
    )


def tid_micros(value: str) -> int:
    """The microsecond timestamp inside a TID (inverse of `tid`, clock id dropped)."""
    n = 0
    for ch in value:
        n = (n << 5) | _TID_ALPHABET.index(ch)
    return n >> 10


def cid_for_block(data: bytes) -> bytes:
    """Binary CID of a DAG-CBOR block."""
    return DAG_CBOR_PREFIX + hashlib.sha256(data).digest()


def raw_cid(seed: bytes) -> bytes:
    """A blob CID (raw codec) for made-up blob content identified by `seed`."""
    return RAW_PREFIX + hashlib.sha256(seed).digest()


def cid_str(cid: bytes) -> str:
    """The base32 string form (`bafy...`)."""
    return str(libipld.encode_cid(cid))


def plc_did(seed: bytes) -> str:
    """A syntactically real did:plc (24 base32 chars) derived from `seed`.

    Real did:plc identifiers hash the signed genesis operation; ours hash the
    scenario seed instead, which keeps them stable when host ports change.
    """
    digest = hashlib.sha256(seed).digest()
    n = int.from_bytes(digest[:15], "big")  # 120 bits = 24 base32 chars
    chars = []
    for _ in range(24):
        chars.append(_B32_ALPHABET[n & 31])
        n >>= 5
    return "did:plc:" + "".join(reversed(chars))


_DAY_PREFIX: dict[int, str] = {}


def format_utc(micros: int, digits: int) -> str:
    """RFC 3339 UTC with `digits` fractional digits (0, 3, 6) and a 'Z'.

    Hand-rolled with a per-day cache: datetime + isoformat cost several times
    more, and this runs once per record.
    """
    day, rest = divmod(micros, _DAY_US)
    prefix = _DAY_PREFIX.get(day)
    if prefix is None:
        prefix = (_EPOCH + dt.timedelta(days=day)).strftime("%Y-%m-%dT")
        _DAY_PREFIX[day] = prefix
    secs, us = divmod(rest, 1_000_000)
    hours, secs = divmod(secs, 3600)
    minutes, secs = divmod(secs, 60)
    if digits == 3:
        return f"{prefix}{hours:02d}:{minutes:02d}:{secs:02d}.{us // 1000:03d}Z"
    if digits == 6:
        return f"{prefix}{hours:02d}:{minutes:02d}:{secs:02d}.{us:06d}Z"
    return f"{prefix}{hours:02d}:{minutes:02d}:{secs:02d}Z"


def datetime_to_micros(value: dt.datetime) -> int:
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
