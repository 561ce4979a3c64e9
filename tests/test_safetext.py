"""Server text made safe to print: control characters escaped, length bounded."""

from __future__ import annotations

import logging

from bsky_backfill.errors import TerminalError
from bsky_backfill.models import DeadLetter
from bsky_backfill.observe.logs import TextFormatter
from bsky_backfill.safetext import MAX_MESSAGE, clean, is_clean, printable

EVIL = "ok\n2026-01-01 ERROR forged\r\x1b[2J\x1b]0;title\x07\u202eevil\x00\x7f\x9b"


def test_clean_escapes_every_control_and_reordering_character() -> None:
    text = clean(EVIL)
    assert is_clean(text)
    for raw in ("\n", "\r", "\x1b", "\x07", "\u202e", "\x00", "\x7f", "\x9b"):
        assert raw not in text
    assert "\\n2026-01-01 ERROR forged" in text and "\\x1b[2J" in text and "\\u202e" in text
    assert clean("plain text, ünïcode, 🯱🯲🯷") == "plain text, ünïcode, 🯱🯲🯷"


def test_clean_cuts_long_text_and_says_so() -> None:
    text = clean("A" * 1_000_024)
    assert len(text) < MAX_MESSAGE + 100
    assert text.endswith("... (1000024 characters in all)")


def test_printable_escapes_format_characters_too() -> None:
    assert printable("a\u200bb\u2066c") == "a\\u200bb\\u2066c"


def test_errors_and_dead_letters_store_clean_messages() -> None:
    error = TerminalError(EVIL + "B" * 100_000, code="Http400")
    assert is_clean(error.message) and len(error.message) < MAX_MESSAGE + 100
    letter = DeadLetter("did:plc:x", "at://x/\n", "fetch", "Http400", EVIL * 2000)
    assert is_clean(letter.message) and is_clean(letter.uri or "")
    assert len(letter.message) < MAX_MESSAGE + 100


def test_a_log_line_stays_one_line() -> None:
    record = logging.LogRecord("bsky_backfill", logging.INFO, __file__, 1, "%s: %s", ("h", EVIL),
                               None)  # fmt: skip
    record.host = "evil\nhost"
    line = TextFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    assert "host=evil\\nhost" in line
