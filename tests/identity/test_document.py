"""DID documents from the fixtures: endpoint by service id, key normalised to did:key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bsky_backfill.errors import ResolveError
from bsky_backfill.identity.document import parse_did_document


def load(fixtures: Path, rel: str) -> dict[str, object]:
    data = json.loads((fixtures / rel).read_text())
    assert isinstance(data, dict)
    return data


def test_current_multikey_document(fixtures: Path) -> None:
    doc = load(fixtures, "identity/did-docs/indigo/did_plc_doc.json")
    info = parse_did_document(str(doc["id"]), doc)
    assert info.pds.startswith("https://")
    assert info.signing_key is not None and info.signing_key.startswith("did:key:zQ3s")
    assert info.handle == "atproto.com"


def test_legacy_and_current_documents_name_the_same_key(fixtures: Path) -> None:
    legacy = load(fixtures, "identity/did-docs/indigo/did_plc_doc_legacy.json")
    current = load(fixtures, "identity/did-docs/indigo/did_plc_doc.json")
    a = parse_did_document(str(legacy["id"]), legacy)
    b = parse_did_document(str(current["id"]), current)
    assert a.signing_key == b.signing_key


def test_legacy_p256_key_becomes_zdn(fixtures: Path) -> None:
    doc = load(fixtures, "car/indigo/fakermaker.didDoc.json")
    info = parse_did_document(str(doc["id"]), doc)
    assert info.signing_key is not None and info.signing_key.startswith("did:key:zDn")
    assert info.pds == "http://localhost:2583"


def test_did_web_document_without_pds(fixtures: Path) -> None:
    doc = load(fixtures, "identity/did-docs/indigo/did_web_doc.json")
    with pytest.raises(ResolveError) as err:
        parse_did_document(str(doc["id"]), doc)
    assert err.value.code == "NoPdsEndpoint"


def test_service_chosen_by_id_not_position() -> None:
    did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
    doc = {
        "id": did,
        "service": [
            {"id": "#bsky_fg", "type": "BskyFeedGenerator", "serviceEndpoint": "https://feed.x"},
            {
                "id": f"{did}#atproto_pds",
                "type": "AtprotoPersonalDataServer",
                "serviceEndpoint": "https://pds.example/",
            },
        ],
    }
    info = parse_did_document(did, doc)
    assert info.pds == "https://pds.example"
    assert info.signing_key is None


def test_document_for_another_did_is_refused() -> None:
    with pytest.raises(ResolveError):
        parse_did_document(
            "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", {"id": "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"}
        )
