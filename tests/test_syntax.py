"""Identifier and string-format checks, driven by the atproto interop vectors.

Every file in interop-tests/syntax/ is used: each valid line must be accepted,
each invalid line rejected, and the *_parse_invalid lines must pass the syntax
check but fail the full parse.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from bsky_backfill import syntax
from tests.fixture_paths import INTEROP

SYNTAX_DIR = INTEROP / "syntax"

CHECKS: dict[str, Callable[[str], bool]] = {
    "did": syntax.is_valid_did,
    "handle": syntax.is_valid_handle,
    "nsid": syntax.is_valid_nsid,
    "tid": syntax.is_valid_tid,
    "recordkey": syntax.is_valid_record_key,
    "aturi": syntax.is_valid_at_uri,
    "datetime": syntax.is_valid_datetime_syntax,
    "language": syntax.is_valid_language_syntax,
    "cid": syntax.is_valid_cid,
    "atidentifier": syntax.is_valid_at_identifier,
    "uri": syntax.is_valid_uri,
}


def _lines(name: str) -> list[str]:
    text = (SYNTAX_DIR / name).read_text(encoding="utf-8")
    # Only the line terminator is stripped: leading/trailing spaces are test data.
    return [ln for ln in text.split("\n") if ln and not ln.startswith("#")]


def test_every_syntax_file_is_covered() -> None:
    files = {p.name for p in SYNTAX_DIR.glob("*.txt")}
    covered = {f"{k}_syntax_{v}.txt" for k in CHECKS for v in ("valid", "invalid")}
    covered |= {"datetime_parse_invalid.txt", "language_parse_invalid.txt"}
    assert files == covered


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_valid_lines_accepted(kind: str) -> None:
    lines = _lines(f"{kind}_syntax_valid.txt")
    assert lines
    rejected = [ln for ln in lines if not CHECKS[kind](ln)]
    assert rejected == []


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_invalid_lines_rejected(kind: str) -> None:
    lines = _lines(f"{kind}_syntax_invalid.txt")
    assert lines
    accepted = [ln for ln in lines if CHECKS[kind](ln)]
    assert accepted == []


def test_datetime_full_validity() -> None:
    for ln in _lines("datetime_syntax_valid.txt"):
        assert syntax.is_valid_datetime(ln), ln
        assert syntax.datetime_micros(ln) is not None, ln
    for ln in _lines("datetime_syntax_invalid.txt"):
        assert not syntax.is_valid_datetime(ln), ln
        assert syntax.parse_datetime(ln) is None, ln
    for ln in _lines("datetime_parse_invalid.txt"):
        assert syntax.is_valid_datetime_syntax(ln), ln
        assert not syntax.is_valid_datetime(ln), ln
        assert syntax.datetime_micros(ln) is None, ln
        assert syntax.parse_datetime(ln) is None, ln


def test_datetime_offsets_are_rfc3339_numoffsets() -> None:
    """An offset is 00-23 hours and 00-59 minutes: `fromisoformat` alone would add up
    "+05:99" into a valid-looking instant; both the hot and the exact path refuse it."""
    for offset in ("+05:60", "+05:99", "-01:75", "+24:00", "+99:00"):
        value = f"2024-03-01T12:00:00{offset}"
        assert not syntax.is_valid_datetime(value), value
        assert syntax.datetime_micros(value) is None, value
    for offset in ("+23:59", "-23:59", "+05:30", "+00:00"):
        value = f"2024-03-01T12:00:00{offset}"
        assert syntax.is_valid_datetime(value), value
        assert syntax.datetime_micros(value) is not None, value


def test_parse_datetime_values() -> None:
    for ln in _lines("datetime_syntax_valid.txt"):
        parsed = syntax.parse_datetime(ln)
        if ln.startswith("0000"):
            assert parsed is None  # valid, but before Python's datetime.min
            continue
        assert parsed is not None, ln
        assert parsed.tzinfo is dt.UTC
        # Cross-check with the standard library on what it can read itself.
        frac_trimmed = ln
        if "." in ln:
            head, rest = ln.split(".", 1)
            digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
            frac_trimmed = head + "." + digits[:6].ljust(6, "0") + rest[len(digits) :]
        expected = dt.datetime.fromisoformat(frac_trimmed).astimezone(dt.UTC)
        assert parsed == expected, ln
    assert syntax.parse_datetime("2024-02-29T12:00:00Z") is not None
    assert syntax.parse_datetime("2023-02-29T12:00:00Z") is None
    assert syntax.parse_datetime("2023-04-31T12:00:00Z") is None
    assert syntax.datetime_micros("1970-01-01T00:00:00.000001Z") == 1
    assert syntax.datetime_micros("0000-01-01T00:00:00Z") == -62_167_219_200 * 1_000_000
    assert syntax.datetime_micros("1985-04-12T23:20:50.123-00:00") is None


def test_language_full_parse() -> None:
    for ln in _lines("language_syntax_valid.txt"):
        assert syntax.is_valid_language(ln), ln
    for ln in _lines("language_syntax_invalid.txt"):
        assert not syntax.is_valid_language(ln), ln
    for ln in _lines("language_parse_invalid.txt"):
        assert syntax.is_valid_language_syntax(ln), ln
        assert not syntax.is_valid_language(ln), ln


@pytest.mark.parametrize(
    ("did", "supported"),
    [
        ("did:plc:z72i7hdynmk6r22z27h6tvur", True),
        ("did:web:example.com", True),
        ("did:web:localhost%3A1234", True),
        ("did:web:127.0.0.1%3A8080", True),
        ("did:plc:z72i7hdynmk6r22z27h6tvu", False),  # 23 chars
        ("did:plc:Z72I7HDYNMK6R22Z27H6TVUR", False),
        ("did:web:example.com:path", False),
        ("did:key:zQ3shZc2QzApp2oymGvQbzP8eKheVshBHbU4ZYjeXqwSKEn6N", False),
        ("did:plc:z72i7hdynmk6r22z27h6tvur\n", False),
    ],
)
def test_supported_did(did: str, supported: bool) -> None:
    assert syntax.is_supported_did(did) is supported
    if supported:
        assert syntax.is_valid_did(did)
