"""User options -> a validated `RunSettings` and DID source, shared by the CLI and the API.

Where it sits: between the outside (click flags, a TOML file, keyword arguments
of `bsky_backfill.Backfill`) and the engine. Everything is checked here before
anything is written: a bad value raises `UsageError` with one line naming it
(the CLI turns that into exit 2).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ByteSize, TypeAdapter, ValidationError

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.errors import BackfillError, UsageError
from bsky_backfill.identity.dns import parse_server
from bsky_backfill.records.collections import expand_collections
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.syntax import parse_datetime
from bsky_backfill.xrpc.client import SPOOL_BYTES, HttpSettings
from bsky_backfill.xrpc.retry import RetryPolicy
from bsky_backfill.xrpc.ssrf import parse_endpoint

DEFAULTS: dict[str, Any] = {
    "dids_file": None, "did_list": (), "all_from_plc": False, "from_relay": None, "pds": (),
    "collections": None, "since": None, "until": None, "out": "bsky-data", "queue": None,
    "plc_url": "https://plc.directory", "method": "car", "rate_limit": 10.0,
    "allow_private_hosts": False, "no_verify": False, "no_validate": False, "progress": False,
    "metrics_port": None, "metrics_host": "127.0.0.1",
    "workers": 1, "refresh": False, "compact": False, "config_file": None, "host_concurrency": 4,
    "commit_rows": 200_000, "commit_seconds": 10.0, "connect_timeout": 10.0,
    "read_timeout": 60.0, "max_car_size": "4GiB", "max_attempts": 6, "retry_base": 2.0,
    "log_format": "text", "global_host_rate": None, "stream_size": "64MiB",
    "retry_cap": 3600.0, "give_up_after": "24h", "unreachable_after": "10m",
    "retry_failed": None,
    "max_retry_after": 3600.0, "dns_server": None, "handle_txt": None,
}  # fmt: skip
"""Every `run` option and its default (the CLI's flags share these values)."""


RETRY_DEFAULT = "*"
"""`--retry-failed` given without codes: every code but the terminal verdicts."""

_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float, flag: str) -> float:
    """`90`, `90s`, `30m`, `24h`, `2d` -> seconds (>= 0)."""
    text = str(value).strip().lower()
    number = text.rstrip("smhd")
    unit = text[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _DURATION_UNITS or not amount >= 0 or amount == float("inf"):
        raise UsageError(f"{flag} {value!r} is not a duration like 90s, 30m, 24h or 2d")
    return amount * _DURATION_UNITS[unit]


def parse_codes(value: str | None) -> tuple[str, ...] | None:
    """`--retry-failed`: None (not given), () (no codes: the default set) or codes."""
    if value is None:
        return None
    if value.strip() == RETRY_DEFAULT:
        return ()
    codes = tuple(dict.fromkeys(c.strip() for c in value.split(",") if c.strip()))
    if not codes:
        return ()
    for code in codes:
        if not code.isascii() or not code.replace("_", "").isalnum():
            raise UsageError(f"--retry-failed: {code!r} is not an error code like Http503")
    return codes


def parse_when(value: str | None, flag: str) -> dt.datetime | None:
    """ISO 8601 date or datetime -> aware UTC; a date or naive time is taken as UTC."""
    if value is None:
        return None
    strict = parse_datetime(value)
    if strict is not None:
        return strict
    try:
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.astimezone(dt.UTC)
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not an ISO 8601 date or datetime") from None
    except OverflowError:  # year 1 east of UTC, year 9999 west of it
        raise UsageError(f"{flag} {value!r} is out of range once taken to UTC") from None


def parse_collections(value: str | None) -> frozenset[str]:
    """`--collections`: exact NSIDs and patterns (`app.bsky.feed.*`) -> exact names."""
    if value is None:
        return frozenset(DEFAULT_COLLECTIONS)
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise UsageError("--collections is empty")
    return expand_collections(names)


# pydantic parses sizes ("500MB", "4GiB", "1.5 gb", decimal and binary units);
# this module only words the errors and sets the bounds.
_SIZES = TypeAdapter(ByteSize)


MAX_SIZE = 2**50
"""The largest size a flag takes (1 PiB): beyond it a number is a typo."""


def parse_size(value: str, flag: str) -> int:
    """`500MB`, `4GiB`, `123456` -> bytes (a whole number, at least 1, at most 1 PiB)."""
    try:
        size = int(_SIZES.validate_python(str(value).strip()))
    except ValidationError:
        raise UsageError(f"{flag} {value!r} is not a size like 500MB or 4GiB") from None
    if size < 1 or size > MAX_SIZE:
        raise UsageError(f"{flag} {value!r} must be between 1 byte and 1PiB")
    return size


MAX_SECONDS = 1e6
"""The longest duration a flag takes (~11 days)."""


def _check_number(
    opts: dict[str, Any], key: str, flag: str, *, low: float, high: float, low_ok: bool = False
) -> None:
    """A finite number in range: `low < value <= high` (`low <= value` with `low_ok`)."""
    value = opts[key]
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{flag} {value!r} is not a number")
    above = value >= low if low_ok else value > low
    if not math.isfinite(value) or not above or value > high:
        side = ">=" if low_ok else ">"
        raise UsageError(f"{flag} {value!r} must be a number {side} {low:g} and <= {high:g}")


def check_out_writable(out: Path) -> None:
    """Refuse an --out we could not write, without leaving anything behind."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    probe_dir = out
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UsageError(f"--out {out}: {probe_dir} is not a directory")
    try:
        # os.access is not enough as root or on read-only mounts: try for real.
        probe = tempfile.mkdtemp(prefix=".bsky-backfill-probe-", dir=probe_dir)
        os.rmdir(probe)
    except OSError as e:
        raise UsageError(f"--out {out}: not writable ({e.strerror or e})") from None


def _looks_like_host(value: str) -> bool:
    """`host[:port]` or an http(s) URL with a usable host and port."""
    url = value if "://" in value else f"https://{value}"
    try:
        parse_endpoint(url)
    except BackfillError:
        return False
    return " " not in value


def settings_from_options(opts: dict[str, Any]) -> tuple[RunSettings, DidSource | None]:
    for flag, key in (("--host-concurrency", "host_concurrency"), ("--commit-rows", "commit_rows")):
        if opts[key] < 1:
            raise UsageError(f"{flag} must be at least 1")
    for flag, key in (
        ("--commit-seconds", "commit_seconds"),
        ("--connect-timeout", "connect_timeout"),
        ("--read-timeout", "read_timeout"),
        ("--retry-base", "retry_base"),
        ("--retry-cap", "retry_cap"),
        ("--max-retry-after", "max_retry_after"),
    ):
        _check_number(opts, key, flag, low=0, high=MAX_SECONDS)
    _check_number(opts, "rate_limit", "--rate-limit", low=0, high=1e6, low_ok=True)
    if opts["max_attempts"] < 1:
        raise UsageError("--max-attempts must be at least 1")
    if not opts["retry_cap"] >= opts["retry_base"]:
        raise UsageError("--retry-cap must be at least --retry-base")
    give_up_after = parse_duration(opts["give_up_after"], "--give-up-after")
    unreachable_after = parse_duration(opts["unreachable_after"], "--unreachable-after")
    retry_failed = parse_codes(opts["retry_failed"])
    max_car_bytes = parse_size(opts["max_car_size"], "--max-car-size")
    stream_bytes = parse_size(opts["stream_size"], "--stream-size")
    if opts["global_host_rate"] is not None:
        if opts["global_host_rate"] < 1:
            raise UsageError("--global-host-rate must be at least 1")
        if not str(opts["queue"] or "").startswith(("postgresql://", "postgres://")):
            raise UsageError("--global-host-rate needs a PostgreSQL --queue (it is shared there)")
    if not 1 <= opts["workers"] <= 1024:
        raise UsageError("--workers must be between 1 and 1024")
    enumerating = bool(opts["all_from_plc"] or opts["from_relay"] or opts["pds"])
    listed = bool(opts["dids_file"] or opts["did_list"])
    if not (listed or enumerating or opts["refresh"] or retry_failed is not None):
        raise UsageError(
            "name what to backfill: --dids FILE, --did DID, --all-from-plc, "
            "--from-relay URL or --pds URL (or --refresh or --retry-failed an existing --out)"
        )
    for flag, value in [("--from-relay", opts["from_relay"]), *(("--pds", p) for p in opts["pds"])]:
        if value is not None and not _looks_like_host(value):
            raise UsageError(f"{flag} {value!r} is not a host name or an http(s) URL")
    since = parse_when(opts["since"], "--since")
    until = parse_when(opts["until"], "--until")
    if since and until and since >= until:
        raise UsageError("--since must be earlier than --until")
    collections = parse_collections(opts["collections"])
    plc_url = opts["plc_url"]
    if not plc_url.startswith(("http://", "https://")) or not _looks_like_host(plc_url):
        raise UsageError(f"--plc-url {plc_url!r} must be an http(s) URL with a host")
    dns_server = opts.get("dns_server")
    if dns_server is not None:
        try:
            parse_server(dns_server)
        except ValueError:
            raise UsageError(f"--dns-server {dns_server!r} is not HOST or HOST:PORT") from None
    source = DidSource.from_args(list(opts["did_list"]), opts["dids_file"]) if listed else None
    out = opts["out"]
    if "://" in out:
        if not opts["queue"]:
            raise UsageError(
                f"--out {out}: a remote dataset needs --queue postgresql://... "
                "(the state cannot live on object storage)"
            )
    else:
        check_out_writable(Path(out))
    progress = opts["progress"] if opts["progress"] is not None else sys.stdout.isatty()
    settings = RunSettings(
        out=out,
        queue=opts["queue"],
        plc_url=opts["plc_url"],
        method=opts["method"],
        collections=collections,
        filters_given=any(opts[k] is not None for k in ("collections", "since", "until")),
        since=since,
        until=until,
        rate_limit=opts["rate_limit"] or None,
        allow_private_hosts=opts["allow_private_hosts"],
        verify=not opts["no_verify"],
        validate_records=not opts["no_validate"],
        progress=progress,
        host_concurrency=opts["host_concurrency"],
        global_host_rate=opts["global_host_rate"],
        stream_bytes=stream_bytes,
        workers=opts["workers"],
        all_from_plc=opts["all_from_plc"],
        from_relay=opts["from_relay"],
        pds=tuple(opts["pds"]),
        refresh=opts["refresh"],
        compact=opts["compact"],
        commit_rows=opts["commit_rows"],
        commit_seconds=opts["commit_seconds"],
        http=HttpSettings(
            connect_timeout=opts["connect_timeout"],
            read_timeout=opts["read_timeout"],
            # Every answer must be complete within twice the read timeout, plus a
            # second per 50 kB received (a trickle cannot hold a slot for ever).
            body_seconds=2 * opts["read_timeout"],
            max_car_bytes=max_car_bytes,
            max_retry_after=opts["max_retry_after"],
            spool_bytes=min(stream_bytes, SPOOL_BYTES),
        ),
        retry=RetryPolicy(
            max_attempts=opts["max_attempts"],
            base_seconds=opts["retry_base"],
            cap_seconds=opts["retry_cap"],
            give_up_after=give_up_after or None,
        ),
        unreachable_after=unreachable_after or None,
        retry_failed=retry_failed,
        dns_server=dns_server,
        handle_txt=opts.get("handle_txt"),
    )
    return settings, source
