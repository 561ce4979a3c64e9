"""Output schemas: the contract's columns, and the dead-letter table."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from bsky_backfill.models import DeadLetter
from bsky_backfill.records.schema import DEAD_LETTER_SCHEMA, dead_letters_table, schema_for

COMMON = ["uri", "did", "collection", "rkey", "cid", "created_at", "record"]


def test_collection_schemas() -> None:
    assert schema_for("net.example.thing").names == COMMON
    assert schema_for("app.bsky.feed.post").names == [
        *COMMON,
        "text",
        "langs",
        "reply_root_uri",
        "reply_parent_uri",
        "embed_type",
        "quote_uri",
        "quote_cid",
        "external_uri",
        "image_count",
        "mention_dids",
        "link_uris",
        "tags",
    ]
    post = schema_for("app.bsky.feed.post")
    for name in ("langs", "mention_dids", "link_uris", "tags"):
        assert post.field(name).type == pa.list_(pa.string())
    assert post.field("image_count").type == pa.int32()
    assert schema_for("app.bsky.graph.listitem").names == [*COMMON, "subject_did", "list_uri"]
    for c in ("app.bsky.feed.threadgate", "app.bsky.feed.postgate"):
        assert schema_for(c).names == [*COMMON, "post_uri"]
    for c in ("app.bsky.feed.like", "app.bsky.feed.repost"):
        assert schema_for(c).names == [*COMMON, "subject_uri", "subject_cid"]
    for c in ("app.bsky.graph.follow", "app.bsky.graph.block"):
        assert schema_for(c).names == [*COMMON, "subject_did"]
    ts = schema_for("app.bsky.feed.like").field("created_at").type
    assert ts == pa.timestamp("us", tz="UTC")


def test_dead_letters_table() -> None:
    at = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    letters = [
        DeadLetter("did:plc:a", None, "fetch", "RepoTakendown", "gone", failed_at=at),
        DeadLetter("did:plc:a", "at://did:plc:a/x.y.z/1", "validate", "InvalidRecord", "bad"),
    ]
    table = dead_letters_table(letters)
    assert table.schema == DEAD_LETTER_SCHEMA
    rows = table.to_pylist()
    assert rows[0]["uri"] is None and rows[1]["error"] == "InvalidRecord"
    assert rows[0]["failed_at"] == dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
    assert dead_letters_table([]).num_rows == 0
