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
Bad values raise `bsky_backfill.errors.UsageError` before anything is written,
naming the parameter (`since='2024/01/01' is not ...`), not the CLI flag.

`run()` blocks until the run ends, also where an event loop is already
running in the calling thread (Jupyter, IPython): the run then gets its own
loop in a worker thread, and a KeyboardInterrupt (the notebook's stop
button) asks it to stop gracefully, as SIGINT does for the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import threading
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
    "progress", "metrics_port", "metrics_host", "log_format", "config_file", "no_verify",
    "no_validate",
}  # fmt: skip
# CLI flags whose parameter is not the flag's name with underscores.
_PARAMETER_OF_FLAG = {"--dids": "dids_file", "--did": "dids", "--no-verify": "verify=False",
                     "--no-validate": "validate=False"}  # fmt: skip
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")


def _parameter(flag: str) -> str:
    return _PARAMETER_OF_FLAG.get(flag, flag[2:].replace("-", "_"))


def _in_parameters(error: UsageError) -> UsageError:
    """The same error with CLI flags (`--since 'x'`) told as parameters (`since='x'`)."""
    text = re.sub(
        r"(--[a-z][a-z0-9-]*) (?=['\"\d]|-\d)",
        lambda m: _parameter(m.group(1)) + "=",
        error.message,
    )
    text = _FLAG.sub(lambda m: _parameter(m.group(0)), text)
    return UsageError(text)


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
        try:
            self.settings, self.source = settings_from_options(opts)
        except UsageError as e:
            raise _in_parameters(e) from None

    def run(self) -> RunSummary:
        """Run to the end (or until stopped) and summarise; blocks.

        Inside a running event loop (a notebook) the run takes a worker thread
        with its own loop; `KeyboardInterrupt` then stops it gracefully (what
        is finished is committed) and the summary says `stopped`."""
        engine = _Engine(self.settings, self.source)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            in_loop = False
        else:
            in_loop = True
        try:
            return _run_in_thread(engine) if in_loop else asyncio.run(engine.run())
        except UsageError as e:  # e.g. --out held by another run
            raise _in_parameters(e) from None

    async def run_async(self) -> RunSummary:
        """`run()` for callers that already have an event loop."""
        try:
            return await _Engine(self.settings, self.source).run()
        except UsageError as e:
            raise _in_parameters(e) from None

    @staticmethod
    def options() -> Iterable[str]:
        """The option names `Backfill(...)` accepts."""
        names = {_RENAMED.get(k, k) for k in DEFAULTS} - _NOT_OPTIONS - {"did_list"}
        return sorted(names | {"dids", "verify", "validate"})


def _run_in_thread(engine: _Engine) -> RunSummary:
    """`engine.run()` on a new loop in a worker thread; the caller's thread waits."""
    loop = asyncio.new_event_loop()
    outcome: list[RunSummary] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            outcome.append(loop.run_until_complete(engine.run()))
        except BaseException as e:  # handed to the caller's thread below
            failure.append(e)
        finally:
            loop.close()

    thread = threading.Thread(target=work, name="bsky-backfill-run", daemon=True)
    thread.start()
    while thread.is_alive():
        try:
            thread.join()
        except KeyboardInterrupt:
            # The run's state lives on its loop: ask it from there.
            with contextlib.suppress(RuntimeError):  # closed meanwhile: the run is over
                loop.call_soon_threadsafe(engine.request_stop)
    if failure:
        raise failure[0]
    return outcome[0]
