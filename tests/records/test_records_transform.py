"""extract_repo end to end on real CARs: counts, columns, filters, identity checks.

Expectations are computed here independently of the code under test: a
separate recursive MST walk over `libipld.decode_car` output, `datetime`
parsing of createdAt, and the fixtures README counts.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import threading
from collections import Counter
from typing import Any

import libipld
import pyarrow as pa
import pytest

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.models import RecordFilter
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.records.schema import schema_for
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.repo.build import build_repo, cid_for
from bsky_backfill.repo.diff import unlanded_keys, unpack_index, verdicts_of
from bsky_backfill.simulate.ids import tid
from tests.fixture_paths import FIXTURES

BSKY_APP = FIXTURES / "car" / "laravel-bluesky" / "bsky-app.car"
BSKY_DID = "did:plc:z72i7hdynmk6r22z27h6tvur"
README_COUNTS = {
    "app.bsky.actor.profile": 1,
    "app.bsky.feed.generator": 6,
    "app.bsky.feed.like": 50,
    "app.bsky.feed.post": 472,
    "app.bsky.feed.repost": 25,
    "app.bsky.feed.threadgate": 1,
    "app.bsky.graph.block": 1,
    "app.bsky.graph.follow": 2,
    "app.bsky.graph.list": 2,
    "app.bsky.graph.listitem": 43,
    "chat.bsky.actor.declaration": 1,
}
EVERYTHING = RecordFilter(collections=frozenset(README_COUNTS))
STATE = ("app.bsky.actor.profile", "chat.bsky.actor.declaration")  # createdAt optional


def reference_records(data: bytes) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """key -> (record CID, record), by a plain recursive walk (test-side only)."""
    header, blocks = libipld.decode_car(data)
    out: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def walk(cid: bytes | None) -> None:
        if cid is None:
            return
        node = blocks[cid]
        walk(node["l"])
        key = b""
        for e in node["e"]:
            key = key[: e["p"]] + e["k"]
            out[key.decode()] = (e["v"], blocks[e["v"]])
            walk(e["t"])

    walk(blocks[header["roots"][0]]["data"])
    return out


@pytest.fixture(scope="module")
def bsky_app() -> bytes:
    return BSKY_APP.read_bytes()


@pytest.fixture(scope="module")
def reference(bsky_app: bytes) -> dict[str, tuple[bytes, dict[str, Any]]]:
    return reference_records(bsky_app)


def _counts(extract: Any) -> dict[str, int]:
    return {c: t.num_rows for c, t in extract.tables.items()}


def test_bsky_app_everything(bsky_app: bytes, reference: dict[str, Any]) -> None:
    x = extract_repo(bsky_app, BSKY_DID, EVERYTHING)
    assert (x.did, x.rev, x.records_seen) == (BSKY_DID, "3ldkuds7ljk2e", 604)
    assert _counts(x) == README_COUNTS
    assert x.dead_letters == []
    for collection, table in x.tables.items():
        assert table.schema == schema_for(collection)
        for row in table.to_pylist():
            key = f"{collection}/{row['rkey']}"
            cid, record = reference[key]
            assert row["uri"] == f"at://{BSKY_DID}/{key}"
            assert (row["did"], row["collection"]) == (BSKY_DID, collection)
            assert row["cid"] == libipld.encode_cid(cid)
            assert json.loads(row["record"])["$type"] == record["$type"] == collection
            created = record.get("createdAt")
            expected = dt.datetime.fromisoformat(created) if created else None
            assert row["created_at"] == expected


def test_typed_columns(bsky_app: bytes, reference: dict[str, Any]) -> None:
    x = extract_repo(bsky_app, BSKY_DID, EVERYTHING)
    posts = {r["rkey"]: r for r in x.tables["app.bsky.feed.post"].to_pylist()}
    n_replies = n_langs = 0
    for key, (_, rec) in reference.items():
        collection, _, rkey = key.partition("/")
        if collection == "app.bsky.feed.post":
            row = posts[rkey]
            assert row["text"] == rec["text"]
            assert row["langs"] == rec.get("langs")
            reply = rec.get("reply")
            assert row["reply_root_uri"] == (reply["root"]["uri"] if reply else None)
            assert row["reply_parent_uri"] == (reply["parent"]["uri"] if reply else None)
            n_replies += reply is not None
            n_langs += "langs" in rec
    assert n_replies > 10 and n_langs > 10
    for name in ("app.bsky.feed.like", "app.bsky.feed.repost"):
        for row in x.tables[name].to_pylist():
            subject = reference[f"{name}/{row['rkey']}"][1]["subject"]
            assert (row["subject_uri"], row["subject_cid"]) == (subject["uri"], subject["cid"])
    for name in ("app.bsky.graph.follow", "app.bsky.graph.block"):
        for row in x.tables[name].to_pylist():
            assert row["subject_did"] == reference[f"{name}/{row['rkey']}"][1]["subject"]


@pytest.mark.parametrize("name", ["3jt6walwmos2y.json", "3juf3jiip3l2x.json"])
def test_get_record_cids_match(bsky_app: bytes, name: str) -> None:
    got = json.loads((FIXTURES / "xrpc-responses" / "laravel-bluesky" / name).read_text())
    x = extract_repo(bsky_app, BSKY_DID, EVERYTHING)
    rows = {r["uri"]: r for r in x.tables["app.bsky.feed.post"].to_pylist()}
    assert rows[got["uri"]]["cid"] == got["cid"]
    assert json.loads(rows[got["uri"]]["record"]) == got["value"]


def test_collection_filter(bsky_app: bytes) -> None:
    filt = RecordFilter(collections=frozenset({"app.bsky.feed.like", "app.bsky.graph.follow"}))
    x = extract_repo(bsky_app, BSKY_DID, filt)
    assert _counts(x) == {"app.bsky.feed.like": 50, "app.bsky.graph.follow": 2}
    assert x.records_seen == 604
    default = extract_repo(bsky_app, BSKY_DID, RecordFilter(collections=DEFAULT_COLLECTIONS))
    assert "chat.bsky.actor.declaration" not in default.tables
    assert default.row_count == 603


def _expected_in_window(
    reference: dict[str, Any], since: dt.datetime | None, until: dt.datetime | None
) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for key, (_, rec) in reference.items():
        collection = key.partition("/")[0]
        if collection in STATE:
            counts[collection] += 1  # state records: no window
            continue
        when = dt.datetime.fromisoformat(rec["createdAt"])
        if (since is None or when >= since) and (until is None or when < until):
            counts[collection] += 1
    return dict(counts)


def test_time_window(bsky_app: bytes, reference: dict[str, Any]) -> None:
    stamps = sorted(
        dt.datetime.fromisoformat(rec["createdAt"])
        for _, rec in reference.values()
        if "createdAt" in rec and rec["$type"] != "app.bsky.actor.profile"
    )
    # Bounds taken from actual records: [since, until) includes since, excludes until.
    for since, until in [
        (stamps[100], stamps[400]),
        (stamps[300], None),
        (None, stamps[50]),
        (stamps[-1] + dt.timedelta(days=1), None),
    ]:
        filt = RecordFilter(collections=frozenset(README_COUNTS), since=since, until=until)
        x = extract_repo(bsky_app, BSKY_DID, filt)
        assert _counts(x) == _expected_in_window(reference, since, until), (since, until)
        assert x.dead_letters == []
        for table in x.tables.values():
            if table.column("collection")[0].as_py() in STATE:
                continue
            for value in table.column("created_at").to_pylist():
                assert since is None or value >= since
                assert until is None or value < until


def test_naive_window_bounds_are_utc(bsky_app: bytes, reference: dict[str, Any]) -> None:
    since = dt.datetime(2024, 1, 1)
    x = extract_repo(
        bsky_app, BSKY_DID, RecordFilter(collections=frozenset(README_COUNTS), since=since)
    )
    assert _counts(x) == _expected_in_window(reference, since.replace(tzinfo=dt.UTC), None)


def test_requested_did_must_match_commit(bsky_app: bytes) -> None:
    with pytest.raises(RepoInvalid) as err:
        extract_repo(bsky_app, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", EVERYTHING)
    assert (err.value.code, err.value.stage) == ("VerificationFailed", "verify")


def test_greenground_commit_did_differs_from_did_doc() -> None:
    data = (FIXTURES / "car" / "indigo" / "greenground.repo.car").read_bytes()
    doc = json.loads((FIXTURES / "car" / "indigo" / "greenground.didDoc.json").read_text())
    doc_did = doc["id"]
    assert doc_did == "did:plc:wqgdnqlv2mwiio6pfchwtrff"
    filt = RecordFilter(collections=frozenset({"app.bsky.graph.follow"}))
    with pytest.raises(RepoInvalid) as err:
        extract_repo(data, doc_did, filt)
    assert err.value.code == "VerificationFailed"
    x = extract_repo(data, "did:plc:kzcqyc3unb33eh5sxzsfs25z", filt)
    assert _counts(x) == {"app.bsky.graph.follow": 2}


def test_rsky_valid_repo() -> None:
    data = (FIXTURES / "car" / "rsky" / "valid_repo.car").read_bytes()
    x = extract_repo(data, "did:plc:r7fdhqmw3h2cifeakw5hmvy6", RecordFilter(DEFAULT_COLLECTIONS))
    assert x.row_count == 6
    with pytest.raises(RepoInvalid):
        extract_repo(data, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", RecordFilter(DEFAULT_COLLECTIONS))


def test_history_exports_land_only_reachable_records() -> None:
    wanted = frozenset(
        {
            *DEFAULT_COLLECTIONS,
            "app.bsky.feed.vote",
            "app.bsky.graph.confirmation",
            "app.bsky.system.declaration",
        }
    )
    for name, did, rows in [
        ("paul_staging.repo.car", "did:plc:cmpvykrzb2l22kj4ojlv3ox4", 185),
        ("fakermaker.repo.car", "did:plc:dpg45vsnuir2vqqqadsn6afg", 142),
    ]:
        data = (FIXTURES / "car" / "indigo" / name).read_bytes()
        x = extract_repo(data, did, RecordFilter(wanted))
        assert x.row_count == rows
        assert "app.bsky.feed.vote" not in x.tables
        assert x.dead_letters == []


def test_repo_slice_is_invalid() -> None:
    data = (FIXTURES / "car" / "indigo" / "repo_slice.car").read_bytes()
    with pytest.raises(RepoInvalid) as err:
        extract_repo(data, "did:plc:6evlgoug7wwijzxhzt2riyic", RecordFilter(DEFAULT_COLLECTIONS))
    assert (err.value.code, err.value.stage) == ("InvalidMST", "decode")


def test_unknown_collections_keep_null_created_at() -> None:
    data = (FIXTURES / "car" / "indigo" / "bnewbold.robocracy.org.20250310005405.car").read_bytes()
    wanted = frozenset({"com.atproto.lexicon.schema", "net.bnewbold.demo.mushroom"})
    since = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    x = extract_repo(data, "did:plc:nhxcyu4ewwhl5pqil4dotqjo", RecordFilter(wanted, since=since))
    # Neither record type has a createdAt: both kept whatever the window.
    assert _counts(x) == {"com.atproto.lexicon.schema": 5, "net.bnewbold.demo.mushroom": 1}
    for table in x.tables.values():
        assert table.column("created_at").null_count == table.num_rows


def test_no_reference_cycles_and_gc_restored(bsky_app: bytes) -> None:
    gc.collect()
    gc.disable()
    try:
        x = extract_repo(bsky_app, BSKY_DID, EVERYTHING)
        assert not gc.isenabled()
        del x
        # Everything the extraction allocated was freed by reference counting.
        assert gc.collect() == 0
        # Also when the walk fails half-way (the error carries frames).
        partial = (FIXTURES / "car" / "indigo" / "repo_slice.car").read_bytes()
        with pytest.raises(RepoInvalid):
            extract_repo(partial, "did:plc:6evlgoug7wwijzxhzt2riyic", EVERYTHING)
        assert gc.collect() == 0
    finally:
        gc.enable()
    extract_repo(bsky_app, BSKY_DID, EVERYTHING)
    assert gc.isenabled()
    with pytest.raises(RepoInvalid):
        extract_repo(b"junk", BSKY_DID, EVERYTHING)
    assert gc.isenabled()


def test_gc_pause_across_threads(bsky_app: bytes) -> None:
    """The engine extracts on a thread pool: the collector must come back on."""

    def work() -> None:
        for _ in range(10):
            extract_repo(bsky_app, BSKY_DID, EVERYTHING)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gc.isenabled()


def test_tables_are_independent_of_input(bsky_app: bytes) -> None:
    x = extract_repo(bsky_app, BSKY_DID, EVERYTHING)
    table = x.tables["app.bsky.feed.post"]
    assert isinstance(table, pa.Table) and table.num_rows == 472
    assert pa.concat_tables([table, table]).num_rows == 944


def test_key_index_names_every_key_without_a_row() -> None:
    """The key index's unlanded keys (what a refresh must not count as deleted rows)
    equal wanted keys minus landed rows, each with its dead letter's verdict, ""
    outside the window; the fast path (dead letters + window skips) and the
    row-set path agree."""
    did = "did:plc:abcdefghijklmnopqrstuvwx"
    cid = libipld.encode_cid(cid_for({"x": 1}))
    records: dict[str, Any] = {}
    for i in range(40):
        year = 2023 + i % 3  # the window keeps 2024 only
        records[f"app.bsky.feed.like/{tid(1_700_000_000_000_000 + i, 0)}"] = {
            "$type": "app.bsky.feed.like" if i % 7 else "app.bsky.feed.post",  # some invalid
            "createdAt": f"{year}-05-01T00:00:00Z",
            "subject": {"uri": f"at://{did}/app.bsky.feed.post/3kx2wbfhyvq2a", "cid": cid},
        }
    records["app.bsky.graph.follow/3l00000000001"] = {"$type": "x"}  # not wanted
    filt = RecordFilter(
        collections=frozenset({"app.bsky.feed.like"}),
        since=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        until=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    )
    out = extract_repo(build_repo(did, records), did, filt)
    keys, unlanded = unpack_index(out.keys)
    rkeys = out.tables["app.bsky.feed.like"]["rkey"].to_pylist()
    landed = [f"app.bsky.feed.like/{r}" for r in rkeys]
    expected = unlanded_keys(keys, filt.collections, landed, verdicts_of(did, out.dead_letters))
    assert unlanded == expected
    assert set(unlanded.values()) == {"", "validate/InvalidRecord"}
    assert len(unlanded) + len(landed) == 40
