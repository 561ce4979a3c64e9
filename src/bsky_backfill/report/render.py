"""`bsky-backfill report` on the terminal: rich tables, or the same numbers as JSON.

Where it sits: cli.py's `report` command calls `print_report` with the `Report`
that `queries.build_report` made; the HTML page is `html.py`'s job.
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bsky_backfill.report.model import Report
from bsky_backfill.safetext import printable

TOP_HOSTS = 20
"""Hosts shown in the terminal table and on the page (JSON has all of them)."""


def cell(value: str) -> Text:
    """A table cell of text that came from outside (host names, NSIDs, codes): never read
    as rich markup (`[link=...]`), control characters escaped."""
    return Text(printable(value))


def report_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True)


def _collections_table(report: Report) -> Table:
    table = Table(
        "collection",
        "records",
        "deleted",
        "updated",
        "no created_at",
        "first month",
        "last month",
        title="records per collection",
        title_justify="left",
    )
    for c in report.collections:
        table.add_row(
            cell(c.collection),
            f"{c.records:,}",
            f"{c.deleted:,}",
            f"{c.updated:,}",
            f"{c.no_created_at:,}",
            c.first_month or "-",
            c.last_month or "-",
        )
    table.add_row(
        "total",
        f"{report.records_total:,}",
        f"{report.deleted_total:,}",
        f"{report.updated_total:,}",
        "",
        "",
        "",
        style="bold",
    )
    return table


def short_names(names: list[str]) -> list[str]:
    """Column headers for collections: the last two NSID segments when those are unique
    (`feed.post`), the full NSIDs otherwise; a terminal has no room for many full ones."""
    short = [".".join(n.split(".")[-2:]) for n in names]
    return short if len(set(short)) == len(short) else names


def _months_table(report: Report) -> Table:
    """Months down, collections across: one row per month that has rows (gaps skipped)."""
    names = [c.collection for c in report.collections]
    counts = {(m.collection, m.month): m.records for m in report.months}
    table = Table(
        "month",
        *(escape(printable(n)) for n in short_names(names)),
        "total",
        title="records per month (UTC, by created_at)",
    )
    table.title_justify = "left"
    for month in sorted({m.month for m in report.months}):
        row = [counts.get((name, month), 0) for name in names]
        table.add_row(month, *(f"{n:,}" for n in row), f"{sum(row):,}")
    nulls = [c.no_created_at for c in report.collections]
    if any(nulls):
        table.add_row("no created_at", *(f"{n:,}" for n in nulls), f"{sum(nulls):,}")
    return table


def _hosts_table(report: Report) -> Table:
    shown = report.hosts[:TOP_HOSTS]
    title = f"top PDS hosts ({len(shown)} of {len(report.hosts)})"
    table = Table(
        "host",
        "records",
        "repos",
        "done",
        "failed",
        "pending",
        title=title,
        title_justify="left",
    )
    for h in shown:
        table.add_row(
            cell(h.host),
            f"{h.records:,}",
            f"{h.repos:,}",
            f"{h.done:,}",
            f"{h.failed:,}",
            f"{h.pending:,}",
        )
    return table


def _dead_letters_table(report: Report) -> Table:
    table = Table("stage", "error", "count", title="dead letters", title_justify="left")
    for d in report.dead_letters:
        table.add_row(cell(d.stage), cell(d.code), f"{d.count:,}")
    table.add_row("total", "", f"{report.dead_letters_total:,}", style="bold")
    return table


def print_report(report: Report, *, as_json: bool, console: Console | None = None) -> None:
    """Print the report: tables for people, or JSON (`--json`) for programs."""
    if as_json:
        print(report_json(report))
        return
    console = console or Console(highlight=False, soft_wrap=True)
    console.print(
        f"[bold]{escape(printable(str(report.out)))}[/bold]: {report.records_total:,} records in "
        f"{len(report.collections)} collections (current view: {report.deleted_total:,} "
        f"deleted and {report.updated_total:,} updated left out), "
        f"{report.dead_letters_total:,} dead letters"
    )
    if report.collections:
        console.print(_collections_table(report))
        console.print(_months_table(report))
    if report.hosts:
        console.print(_hosts_table(report))
    elif not report.has_state:
        console.print("no state store under OUT/_state: hosts unknown")
    if report.dead_letters:
        console.print(_dead_letters_table(report))
