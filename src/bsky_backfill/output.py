"""Human and JSON renderings of a run summary and of `status` (rich tables).

Where it sits: called by cli.py after the engine returns; never by the engine.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bsky_backfill.engine.manager import RunSummary
from bsky_backfill.safetext import printable
from bsky_backfill.state.base import StatusReport


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _print_counts(console: Console, records: dict[str, int], letters: dict[str, int]) -> None:
    """Records per collection and dead letters per code, as two small tables."""
    for counts, key, value, title in (
        (records, "collection", "records", "records landed"),
        (letters, "error", "count", "dead letters"),
    ):
        if not counts:
            continue
        table = Table(key, value, title=title, title_justify="left")
        for name, count in sorted(counts.items()):
            table.add_row(Text(printable(name)), f"{count:,}")
        console.print(table)


def print_summary(summary: RunSummary, out: Path | str) -> None:
    """What a run prints when it ends."""
    console = _console()
    verb = "stopped" if summary.stopped else "finished"
    console.print(
        f"[bold]{verb}[/bold] in {summary.seconds:.1f}s: repos {summary.repos_done} done, "
        f"{summary.repos_failed} failed, {summary.repos_pending} pending of "
        f"{summary.repos_total}; {summary.records_total:,} records in the dataset "
        f"({summary.records_per_second:,.0f}/s over this run); "
        f"{summary.requests:,} requests, {summary.bytes / 1e6:,.1f} MB"
    )
    _print_counts(console, summary.records, summary.dead_letters)
    console.print(f"dataset: {escape(str(out))}")


def duckdb_hint(out: Path) -> str:
    """How to query the output (printed by `demo` and the README)."""
    glob = out / "app.bsky.feed.post" / "**" / "*.parquet"
    return (
        "query it with DuckDB, e.g.\n"
        f"  duckdb -c \"SELECT count(*) FROM read_parquet('{glob}', "
        'hive_partitioning=true, union_by_name=true)"'
    )


def status_as_dict(report: StatusReport) -> dict[str, object]:
    return dataclasses.asdict(report)


def print_status(report: StatusReport, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status_as_dict(report), indent=2, sort_keys=True))
        return
    console = _console()
    console.print(
        f"repos: {report.total} total, {report.done} done, {report.failed} failed, "
        f"{report.pending} pending, {report.in_progress} in progress"
    )
    _print_counts(console, report.records_by_collection, report.dead_letters_by_code)
    if report.hosts:
        table = Table("host", "total", "done", "failed", "pending", title="PDS hosts")
        for host in sorted(report.hosts, key=lambda h: -h.total):
            table.add_row(
                Text(printable(host.host)),
                str(host.total),
                str(host.done),
                str(host.failed),
                str(host.pending),
            )
        console.print(table)
