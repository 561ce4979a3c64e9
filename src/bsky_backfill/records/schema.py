"""Arrow schemas of the output tables: one per collection, plus dead letters.

Where it sits in the flow: records.transform builds tables in these schemas;
sinks/ writes them to `OUT/<collection>/` and `OUT/_deadletters/`. The column
set is the user-facing contract (CONTRACT.md): extend it, never bend it.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from bsky_backfill.models import DeadLetter

__all__ = [
    "COMMON_FIELDS",
    "DEAD_LETTER_SCHEMA",
    "EXTRA_FIELDS",
    "TIMESTAMP",
    "dead_letters_table",
    "schema_for",
]

TIMESTAMP = pa.timestamp("us", tz="UTC")

COMMON_FIELDS: tuple[pa.Field, ...] = (
    pa.field("uri", pa.string(), nullable=False),
    pa.field("did", pa.string(), nullable=False),
    pa.field("collection", pa.string(), nullable=False),
    pa.field("rkey", pa.string(), nullable=False),
    pa.field("cid", pa.string(), nullable=False),
    pa.field("created_at", TIMESTAMP),
    pa.field("record", pa.string(), nullable=False),
)

_SUBJECT_REF = (pa.field("subject_uri", pa.string()), pa.field("subject_cid", pa.string()))
_SUBJECT_DID = (pa.field("subject_did", pa.string()),)
_POST_URI = (pa.field("post_uri", pa.string()),)
_STRINGS = pa.list_(pa.string())

# Typed columns some collections add after the common ones (all nullable:
# a record that lacks the field, or has it in the wrong shape, gets a null).
# Each is derived from the `record` JSON by records/columns.py; how, exactly,
# is in the README ("Output") and tests/records/test_typed_columns.py holds
# every column equal to a JSON path query on `record`.
EXTRA_FIELDS: dict[str, tuple[pa.Field, ...]] = {
    "app.bsky.feed.post": (
        pa.field("text", pa.string()),
        pa.field("langs", _STRINGS),
        pa.field("reply_root_uri", pa.string()),
        pa.field("reply_parent_uri", pa.string()),
        pa.field("embed_type", pa.string()),
        pa.field("quote_uri", pa.string()),
        pa.field("quote_cid", pa.string()),
        pa.field("external_uri", pa.string()),
        pa.field("image_count", pa.int32()),
        pa.field("mention_dids", _STRINGS),
        pa.field("link_uris", _STRINGS),
        pa.field("tags", _STRINGS),
    ),
    "app.bsky.feed.like": _SUBJECT_REF,
    "app.bsky.feed.repost": _SUBJECT_REF,
    "app.bsky.graph.follow": _SUBJECT_DID,
    "app.bsky.graph.block": _SUBJECT_DID,
    "app.bsky.graph.listitem": (
        pa.field("subject_did", pa.string()),
        pa.field("list_uri", pa.string()),
    ),
    "app.bsky.feed.threadgate": _POST_URI,
    "app.bsky.feed.postgate": _POST_URI,
}

_SCHEMAS: dict[str, pa.Schema] = {}
_COMMON_SCHEMA = pa.schema(COMMON_FIELDS)


def schema_for(collection: str) -> pa.Schema:
    """The table schema for a collection (common columns + its typed ones)."""
    extra = EXTRA_FIELDS.get(collection)
    if extra is None:
        return _COMMON_SCHEMA
    schema = _SCHEMAS.get(collection)
    if schema is None:
        schema = _SCHEMAS[collection] = pa.schema(COMMON_FIELDS + extra)
    return schema


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("did", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("cid", pa.string()),  # a record's block CID, when it could be read
        pa.field("record", pa.string()),  # the record as atproto JSON, when it decoded
        pa.field("failed_at", TIMESTAMP, nullable=False),
    ]
)


def dead_letters_table(letters: Iterable[DeadLetter]) -> pa.Table:
    """Dead letters as one Arrow table in DEAD_LETTER_SCHEMA (`failed_at` normalised to UTC)."""
    rows = list(letters)
    return pa.Table.from_pydict(
        {
            "did": [d.did for d in rows],
            "uri": [d.uri for d in rows],
            "stage": [d.stage for d in rows],
            "error": [d.error for d in rows],
            "message": [d.message for d in rows],
            "cid": [d.cid for d in rows],
            "record": [d.record for d in rows],
            "failed_at": [d.failed_at for d in rows],
        },
        schema=DEAD_LETTER_SCHEMA,
    )
