"""Lexicon validation (records/validate.py) against upstream vectors and real repos.

* the interop record-data vectors (valid / invalid records of the catalog
  lexicon) drive the compiler itself;
* the interop syntax files drive every string format through a compiled lexicon;
* every record of the shared fixtures' CARs validates, except the legacy 2023
  follows of divy.repo.car (`subject: {did, declarationCid}`);
* a hand-made table of invalid records, one per rule, fails with the expected path;
* the bundled lexicons are the upstream files, shipped with the package.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import pytest

from bsky_backfill.models import RecordFilter
from bsky_backfill.records import formats
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.records.validate import (
    compile_pairs,
    compile_records,
    grapheme_count,
    known_record_types,
    load_lexicons,
    validator_for,
)
from bsky_backfill.records.validate_codegen import _COMMON
from bsky_backfill.repo.build import build_repo, cid_for
from bsky_backfill.repo.car import read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.mst import walk_mst
from tests.fixture_paths import CARS, INTEROP, LEXICONS

LEXICON_VECTORS = INTEROP / "lexicon"
SYNTAX = INTEROP / "syntax"
DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
T0 = "2024-05-01T10:00:00.000Z"
CID = "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
POST_URI = "at://did:plc:bbbbbbbbbbbbbbbbbbbbbbbb/app.bsky.feed.post/3aaaaaaaaaa22"


def _catalog() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in (LEXICON_VECTORS / "catalog").glob("*.json"):
        doc = json.loads(path.read_text())
        docs[doc["id"]] = doc
    return docs


def _vectors(name: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((LEXICON_VECTORS / name).read_text())
    return cases


@pytest.mark.parametrize("case", _vectors("record-data-valid.json"), ids=lambda c: c["name"])
def test_interop_valid_records(case: dict[str, Any]) -> None:
    validate = compile_records(_catalog())[case["data"]["$type"]]
    assert validate(case["data"]) is None


@pytest.mark.parametrize("case", _vectors("record-data-invalid.json"), ids=lambda c: c["name"])
def test_interop_invalid_records(case: dict[str, Any]) -> None:
    validate = compile_records(_catalog())[case["data"]["$type"]]
    assert validate(case["data"]) is not None


FORMATS = {
    "did": "did",
    "handle": "handle",
    "nsid": "nsid",
    "tid": "tid",
    "recordkey": "record-key",
    "aturi": "at-uri",
    "datetime": "datetime",
    "cid": "cid",
    "language": "language",
    "atidentifier": "at-identifier",
    "uri": "uri",
}


def _lines(name: str) -> list[str]:
    text = (SYNTAX / name).read_text(encoding="utf-8")
    return [ln for ln in text.split("\n") if ln and not ln.startswith("#")]


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_string_formats_follow_the_interop_syntax_files(kind: str) -> None:
    fmt = FORMATS[kind]
    doc = {
        "lexicon": 1,
        "id": "example.format.record",
        "defs": {
            "main": {
                "type": "record",
                "record": {
                    "type": "object",
                    "required": ["v"],
                    "properties": {"v": {"type": "string", "format": fmt}},
                },
            }
        },
    }
    validate = compile_records({"example.format.record": doc})["example.format.record"]
    valid = _lines(f"{kind}_syntax_valid.txt")
    invalid = _lines(f"{kind}_syntax_invalid.txt")
    if kind in ("datetime", "language"):  # the lexicon format is the full parse
        invalid += _lines(f"{kind}_parse_invalid.txt")
    assert valid and invalid
    assert [v for v in valid if validate({"v": v}) is not None] == []
    wrongly_valid = [v for v in invalid if validate({"v": v}) is None]
    assert wrongly_valid == []
    assert validate({"v": "\x00"}) == f"v: '\\x00' is not a valid {fmt}"
    # The generated fast path's always-valid shapes are subsets of the format.
    common = _COMMON.get(fmt)
    if common is not None:
        assert [v for v in invalid if common.fullmatch(v)] == []
        samples = [*valid, "did:plc:outsidenetwork000000000", "did:web:a.b-c.example"]
        samples += ["https://e.com/a?b=c#d", "http://x", "https://" + "é" * 3000]
        if fmt == "at-uri":
            samples = [f"at://{d}/app.bsky.feed.post/3k-x_y:z~" for d in samples[-2:]]
        checker = formats.PYTHON[fmt]  # the regexes serve only the Python checks
        assert [v for v in samples if common.fullmatch(v) and not checker(v)] == []


def _agree(pairs: dict[str, Any], nsid: str, record: Any) -> None:
    """The generated check and the explaining closures give the same verdict."""
    fast, explain = pairs[nsid]
    assert fast(record) is (explain(record) is None), (nsid, record)


# The generated code differs with the format checks: with the C ones a plain
# call, with the Python ones (no compiler) memories and regex pre-tests.
CHECKS = pytest.mark.parametrize(
    "checks", [formats.FORMATS, formats.PYTHON], ids=["in-use", "python"]
)


@CHECKS
def test_generated_checks_agree_with_the_explaining_closures(
    checks: dict[str, Callable[[str], bool]],
) -> None:
    n = 0
    catalog = _catalog()
    for trust in (False, True):
        pairs = compile_pairs(catalog, trust_created_at=trust, formats=checks)
        for name in ("record-data-valid.json", "record-data-invalid.json"):
            for case in _vectors(name):
                _agree(pairs, case["data"]["$type"], case["data"])
                n += 1
        bundled = compile_pairs(load_lexicons(), trust_created_at=trust, formats=checks)
        for collection, record, _message in INVALID:
            _agree(bundled, collection, record)
            n += 1
        for path in sorted(CARS.glob("*/*.car")):
            if path.name == "repo_slice.car":
                continue
            for collection, _rkey, record in _car_records(path):
                if collection in bundled and record.__class__ is dict:
                    _agree(bundled, collection, record)
                    n += 1
    assert n > 2000


def _car_records(path: Any) -> list[tuple[str, str, Any]]:
    car = read_car(path.read_bytes())
    commit = read_commit(car)
    out = []
    for key, cid in walk_mst(car.blocks, commit.data):
        collection, _, rkey = key.partition("/")
        out.append((collection, rkey, car.blocks.get(cid)))
    return out


def test_every_fixture_car_record_validates_except_legacy_follows() -> None:
    checked = 0
    failures = {}
    for path in sorted(CARS.glob("*/*.car")):
        if path.name == "repo_slice.car":  # deliberately partial: its MST does not walk
            continue
        for collection, rkey, record in _car_records(path):
            validate = validator_for(collection)
            if validate is None or record.__class__ is not dict:
                continue
            checked += 1
            problem = validate(record)
            if problem is not None:
                failures[f"{path.name}:{collection}/{rkey}"] = (problem, record)
    assert checked >= 990
    assert {k.partition("/")[0] for k in failures} == {"divy.repo.car:app.bsky.graph.follow"}
    assert len(failures) == 5
    for problem, record in failures.values():
        assert problem == "subject: expected a did string, got object"
        assert set(record["subject"]) == {"did", "declarationCid"}  # the 2023 shape


def test_listrecords_shaped_fixture_records_validate() -> None:
    """JSON-shaped records: valid, except createdAt without a timezone (Python SDK tests)."""
    xrpc = CARS.parent / "xrpc-responses"
    checked = 0
    naive = []
    for path in sorted(xrpc.glob("*/*.json")):
        body = json.loads(path.read_text())
        entries = body.get("records", [body]) if isinstance(body, dict) else []
        for entry in entries:
            value, uri = entry.get("value"), entry.get("uri", "")
            collection = uri.split("/")[3] if uri.count("/") >= 4 else None
            validate = validator_for(collection) if collection else None
            if validate is None or not isinstance(value, dict):
                continue
            if value.get("$type") != collection or "custom" in path.name:
                continue
            checked += 1
            problem = validate(value)
            if problem is not None and "is not a valid datetime" in problem:
                when = value["createdAt"]
                assert not when.endswith("Z") and "+" not in when and when.count("-") == 2
                naive.append(path.name)
                continue
            assert problem is None, (path.name, uri, problem)
    assert checked >= 5
    assert sorted(set(naive)) == [
        "extended_like_record.json",
        "extended_post_record.json",
        "feed_record.json",
        "like_record.json",
    ]


def _image(**over: Any) -> dict[str, Any]:
    blob = {"$type": "blob", "ref": {"$link": CID}, "mimeType": "image/jpeg", "size": 1000}
    return {"image": {**blob, **over}, "alt": ""}


POST = {"$type": "app.bsky.feed.post", "text": "hi", "createdAt": T0}
STRONG = {"uri": POST_URI, "cid": CID}

# (collection, record, expected message): one hand-made invalid record per rule.
INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "app.bsky.feed.like",
        {"$type": "app.bsky.feed.like", "subject": POST_URI, "createdAt": T0},
        "subject: expected com.atproto.repo.strongRef, got string",
    ),
    (
        "app.bsky.feed.like",
        {"$type": "app.bsky.feed.like", "subject": {"uri": POST_URI}, "createdAt": T0},
        "subject.cid: required property missing",
    ),
    (
        "app.bsky.graph.follow",
        {"$type": "app.bsky.graph.follow", "subject": "alice.example.com", "createdAt": T0},
        "subject: 'alice.example.com' is not a valid did",
    ),
    ("app.bsky.feed.post", {**POST, "text": 5}, "text: expected a string, got integer"),
    (
        "app.bsky.feed.post",
        {**POST, "text": "x" * 3001},
        "text: string is 3001 bytes long, maxLength is 3000",
    ),
    (
        "app.bsky.feed.post",
        {**POST, "text": "é" * 301},
        "text: string is 301 graphemes long, maxGraphemes is 300",
    ),
    ("app.bsky.feed.post", {**POST, "langs": ["en", "x"]}, "langs[1]: 'x' is not a valid language"),
    (
        "app.bsky.feed.post",
        {**POST, "langs": ["en"] * 4},
        "langs: array has 4 items, maxLength is 3",
    ),
    ("app.bsky.feed.post", {**POST, "tags": "x"}, "tags: expected an array, got string"),
    (
        "app.bsky.feed.post",
        {**POST, "createdAt": "2024-05-01"},
        "createdAt: '2024-05-01' is not a valid datetime",
    ),
    (
        "app.bsky.feed.post",
        {**POST, "reply": {"root": STRONG, "parent": {"uri": "http://x", "cid": CID}}},
        "reply.parent.uri: 'http://x' is not a valid at-uri",
    ),
    (
        "app.bsky.feed.post",
        {**POST, "reply": {"root": STRONG, "parent": {"uri": POST_URI, "cid": "x!"}}},
        "reply.parent.cid: 'x!' is not a valid cid",
    ),
    (
        "app.bsky.feed.post",
        {**POST, "embed": {"images": [_image()]}},
        "embed: union member has no $type (expected one of app.bsky.embed.images, "
        "app.bsky.embed.video, app.bsky.embed.gallery, app.bsky.embed.external, "
        "app.bsky.embed.record, app.bsky.embed.recordWithMedia)",
    ),
    (
        "app.bsky.feed.post",
        {**POST, "embed": {"$type": "app.bsky.embed.images", "images": [_image(size="1")]}},
        "embed.images[0].image: blob size is missing or not a non-negative integer",
    ),
    (
        "app.bsky.feed.post",
        {
            **POST,
            "embed": {"$type": "app.bsky.embed.images", "images": [_image(mimeType="text/plain")]},
        },
        "embed.images[0].image: blob mimeType 'text/plain' is not one of ['image/*']",
    ),
    (
        "app.bsky.feed.post",
        {**POST, "embed": {"$type": "app.bsky.embed.images", "images": [_image(size=10**9)]}},
        "embed.images[0].image: blob is 1000000000 bytes, maxSize is 2000000",
    ),
    (
        "app.bsky.feed.post",
        {**POST, "embed": {"$type": "app.bsky.embed.images", "images": [_image()] * 5}},
        "embed.images: array has 5 items, maxLength is 4",
    ),
    (
        "app.bsky.feed.post",
        {**POST, "embed": {"$type": "app.bsky.embed.record", "record": {"uri": POST_URI}}},
        "embed.record.cid: required property missing",
    ),
    (
        "app.bsky.feed.post",
        {
            **POST,
            "facets": [
                {
                    "index": {"byteStart": -1, "byteEnd": 2},
                    "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": "a"}],
                }
            ],
        },
        "facets[0].index.byteStart: -1 is less than minimum 0",
    ),
    (
        "app.bsky.feed.post",
        {
            **POST,
            "facets": [
                {
                    "index": {"byteStart": 0, "byteEnd": True},
                    "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": "a"}],
                }
            ],
        },
        "facets[0].index.byteEnd: expected an integer, got boolean",
    ),
    (
        "app.bsky.feed.post",
        {
            **POST,
            "facets": [
                {
                    "index": {"byteStart": 0, "byteEnd": 2},
                    "features": [{"$type": "app.bsky.richtext.facet#mention", "did": "bob"}],
                }
            ],
        },
        "facets[0].features[0].did: 'bob' is not a valid did",
    ),
    (
        "app.bsky.feed.post",
        {**POST, "labels": {"$type": "com.atproto.label.defs#selfLabels", "values": [{}]}},
        "labels.values[0].val: required property missing",
    ),
    (
        "app.bsky.feed.generator",
        {
            "$type": "app.bsky.feed.generator",
            "did": "did:web:x.com",
            "displayName": "g",
            "createdAt": T0,
            "acceptsInteractions": "yes",
        },
        "acceptsInteractions: expected a boolean, got string",
    ),
    (
        "app.bsky.feed.threadgate",
        {
            "$type": "app.bsky.feed.threadgate",
            "post": POST_URI,
            "createdAt": T0,
            "allow": [{"list": POST_URI}],
        },
        "allow[0]: union member has no $type (expected one of "
        "app.bsky.feed.threadgate#mentionRule, app.bsky.feed.threadgate#followerRule, "
        "app.bsky.feed.threadgate#followingRule, "
        "app.bsky.feed.threadgate#listRule)",
    ),
    (
        "app.bsky.graph.listitem",
        {"$type": "app.bsky.graph.listitem", "subject": "did:plc:x", "createdAt": T0},
        "list: required property missing",
    ),
    (
        "app.bsky.actor.profile",
        {"$type": "app.bsky.actor.profile", "avatar": "https://x/a.png"},
        "avatar: expected a blob, got string",
    ),
    (
        "app.bsky.actor.profile",
        {"$type": "app.bsky.actor.profile", "pinnedPost": {"uri": POST_URI, "cid": b"\x01"}},
        "pinnedPost.cid: expected a cid string, got bytes",
    ),
    (
        "chat.bsky.actor.declaration",
        {"$type": "chat.bsky.actor.declaration", "allowIncoming": 1},
        "allowIncoming: expected a string, got integer",
    ),
    (
        "com.atproto.lexicon.schema",
        {"$type": "com.atproto.lexicon.schema"},
        "lexicon: required property missing",
    ),
]


@pytest.mark.parametrize(("collection", "record", "message"), INVALID, ids=lambda v: str(v)[:40])
def test_hand_made_invalid_records(collection: str, record: dict[str, Any], message: str) -> None:
    validate = validator_for(collection)
    assert validate is not None
    assert validate(record) == message


def test_shapes_the_lexicons_allow() -> None:
    post = validator_for("app.bsky.feed.post")
    assert post is not None
    assert post(POST) is None
    # Open union: an embed type we do not know is accepted unchecked.
    assert post({**POST, "embed": {"$type": "com.example.embed", "x": 1}}) is None
    # Unknown properties are allowed (open objects).
    assert post({**POST, "lol": "kek"}) is None
    # CAR-shaped values: a link and a blob ref as bytes, the legacy 2023 blob.
    car_blob = {"$type": "blob", "ref": _link_bytes(), "mimeType": "image/png", "size": 3}
    legacy_blob = {"cid": CID, "mimeType": "image/jpeg"}
    for blob in (car_blob, legacy_blob):
        embed = {"$type": "app.bsky.embed.images", "images": [{"image": blob, "alt": "a"}]}
        assert post({**POST, "embed": embed}) is None
    # 300 graphemes of a ZWJ family emoji are well over 300 code points and fine.
    assert post({**POST, "text": "👨‍👩‍👧" * 100}) is None


def _link_bytes() -> bytes:
    """A CID link as libipld decodes it from a CAR (the raw CID bytes)."""
    return cid_for({"a": 1})


@pytest.mark.parametrize(
    ("text", "count"),
    [("", 0), ("abc", 3), ("e\u0301", 1), ("🇩🇪🇫🇷", 2), ("👨‍👩‍👧", 1), ("👍🏽", 1), ("🏳️‍🌈", 1)],
)
def test_grapheme_count(text: str, count: int) -> None:
    assert grapheme_count(text) == count


def test_dead_letters_for_wrong_shapes_keep_the_record() -> None:
    like = {"$type": "app.bsky.feed.like", "subject": POST_URI, "createdAt": T0}
    follow = {"$type": "app.bsky.graph.follow", "subject": "bob.example.com", "createdAt": T0}
    legacy = {
        "$type": "app.bsky.graph.follow",
        "subject": {"did": "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb", "declarationCid": CID},
        "createdAt": T0,
    }
    good = {
        "$type": "app.bsky.graph.follow",
        "subject": "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb",
        "createdAt": T0,
    }
    records = {
        "app.bsky.feed.like/3aaaaaaaaaa22": like,
        "app.bsky.graph.follow/3aaaaaaaaaa23": follow,
        "app.bsky.graph.follow/3aaaaaaaaaa24": legacy,
        "app.bsky.graph.follow/3aaaaaaaaaa25": good,
    }
    car = build_repo(DID, records)
    wanted = frozenset({"app.bsky.feed.like", "app.bsky.graph.follow"})
    x = extract_repo(car, DID, RecordFilter(wanted))
    assert {c: t.column("rkey").to_pylist() for c, t in x.tables.items()} == {
        "app.bsky.graph.follow": ["3aaaaaaaaaa25"]
    }
    letters = {d.uri.rpartition("/")[2]: d for d in x.dead_letters if d.uri}
    assert set(letters) == {"3aaaaaaaaaa22", "3aaaaaaaaaa23", "3aaaaaaaaaa24"}
    for rkey, record in zip(
        ("3aaaaaaaaaa22", "3aaaaaaaaaa23", "3aaaaaaaaaa24"), (like, follow, legacy), strict=True
    ):
        d = letters[rkey]
        assert (d.stage, d.error) == ("validate", "InvalidRecord")
        assert json.loads(d.record or "") == record
        assert d.cid is not None and d.cid.startswith("bafyrei")
    assert letters["3aaaaaaaaaa24"].message == "subject: expected a did string, got object"
    # --no-validate: only the old checks, so all four land.
    loose = extract_repo(car, DID, RecordFilter(wanted, validate=False))
    assert loose.row_count == 4 and loose.dead_letters == []


def test_bundled_lexicons_are_the_upstream_files_shipped_as_package_data() -> None:
    root = resources.files("bsky_backfill.records").joinpath("lexicons")
    docs = load_lexicons()
    assert len(docs) >= 30
    for nsid in docs:
        rel = nsid.replace(".", "/") + ".json"
        assert (LEXICONS / rel).read_bytes() == root.joinpath(rel).read_bytes(), nsid
    for name in ("LICENSE.txt", "LICENSE-MIT.txt", "LICENSE-APACHE.txt", "VERSION", "README.md"):
        assert root.joinpath(name).is_file(), name
    version = root.joinpath("VERSION").read_text().strip()
    assert version in (LEXICONS.parent / "README.md").read_text()
    # Every app.bsky / chat.bsky record lexicon of the upstream set is bundled and compiles.
    upstream_records = set()
    for path in LEXICONS.rglob("*.json"):
        doc = json.loads(path.read_text())
        if (
            doc["id"].startswith(("app.bsky.", "chat.bsky."))
            and doc["defs"].get("main", {}).get("type") == "record"
        ):
            upstream_records.add(doc["id"])
    assert upstream_records <= known_record_types()
    assert all(validator_for(n) is not None for n in known_record_types())


_ODD_VALUES: list[Any] = [
    None, True, 0, -1, 2**40, "", "x" * 5000, "did:plc:x", POST_URI, CID, [], [1], {},
    {"$type": "blob"}, {"$link": CID}, {"$bytes": "AAE"}, b"\x01\x71\x12\x20" + b"\x00" * 32,
    b"", {"$type": "app.bsky.embed.images"}, {"$type": 5},
]  # fmt: skip


def _mutations(value: Any, rng: Any, depth: int = 0) -> Any:
    """A copy of `value` with a few random leaves replaced, keys dropped or added."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            roll = rng.random()
            if roll < 0.08:
                continue  # drop the key
            out[key] = rng.choice(_ODD_VALUES) if roll < 0.2 else _mutations(item, rng, depth + 1)
        if rng.random() < 0.1:
            out[rng.choice(["extra", "text", "embed", "subject", "$type"])] = rng.choice(
                _ODD_VALUES
            )
        return out
    if isinstance(value, list):
        items = [_mutations(item, rng, depth + 1) for item in value]
        if rng.random() < 0.1:
            items.append(rng.choice(_ODD_VALUES))
        return items
    return rng.choice(_ODD_VALUES) if rng.random() < 0.15 else value


@CHECKS
def test_mutated_records_never_crash_and_both_checks_agree(
    checks: dict[str, Callable[[str], bool]],
) -> None:
    """Property test over untrusted input: real records with random damage."""
    import random

    rng = random.Random(17)
    pairs = compile_pairs(load_lexicons(), trust_created_at=False, formats=checks)
    seeds = [
        (collection, record)
        for path in (CARS / "laravel-bluesky" / "bsky-app.car", CARS / "arroba" / "snarfed2.car")
        for collection, _rkey, record in _car_records(path)
        if collection in pairs and isinstance(record, dict)
    ]
    invalid = 0
    for _ in range(4000):
        collection, record = rng.choice(seeds)
        damaged = _mutations(record, rng)
        fast, explain = pairs[collection]
        verdict = fast(damaged)
        assert verdict is (explain(damaged) is None), (collection, damaged)
        invalid += not verdict
    assert 1000 < invalid < 4000  # the damage is seen, and some survives as valid


def test_simulator_records_validate_exactly_as_its_truth_says() -> None:
    """The simulator writes real-PDS-like content (every embed kind, facets, lists,
    gates) plus deliberately invalid records; in both shapes (CAR values and
    atproto JSON, as listRecords serves them) the lexicons accept every record
    the truth calls valid."""
    from bsky_backfill.simulate import Scenario, run_network_in_thread

    checked = 0
    with run_network_in_thread(Scenario(seed=1717, accounts=40, hosts=2)) as net:
        for rec in net.truth.records:
            validate = validator_for(rec.collection)
            if validate is None or not rec.valid:
                continue
            assert validate(net.content.record_value(rec.uri)) is None, rec.uri
            assert validate(net.content.record_json(rec.uri)) is None, rec.uri
            checked += 1
    assert checked > 500
