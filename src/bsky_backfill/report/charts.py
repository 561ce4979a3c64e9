"""Inline SVG charts for the report page, drawn in Python (no JavaScript, no network).

Where it sits: `html.render_html` embeds these strings in the page. Every bar
is one `<rect class="bar">` carrying `data-*` attributes with the number it
stands for and a `<title>` tooltip, so a browser shows the values on hover and
a test can find each series point in the rendered DOM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# Tableau 10: distinct, colour-blind friendly enough, readable on white.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
MAX_MONTH_BUCKETS = 240
"""Beyond 20 years of months the time chart counts per year instead."""
MAX_YEAR_SPAN = 400
"""Beyond this many years (stray createdAt values) only years with rows get a bar."""


# Tableau 20's lighter half after the ten above: one fixed colour for each of the
# app.bsky record types, so the same collection has the same colour in every report.
_MORE = (
    "#a0cbe8", "#ffbe7d", "#8cd17d", "#ff9d9a", "#86bcb6", "#f1ce63", "#d4a6c8", "#fabfd2",
    "#d7b5a6", "#79706e",
)  # fmt: skip
_FIXED = (
    "app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.feed.repost", "app.bsky.graph.follow",
    "app.bsky.graph.block", "app.bsky.actor.profile", "app.bsky.graph.list",
    "app.bsky.graph.listitem", "app.bsky.graph.listblock", "app.bsky.graph.starterpack",
    "app.bsky.feed.threadgate", "app.bsky.feed.postgate", "app.bsky.feed.generator",
    "app.bsky.labeler.service", "app.bsky.graph.verification", "app.bsky.actor.status",
)  # fmt: skip
_COLOURS = (*PALETTE, *_MORE)


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def colour_of(collection: str) -> str:
    """A collection's colour, the same in every report (others: by a hash of the name)."""
    if collection in _FIXED:
        return _COLOURS[_FIXED.index(collection)]
    digest = hashlib.sha256(collection.encode()).digest()
    return _COLOURS[digest[0] % len(_COLOURS)]


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def nice_axis(value: int) -> tuple[int, int]:
    """(top, step) of a value axis: step is 1, 2 or 5 x 10^k, at most 5 steps reach `value`."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step * 5 >= value:
                ticks = max(-(-value // (m * step)), 1)
                return ticks * m * step, m * step
        step *= 10


def time_buckets(months: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Buckets for the time axis and each month's bucket.

    Months from the first to the last (gaps shown as gaps), or years when that
    would be too many bars; only the years present when even those span centuries.
    """
    present = sorted(set(months))
    if not present:
        return [], {}
    first_y, first_m = (int(x) for x in present[0].split("-"))
    last_y, last_m = (int(x) for x in present[-1].split("-"))
    span = (last_y - first_y) * 12 + (last_m - first_m) + 1
    if span <= MAX_MONTH_BUCKETS:
        buckets = [
            f"{first_y + (first_m - 1 + i) // 12:04d}-{(first_m - 1 + i) % 12 + 1:02d}"
            for i in range(span)
        ]
        return buckets, {m: m for m in present}
    if last_y - first_y < MAX_YEAR_SPAN:
        years = [f"{y:04d}" for y in range(first_y, last_y + 1)]
    else:
        years = sorted({m[:4] for m in present})
    return years, {m: m[:4] for m in present}


@dataclass(frozen=True, slots=True)
class Series:
    """One stacked series: a name and its count per bucket."""

    name: str
    counts: dict[str, int]


def stacked_bars(
    chart_id: str, buckets: Sequence[str], series: Sequence[Series], *, title: str
) -> str:
    """Vertical stacked bars: one column per bucket, one `<rect>` per non-zero series point."""
    width, height = 960, 360
    left, right, top, bottom = 64, 16, 16, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(s.counts.get(b, 0) for s in series) for b in buckets]
    y_max, y_step = nice_axis(max(totals, default=0))
    band = plot_w / max(len(buckets), 1)
    bar_w = max(band * 0.8, 1.0)
    parts = [
        f'<svg id="{_attr(chart_id)}" class="chart" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_attr(title)}" shape-rendering="crispEdges">',
        f"<title>{escape(title)}</title>",
    ]
    parts.extend(_y_axis(left, top, plot_w, plot_h, y_max, y_step))
    label_every = max(1, -(-len(buckets) // 12))  # at most ~12 labels
    for i, bucket in enumerate(buckets):
        x = left + i * band + (band - bar_w) / 2
        y = float(top + plot_h)
        for s in series:
            n = s.counts.get(bucket, 0)
            if n <= 0:
                continue
            # At least one pixel, so a small series next to a big one stays visible.
            h = max(n / y_max * plot_h, 1.0)
            y -= h
            parts.append(
                f'<rect class="bar" data-series="{_attr(s.name)}" data-bucket="{_attr(bucket)}" '
                f'data-count="{n}" x="{x:.2f}" y="{y:.2f}" width="{bar_w:.2f}" '
                f'height="{h:.2f}" fill="{colour_of(s.name)}">'
                f"<title>{escape(s.name)} {escape(bucket)}: {n:,}</title></rect>"
            )
        if i % label_every == 0:
            parts.append(
                f'<text class="x-label" x="{left + (i + 0.5) * band:.2f}" '
                f'y="{top + plot_h + 18}" text-anchor="middle">{escape(bucket)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _y_axis(left: int, top: int, plot_w: int, plot_h: int, y_max: int, step: int) -> list[str]:
    parts = [
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
        f'y2="{top + plot_h}" stroke="#333"/>'
    ]
    for value in range(0, y_max + 1, step):
        y = top + plot_h - plot_h * value / y_max
        label = f"{value:,}"
        parts.append(
            f'<line class="grid" x1="{left}" y1="{y:.2f}" x2="{left + plot_w}" y2="{y:.2f}" '
            f'stroke="#e4e4e4"/><text class="y-label" x="{left - 6}" y="{y + 4:.2f}" '
            f'text-anchor="end">{label}</text>'
        )
    return parts


def horizontal_bars(
    chart_id: str, rows: Sequence[tuple[str, int]], *, title: str, fill: str, data_key: str
) -> str:
    """One labelled horizontal bar per row (label, count), largest first as given."""
    width, row_h, top = 960, 26, 8
    label_w, value_w = 280, 90
    plot_w = width - label_w - value_w
    height = top * 2 + row_h * max(len(rows), 1)
    x_max = max((n for _, n in rows), default=0) or 1
    parts = [
        f'<svg id="{_attr(chart_id)}" class="chart" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_attr(title)}" shape-rendering="crispEdges">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (label, n) in enumerate(rows):
        y = top + i * row_h
        w = max(n / x_max * plot_w, 1.0)
        parts.append(
            f'<text class="bar-label" x="{label_w - 8}" y="{y + row_h / 2 + 4:.1f}" '
            f'text-anchor="end">{escape(label)}</text>'
            f'<rect class="bar" data-{data_key}="{_attr(label)}" data-count="{n}" '
            f'x="{label_w}" y="{y + 3}" width="{w:.2f}" height="{row_h - 6}" fill="{fill}">'
            f"<title>{escape(label)}: {n:,}</title></rect>"
            f'<text class="bar-value" x="{label_w + w + 6:.2f}" y="{y + row_h / 2 + 4:.1f}">'
            f"{n:,}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
