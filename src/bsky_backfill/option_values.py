"""The values of `run`'s options: parsers and the pydantic types every surface shares.

Where it sits: under run_options.py (the model of the options), whose fields
are typed with these. A value keeps the form the user gave (text for sizes,
durations and dates) and is only checked here; options.py turns it into what
the engine takes with the same parsers (`seconds_of`, `bytes_of`, ...), which
raise `ValueError` so each caller names the option in its own words.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ByteSize, Field, TypeAdapter, ValidationError

from bsky_backfill.errors import BackfillError
from bsky_backfill.identity.dns import parse_server
from bsky_backfill.records.collections import is_collection_pattern
from bsky_backfill.syntax import is_valid_nsid, parse_datetime
from bsky_backfill.xrpc.ssrf import parse_endpoint

RETRY_DEFAULT = "*"
"""`--retry-failed` given without codes: every code but the terminal verdicts."""

MAX_SIZE = 2**50
"""The largest size an option takes (1 PiB): beyond it a number is a typo."""

MAX_SECONDS = 1e6
"""The longest time in seconds an option takes (~11 days)."""


# -- value parsers (ValueError; the callers name the option) ------------------------
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZES = TypeAdapter(ByteSize)  # pydantic reads "500MB", "4GiB", "1.5 gb"


def seconds_of(value: str) -> float:
    """`90`, `90s`, `30m`, `24h`, `2d` -> seconds (>= 0)."""
    text = value.strip().lower()
    number = text.rstrip("smhd")
    unit = text[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _DURATION_UNITS or not amount >= 0 or amount == float("inf"):
        raise ValueError("not a duration like 90s, 30m, 24h or 2d")
    return amount * _DURATION_UNITS[unit]


def bytes_of(value: str) -> int:
    """`500MB`, `4GiB`, `123456` -> bytes (a whole number, at least 1, at most 1 PiB)."""
    try:
        size = int(_SIZES.validate_python(value.strip()))
    except ValidationError:
        raise ValueError("not a size like 500MB or 4GiB") from None
    if size < 1 or size > MAX_SIZE:
        raise ValueError("must be between 1 byte and 1PiB")
    return size


def moment_of(value: str) -> dt.datetime:
    """ISO 8601 date or datetime -> aware UTC; a date or naive time is taken as UTC."""
    strict = parse_datetime(value)
    if strict is not None:
        return strict
    try:
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.astimezone(dt.UTC)
    except ValueError:
        raise ValueError("not an ISO 8601 date or datetime") from None
    except OverflowError:  # year 1 east of UTC, year 9999 west of it
        raise ValueError("out of range once taken to UTC") from None


def codes_of(value: str) -> tuple[str, ...]:
    """`--retry-failed` codes: () for the default set (`*`), else the codes named."""
    if value.strip() == RETRY_DEFAULT:
        return ()
    codes = tuple(dict.fromkeys(c.strip() for c in value.split(",") if c.strip()))
    for code in codes:
        if not code.isascii() or not code.replace("_", "").isalnum():
            raise ValueError(f"{code!r} is not an error code like Http503")
    return codes


def looks_like_host(value: str) -> bool:
    """`host[:port]` or an http(s) URL with a usable host and port."""
    url = value if "://" in value else f"https://{value}"
    try:
        parse_endpoint(url)
    except BackfillError:
        return False
    return " " not in value


# -- value types: what every surface accepts, in the form the user gave -------------
def split_list(value: Any) -> Any:
    """'a, b c' -> ['a', 'b', 'c'] (a variable, a TOML string, an API string)."""
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    return value


def _text(value: Any) -> Any:
    """Dates, numbers and paths where the option takes text (TOML, the API)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _checked(parse: Callable[[str], object]) -> Callable[[str], str]:
    def check(value: str) -> str:
        parse(value)
        return value

    return check


def _host(value: str) -> str:
    if not looks_like_host(value):
        raise ValueError("not a host name or an http(s) URL")
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or not looks_like_host(value):
        raise ValueError("must be an http(s) URL with a host")
    return value


def _dns_server(value: str) -> str:
    try:
        parse_server(value)
    except ValueError:
        raise ValueError("not HOST or HOST:PORT") from None
    return value


def _nsids(names: list[str]) -> list[str]:
    if not names:
        raise ValueError("names no collection")
    bad = [n for n in names if not (is_valid_nsid(n) or is_collection_pattern(n))]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a valid NSID or a pattern like app.bsky.*")
    return names


def _retry_text(value: Any) -> Any:
    """true (or "true", "1"): the default codes, as `--retry-failed` alone; false: none."""
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1")):
        return RETRY_DEFAULT
    if value is False:
        return None
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or RETRY_DEFAULT
    return value


Text = Annotated[str, BeforeValidator(_text)]
TextList = Annotated[list[str], BeforeValidator(split_list)]
Host = Annotated[str, AfterValidator(_host)]
HostList = Annotated[list[Host], BeforeValidator(split_list)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
DnsServer = Annotated[str, AfterValidator(_dns_server)]
Nsids = Annotated[
    list[str] | None,
    BeforeValidator(split_list),
    AfterValidator(lambda names: None if names is None else _nsids(names)),
]
Moment = Annotated[str, BeforeValidator(_text), AfterValidator(_checked(moment_of))]
Size = Annotated[str, BeforeValidator(_text), AfterValidator(_checked(bytes_of))]
Duration = Annotated[str, BeforeValidator(_text), AfterValidator(_checked(seconds_of))]
RetryCodes = Annotated[
    str | None,
    BeforeValidator(_retry_text),
    AfterValidator(lambda text: None if text is None else _checked(codes_of)(text)),
]
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1)]


__all__ = [
    "MAX_SECONDS",
    "MAX_SIZE",
    "RETRY_DEFAULT",
    "Count",
    "DnsServer",
    "Duration",
    "Host",
    "HostList",
    "HttpUrl",
    "Moment",
    "Nsids",
    "RetryCodes",
    "Seconds",
    "Size",
    "Text",
    "TextList",
    "bytes_of",
    "codes_of",
    "looks_like_host",
    "moment_of",
    "seconds_of",
    "split_list",
]
