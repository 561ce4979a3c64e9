"""The generator: deterministic, realistic records, and ground truth with the documented rules."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

import libipld
import pytest

from bsky_backfill.simulate import Scenario, SimContent, generate
from bsky_backfill.simulate.content import EXAMPLE_THING, LIKE, POST, PROFILE
from bsky_backfill.simulate.ids import cid_for_block, format_utc, tid, tid_micros
from bsky_backfill.simulate.truth import (
    APP_BSKY_COLLECTIONS,
    CREATED_AT_REQUIRED,
    ExpectedDeadLetter,
)

WEB = ["did:web:localhost%3A4001", "did:web:localhost%3A4002"]
SCENARIO = Scenario(seed=42, accounts=40, hosts=3, mean_records=60, invalid_rate=0.03)


@pytest.fixture(scope="module")
def content() -> SimContent:
    return generate(SCENARIO, WEB)


def _values(content: SimContent) -> dict[str, dict[str, object]]:
    """uri -> decoded record, read from the CARs."""
    out = {}
    for acct in content.accounts:
        if acct.repo is None:
            continue
        for collection, rows in acct.repo.records.items():
            for rkey, _, start, end in rows:
                value = libipld.decode_dag_cbor(acct.repo.car[start:end])
                out[f"at://{acct.did}/{collection}/{rkey}"] = value
    return out


def test_same_seed_same_network(content: SimContent) -> None:
    again = generate(SCENARIO, WEB)
    assert again.truth.records == content.truth.records
    assert again.truth.accounts == content.truth.accounts
    assert [a.repo.car if a.repo else None for a in again.accounts] == [
        a.repo.car if a.repo else None for a in content.accounts
    ]
    other = generate(Scenario(seed=43, accounts=40, hosts=3, mean_records=60), WEB)
    plc_uris = {r.uri for r in content.truth.records if r.did.startswith("did:plc:")}
    assert {r.uri for r in other.truth.records}.isdisjoint(plc_uris)


def test_plc_repos_do_not_depend_on_did_web_ports(content: SimContent) -> None:
    moved = generate(SCENARIO, ["did:web:localhost%3A5001", "did:web:localhost%3A5002"])
    for a, b in zip(content.accounts, moved.accounts, strict=True):
        if a.method == "plc":
            assert (a.repo.car if a.repo else None) == (b.repo.car if b.repo else None)


def test_accounts_and_states(content: SimContent) -> None:
    truth = content.truth
    states = Counter(a.status for a in truth.accounts.values())
    assert states["takendown"] == states["deactivated"] == states["suspended"] == 1
    assert states["notfound"] == states["tombstoned"] == states["unknown"] == 1
    assert states["active"] == 40 - 4
    assert len(truth.input_dids) == len(set(truth.input_dids)) == 40 + 2
    web = [a for a in truth.accounts.values() if a.method == "web"]
    assert [a.did for a in web] == WEB and all(a.status == "active" for a in web)
    assert not truth.records_of(
        next(a.did for a in truth.accounts.values() if a.status == "notfound")
    )
    sizes = [a.records for a in truth.accounts.values() if a.status == "active"]
    assert min(sizes) == 0 and max(sizes) > 3 * (sum(sizes) / len(sizes))  # heavy tail


def test_records_are_realistic(content: SimContent) -> None:
    values = _values(content)
    recs = {r.uri: r for r in content.truth.records}
    assert set(values) == set(recs)
    counts = Counter(r.collection for r in recs.values())
    assert counts[LIKE] > counts[POST] > 0 and counts[PROFILE] > 0 and counts[EXAMPLE_THING] > 0
    scripts = {"cjk": False, "rtl": False, "emoji": False}
    kinds: Counter[str] = Counter()
    for uri, value in values.items():
        rec = recs[uri]
        assert libipld.encode_cid(cid_for_block(libipld.encode_dag_cbor(value))) == rec.cid
        if rec.collection == PROFILE:
            assert rec.rkey == "self"
        elif rec.collection in CREATED_AT_REQUIRED and rec.valid:
            # rkey TIDs come from the createdAt instant (truncated to the string's precision)
            assert rec.created_us is not None
            assert 0 <= tid_micros(rec.rkey) - rec.created_us < 1_000_000 + 2
        if rec.collection == POST and rec.valid:
            text = value["text"]
            assert isinstance(text, str)
            scripts["cjk"] |= any("\u3040" <= c <= "\u9fff" for c in text)
            scripts["rtl"] |= any("\u0590" <= c <= "\u06ff" for c in text)
            scripts["emoji"] |= any(ord(c) > 0x1F000 for c in text)
            raw = text.encode()
            for facet in value.get("facets", []):  # type: ignore[attr-defined]
                span = raw[facet["index"]["byteStart"] : facet["index"]["byteEnd"]].decode()
                feature = facet["features"][0]
                kinds[feature["$type"].rsplit("#", 1)[1]] += 1
                assert span[0] in "@#h", span
            if "embed" in value:
                kinds[value["embed"]["$type"]] += 1  # type: ignore[index]
                if value["embed"]["$type"] == "app.bsky.embed.images":  # type: ignore[index]
                    ref = value["embed"]["images"][0]["image"]["ref"]  # type: ignore[index]
                    assert ref[:2] == b"\x01\x55"  # raw-codec blob link
            if "reply" in value:
                kinds["reply"] += 1
                assert rec.reply_root_uri == value["reply"]["root"]["uri"]  # type: ignore[index]
    assert all(scripts.values()), scripts
    for kind in ("mention", "link", "tag", "app.bsky.embed.images", "app.bsky.embed.external"):
        assert kinds[kind] > 0, kinds
    assert kinds["app.bsky.embed.record"] > 0 and kinds["reply"] > 0


def test_created_at_forms_parse_to_truth(content: SimContent) -> None:
    values = _values(content)
    forms: Counter[str] = Counter()
    for rec in content.truth.records:
        created = values[rec.uri].get("createdAt")
        if not rec.valid or not isinstance(created, str):
            continue
        parsed = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
        assert parsed == rec.created_at, (created, rec.created_at)
        forms["Z" if created.endswith("Z") else "offset"] += 1
        forms[f"digits{len(created.split('.')[1]) - 1 if '.' in created else 0}"] += 1
    assert forms["digits3"] > forms["digits6"] > 0 and forms["digits0"] > 0 and forms["offset"] > 0


def test_invalid_records(content: SimContent) -> None:
    values = _values(content)
    bad = [r for r in content.truth.records if not r.valid]
    assert bad, "invalid_rate=0.03 should give some invalid records"
    reasons = Counter(r.invalid_reason for r in bad)
    assert set(reasons) <= {"missing createdAt", "unparseable createdAt", "wrong $type"}
    for rec in bad:
        value = values[rec.uri]
        if rec.invalid_reason == "missing createdAt":
            assert "createdAt" not in value and rec.created_at is None
        elif rec.invalid_reason == "wrong $type":
            assert value["$type"] != rec.collection
        else:
            assert rec.created_at is None
        assert rec.collection != EXAMPLE_THING


def test_expected_rows_semantics(content: SimContent) -> None:
    truth = content.truth
    since = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    until = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    wanted = {POST, PROFILE, EXAMPLE_THING}
    rows = truth.expected_rows(wanted, since, until)
    assert rows and all(r.valid and r.collection in wanted for r in rows.values())
    assert all(truth.accounts[r.did].status == "active" for r in rows.values())
    for rec in rows.values():
        if rec.collection == POST:
            assert rec.created_at is not None and since <= rec.created_at < until
    # profiles are kept whatever the window, with and without createdAt
    profiles = [r for r in rows.values() if r.collection == PROFILE]
    assert any(p.created_at is None for p in profiles)
    assert any(p.created_at is not None and p.created_at < since for p in profiles)
    # third-party records without createdAt escape the window; with one they do not
    things = [r for r in truth.records if r.collection == EXAMPLE_THING and r.valid]
    for thing in things:
        if truth.fetchable(thing.did):
            kept = thing.created_at is None or since <= thing.created_at < until
            assert (thing.uri in rows) is kept
    # naive datetimes are UTC; default collections are the app.bsky types
    assert truth.expected_rows(wanted, since.replace(tzinfo=None), until.replace(tzinfo=None)) == (
        rows
    )
    assert {r.collection for r in truth.expected_rows().values()} <= APP_BSKY_COLLECTIONS


def test_expected_dead_letters(content: SimContent) -> None:
    truth = content.truth
    dead = truth.expected_dead_letters([POST, LIKE])
    by_stage = Counter(d.stage for d in dead)
    assert by_stage["resolve"] == 2  # tombstoned + unknown
    assert by_stage["fetch"] == 4
    codes = {d.code for d in dead if d.stage == "fetch"}
    assert codes == {"RepoTakendown", "RepoDeactivated", "RepoSuspended", "RepoNotFound"}
    invalid = [d for d in dead if d.stage == "validate"]
    assert invalid and all(d.code == "InvalidRecord" and d.uri for d in invalid)
    assert all(truth.fetchable(d.did) for d in invalid)
    only = truth.input_dids[:5]
    assert all(d.did in only for d in truth.expected_dead_letters(dids=only))
    assert ExpectedDeadLetter("x", None, "fetch", "RepoNotFound") not in dead


def test_bad_signature_account() -> None:
    content = generate(Scenario(seed=9, accounts=8, hosts=1, bad_signature=1, did_web=0))
    truth = content.truth
    bad = [a for a in truth.accounts.values() if not a.signature_valid]
    assert len(bad) == 1
    dead = truth.expected_dead_letters()
    assert ExpectedDeadLetter(bad[0].did, None, "verify", "VerificationFailed") in dead
    assert not any(r.did == bad[0].did for r in truth.expected_rows().values())
    lenient = truth.expected_rows(verify=False)
    assert any(r.did == bad[0].did for r in lenient.values()) or bad[0].records == 0


def test_giant_repo() -> None:
    content = generate(Scenario(seed=3, accounts=5, hosts=1, did_web=0, giant_repo=3000))
    sizes = sorted(a.records for a in content.truth.accounts.values())
    assert sizes[-1] == 3000


def test_tid_and_time_helpers() -> None:
    assert tid(0, 0) == "2222222222222"
    assert tid_micros(tid(1_700_000_000_123_456, 77)) == 1_700_000_000_123_456
    assert format_utc(1_700_000_000_123_456, 3) == "2023-11-14T22:13:20.123Z"
    assert format_utc(1_700_000_000_123_456, 6) == "2023-11-14T22:13:20.123456Z"
    assert format_utc(1_700_000_000_123_456, 0) == "2023-11-14T22:13:20Z"


def test_disk_cache(tmp_path: object) -> None:
    from pathlib import Path

    cache = Path(str(tmp_path))
    scenario = Scenario(seed=5, accounts=10, hosts=2, cache_dir=cache)
    first = generate(scenario, WEB)
    assert list(cache.glob("simnet-*.pickle"))
    second = generate(scenario, WEB)
    assert second.truth.records == first.truth.records
    assert [a.repo.car if a.repo else None for a in second.accounts] == [
        a.repo.car if a.repo else None for a in first.accounts
    ]


def test_worker_processes_build_the_same_network() -> None:
    scenario = Scenario(seed=8, accounts=90, hosts=2, mean_records=8, workers=1)
    serial = generate(scenario, WEB)
    parallel = generate(dataclasses.replace(scenario, workers=2), WEB)
    assert parallel.truth.records == serial.truth.records
    assert [a.repo.car if a.repo else None for a in parallel.accounts] == [
        a.repo.car if a.repo else None for a in serial.accounts
    ]


def test_record_lookup(content: SimContent) -> None:
    rec = next(r for r in content.truth.records if r.collection == POST and r.valid)
    value = content.record_value(rec.uri)
    assert value["text"] == rec.text
    as_json = content.record_json(rec.uri)
    assert as_json["createdAt"] == value["createdAt"]
    with pytest.raises(KeyError):
        content.record_value(rec.uri + "x")
