"""The operator's view of a run: progress, Prometheus metrics, structured logs.

Where it sits: beside the engine, which never calls in here (STYLE habit 9).
Everything listens to the hooks a `Backfill` offers: `on_tick` (every scheduler
iteration), `on_commit` (each durable batch) and `on_decode` (each repo's
extraction time), and reads `Backfill.stats` / `.slots` / `.store`.

For a caller (the CLI, the Python API), one pair of calls:

    observers = start_observers(backfill, metrics_port=9100, live_progress=True)
    try:
        summary = await backfill.run()
        observers.finish(summary)
    finally:
        observers.close()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console

from bsky_backfill.observe.logs import setup_logging
from bsky_backfill.observe.metrics import RunMetrics
from bsky_backfill.observe.progress import ProgressDisplay, ProgressLog

if TYPE_CHECKING:
    from bsky_backfill.engine.manager import Backfill, RunSummary


@dataclass
class Observers:
    """What `start_observers` started for one run."""

    progress: ProgressDisplay | ProgressLog | None
    metrics: RunMetrics | None

    def finish(self, summary: RunSummary) -> None:
        """The run returned: final gauges and the display's last frame (the store is
        closed by now)."""
        if self.metrics is not None:
            self.metrics.finish(summary)
        if isinstance(self.progress, ProgressDisplay):
            self.progress.finish(summary)

    def close(self) -> None:
        """Stop the display and the metrics server; safe to call twice."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.metrics is not None:
            self.metrics.close()


def start_observers(
    backfill: Backfill,
    *,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    live_progress: bool = False,
    log_progress: bool = True,
    progress_interval: float = 10.0,
    console: Console | None = None,
) -> Observers:
    """Attach to `backfill` (before `run()`): a live display when `live_progress`, else a
    progress log line every `progress_interval` s when `log_progress`; metrics served on
    `metrics_host`:`metrics_port` when given. Raises `UsageError` when the port cannot be bound."""
    metrics = None
    if metrics_port is not None:
        metrics = RunMetrics(backfill)
        metrics.serve(
            metrics_port, metrics_host
        )  # first: a port in use stops us before anything starts
        metrics.attach()
    progress: ProgressDisplay | ProgressLog | None = None
    if live_progress:
        progress = ProgressDisplay(console)
    elif log_progress:
        progress = ProgressLog(progress_interval)
    if progress is not None:
        progress.attach(backfill)
        progress.start()
    return Observers(progress=progress, metrics=metrics)


__all__ = [
    "Observers",
    "ProgressDisplay",
    "ProgressLog",
    "RunMetrics",
    "setup_logging",
    "start_observers",
]
