"""`bsky-backfill report`: a summary of a finished (or running) backfill's dataset.

Where it sits: beside the pipeline, reading only what it left under OUT.
`queries.build_report` aggregates with DuckDB (and the state store for hosts)
into a small `Report`; `render.print_report` prints it as rich tables or JSON;
`html.write_html` writes a self-contained page with inline SVG charts.
"""

from bsky_backfill.report.html import render_html, write_html
from bsky_backfill.report.model import (
    CollectionCount,
    DeadLetterCount,
    HostCount,
    MonthCount,
    Report,
)
from bsky_backfill.report.queries import build_report
from bsky_backfill.report.render import print_report, report_json

__all__ = [
    "CollectionCount",
    "DeadLetterCount",
    "HostCount",
    "MonthCount",
    "Report",
    "build_report",
    "print_report",
    "render_html",
    "report_json",
    "write_html",
]
