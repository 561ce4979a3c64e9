"""DAG-CBOR values -> atproto JSON, for the simulated listRecords endpoint.

Where this sits: the PDS host decodes a record block from its CAR with libipld
and returns it here before sending JSON. libipld gives CID links as raw bytes;
in atproto JSON a link is `{"$link": "bafy..."}` and plain bytes are
`{"$bytes": base64 without padding}`. The simulation never writes plain bytes
into records, so a bytes value that parses as a CID is a link.
"""

from __future__ import annotations

import base64
from typing import Any

import libipld


def _bytes_to_json(value: bytes) -> dict[str, str]:
    if value[:1] == b"\x01":
        try:
            return {"$link": str(libipld.encode_cid(value))}
        except ValueError:
            pass
    return {"$bytes": base64.b64encode(value).decode().rstrip("=")}


def to_atproto_json(value: Any) -> Any:
    """A JSON-ready copy of a decoded DAG-CBOR value."""
    if isinstance(value, dict):
        return {k: to_atproto_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_atproto_json(v) for v in value]
    if isinstance(value, bytes):
        return _bytes_to_json(value)
    return value
