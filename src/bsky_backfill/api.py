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

The keyword arguments are the fields of `run_options.RunOptions` (the model
the flags, the config file and the environment are made from), with its
defaults: the flags' names with underscores (`rate_limit`,
`allow_private_hosts`, `max_car_size`, ...), except `dids` (a list of DIDs or
handles, as --did), `dids_file` (--dids), `verify` and `validate` (the
opposites of --no-verify and --no-validate); lists or comma-separated strings
for `collections` and `pds`; dates or datetimes for `since` and `until`.
Bad values raise `bsky_backfill.errors.UsageError` before anything is written,
naming the parameter (`since='2024/01/01': ...`), not the CLI flag. The
command's own options (progress display, metrics server, log format) are not
arguments here. `handle_txt` is no option but a hook: an async
`name -> [TXT strings]` used instead of DNS (tests, embedded networks).

`run()` blocks until the run ends, also where an event loop is already
running in the calling thread (Jupyter, IPython): the run then gets its own
loop in a worker thread, and a KeyboardInterrupt (the notebook's stop
button) asks it to stop gracefully, as SIGINT does for the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Iterable
from typing import Any

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.manager import Backfill as _Engine
from bsky_backfill.engine.manager import RunSummary
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.errors import UsageError
from bsky_backfill.options import build_settings
from bsky_backfill.run_options import OPTIONS, RUN_OPTION_NAMES, from_keywords

__all__ = ["Backfill", "RunSummary"]

# Checks after the model's (options.py, sources.py) name flags: told as parameters.
_PARAMETER_OF_FLAG = {
    o.flag: f"{o.api}=False" if o.spec.invert else o.api
    for o in OPTIONS
    if o.name in RUN_OPTION_NAMES
}
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


class Backfill:
    """One backfill, configured like `bsky-backfill run`; `run()` returns a `RunSummary`."""

    def __init__(self, *, handle_txt: Any = None, **options: Any) -> None:
        self.settings: RunSettings
        self.source: DidSource | None
        try:
            self.settings, self.source = build_settings(
                from_keywords(options), handle_txt=handle_txt
            )
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
        """The option names `Backfill(...)` accepts (`handle_txt` aside)."""
        return sorted(o.api for o in OPTIONS if o.name in RUN_OPTION_NAMES)


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
