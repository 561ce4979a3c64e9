"""Decoded DAG-CBOR -> atproto JSON text, for the `record` column.

Where it sits in the flow: records.transform calls `to_json_bytes` once per
landed record. orjson walks the object natively; Python code runs only for
`bytes` values (via `default`), which in a decoded record are either CID links
or byte strings:

* a link becomes `{"$link": "bafy..."}` (base32 CIDv1 string),
* other bytes become `{"$bytes": "<base64, standard alphabet, no padding>"}`.

Ambiguity, on purpose: libipld decodes a CBOR link (tag 42) and a plain CBOR
byte string both to Python `bytes`, so the tag is lost. We apply the rule
`libipld.encode_dag_cbor` applies when it writes bytes back: bytes that parse
as a CID are a link. A genuine byte string that happens to parse as a CID is
therefore shown as a `$link` (and re-encodes to the same CID-linked CBOR as
libipld would produce). Records from listRecords (already JSON) hold no bytes
and pass through unchanged.
"""

from __future__ import annotations

from base64 import b64encode
from typing import Any

import libipld
import orjson

__all__ = ["RecordEncodeError", "encode_default", "to_json", "to_json_bytes"]

RecordEncodeError = orjson.JSONEncodeError
"""Raised for values JSON cannot hold (nesting deeper than 255, ints beyond 64 bits)."""

_encode_cid = libipld.encode_cid
_dumps = orjson.dumps


def encode_default(obj: Any) -> dict[str, str]:
    """orjson `default` hook: bytes -> {"$link"} or {"$bytes"} (see the module docstring)."""
    if obj.__class__ is bytes:
        try:
            return {"$link": _encode_cid(obj)}
        except ValueError:
            return {"$bytes": b64encode(obj).rstrip(b"=").decode("ascii")}
    raise TypeError(f"{type(obj).__name__} is not part of the atproto data model")


# Keys sorted: the same record must give the same text whether it came from a
# CAR (DAG-CBOR key order) or from listRecords (the server's JSON order).
_OPTIONS = orjson.OPT_SORT_KEYS


def to_json_bytes(obj: Any) -> bytes:
    """atproto JSON of a decoded value, UTF-8 encoded, keys sorted (the hot-path form)."""
    return _dumps(obj, default=encode_default, option=_OPTIONS)


def to_json(obj: Any) -> str:
    """atproto JSON of a decoded value, as text, keys sorted."""
    return _dumps(obj, default=encode_default, option=_OPTIONS).decode("utf-8")
