"""`bsky-backfill report` on the terminal: rich tables, or the same numbers as JSON.

Where it sits: cli.py's `report` command calls `print_report` with the `Report`
that `queries.build_report` made; the HTML page is `html.py`'s job.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
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
    table = Table(title="records per collection", title_justify="left")
    # The NSID is never cut (it is what one types into a query); the headers of the
    # narrow columns wrap instead, so the table fits 80 columns. Deleted and updated
    # counts appear once a refresh has found any (they would not fit beside the
    # months otherwise, and are all zero before).
    changes = bool(report.deleted_total or report.updated_total)
    table.add_column("collection", no_wrap=True)
    table.add_column("records", justify="right", no_wrap=True)
    if changes:
        table.add_column("deleted", justify="right")
        table.add_column("updated", justify="right")
    table.add_column("undated", justify="right")  # rows without a created_at
    table.add_column("first month")
    table.add_column("last month")
    for c in report.collections:
        counts = [f"{c.deleted:,}", f"{c.updated:,}"] if changes else []
        table.add_row(
            cell(c.collection),
            f"{c.records:,}",
            *counts,
            f"{c.no_created_at:,}",
            c.first_month or "-",
            c.last_month or "-",
        )
    totals = [f"{report.deleted_total:,}", f"{report.updated_total:,}"] if changes else []
    table.add_row("total", f"{report.records_total:,}", *totals, "", "", "", style="bold")
    return table


def filter_lines(filters: dict[str, Any]) -> list[tuple[str, str]]:
    """The dataset's filters as (what, value) lines for people."""
    collections = filters.get("collections") or []
    if set(collections) == set(DEFAULT_COLLECTIONS):
        kinds = f"every app.bsky record type ({len(collections)})"
    else:
        kinds = ", ".join(collections) or "-"
    since, until = filters.get("since"), filters.get("until")
    window = "any" if not (since or until) else f"[{since or 'the beginning'}, {until or 'now'})"
    return [
        ("collections", kinds),
        ("createdAt window", window),
        ("method", str(filters.get("method") or "-")),
    ]


def short_names(names: list[str]) -> list[str]:
    """Column headers for collections: the last two NSID segments when those are unique
    (`feed.post`), the full NSIDs otherwise; a terminal has no room for many full ones."""
    short = [".".join(n.split(".")[-2:]) for n in names]
    return short if len(set(short)) == len(short) else names


def _months_tables(report: Report, width: int) -> list[Table]:
    """Months down, collections across: one row per month that has rows (gaps skipped).

    Headers are never cut: when the collections do not fit `width` side by side,
    they are split over several tables (the total in the last one)."""
    names = [c.collection for c in report.collections]
    headers = [escape(printable(n)) for n in short_names(names)]
    counts = {(m.collection, m.month): m.records for m in report.months}
    months = sorted({m.month for m in report.months})
    nulls = [c.no_created_at for c in report.collections]
    biggest = max((c.records for c in report.collections), default=0)
    number = len(f"{biggest:,}")
    groups: list[list[int]] = [[]]
    used = len("no created_at") + 4  # the month column and the table's borders
    total_width = len(f"{report.records_total:,}") + 3
    for i, header in enumerate(headers):
        need = max(len(header), number) + 3
        if groups[-1] and used + need + total_width > width:
            groups.append([])
            used = len("no created_at") + 4
        groups[-1].append(i)
        used += need
    tables = []
    for n, group in enumerate(groups):
        last = n == len(groups) - 1
        title = "records per month (UTC, by created_at)" + (" (continued)" if n else "")
        table = Table("month", title=title, title_justify="left")
        for i in group:
            table.add_column(headers[i], justify="right", no_wrap=True)
        if last:
            table.add_column("total", justify="right", no_wrap=True)
        for month in months:
            row = [counts.get((names[i], month), 0) for i in group]
            every = [counts.get((name, month), 0) for name in names]
            table.add_row(month, *(f"{v:,}" for v in row), *([f"{sum(every):,}"] if last else []))
        if any(nulls):
            row = [nulls[i] for i in group]
            total = [f"{sum(nulls):,}"] if last else []
            table.add_row("no created_at", *(f"{v:,}" for v in row), *total)
        tables.append(table)
    return tables


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
    if report.filters is not None:
        for what, value in filter_lines(report.filters):
            console.print(f"{what}: {escape(printable(value, 2000))}")
    if report.collections:
        console.print(_collections_table(report))
        for table in _months_tables(report, console.width):
            console.print(table)
    if report.hosts:
        console.print(_hosts_table(report))
    elif not report.has_state:
        console.print("no state store under OUT/_state: hosts unknown")
    if report.dead_letters:
        console.print(_dead_letters_table(report))
