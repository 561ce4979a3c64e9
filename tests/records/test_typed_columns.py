"""The typed columns are derived from `record` and nothing else: for every row of
the demo dataset (the embedded simulated network, backfilled by `bsky-backfill
demo`) and of the real bsky-app.car repo, each typed column equals what a JSON
path query on `record` gives in DuckDB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from bsky_backfill.demo import run_demo
from bsky_backfill.models import RecordFilter
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.repo.build import build_repo
from tests.dataset import parquet_glob
from tests.fixture_paths import CARS

_MEDIA = "CASE WHEN record->>'$.embed.\"$type\"' = 'app.bsky.embed.recordWithMedia' "
_ROOT = "THEN record->'$.embed.media' ELSE record->'$.embed' END"


def _features(kind: str, field: str) -> str:
    """Facet features of one kind, in order, as a list of strings."""
    feats = "coalesce(json_extract(record, '$.facets[*].features[*]'), [])"
    return (
        f"list_transform(list_filter({feats}, lambda f: f->>'$.\"$type\"' = "
        f"'app.bsky.richtext.facet#{kind}'), lambda f: f->>'$.{field}')"
    )


# column -> the same value as a DuckDB JSON path query on `record`.
EXPECTED: dict[str, dict[str, str]] = {
    "app.bsky.feed.post": {
        "embed_type": "record->>'$.embed.\"$type\"'",
        "quote_uri": "CASE record->>'$.embed.\"$type\"' "
        "WHEN 'app.bsky.embed.record' THEN record->>'$.embed.record.uri' "
        "WHEN 'app.bsky.embed.recordWithMedia' THEN record->>'$.embed.record.record.uri' END",
        "quote_cid": "CASE record->>'$.embed.\"$type\"' "
        "WHEN 'app.bsky.embed.record' THEN record->>'$.embed.record.cid' "
        "WHEN 'app.bsky.embed.recordWithMedia' THEN record->>'$.embed.record.record.cid' END",
        "external_uri": f"CASE WHEN ({_MEDIA}{_ROOT})->>'$.\"$type\"' = "
        f"'app.bsky.embed.external' THEN ({_MEDIA}{_ROOT})->>'$.external.uri' END",
        "image_count": f"CASE WHEN ({_MEDIA}{_ROOT})->>'$.\"$type\"' = "
        f"'app.bsky.embed.images' THEN json_array_length(({_MEDIA}{_ROOT})->'$.images') END",
        "mention_dids": _features("mention", "did"),
        "link_uris": _features("link", "uri"),
        "tags": f"list_concat({_features('tag', 'tag')}, "
        "coalesce(CAST(record->'$.tags' AS VARCHAR[]), []))",
        "text": "record->>'$.text'",
        "reply_root_uri": "record->>'$.reply.root.uri'",
    },
    "app.bsky.graph.listitem": {
        "subject_did": "record->>'$.subject'",
        "list_uri": "record->>'$.list'",
    },
    "app.bsky.feed.threadgate": {"post_uri": "record->>'$.post'"},
    "app.bsky.feed.postgate": {"post_uri": "record->>'$.post'"},
}


def _mismatches(con: duckdb.DuckDBPyConnection, source: str, collection: str) -> tuple[int, Any]:
    checks = EXPECTED[collection]
    diffs = " OR ".join(f"{col} IS DISTINCT FROM ({expr})" for col, expr in checks.items())
    total = con.execute(f"SELECT count(*) FROM {source}").fetchone()[0]  # type: ignore[index]
    bad = con.execute(f"SELECT uri, record FROM {source} WHERE {diffs} LIMIT 3").fetchall()
    return total, bad


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    run_demo(out, accounts=60, hosts=4)
    return out


def test_demo_dataset_typed_columns_equal_json_paths(demo_out: Path) -> None:
    con = duckdb.connect()
    checked = {}
    for collection in EXPECTED:
        if not (demo_out / collection).is_dir():
            continue
        source = f"read_parquet('{parquet_glob(demo_out, collection)}', union_by_name=true)"
        total, bad = _mismatches(con, source, collection)
        assert bad == [], (collection, bad)
        checked[collection] = total
    assert checked["app.bsky.feed.post"] > 500
    assert checked["app.bsky.graph.listitem"] > 10
    # The demo content exercises every post column with a non-empty value.
    posts = f"read_parquet('{parquet_glob(demo_out, 'app.bsky.feed.post')}', union_by_name=true)"
    counts = con.execute(
        f"SELECT count(embed_type), count(quote_uri), count(external_uri), count(image_count), "
        f"count(*) FILTER (len(mention_dids) > 0), count(*) FILTER (len(link_uris) > 0), "
        f"count(*) FILTER (len(tags) > 0) FROM {posts}"
    ).fetchone()
    assert counts is not None and all(n > 0 for n in counts), counts


def _check_table(table: pa.Table, collection: str) -> int:
    con = duckdb.connect()
    con.register("t", table)
    total, bad = _mismatches(con, "t", collection)
    assert bad == [], (collection, bad)
    return int(total)


def test_real_repo_typed_columns_equal_json_paths() -> None:
    from bsky_backfill.repo.car import read_car
    from bsky_backfill.repo.commit import read_commit

    data = (CARS / "laravel-bluesky" / "bsky-app.car").read_bytes()
    did = read_commit(read_car(data)).did
    x = extract_repo(data, did, RecordFilter(DEFAULT_COLLECTIONS))
    assert not x.dead_letters
    assert _check_table(x.tables["app.bsky.feed.post"], "app.bsky.feed.post") == 472
    assert _check_table(x.tables["app.bsky.graph.listitem"], "app.bsky.graph.listitem") == 43
    assert _check_table(x.tables["app.bsky.feed.threadgate"], "app.bsky.feed.threadgate") == 1


T0 = "2024-05-01T10:00:00.000Z"
DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
URI = "at://did:plc:bbbbbbbbbbbbbbbbbbbbbbbb/app.bsky.feed.post/3aaaaaaaaaa22"
CID = "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"


def _post(**extra: Any) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": "t", "createdAt": T0, **extra}


def test_hand_made_shapes_and_wrong_shapes_without_validation() -> None:
    """Every embed kind, facets and top-level tags; and with --no-validate,
    wrong shapes give nulls (the JSON path query agrees on those too)."""
    image = {
        "image": {"$type": "blob", "ref": {"$link": CID}, "mimeType": "image/png", "size": 1},
        "alt": "",
    }
    facets = [
        {
            "index": {"byteStart": 0, "byteEnd": 1},
            "features": [
                {"$type": "app.bsky.richtext.facet#tag", "tag": "a"},
                {"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:x"},
                {"$type": "app.bsky.richtext.facet#link", "uri": "https://e.com"},
            ],
        }
    ]
    records = {
        "app.bsky.feed.post/3aaaaaaaaaa22": _post(
            embed={
                "$type": "app.bsky.embed.recordWithMedia",
                "record": {"$type": "app.bsky.embed.record", "record": {"uri": URI, "cid": CID}},
                "media": {"$type": "app.bsky.embed.images", "images": [image, image]},
            },
            facets=facets,
            tags=["b"],
        ),
        "app.bsky.feed.post/3aaaaaaaaaa23": _post(
            embed={"$type": "app.bsky.embed.external", "external": {"uri": "https://x.org"}}
        ),
        "app.bsky.feed.post/3aaaaaaaaaa24": _post(
            embed={"$type": "app.bsky.embed.record", "record": "nope"}, facets="x", tags=[1]
        ),
        "app.bsky.feed.post/3aaaaaaaaaa25": _post(embed=[1]),
        "app.bsky.feed.threadgate/3aaaaaaaaaa22": {
            "$type": "app.bsky.feed.threadgate",
            "post": URI,
            "createdAt": T0,
        },
        "app.bsky.feed.postgate/3aaaaaaaaaa22": {
            "$type": "app.bsky.feed.postgate",
            "post": 5,
            "createdAt": T0,
        },
        "app.bsky.graph.listitem/3aaaaaaaaaa22": {
            "$type": "app.bsky.graph.listitem",
            "subject": "did:plc:x",
            "list": URI,
            "createdAt": T0,
        },
    }
    wanted = frozenset(k.partition("/")[0] for k in records)
    x = extract_repo(build_repo(DID, records), DID, RecordFilter(wanted, validate=False))
    posts = {r["rkey"]: r for r in x.tables["app.bsky.feed.post"].to_pylist()}
    first = posts["3aaaaaaaaaa22"]
    assert (first["embed_type"], first["quote_uri"], first["quote_cid"]) == (
        "app.bsky.embed.recordWithMedia",
        URI,
        CID,
    )
    assert (first["image_count"], first["external_uri"]) == (2, None)
    assert (first["mention_dids"], first["link_uris"], first["tags"]) == (
        ["did:plc:x"],
        ["https://e.com"],
        ["a", "b"],
    )
    assert posts["3aaaaaaaaaa23"]["external_uri"] == "https://x.org"
    odd = posts["3aaaaaaaaaa24"]
    assert (odd["quote_uri"], odd["mention_dids"], odd["tags"]) == (None, [], [])
    assert posts["3aaaaaaaaaa25"]["embed_type"] is None
    for collection in ("app.bsky.graph.listitem", "app.bsky.feed.threadgate"):
        _check_table(x.tables[collection], collection)
    assert x.tables["app.bsky.feed.postgate"].column("post_uri").to_pylist() == [None]
    assert x.tables["app.bsky.graph.listitem"].column("list_uri").to_pylist() == [URI]
    # The valid posts agree with the JSON path queries (odd ones are pinned above).
    valid = x.tables["app.bsky.feed.post"].filter(
        pa.compute.is_in(
            x.tables["app.bsky.feed.post"]["rkey"], pa.array(["3aaaaaaaaaa22", "3aaaaaaaaaa23"])
        )
    )
    assert _check_table(valid, "app.bsky.feed.post") == 2
