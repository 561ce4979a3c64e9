"""Server text made safe to show: control characters escaped, length bounded.

Where it sits: beside the error tree. Hosts and DID documents are written by
strangers, and their words reach three places a person reads: log lines,
the terminal (progress, `status`, `report`) and dead letters. `clean` is
applied where such text enters an error message (`errors.BackfillError`) and a
dead letter (`models.DeadLetter`), and by the log formatter and the terminal
printers on everything they show, so that a newline cannot forge a log line,
an ANSI or OSC escape cannot repaint or retitle the terminal, and a megabyte
"error message" is stored as a few kilobytes.

Written by hand: it is one translation table over the standard library.
"""

from __future__ import annotations

import re
import unicodedata

MAX_MESSAGE = 4096
"""Characters of server text kept in a message; the rest is cut with a note."""

# C0 and C1 controls, DEL, and the characters that reorder or hide text on a
# terminal (bidirectional overrides and isolates, line/paragraph separators).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]"
)


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def clean(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` with every unsafe character escaped (`\\x1b`, `\\n`, `\\u202e`) and at most
    `limit` characters long, escapes included, plus a note of the whole length when cut."""
    if len(text) <= limit and _UNSAFE.search(text) is None:
        return text
    escaped = _UNSAFE.sub(_escape, text[:limit])
    if len(text) <= limit and len(escaped) <= limit:
        return escaped
    return f"{escaped[:limit]}... ({len(text)} characters in all)"


def is_clean(text: str) -> bool:
    """True when `clean` would leave `text` as it is (at any length)."""
    return _UNSAFE.search(text) is None


def printable(text: str, limit: int = 200) -> str:
    """A short form of a stranger's string for a terminal cell (host names, codes):
    `clean`, and format characters (zero-width joiners and the like) escaped too."""
    text = clean(text, limit)
    if all(unicodedata.category(c) != "Cf" for c in text):
        return text
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cf" else c for c in text)


__all__ = ["MAX_MESSAGE", "clean", "is_clean", "printable"]
