"""atproto JSON conversion: interop vectors, then lossless round trips of real records.

A conversion is checked by turning the JSON back into DAG-CBOR (a `$link` to
CID bytes, `$bytes` to bytes) and comparing CIDs: equal CIDs mean nothing was
lost or altered.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import libipld
import pytest

from bsky_backfill.records.json import RecordEncodeError, to_json, to_json_bytes
from bsky_backfill.repo.build import cid_for
from bsky_backfill.repo.car import read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.mst import walk_mst
from tests.fixture_paths import FIXTURES

DATA_MODEL = FIXTURES / "interop-tests" / "data-model" / "data-model-fixtures.json"


def _b64decode(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def from_json(value: Any) -> Any:
    """atproto JSON -> the DAG-CBOR data model (test-side, independent of the code)."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$link"}:
            return _cid_bytes(value["$link"])
        if set(value) == {"$bytes"}:
            return _b64decode(value["$bytes"])
        return {k: from_json(v) for k, v in value.items()}
    return value


def _cid_bytes(cid: str) -> bytes:
    # base32 multibase ("b" prefix), lower case, no padding.
    assert cid.startswith("b")
    body = cid[1:].upper()
    return base64.b32decode(body + "=" * (-len(body) % 8))


def _sorted(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


@pytest.mark.parametrize("case", json.loads(DATA_MODEL.read_text()), ids=lambda c: c["cid"][-8:])
def test_data_model_fixtures(case: dict[str, Any]) -> None:
    decoded = libipld.decode_dag_cbor(_b64decode(case["cbor_base64"]))
    assert _sorted(json.loads(to_json(decoded))) == _sorted(case["json"])
    assert libipld.encode_cid(cid_for(from_json(json.loads(to_json(decoded))))) == case["cid"]


def test_bytes_and_links() -> None:
    link = cid_for({"a": 1})
    out = json.loads(to_json({"l": link, "b": b"\x00\x01\x02\x03", "e": b""}))
    assert out == {
        "l": {"$link": libipld.encode_cid(link)},
        "b": {"$bytes": "AAECAw"},  # base64 without padding
        "e": {"$bytes": ""},
    }
    # The documented ambiguity: a byte string that parses as a CID is a link,
    # exactly as libipld.encode_dag_cbor would write it.
    assert libipld.decode_dag_cbor(libipld.encode_dag_cbor({"x": link}))["x"] == link
    assert isinstance(to_json_bytes({"a": 1}), bytes)


def test_unencodable_values() -> None:
    deep: Any = "leaf"
    for _ in range(300):
        deep = [deep]
    with pytest.raises(RecordEncodeError):
        to_json_bytes(deep)
    with pytest.raises(RecordEncodeError):
        to_json_bytes({"n": 2**70})


def _all_records() -> list[tuple[bytes, Any]]:
    out = []
    for path in sorted((FIXTURES / "car").rglob("*.car")):
        if path.name == "repo_slice.car":
            continue
        car = read_car(path.read_bytes())
        for _, cid in walk_mst(car.blocks, read_commit(car).data):
            out.append((cid, car.blocks[cid]))
    return out


def test_every_real_record_round_trips() -> None:
    records = _all_records()
    assert len(records) > 1000
    for cid, record in records:
        back = from_json(json.loads(to_json(record)))
        assert cid_for(back) == cid, libipld.encode_cid(cid)


def test_raw_cbor_records() -> None:
    paths = sorted((FIXTURES / "records" / "indigo").glob("*.cbor"))
    assert len(paths) == 2  # the loop below must not pass by having nothing to check
    for path in paths:
        raw = path.read_bytes()
        back = from_json(json.loads(to_json(libipld.decode_dag_cbor(raw))))
        assert libipld.encode_dag_cbor(back) == raw


@pytest.mark.parametrize(
    "name", ["listRecords.json", "listRecords_page2.json", "listRecords_reverse.json"]
)
def test_list_records_values_pass_through(name: str) -> None:
    """JSON-shaped records (listRecords) come out as they went in, CIDs intact."""
    page = json.loads((FIXTURES / "xrpc-responses" / "rsky-ts-pds-0.5.27" / name).read_text())
    assert page["records"]
    for item in page["records"]:
        out = json.loads(to_json(item["value"]))
        assert out == item["value"]
        assert libipld.encode_cid(cid_for(from_json(out))) == item["cid"]
