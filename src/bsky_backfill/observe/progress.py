"""What the operator sees while a run works: a live rich display, or a log line.

Where it sits: beside the engine, fed by `Backfill.on_tick` (a few calls a
second, on the event-loop thread). Two reporters:

- `ProgressDisplay` (a terminal): repos done/total with a bar, records/s,
  bytes/s, ETA, and a table of the busiest and the paused hosts (with why:
  "rate limited (429) for 40s", "server budget used up ..."). Redrawn at most
  4 times a second; the store is read at most once a second (`RunSampler`).
- `ProgressLog` (no terminal, or `--no-progress`): one INFO line on the
  `bsky_backfill.progress` logger every `interval` seconds.

The display shares the event loop with the run, so it is kept cheap: a tick
that is not due costs one clock read, and a frame is laid out as styled text
(under a millisecond; a rich `Table` took ten). bench/progress_overhead.py
measures what it costs a run.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from bsky_backfill.observe.snapshot import HostsView, HostView, RunSampler, RunSnapshot
from bsky_backfill.safetext import printable

if TYPE_CHECKING:
    from bsky_backfill.engine.manager import Backfill, RunSummary

log = logging.getLogger("bsky_backfill.progress")

HOST_COLUMNS = ("host", "in flight", "done", "failed", "requests", "429s", "MB", "state")


class RateWindow:
    """Rates over the last `seconds` of snapshots (the current pace, not the run's average)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._points: deque[tuple[float, int, int, int]] = deque()

    def add(self, snap: RunSnapshot) -> None:
        self._points.append((snap.at, snap.records, snap.bytes, snap.repos_finished))
        while len(self._points) > 2 and snap.at - self._points[1][0] >= self.seconds:
            self._points.popleft()

    def rates(self) -> tuple[float, float, float]:
        """(records/s, bytes/s, repos/s); zeros until two snapshots are apart in time."""
        if len(self._points) < 2:
            return 0.0, 0.0, 0.0
        (t0, r0, b0, f0), (t1, r1, b1, f1) = self._points[0], self._points[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0, 0.0, 0.0
        return (r1 - r0) / span, (b1 - b0) / span, max(0, f1 - f0) / span


def eta_seconds(snap: RunSnapshot, repos_per_second: float) -> float | None:
    if snap.repos_left == 0:
        return 0.0
    if repos_per_second <= 0:
        return None
    return snap.repos_left / repos_per_second


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def summary_parts(snap: RunSnapshot, rates: tuple[float, float, float]) -> tuple[str, str]:
    """(where the repos stand, how fast data flows): the display's two header lines."""
    records_s, bytes_s, repos_s = rates
    pct = 100.0 * snap.repos_finished / snap.repos_total if snap.repos_total else 0.0
    repos = (
        f"repos {snap.repos_finished:,}/{snap.repos_total:,} ({pct:.0f}%), "
        f"{snap.repos_failed:,} failed, {snap.repos_in_flight:,} in flight, "
        f"ETA {format_duration(eta_seconds(snap, repos_s))}"
        + (", stopping" if snap.stopping else "")
    )
    flow = (
        f"{snap.records:,} records ({records_s:,.0f}/s), {format_bytes(bytes_s)}/s; "
        f"hosts {snap.hosts_active:,} active, {snap.hosts_paused:,} paused"
        + (f", {snap.throttled:,} 429s" if snap.throttled else "")
    )
    return repos, flow


def summary_line(snap: RunSnapshot, rates: tuple[float, float, float]) -> str:
    """One line for the log."""
    return "; ".join(summary_parts(snap, rates))


def header(snap: RunSnapshot, rates: tuple[float, float, float], width: int = 40) -> Text:
    """A bar, then the two summary lines (where the repos stand, how fast data flows),
    each on its own line so that the whole display fits 80 columns."""
    repos, flow = summary_parts(snap, rates)
    # The bar carries the ETA; the repos line goes without it (huge counts fit).
    repos, _, eta = repos.partition(", ETA ")
    eta, _, stopping = eta.partition(", ")
    done = round(width * snap.repos_finished / snap.repos_total) if snap.repos_total else 0
    done = min(width, done)
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("━" * done, style="bar.complete")
    text.append("─" * (width - done), style="bar.back")
    text.append(f"  ETA {eta}" + (f", {stopping}" if stopping else ""))
    data, _, hosts = flow.partition("; ")
    text.append(f"\n{repos}\n{data}\n{hosts}")
    return text


def host_table(hosts: HostsView) -> Text:
    """The busiest hosts, then the paused ones (a host both busy and paused: listed once).

    Laid out by hand as fixed-width text: a rich `Table` takes ~10 ms to lay out,
    which at 4 refreshes a second would be felt by the event loop; this takes <1 ms.
    """
    views: dict[str, HostView] = {}
    for view in (*hosts.busiest, *hosts.paused_hosts):
        views.setdefault(view.host, view)
    rows = [HOST_COLUMNS, *(_host_row(v) for v in views.values())]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HOST_COLUMNS))]
    text = Text("hosts: busiest and paused\n", style="bold", no_wrap=True, overflow="ellipsis")
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(width) if 0 < i < len(row) - 1 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        state = cells.pop()
        text.append("  ".join(cells) + "  ", style="bold" if n == 0 else "")
        paused = n > 0 and state.startswith("paused")
        if not paused:
            text.append(state.rstrip() + "\n", style="bold" if n == 0 else "")
            continue
        # The reason (and when it ends) on a line of its own: it would not fit 80
        # columns beside the counters.
        text.append("paused\n", style="yellow")
        text.append(f"    {state.rstrip()}\n", style="yellow")
    more = hosts.paused - len(hosts.paused_hosts)
    if more > 0:
        text.append(f"... and {more:,} more paused hosts\n", style="dim")
    text.rstrip()
    return text


def render(
    snap: RunSnapshot, rates: tuple[float, float, float], hosts: HostsView
) -> RenderableType:
    """The whole live display for one snapshot (pure: tests render it to a recording Console)."""
    return Group(header(snap, rates), host_table(hosts))


HOST_WIDTH = 24
"""Host names are cut to this many characters in the table (80 columns)."""


def _host_row(view: HostView) -> tuple[str, ...]:
    state = f"paused: {view.paused}" if view.paused else "working" if view.active else "idle"
    name = printable(view.host, 300)
    if len(name) > HOST_WIDTH:  # the start of a name tells hosts apart best
        name = name[: HOST_WIDTH - 1] + "…"
    return (
        name,
        f"{view.active:,}",
        f"{view.done:,}",
        f"{view.failed:,}",
        f"{view.requests:,}",
        f"{view.throttled:,}",
        f"{view.bytes / 1e6:,.1f}",
        state,
    )


class ProgressDisplay:
    """A rich `Live` display redrawn from `on_tick`; `start()` before the run, `stop()` after."""

    def __init__(
        self, console: Console | None = None, *, refresh: float = 0.25, top: int = 8
    ) -> None:
        self.console = console if console is not None else Console()
        self.refresh = refresh
        self.sampler = RunSampler(top=top)
        self.rates = RateWindow()
        self._live = Live(console=self.console, auto_refresh=False, transient=False)
        self._next = 0.0

    def attach(self, backfill: Backfill) -> None:
        backfill.on_tick.append(self.on_tick)

    def start(self) -> None:
        # The live region redirects stdout/stderr, so log lines print above it.
        self._live.start()

    def on_tick(self, backfill: Backfill) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.refresh
        snap = self.sampler.sample(backfill)
        self.rates.add(snap)
        hosts = self.sampler.hosts(backfill)
        self._live.update(render(snap, self.rates.rates(), hosts), refresh=True)

    def finish(self, summary: RunSummary) -> None:
        """The last frame, from the run's own summary (not a sample taken while the
        final repos were still in flight): totals that agree with each other."""
        total = summary.repos_total
        finished = summary.repos_done + summary.repos_failed
        width = 40
        done = min(width, round(width * finished / total)) if total else width
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("━" * done, style="bar.complete")
        text.append("─" * (width - done), style="bar.back")
        verb = "stopped" if summary.stopped else "finished"
        pct = 100.0 * finished / total if total else 100.0
        text.append(
            f"\n{verb}: repos {finished:,}/{total:,} ({pct:.0f}%), "
            f"{summary.repos_failed:,} failed, {summary.repos_pending:,} pending\n"
            f"{summary.records_landed:,} records this run "
            f"({summary.records_per_second:,.0f}/s) in {format_duration(summary.seconds)}"
        )
        self._live.update(text, refresh=True)

    def stop(self) -> None:
        self._live.stop()


class ProgressLog:
    """One INFO line every `interval` seconds on the `bsky_backfill.progress` logger."""

    def __init__(self, interval: float = 10.0, logger: logging.Logger = log) -> None:
        self.interval = interval
        self.logger = logger
        self.sampler = RunSampler(top=0)
        self.rates = RateWindow(seconds=max(10.0, interval))
        self._next_sample = 0.0
        self._next_line: float | None = None

    def attach(self, backfill: Backfill) -> None:
        backfill.on_tick.append(self.on_tick)

    def on_tick(self, backfill: Backfill) -> None:
        now = time.monotonic()
        if self._next_line is None:
            self._next_line = now + self.interval  # the first line after one interval
        # Sample once a second so the rate covers the interval, not just its end.
        if now < self._next_sample:
            return
        self._next_sample = now + 1.0
        snap = self.sampler.sample(backfill)
        self.rates.add(snap)
        if now >= self._next_line:
            self._next_line = now + self.interval
            self.logger.info("progress: %s", summary_line(snap, self.rates.rates()))

    def start(self) -> None:
        """Nothing to set up (symmetry with `ProgressDisplay`)."""

    def stop(self) -> None:
        """Nothing to tear down: the run summary follows."""


__all__ = [
    "HOST_COLUMNS",
    "ProgressDisplay",
    "ProgressLog",
    "RateWindow",
    "format_bytes",
    "format_duration",
    "header",
    "host_table",
    "render",
    "summary_line",
    "summary_parts",
]
