"""The Lexicon constants agree with the schema files they were read from."""

from __future__ import annotations

import json

from bsky_backfill.records import lexicon
from tests.fixture_paths import LEXICONS


def _record_lexicons() -> dict[str, dict[str, object]]:
    out = {}
    for path in LEXICONS.rglob("*.json"):
        doc = json.loads(path.read_text())
        main = doc.get("defs", {}).get("main", {})
        if main.get("type") == "record":
            out[doc["id"]] = main
    return out


def test_constants_match_lexicon_files() -> None:
    found = _record_lexicons()
    assert set(found) == lexicon.KNOWN_COLLECTIONS
    assert {k: v["key"] for k, v in found.items()} == lexicon.RECORD_KEY_TYPES
    required = {
        k
        for k, v in found.items()
        if "createdAt" in v["record"].get("required", [])  # type: ignore[attr-defined]
    }
    assert required == lexicon.CREATED_AT_REQUIRED
    assert {k for k in found if k.startswith("app.bsky.")} == lexicon.DEFAULT_COLLECTIONS
    assert len(lexicon.DEFAULT_COLLECTIONS) == 16


def test_window_rules() -> None:
    assert lexicon.window_applies("app.bsky.feed.post")
    assert not lexicon.window_applies("app.bsky.actor.profile")
    assert not lexicon.window_applies("chat.bsky.actor.declaration")
    assert lexicon.window_applies("net.example.unknown")
