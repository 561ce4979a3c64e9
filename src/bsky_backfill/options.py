"""Checked `run` options -> a `RunSettings` and a DID source, shared by the CLI and the API.

Where it sits: after run_options.py has checked each option on its own (types,
bounds, syntax: the model every surface is derived from), and before the
engine. What needs several options or the outside world is checked here:
since before until, a source to backfill, DID lines, collection patterns that
match, an --out we can write. Everything happens before anything is written: a
bad value raises `UsageError` with one line naming the flag (the CLI turns that
into exit 2; the API names its keyword instead).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.errors import UsageError
from bsky_backfill.option_values import RETRY_DEFAULT, bytes_of, codes_of, moment_of, seconds_of
from bsky_backfill.records.collections import expand_collections
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.run_options import DEFAULTS, RunOptions, from_click
from bsky_backfill.xrpc.client import SPOOL_BYTES, HttpSettings
from bsky_backfill.xrpc.retry import RetryPolicy

__all__ = [
    "DEFAULTS",
    "RETRY_DEFAULT",
    "build_settings",
    "check_out_writable",
    "parse_size",
    "settings_from_options",
]


def parse_size(value: str, flag: str) -> int:
    """A size flag of another command (`compact --file-size`) -> bytes."""
    try:
        return bytes_of(value)
    except ValueError as e:
        raise UsageError(f"{flag} {value!r}: {e}") from None


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


def settings_from_options(opts: Mapping[str, Any]) -> tuple[RunSettings, DidSource | None]:
    """click's dict for `run` (as `merge_options` leaves it) -> settings and DID source."""
    options = from_click(opts)
    return build_settings(options, progress=options.progress, handle_txt=opts.get("handle_txt"))


def build_settings(
    o: RunOptions, *, progress: bool | None = False, handle_txt: Any = None
) -> tuple[RunSettings, DidSource | None]:
    """Checked options -> the run's settings and DID source; raises `UsageError`.

    `progress` None: live progress on a terminal. `handle_txt`: the API's and
    tests' DNS hook (`RunSettings.handle_txt`)."""
    if not o.retry_cap >= o.retry_base:
        raise UsageError("--retry-cap must be at least --retry-base")
    if o.global_host_rate is not None and not str(o.queue or "").startswith(
        ("postgresql://", "postgres://")
    ):
        raise UsageError("--global-host-rate needs a PostgreSQL --queue (it is shared there)")
    retry_failed = codes_of(o.retry_failed) if o.retry_failed is not None else None
    enumerating = bool(o.all_from_plc or o.from_relay or o.pds)
    listed = bool(o.dids_file or o.dids)
    if not (listed or enumerating or o.refresh or retry_failed is not None):
        raise UsageError(
            "name what to backfill: --dids FILE, --did DID, --all-from-plc, "
            "--from-relay URL or --pds URL (or --refresh or --retry-failed an existing --out)"
        )
    since = moment_of(o.since) if o.since is not None else None
    until = moment_of(o.until) if o.until is not None else None
    if since and until and since >= until:
        raise UsageError("--since must be earlier than --until")
    collections = (
        expand_collections(o.collections)
        if o.collections is not None
        else frozenset(DEFAULT_COLLECTIONS)
    )
    source = DidSource.from_args(o.dids, o.dids_file) if listed else None
    if "://" in o.out:
        if not o.queue:
            raise UsageError(
                f"--out {o.out}: a remote dataset needs --queue postgresql://... "
                "(the state cannot live on object storage)"
            )
    else:
        check_out_writable(Path(o.out))
    stream_bytes = bytes_of(o.stream_size)
    settings = RunSettings(
        out=o.out,
        queue=o.queue,
        plc_url=o.plc_url,
        method=o.method,
        collections=collections,
        filters_given=any(v is not None for v in (o.collections, o.since, o.until)),
        since=since,
        until=until,
        rate_limit=o.rate_limit or None,
        allow_private_hosts=o.allow_private_hosts,
        verify=o.verify,
        validate_records=o.validate_records,
        progress=progress if progress is not None else sys.stdout.isatty(),
        host_concurrency=o.host_concurrency,
        global_host_rate=o.global_host_rate,
        stream_bytes=stream_bytes,
        workers=o.workers,
        all_from_plc=o.all_from_plc,
        from_relay=o.from_relay,
        pds=tuple(o.pds),
        refresh=o.refresh,
        compact=o.compact,
        commit_rows=o.commit_rows,
        commit_seconds=o.commit_seconds,
        http=HttpSettings(
            connect_timeout=o.connect_timeout,
            read_timeout=o.read_timeout,
            # Every answer must be complete within twice the read timeout, plus a
            # second per 50 kB received (a trickle cannot hold a slot for ever).
            body_seconds=2 * o.read_timeout,
            max_car_bytes=bytes_of(o.max_car_size),
            max_retry_after=o.max_retry_after,
            spool_bytes=min(stream_bytes, SPOOL_BYTES),
        ),
        retry=RetryPolicy(
            max_attempts=o.max_attempts,
            base_seconds=o.retry_base,
            cap_seconds=o.retry_cap,
            give_up_after=seconds_of(o.give_up_after) or None,
        ),
        unreachable_after=seconds_of(o.unreachable_after) or None,
        retry_failed=retry_failed,
        dns_server=o.dns_server,
        handle_txt=handle_txt,
    )
    return settings, source
