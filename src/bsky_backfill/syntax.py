"""Syntax checks for AT Protocol identifiers and string formats.

Where it sits in the flow: the CLI validates user input with these (DIDs,
NSIDs, `--since/--until`) before anything is written, and `records/` uses
`datetime_value` on every record (the hot path); the lexicon formats and the
record key have C twins there (records/formats.py), tested equal. All
patterns are compiled once at import; every check is a `fullmatch` (never `$`,
which would accept a trailing newline) plus, where the spec needs it, a few
cheap semantic checks. Rules follow the atproto specs and are driven by the
interop test vectors (`atproto-interop-tests/syntax`).
"""

from __future__ import annotations

import datetime as dt
import re

__all__ = [
    "RECORD_KEY_RE",
    "datetime_micros",
    "datetime_value",
    "is_supported_did",
    "is_valid_at_identifier",
    "is_valid_at_uri",
    "is_valid_cid",
    "is_valid_datetime",
    "is_valid_datetime_syntax",
    "is_valid_did",
    "is_valid_handle",
    "is_valid_language",
    "is_valid_language_syntax",
    "is_valid_nsid",
    "is_valid_record_key",
    "is_valid_tid",
    "is_valid_uri",
    "parse_datetime",
]

# --- DID --------------------------------------------------------------------

# did:<method>:<identifier>; the identifier may not end in ':' or '%'. 2 KB cap.
_DID = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_DID_MAX = 2048
# did:plc is 24 base32 characters of a sha256 digest.
_DID_PLC = re.compile(r"did:plc:[a-z2-7]{24}")
# did:web: a hostname, optionally with a percent-encoded port (local networks);
# path-based did:web (extra ':' segments) is not supported by atproto.
_DID_WEB = re.compile(
    r"did:web:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*"
    r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:%3[aA][0-9]{1,5})?"
)


def is_valid_did(s: str) -> bool:
    """Generic atproto DID syntax (any method)."""
    return len(s) <= _DID_MAX and _DID.fullmatch(s) is not None


def is_supported_did(s: str) -> bool:
    """A DID this tool can resolve: did:plc or did:web (hostname, optional port)."""
    if len(s) > 300:  # "did:web:" + a 253-char hostname + an encoded port
        return False
    return _DID_PLC.fullmatch(s) is not None or _DID_WEB.fullmatch(s) is not None


# --- handle -----------------------------------------------------------------

# Hostname labels of 1-63 chars; the TLD starts with a letter (no IP addresses).
_HANDLE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+"
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
)


def is_valid_handle(s: str) -> bool:
    """Handle syntax: a DNS name of at most 253 characters, at least two labels."""
    return len(s) <= 253 and _HANDLE.fullmatch(s) is not None


def is_valid_at_identifier(s: str) -> bool:
    """A DID or a handle (the authority part of an AT-URI)."""
    if s.startswith("did:"):
        return is_valid_did(s)
    return is_valid_handle(s)


# --- NSID -------------------------------------------------------------------

# Reversed domain authority (first segment starts with a letter) + a name that is
# letters and digits only, starting with a letter. At least three segments.
_NSID = re.compile(
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}"
)


def is_valid_nsid(s: str) -> bool:
    """NSID syntax (e.g. app.bsky.feed.post), at most 317 characters."""
    return len(s) <= 317 and _NSID.fullmatch(s) is not None


# --- TID and record key -----------------------------------------------------

# 13 chars of base32-sortable; the first char keeps the top bit zero.
_TID = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")
# Record key: 1-512 of [A-Za-z0-9_~.:-], but not "." or ".." (one fullmatch).
RECORD_KEY_RE = re.compile(r"(?!\.\.?\Z)[a-zA-Z0-9_~.:-]{1,512}")


def is_valid_tid(s: str) -> bool:
    """TID syntax: 13 base32-sortable characters."""
    return _TID.fullmatch(s) is not None


def is_valid_record_key(s: str) -> bool:
    """Record key syntax: 1-512 of [A-Za-z0-9_~.:-], not '.' or '..'."""
    return RECORD_KEY_RE.fullmatch(s) is not None


# --- AT-URI and generic URI -------------------------------------------------

# The restricted AT-URI used in Lexicon `at-uri` fields: authority, then an
# optional collection NSID, then an optional record key. No query or fragment.
_AT_URI = re.compile(r"at://([^/?#\s]+)(?:/([^/?#\s]+)(?:/([^/?#\s]+))?)?")
_AT_URI_MAX = 8 * 1024

# scheme ":" then something not starting with '/' (after an optional "//").
_URI = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*:(?://)?[^\s/][^\s]*")


def is_valid_at_uri(s: str) -> bool:
    """Restricted AT-URI syntax: at://AUTHORITY[/COLLECTION[/RKEY]]."""
    if len(s) > _AT_URI_MAX:
        return False
    m = _AT_URI.fullmatch(s)
    if m is None:
        return False
    authority, collection, rkey = m.group(1, 2, 3)
    if not is_valid_at_identifier(authority):
        return False
    if collection is not None and not is_valid_nsid(collection):
        return False
    return rkey is None or is_valid_record_key(rkey)


def is_valid_uri(s: str) -> bool:
    """Generic URI syntax (Lexicon `uri` format): a scheme and a body, at most 8 KB."""
    return len(s) <= _AT_URI_MAX and _URI.fullmatch(s) is not None


# --- CID --------------------------------------------------------------------

_CID = re.compile(r"[a-zA-Z0-9+=]{8,256}")


def is_valid_cid(s: str) -> bool:
    """CID string syntax (a multibase CIDv1); CIDv0 ('Qm...') is refused."""
    return _CID.fullmatch(s) is not None and not s.startswith("Qmb")


# --- language ---------------------------------------------------------------

# atproto's naive check: a 2-3 letter (or "i") primary tag, or a private-use tag.
_LANG_SYNTAX = re.compile(r"(?:i|[a-z]{2,3})(?:-[a-zA-Z0-9]+)*|[xX](?:-[a-zA-Z0-9]{1,8})+")

# RFC 5646 well-formed "langtag" / privateuse / grandfathered, case-insensitive.
_LANG_GRANDFATHERED = frozenset(
    {
        "en-gb-oed",
        "i-ami",
        "i-bnn",
        "i-default",
        "i-enochian",
        "i-hak",
        "i-klingon",
        "i-lux",
        "i-mingo",
        "i-navajo",
        "i-pwn",
        "i-tao",
        "i-tay",
        "i-tsu",
        "sgn-be-fr",
        "sgn-be-nl",
        "sgn-ch-de",
        "art-lojban",
        "cel-gaulish",
        "no-bok",
        "no-nyn",
        "zh-guoyu",
        "zh-hakka",
        "zh-min",
        "zh-min-nan",
        "zh-xiang",
    }
)
_LANG_TAG = re.compile(
    r"(?:[a-z]{2,3}(?:-[a-z]{3}){0,3}|[a-z]{4}|[a-z]{5,8})"  # language (+ extlang)
    r"(?:-[a-z]{4})?"  # script
    r"(?:-(?:[a-z]{2}|[0-9]{3}))?"  # region
    r"(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*"  # variants
    r"(?:-[0-9a-wyz](?:-[a-z0-9]{2,8})+)*"  # extensions
    r"(?:-x(?:-[a-z0-9]{1,8})+)?"  # private use
    r"|x(?:-[a-z0-9]{1,8})+",
    re.IGNORECASE,
)


def is_valid_language_syntax(s: str) -> bool:
    """atproto's lightweight language-tag syntax check."""
    return _LANG_SYNTAX.fullmatch(s) is not None


def is_valid_language(s: str) -> bool:
    """A well-formed and valid BCP 47 tag: no repeated variant or extension singleton."""
    if not is_valid_language_syntax(s):
        return False
    low = s.lower()
    if low in _LANG_GRANDFATHERED:
        return True
    if _LANG_TAG.fullmatch(low) is None:
        return False
    subtags = low.split("-")
    if subtags[0] == "x":
        return True
    variants: set[str] = set()
    singletons: set[str] = set()
    in_extensions = False
    # The regex fixed the structure, so position and length identify each subtag.
    for tag in subtags[1:]:
        if tag == "x":
            break
        if len(tag) == 1:
            if tag in singletons:
                return False
            singletons.add(tag)
            in_extensions = True
        elif not in_extensions and (len(tag) >= 5 or (len(tag) == 4 and tag[0].isdigit())):
            if tag in variants:
                return False
            variants.add(tag)
    return True


# --- datetime ---------------------------------------------------------------

# The spec shape (ISO 8601 and RFC 3339 both, zone required). Loose on values on
# purpose: the vectors expect "month 13" to pass syntax and fail the full parse.
_DT_SYNTAX = re.compile(
    r"\d\d\d\d-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,20})?(?:Z|[+-]\d\d:\d\d)", re.ASCII
)
# Field ranges spelled out, for the slow exact path (`datetime_micros`).
_DT_STRICT = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(?:\.([0-9]{1,20}))?"
    r"(?:Z|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))"
)
# The hot-path shape: as _DT_SYNTAX, but hours 00-23, an offset of 00-23 hours and
# 00-59 minutes (RFC 3339's time-numoffset; `fromisoformat` would add up "+05:99")
# and no "-00:00", so that `fromisoformat` alone settles the rest.
_DT_SHAPE = re.compile(
    r"\d\d\d\d-\d\d-\d\dT(?:[01]\d|2[0-3]):\d\d:\d\d(?:\.\d{1,20})?"
    r"(?:Z|(?!-00:00)[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MIN_SECS = -62_167_219_200  # 0000-01-01T00:00:00Z, the earliest valid instant
_fromisoformat = dt.datetime.fromisoformat


def is_valid_datetime_syntax(s: str) -> bool:
    """The atproto datetime *syntax* (shape only; see `is_valid_datetime`)."""
    return _DT_SYNTAX.fullmatch(s) is not None and not s.endswith("-00:00")


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def datetime_micros(s: str) -> int | None:
    """Microseconds since the Unix epoch for a spec-valid datetime, else None.

    The exact, slower path: it covers the whole spec range, year 0000 included
    (which Python's datetime cannot hold). Fractional digits past the sixth are
    truncated. A value whose UTC normalisation falls before year 0000 is invalid.
    """
    m = _DT_STRICT.fullmatch(s)
    if m is None:
        return None
    ys, mos, ds, hs, mis, ss, frac, sign, oh, om = m.groups()
    if sign == "-" and oh == "00" and om == "00":
        return None  # "-00:00" is RFC 3339's "unknown offset", not ISO 8601
    year, month, day = int(ys), int(mos), int(ds)
    if day > 28:
        dim = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month]
        if day > dim:
            return None
    # Days from civil (H. Hinnant's algorithm): exact for the proleptic Gregorian
    # calendar including year 0, which the datetime module cannot do.
    y = year - 1 if month <= 2 else year
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146_097 + doe - 719_468
    secs = days * 86_400 + int(hs) * 3_600 + int(mis) * 60 + int(ss)
    if sign is not None:
        offset = int(oh) * 3_600 + int(om) * 60
        secs += -offset if sign == "+" else offset
    if secs < _MIN_SECS:
        return None
    return secs * 1_000_000 + int((frac or "0")[:6].ljust(6, "0"))


def datetime_value(s: str) -> dt.datetime | int | None:
    """The cheapest exact value of a datetime string; None when it is not spec-valid.

    Hot path (every record's createdAt): a regex for the shape, then the C
    `fromisoformat` for the calendar values, giving an aware datetime with the
    offset as written. Valid values Python's datetime cannot hold (year 0000)
    come back as epoch microseconds (int) from the exact path.
    """
    if _DT_SHAPE.fullmatch(s) is None:
        return None
    try:
        return _fromisoformat(s)
    except ValueError:
        return datetime_micros(s)


def is_valid_datetime(s: str) -> bool:
    """Full atproto datetime validity: the syntax plus real calendar values."""
    return datetime_value(s) is not None


def parse_datetime(s: str) -> dt.datetime | None:
    """A spec-valid datetime as an aware UTC datetime, else None.

    Also None for the rare valid values Python cannot represent (before
    0001-01-01 or after 9999-12-31 once normalised to UTC).
    """
    value = datetime_value(s)
    try:
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC)
        if value is not None:
            return _EPOCH + dt.timedelta(microseconds=value)
    except (OverflowError, ValueError):
        pass
    return None
