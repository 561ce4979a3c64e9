"""Big-repo extraction in parts gives exactly what the one-shot extraction gives."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.identity.document import parse_did_document
from bsky_backfill.models import RecordFilter
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.records.stream import stream_repo
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.repo.diff import merge_indexes, unpack_index

pytestmark = pytest.mark.usefixtures("verify_loops")  # C loops and Python twins

DID = "did:plc:z72i7hdynmk6r22z27h6tvur"


def rows(tables: list[dict[str, pa.Table]]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for part in tables:
        for table in part.values():
            for row in table.to_pylist():
                assert row["uri"] not in out
                out[row["uri"]] = row
    return out


@pytest.fixture
def car(fixtures: Path) -> tuple[bytes, str]:
    doc = json.loads((fixtures / "identity/did-docs/laravel-bluesky/bsky-app-did.json").read_text())
    key = parse_did_document(DID, doc).signing_key
    assert key is not None
    return (fixtures / "car/laravel-bluesky/bsky-app.car").read_bytes(), key


@pytest.mark.parametrize("split_layer", [0, 1, 2, 6])
@pytest.mark.parametrize("verify", [False, True])
def test_parts_equal_the_whole(car: tuple[bytes, str], verify: bool, split_layer: int) -> None:
    data, key = car
    filt = RecordFilter(frozenset(DEFAULT_COLLECTIONS))
    whole = extract_repo(data, DID, filt, signing_key=key, verify=verify)
    parts = list(
        stream_repo(data, DID, filt, signing_key=key, verify=verify, split_layer=split_layer)
    )
    if split_layer < 2:  # 604 keys: the root is on layer 4 or so; low cuts make many parts
        assert len(parts) > 20
    assert sum(p.records_seen for p in parts) == whole.records_seen == 604
    assert rows([p.tables for p in parts]) == rows([whole.tables])
    assert {p.rev for p in parts} == {whole.rev}
    # The parts' key indexes merge into the whole repo's (what refresh diffs against).
    assert whole.keys is not None and all(p.keys is not None for p in parts)
    merged = merge_indexes([p.keys for p in parts if p.keys is not None])
    assert unpack_index(merged) == unpack_index(whole.keys)


def test_a_bad_signature_fails_before_any_part(car: tuple[bytes, str], fixtures: Path) -> None:
    data, _ = car
    other = "did:key:zQ3shuteTZT6t9ek6UcKu7UfVES2AJgpadj2bT5zD8NHFqLce"
    filt = RecordFilter(frozenset(DEFAULT_COLLECTIONS))
    with pytest.raises(RepoInvalid) as err:
        next(stream_repo(data, DID, filt, signing_key=other, verify=True))
    assert err.value.code == "VerificationFailed"
