"""Record-level rules on synthetic repos: dead letters, window edge cases, typed columns.

Repos are built with `repo.build` (a real MST over DAG-CBOR blocks), so the
whole extract_repo path runs exactly as on a fetched CAR. These tests pin the
checks made without lexicon validation (`--no-validate`); the last ones show
what validation adds, record keys of the lexicon's key type among it
(tests/records/test_lexicon_validation.py has the rest).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import libipld
import pyarrow as pa
import pytest

from bsky_backfill.models import DeadLetter, RecordFilter
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.repo.build import build_repo, cid_for

DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
POST = "app.bsky.feed.post"
T0 = "2024-05-01T10:00:00.123Z"


def post(created: Any = T0, **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"$type": POST, "text": "hi", **extra}
    if created is not None:
        rec["createdAt"] = created
    return rec


def deep(n: int) -> Any:
    value: Any = "leaf"
    for _ in range(n):
        value = [value]
    return value


RECORDS: dict[str, Any] = {
    f"{POST}/3aaaaaaaaaa22": post(langs=["en", "pt-BR"]),
    f"{POST}/3aaaaaaaaaa23": {**post(), "$type": "app.bsky.feed.like"},
    f"{POST}/3aaaaaaaaaa24": post(created=None),
    f"{POST}/3aaaaaaaaaa25": post(created="2024-02-30T00:00:00Z"),
    f"{POST}/3aaaaaaaaaa26": post(created="2024-05-01T10:00:00.123456789+05:30"),
    f"{POST}/3aaaaaaaaaa27": post(langs=[1, "en"], text=5, reply={"root": "x"}),
    f"{POST}/3aaaaaaaaaa28": post(created="2010-01-01T00:00:00Z"),
    f"{POST}/3aaaaaaaaaa29": post(created="2010-01-01"),  # invalid and "old"
    f"{POST}/3aaaaaaaaaa2a": post(blob=b"\x00\x01", nested=deep(300)),
    f"{POST}/3aaaaaaaaaa2b": post(raw=b"\x00\x01"),
    f"{POST}/bad!key": post(),
    "app.bsky.actor.profile/self": {"$type": "app.bsky.actor.profile", "displayName": "A"},
    "app.bsky.graph.follow/3aaaaaaaaab22": [1, 2],
    "app.bsky.graph.follow/3aaaaaaaaab23": {
        "$type": "app.bsky.graph.follow",
        "subject": "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb",
        "createdAt": T0,
    },
    "app.bsky.feed.like/3aaaaaaaaac22": {
        "$type": "app.bsky.feed.like",
        "subject": "not a strong ref",
        "createdAt": T0,
    },
    "net.example.thing/a": {"$type": "net.example.thing", "createdAt": "2010-01-01T00:00:00Z"},
    "net.example.thing/b": {"$type": "net.example.thing"},
    "net.example.thing/c": {"$type": "net.example.thing", "createdAt": "0000-01-01T00:00:00Z"},
    "net.example.thing/d": {"$type": "net.example.thing", "createdAt": "yesterday"},
    "net.example.unwanted/a": [1],
}
MISSING = f"app.bsky.graph.follow/{'3aaaaaaaaab24'}"
WANTED = frozenset(k.partition("/")[0] for k in RECORDS) - {"net.example.unwanted"}


@pytest.fixture(scope="module")
def car() -> bytes:
    records = {**RECORDS, MISSING: {"$type": "app.bsky.graph.follow", "x": "dropped"}}
    return build_repo(DID, records, drop=[cid_for(records[MISSING])])


def _letters(letters: list[DeadLetter]) -> dict[str, tuple[str, str]]:
    return {d.uri.partition(DID + "/")[2]: (d.stage, d.error) for d in letters if d.uri}


def test_dead_letters(car: bytes) -> None:
    x = extract_repo(car, DID, RecordFilter(WANTED, validate=False))
    assert x.records_seen == len(RECORDS) + 1
    invalid = ("validate", "InvalidRecord")
    assert _letters(x.dead_letters) == {
        f"{POST}/3aaaaaaaaaa23": invalid,
        f"{POST}/3aaaaaaaaaa24": invalid,
        f"{POST}/3aaaaaaaaaa25": invalid,
        f"{POST}/3aaaaaaaaaa29": invalid,
        f"{POST}/3aaaaaaaaaa2a": invalid,
        f"{POST}/bad!key": invalid,
        "app.bsky.graph.follow/3aaaaaaaaab22": ("decode", "InvalidRecordBlock"),
        MISSING: ("decode", "RecordBlockMissing"),
    }
    messages = {d.uri.rpartition("/")[2]: d.message for d in x.dead_letters if d.uri}
    assert "$type" in messages["3aaaaaaaaaa23"]
    assert "missing" in messages["3aaaaaaaaaa24"]
    assert "2024-02-30" in messages["3aaaaaaaaaa25"]
    assert all(d.did == DID for d in x.dead_letters)
    assert {c: t.num_rows for c, t in x.tables.items()} == {
        POST: 5,
        "app.bsky.actor.profile": 1,
        "app.bsky.graph.follow": 1,
        "app.bsky.feed.like": 1,
        "net.example.thing": 4,
    }


def test_values_and_typed_columns(car: bytes) -> None:
    x = extract_repo(car, DID, RecordFilter(WANTED, validate=False))
    posts = {r["rkey"]: r for r in x.tables[POST].to_pylist()}
    assert posts["3aaaaaaaaaa22"]["langs"] == ["en", "pt-BR"]
    # 9 fractional digits and an offset: kept, truncated to microseconds, in UTC.
    assert posts["3aaaaaaaaaa26"]["created_at"] == dt.datetime(
        2024, 5, 1, 4, 30, 0, 123456, tzinfo=dt.UTC
    )
    # Wrongly typed fields become nulls, the record column keeps them.
    odd = posts["3aaaaaaaaaa27"]
    assert (odd["text"], odd["langs"], odd["reply_root_uri"]) == (None, None, None)
    assert json.loads(odd["record"])["langs"] == [1, "en"]
    assert json.loads(posts["3aaaaaaaaaa2b"]["record"])["raw"] == {"$bytes": "AAE"}
    profile = x.tables["app.bsky.actor.profile"].to_pylist()[0]
    assert profile["created_at"] is None
    assert x.tables["app.bsky.graph.follow"].column("subject_did").to_pylist() == [
        "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
    ]
    like = x.tables["app.bsky.feed.like"].to_pylist()[0]
    assert (like["subject_uri"], like["subject_cid"]) == (None, None)
    things = x.tables["net.example.thing"]
    micros = things.column("created_at").cast(pa.int64()).to_pylist()
    year0 = -62_167_219_200 * 1_000_000
    assert dict(zip(things.column("rkey").to_pylist(), micros, strict=True)) == {
        "a": 1_262_304_000_000_000,
        "b": None,
        "c": year0,
        "d": None,  # an invalid createdAt on an unknown collection: kept, null
    }


def test_window_with_invalid_and_unknown(car: bytes) -> None:
    since = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    x = extract_repo(car, DID, RecordFilter(WANTED, since=since, validate=False))
    posts = set(x.tables[POST].column("rkey").to_pylist())
    assert "3aaaaaaaaaa28" not in posts  # valid but before the window: dropped silently
    assert f"{POST}/3aaaaaaaaaa29" in _letters(x.dead_letters)  # invalid: reported anyway
    assert "app.bsky.actor.profile" in x.tables
    # Unknown collection: dated records windowed, undated (or invalid) ones kept.
    assert sorted(x.tables["net.example.thing"].column("rkey").to_pylist()) == ["b", "d"]
    before = extract_repo(car, DID, RecordFilter(WANTED, until=since, validate=False))
    assert set(before.tables["net.example.thing"].column("rkey").to_pylist()) == {
        "a",
        "b",
        "c",
        "d",
    }
    assert set(before.tables[POST].column("rkey").to_pylist()) == {"3aaaaaaaaaa28"}


def test_unwanted_collections_are_not_touched(car: bytes) -> None:
    x = extract_repo(car, DID, RecordFilter(frozenset({"net.example.thing"})))
    assert set(x.tables) == {"net.example.thing"}
    assert x.dead_letters == []


def test_empty_repo() -> None:
    x = extract_repo(build_repo(DID, {}), DID, RecordFilter(WANTED, validate=False))
    assert (x.tables, x.dead_letters, x.records_seen, x.rev) == ({}, [], 0, "2222222222222")


def test_columns_seam_for_list_records() -> None:
    """JSON-shaped records, interleaved collections: the listRecords entry point."""
    cols = RecordColumns(DID, RecordFilter(frozenset({POST, "app.bsky.feed.like"}), validate=False))
    like = {
        "$type": "app.bsky.feed.like",
        "subject": {"uri": "at://did:plc:x/app.bsky.feed.post/1", "cid": "bafyx"},
        "createdAt": T0,
    }
    image = {"$type": "blob", "ref": {"$link": "bafkreixyz"}, "mimeType": "image/png", "size": 1}
    cols.add(POST, "3aaaaaaaaaa22", "bafya", post(embed={"image": image}))
    cols.add("app.bsky.feed.like", "3aaaaaaaaaa23", "bafyb", like)
    cols.add(POST, "3aaaaaaaaaa24", "bafyc", post())
    cols.add(POST, "3aaaaaaaaaa25", "bafyd", "not a map")
    tables, letters = cols.finish()
    posts = tables[POST].to_pylist()
    assert [p["rkey"] for p in posts] == ["3aaaaaaaaaa22", "3aaaaaaaaaa24"]
    assert [p["cid"] for p in posts] == ["bafya", "bafyc"]
    assert json.loads(posts[0]["record"])["embed"]["image"] == image
    assert tables["app.bsky.feed.like"].column("subject_cid").to_pylist() == ["bafyx"]
    assert [(d.stage, d.error) for d in letters] == [("validate", "InvalidRecord")]


def test_lexicon_validation_adds_dead_letters_that_keep_the_record(car: bytes) -> None:
    without = _letters(extract_repo(car, DID, RecordFilter(WANTED, validate=False)).dead_letters)
    x = extract_repo(car, DID, RecordFilter(WANTED))
    added = {u: d for u, d in _letters(x.dead_letters).items() if u not in without}
    assert added == {
        f"{POST}/3aaaaaaaaaa27": ("validate", "InvalidRecord"),
        f"{POST}/3aaaaaaaaaa28": ("validate", "InvalidRecord"),
        "app.bsky.feed.like/3aaaaaaaaac22": ("validate", "InvalidRecord"),
    }
    by_uri = {d.uri.partition(DID + "/")[2]: d for d in x.dead_letters if d.uri}
    # '8' is not base32-sortable: a record key, but not the TID a post's lexicon asks.
    assert by_uri[f"{POST}/3aaaaaaaaaa28"].message == (
        "record key '3aaaaaaaaaa28' is not a TID (the lexicon's key type is tid)"
    )
    like = by_uri["app.bsky.feed.like/3aaaaaaaaac22"]
    assert like.message == "subject: expected com.atproto.repo.strongRef, got string"
    assert like.cid == libipld.encode_cid(cid_for(RECORDS["app.bsky.feed.like/3aaaaaaaaac22"]))
    assert json.loads(like.record or "") == RECORDS["app.bsky.feed.like/3aaaaaaaaac22"]
    assert by_uri[f"{POST}/3aaaaaaaaaa27"].message == "text: expected a string, got integer"
    assert "app.bsky.feed.like" not in x.tables
    # A block that decoded but is not a map is kept too (stage decode).
    block = by_uri["app.bsky.graph.follow/3aaaaaaaaab22"]
    assert (block.stage, block.record) == ("decode", "[1,2]")
    assert block.cid == libipld.encode_cid(cid_for([1, 2]))
    assert (by_uri[MISSING].cid, by_uri[MISSING].record) == (None, None)


GENERATOR = {
    "$type": "app.bsky.feed.generator",
    "did": "did:web:feeds.example.com",
    "displayName": "A feed",
    "createdAt": T0,
}
SCHEMA = {"$type": "com.atproto.lexicon.schema", "lexicon": 1}
PROFILE = {"$type": "app.bsky.actor.profile", "displayName": "A"}
LIKE = {
    "$type": "app.bsky.feed.like",
    "subject": {
        "uri": f"at://{DID}/{POST}/3aaaaaaaaaa22",
        "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
    },
    "createdAt": T0,
}
KEYED: dict[str, tuple[dict[str, Any], str | None]] = {
    # key type tid
    "app.bsky.feed.like/3aaaaaaaaac22": (LIKE, None),
    "app.bsky.feed.like/3kaaaaaaaac2z": (LIKE, None),
    "app.bsky.feed.like/self": (
        LIKE,
        "record key 'self' is not a TID (the lexicon's key type is tid)",
    ),
    "app.bsky.feed.like/kaaaaaaaaac22": (LIKE, "is not a TID"),  # top bit set
    "app.bsky.feed.like/3aaaaaaaaac2": (LIKE, "is not a TID"),  # 12 characters
    "app.bsky.feed.like/3AAAAAAAAAC22": (LIKE, "is not a TID"),
    # key type literal:self
    "app.bsky.actor.profile/self": (PROFILE, None),
    "app.bsky.actor.profile/3aaaaaaaaac22": (
        PROFILE,
        "record key '3aaaaaaaaac22' is not 'self' (the lexicon's key type is literal:self)",
    ),
    "app.bsky.actor.profile/Self": (PROFILE, "is not 'self'"),
    # key type nsid
    "com.atproto.lexicon.schema/app.bsky.feed.post": (SCHEMA, None),
    "com.atproto.lexicon.schema/3aaaaaaaaac22": (
        SCHEMA,
        "record key '3aaaaaaaaac22' is not an NSID (the lexicon's key type is nsid)",
    ),
    "com.atproto.lexicon.schema/app.bsky": (SCHEMA, "is not an NSID"),
    # key type any: every valid record key
    "app.bsky.feed.generator/whats-hot": (GENERATOR, None),
    "app.bsky.feed.generator/3aaaaaaaaac22": (GENERATOR, None),
    "app.bsky.feed.generator/a:b~c_d.e": (GENERATOR, None),
    # no lexicon: no key type
    "net.example.thing/Self": ({"$type": "net.example.thing"}, None),
    # not a record key at all: the syntax's message, key type or not
    "app.bsky.feed.like/3aaaaaaaaa!22": (LIKE, "record key is not valid"),
    "net.example.thing/a!b": ({"$type": "net.example.thing"}, "record key is not valid"),
}
SYNTAX_ONLY = {"app.bsky.feed.like/3aaaaaaaaa!22", "net.example.thing/a!b"}


def test_record_keys_follow_the_lexicon_key_type() -> None:
    """Each record lexicon names its key type (tid, literal:self, nsid, any): a
    record under another key is invalid, with the rule in the message."""
    car = build_repo(DID, {key: value for key, (value, _) in KEYED.items()})
    wanted = frozenset(key.partition("/")[0] for key in KEYED)
    x = extract_repo(car, DID, RecordFilter(wanted))
    messages = {d.uri.partition(DID + "/")[2]: d.message for d in x.dead_letters if d.uri}
    assert {d.stage for d in x.dead_letters} == {"validate"}
    assert messages.keys() == {key for key, (_, why) in KEYED.items() if why is not None}
    for key, (_, why) in KEYED.items():
        if why is not None:
            assert why in messages[key], (key, messages[key])
    landed = {f"{c}/{k}" for c, t in x.tables.items() for k in t.column("rkey").to_pylist()}
    assert landed == {key for key, (_, why) in KEYED.items() if why is None}
    # --no-validate keeps only the record-key syntax.
    unchecked = extract_repo(car, DID, RecordFilter(wanted, validate=False))
    assert {d.uri.partition(DID + "/")[2] for d in unchecked.dead_letters} == SYNTAX_ONLY
    assert sum(t.num_rows for t in unchecked.tables.values()) == len(KEYED) - len(SYNTAX_ONLY)
