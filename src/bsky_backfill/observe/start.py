"""`start_observers`: progress, metrics and the end-of-run lines for one run.

Where it sits: called by the CLI and the Python API around `Backfill.run()`
(see the package docstring); it starts what the caller asked for and hands
back one `Observers` to finish and close.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console

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


__all__ = ["Observers", "start_observers"]
