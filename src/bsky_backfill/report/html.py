"""`report --html FILE`: one self-contained HTML page with charts and the report's tables.

Where it sits: cli.py's `report` command calls `write_html` with the `Report`
from `queries.build_report`. The page needs no server and no network: CSS is
inline, the charts are inline SVG drawn by `charts.py`, there is no script, and
a Content-Security-Policy forbids fetching anything, so it opens the same from
a laptop, a mail attachment or an air-gapped machine.

Stable hooks (tests and users' tooling rely on them): `#chart-records-over-time`
(one `rect.bar` per collection and period with rows), `#chart-dead-letters`
(one `rect.bar` per error code), `#chart-records-by-host`, and the tables
`#table-collections`, `#table-months`, `#table-hosts`, `#table-dead-letters`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from html import escape
from pathlib import Path

from bsky_backfill.report.charts import (
    Series,
    colour_of,
    horizontal_bars,
    stacked_bars,
    time_buckets,
)
from bsky_backfill.report.model import Report
from bsky_backfill.report.render import TOP_HOSTS, filter_lines, short_names

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       margin: 24px auto; max-width: 1000px; padding: 0 16px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.summary { color: #555; margin: 0 0 12px; }
.chart text { font-size: 11px; fill: #444; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 0 0 6px; padding: 0; }
.legend li { list-style: none; display: flex; align-items: center; gap: 6px; }
.swatch { width: 12px; height: 12px; display: inline-block; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 3px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.total td { font-weight: 600; border-top: 1px solid #999; }
.empty { color: #777; font-style: italic; }
.scroll { overflow-x: auto; max-width: 100%; }
dl.filters { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; margin: 0; }
dl.filters dt { color: #555; } dl.filters dd { margin: 0; }
"""
# Nothing may be fetched: no scripts, no fonts, no images beyond inline data.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _table(
    table_id: str,
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    titles: Sequence[str] | None = None,
) -> str:
    """A plain table; a row whose first cell is "total" is styled as the total. `titles`
    are the headers' full names (shown on hover) where the headers are short ones. A
    table wider than the page scrolls inside its box, never the page."""
    head = "".join(
        f'<th title="{escape(t, quote=True)}">{escape(h)}</th>' if t else f"<th>{escape(h)}</th>"
        for h, t in zip(header, titles or [""] * len(header), strict=True)
    )
    body = []
    for row in rows:
        cells = "".join(
            f"<td>{n:,}</td>" if isinstance(n, int) else f"<td>{escape(str(n))}</td>" for n in row
        )
        css = ' class="total"' if row and row[0] == "total" else ""
        body.append(f"<tr{css}>{cells}</tr>")
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _records_over_time(report: Report) -> str:
    buckets, bucket_of = time_buckets([m.month for m in report.months])
    if not buckets:
        return '<p class="empty">No record has a created_at.</p>'
    series = []
    for c in report.collections:
        counts: dict[str, int] = {}
        for m in report.months:
            if m.collection == c.collection:
                key = bucket_of[m.month]
                counts[key] = counts.get(key, 0) + m.records
        series.append(Series(c.collection, counts))
    legend = "".join(
        f'<li data-series="{escape(s.name, quote=True)}"><span class="swatch" '
        f'style="background:{colour_of(s.name)}"></span>{escape(s.name)}</li>'
        for s in series
    )
    per = "month" if len(buckets[0]) == 7 else "year"
    nulls = sum(c.no_created_at for c in report.collections)
    note = f'<p class="summary">{nulls:,} records without created_at are not shown.</p>'
    return (
        f'<ul class="legend">{legend}</ul>'
        + stacked_bars(
            "chart-records-over-time",
            buckets,
            series,
            title=f"records per {per} and collection (UTC, by created_at)",
        )
        + (note if nulls else "")
    )


def _dead_letters_chart(report: Report) -> str:
    by_code = report.dead_letters_by_code()
    if not by_code:
        return '<p class="empty">No dead letters.</p>'
    return horizontal_bars(
        "chart-dead-letters",
        list(by_code.items()),
        title="dead letters by error code",
        fill="#c0392b",
        data_key="code",
    )


def _hosts_section(report: Report) -> str:
    if not report.hosts:
        why = "no state store under OUT/_state" if not report.has_state else "no hosts"
        return f'<p class="empty">Hosts unknown ({why}).</p>'
    shown = report.hosts[:TOP_HOSTS]
    chart = horizontal_bars(
        "chart-records-by-host",
        [(h.host, h.records) for h in shown],
        title="records per PDS host",
        fill="#6b7a8f",
        data_key="host",
    )
    rows = [(h.host, h.records, h.repos, h.done, h.failed, h.pending) for h in shown]
    return chart + _table(
        "table-hosts", ("host", "records", "repos", "done", "failed", "pending"), rows
    )


def _months_table(report: Report) -> str:
    names = [c.collection for c in report.collections]
    counts = {(m.collection, m.month): m.records for m in report.months}
    rows: list[list[object]] = []
    for month in sorted({m.month for m in report.months}):
        row = [counts.get((name, month), 0) for name in names]
        rows.append([month, *row, sum(row)])
    nulls = [c.no_created_at for c in report.collections]
    if any(nulls):
        rows.append(["no created_at", *nulls, sum(nulls)])
    # Short headers (feed.post) so that 8+ collections fit the page; the full NSID on hover.
    return _table(
        "table-months",
        ("month", *short_names(names), "total"),
        rows,
        titles=("", *names, ""),
    )


def _filters(report: Report) -> str:
    """The dataset's filters, as its runs recorded them (what the numbers are of)."""
    if report.filters is None:
        return '<p class="empty">Filters unknown (no state store).</p>'
    items = "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in filter_lines(report.filters)
    )
    return f'<dl class="filters" id="filters">{items}</dl>'


def render_html(report: Report) -> str:
    """The whole page as one string."""
    collections = [
        (c.collection, c.records, c.deleted, c.updated, c.no_created_at,
         c.first_month or "-", c.last_month or "-")
        for c in report.collections
    ]  # fmt: skip
    collections.append(
        (
            "total",
            report.records_total,
            report.deleted_total,
            report.updated_total,
            sum(c[4] for c in collections),
            "",
            "",
        )
    )
    collections_table = _table(
        "table-collections",
        ("collection", "records", "deleted", "updated", "no created_at", "first month",
         "last month"),
        collections,
    )  # fmt: skip
    dead = [(d.stage, d.code, d.count) for d in report.dead_letters]
    dead.append(("total", "", report.dead_letters_total))
    title = f"bsky-backfill report: {report.out}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p class="summary" id="summary">{report.records_total:,} records in
{len(report.collections)} collections (the current view: {report.deleted_total:,} deleted
and {report.updated_total:,} updated by refreshes left out); {report.dead_letters_total:,}
dead letters;
{len(report.hosts)} PDS hosts.</p>
<section id="dataset-filters">
<h2>What the dataset holds</h2>
{_filters(report)}
</section>
<section id="records-over-time">
<h2>Records over time per collection</h2>
{_records_over_time(report)}
</section>
<section id="dead-letters">
<h2>Dead letters by error code</h2>
{_dead_letters_chart(report)}
</section>
<section id="hosts">
<h2>Top PDS hosts</h2>
{_hosts_section(report)}
</section>
<section id="tables">
<h2>Records per collection</h2>
{collections_table}
<h2>Records per month (UTC, by created_at)</h2>
{_months_table(report)}
<h2>Dead letters by stage and code</h2>
{_table("table-dead-letters", ("stage", "error", "count"), dead)}
</section>
</body>
</html>
"""


def write_html(report: Report, path: Path) -> None:
    """Write the page atomically: a reader never sees half a file."""
    page = render_html(report)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the page from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
