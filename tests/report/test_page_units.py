"""The page and its charts on hand-made reports: edge cases a small simulator run never hits."""

from __future__ import annotations

from pathlib import Path

from bsky_backfill.report import (
    CollectionCount,
    DeadLetterCount,
    HostCount,
    MonthCount,
    Report,
    render_html,
    write_html,
)
from bsky_backfill.report.charts import nice_axis, time_buckets
from bsky_backfill.report.render import short_names


def test_time_buckets_fill_gaps_then_fall_back_to_years() -> None:
    buckets, of = time_buckets(["2024-02", "2023-11"])
    assert buckets == ["2023-11", "2023-12", "2024-01", "2024-02"]
    assert of == {"2023-11": "2023-11", "2024-02": "2024-02"}
    # a stray createdAt decades away: one bar per year, gaps kept
    buckets, of = time_buckets(["1970-01", "2024-02", "2024-03"])
    assert buckets[0] == "1970" and buckets[-1] == "2024" and len(buckets) == 55
    assert of["2024-03"] == "2024"
    # centuries apart: only the years that have rows
    buckets, _ = time_buckets(["0001-01", "2024-02"])
    assert buckets == ["0001", "2024"]
    assert time_buckets([]) == ([], {})


def test_nice_axis_covers_the_value_in_at_most_five_round_steps() -> None:
    for value in (0, 1, 3, 6, 11, 48, 51, 99, 101, 1234, 987_654):
        top, step = nice_axis(value)
        assert top >= max(value, 1) and top % step == 0 and top // step <= 5
        assert str(step).strip("0") in {"1", "2", "5"}
    assert nice_axis(48) == (50, 10)


def test_short_column_names_only_when_unique() -> None:
    assert short_names(["app.bsky.feed.post", "app.bsky.feed.like"]) == ["feed.post", "feed.like"]
    assert short_names(["a.b.feed.post", "c.d.feed.post"]) == ["a.b.feed.post", "c.d.feed.post"]


def test_hostile_names_are_escaped() -> None:
    """Collection names, hosts and codes come from strangers' data."""
    evil = '"><script>alert(1)</script>'
    report = Report(
        out="/tmp/<out>",
        collections=[CollectionCount("x.y" + evil, 2, 0, "2024-01", "2024-01")],
        months=[MonthCount("x.y" + evil, "2024-01", 2)],
        hosts=[HostCount("h" + evil, 1, 1, 0, 0, 2)],
        dead_letters=[DeadLetterCount("fetch", "Code" + evil, 1)],
        has_state=True,
    )
    page = render_html(report)
    assert "<script" not in page
    assert page.count("&lt;script&gt;") >= 6  # legend, bars, tables, host, code...


def test_empty_parts_render_notes_not_charts(tmp_path: Path) -> None:
    report = Report(
        out="o", collections=[CollectionCount("app.bsky.actor.profile", 3, 3, None, None)]
    )
    page = tmp_path / "p.html"
    write_html(report, page)
    html = page.read_text()
    assert 'id="chart-records-over-time"' not in html and "No record has a created_at" in html
    assert 'id="chart-dead-letters"' not in html and "No dead letters" in html
    assert "no state store" in html
    assert page.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["p.html"]  # no temporary file left


def test_hostile_names_on_the_terminal_are_text_not_markup() -> None:
    """Rich markup and escape sequences in a host name or code print as themselves."""
    import io

    from rich.console import Console

    from bsky_backfill.report.model import CollectionCount, DeadLetterCount, HostCount, Report
    from bsky_backfill.report.render import print_report

    evil = "[link=https://evil.example]x[/link][blink]\x1b]0;t\x07\x1b[31m"
    report = Report(
        out="out[bold]",
        collections=[CollectionCount("app.bsky.feed.post", 1, 0, "2024-01", "2024-01")],
        hosts=[HostCount(evil, 1, 1, 0, 0, 1)],
        dead_letters=[DeadLetterCount("fetch", evil, 1)],
        has_state=True,
    )
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=400, highlight=False)
    print_report(report, as_json=False, console=console)
    shown = buffer.getvalue()
    assert "[link=https://evil.example]x[/link][blink]" in shown  # printed, not obeyed
    assert "out[bold]" in shown
    assert "\x1b]0;" not in shown and "\x1b]8;" not in shown and "\x07" not in shown
    assert "\\x1b[31m" in shown


def test_month_table_headers_are_whole_at_80_columns() -> None:
    import io

    from rich.console import Console

    from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
    from bsky_backfill.report.model import CollectionCount, MonthCount, Report
    from bsky_backfill.report.render import print_report

    names = sorted(DEFAULT_COLLECTIONS)
    report = Report(
        out="out",
        collections=[CollectionCount(n, 1_234_567, 0, "2024-01", "2024-02") for n in names],
        months=[MonthCount(n, m, 617_283) for n in names for m in ("2024-01", "2024-02")],
    )
    buffer = io.StringIO()
    print_report(report, as_json=False, console=Console(file=buffer, width=80))
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    text = buffer.getvalue()
    for header in short_names(names):
        assert f" {header} " in text, header  # never cut to "acto…"
    assert "…" not in text


def test_page_colours_are_fixed_per_collection_and_filters_are_shown() -> None:
    from bsky_backfill.report.charts import colour_of
    from bsky_backfill.report.html import render_html
    from bsky_backfill.report.model import CollectionCount, MonthCount, Report

    def page(names: list[str]) -> str:
        return render_html(
            Report(
                out="out",
                collections=[CollectionCount(n, 5, 0, "2024-01", "2024-01") for n in names],
                months=[MonthCount(n, "2024-01", 5) for n in names],
                filters={
                    "collections": names,
                    "since": "2024-01-01T00:00:00+00:00",
                    "until": None,
                    "method": "car",
                },
            )
        )

    alone = page(["app.bsky.feed.like"])
    with_posts = page(["app.bsky.feed.post", "app.bsky.feed.like"])
    like = colour_of("app.bsky.feed.like")
    assert like != colour_of("app.bsky.feed.post")
    # the same collection, the same colour, whatever else the dataset holds
    assert 'data-series="app.bsky.feed.like" data-bucket="2024-01" data-count="5"' in alone
    for html in (alone, with_posts):
        assert f'fill="{like}"><title>app.bsky.feed.like' in html
    assert "createdAt window</dt><dd>[2024-01-01T00:00:00+00:00, now)" in with_posts
    assert '<th title="app.bsky.feed.post">feed.post</th>' in with_posts
    assert '<div class="scroll"><table id="table-months">' in with_posts
