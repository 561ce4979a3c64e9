"""The Python API: `from bsky_backfill import Backfill`.

Where it sits: beside cli.py, on the same option parsing (options.py) and the
same engine, so a notebook or a pipeline gets exactly what `bsky-backfill run`
does, with keyword arguments instead of flags:

    from bsky_backfill import Backfill

    summary = Backfill(
        dids_file="study.txt",
        collections=["app.bsky.feed.post", "app.bsky.feed.like"],
        since="2024-01-01", until="2025-01-01",
        out="study-data",
    ).run()
    print(summary.records, summary.dead_letters)

Option names are the flags' names with underscores (`rate_limit`,
`allow_private_hosts`, `max_car_size`, ...), plus `dids` (a list of DIDs),
`verify` (the opposite of --no-verify), `validate` (the opposite of
--no-validate) and lists for `collections` and `pds`.
Bad values raise `bsky_backfill.errors.UsageError` before anything is written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable
from typing import Any

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.manager import Backfill as _Engine
from bsky_backfill.engine.manager import RunSummary
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.errors import UsageError
from bsky_backfill.options import DEFAULTS, RETRY_DEFAULT, settings_from_options

__all__ = ["Backfill", "RunSummary"]

_RENAMED = {"dids": "did_list", "config": "config_file"}
_NOT_OPTIONS = {
    "progress",
    "metrics_port",
    "log_format",
    "config_file",
    "no_verify",
    "no_validate",
}


def _when(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    raise UsageError(f"expected an ISO 8601 string, date or datetime, got {value!r}")


class Backfill:
    """One backfill, configured like `bsky-backfill run`; `run()` returns a `RunSummary`."""

    def __init__(self, **options: Any) -> None:
        opts = dict(DEFAULTS)
        opts["progress"] = False
        for name, value in options.items():
            key = _RENAMED.get(name, name)
            if name in ("verify", "validate"):
                opts[f"no_{name}"] = not value
                continue
            if key not in DEFAULTS or key in _NOT_OPTIONS:
                raise UsageError(f"unknown option {name!r} for Backfill")
            opts[key] = value
        if opts["collections"] is not None and not isinstance(opts["collections"], str):
            opts["collections"] = ",".join(opts["collections"])
        # retry_failed=True: the default codes; a list: those codes (like --retry-failed).
        retry = opts["retry_failed"]
        if retry is True:
            opts["retry_failed"] = RETRY_DEFAULT
        elif retry is False:
            opts["retry_failed"] = None
        elif retry is not None and not isinstance(retry, str):
            opts["retry_failed"] = ",".join(retry) or RETRY_DEFAULT
        for key in ("did_list", "pds"):
            if isinstance(opts[key], str):
                opts[key] = (opts[key],)
            opts[key] = tuple(opts[key])
        opts["since"], opts["until"] = _when(opts["since"]), _when(opts["until"])
        opts["out"] = str(opts["out"])
        self.settings: RunSettings
        self.source: DidSource | None
        self.settings, self.source = settings_from_options(opts)

    def run(self) -> RunSummary:
        """Run to the end (or until interrupted) and summarise; blocks."""
        return asyncio.run(self.run_async())

    async def run_async(self) -> RunSummary:
        """`run()` for callers that already have an event loop."""
        return await _Engine(self.settings, self.source).run()

    @staticmethod
    def options() -> Iterable[str]:
        """The option names `Backfill(...)` accepts."""
        names = {_RENAMED.get(k, k) for k in DEFAULTS} - _NOT_OPTIONS - {"did_list"}
        return sorted(names | {"dids", "verify", "validate"})
