"""The report page rendered in real headless Chromium: chart elements in the DOM, pixels
on the screenshot.

Needs Debian's `chromium` (.ci/run installs it). Without it the test skips on a
developer's machine and fails under CI=true, where a skip would hide a broken page.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from bsky_backfill.report import build_report, write_html
from bsky_backfill.report.charts import colour_of
from tests.ci import require_in_ci
from tests.report.conftest import Dataset

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    require_in_ci("chromium is not installed (apt-get install chromium; .ci/run does)")


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


class Bars(HTMLParser):
    """`rect.bar` attributes per enclosing `svg` id, in the DOM Chromium serialised."""

    def __init__(self) -> None:
        super().__init__()
        self.svg: str | None = None
        self.bars: dict[str, list[dict[str, str | None]]] = {}
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "svg":
            self.svg = a.get("id") or ""
            self.bars.setdefault(self.svg, [])
        elif tag == "rect" and self.svg is not None and "bar" in (a.get("class") or "").split():
            self.bars[self.svg].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.svg = None


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return (int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16))


def test_page_renders_charts_in_headless_chromium(dataset: Dataset, tmp_path: Path) -> None:
    report = build_report(dataset.out)
    page = tmp_path / "report.html"
    write_html(report, page)
    url = page.resolve().as_uri()

    dom = run_chromium(tmp_path, "--dump-dom", url).stdout
    bars = Bars()
    bars.feed(dom)
    assert {"table-collections", "table-months", "table-hosts", "table-dead-letters"} <= bars.ids

    # one bar per (collection, month) with rows, carrying exactly that count
    over_time = bars.bars["chart-records-over-time"]
    got = {(b["data-series"], b["data-bucket"]): int(str(b["data-count"])) for b in over_time}
    assert len(got) == len(over_time)
    assert got == {(m.collection, m.month): m.records for m in report.months}
    assert sum(got.values()) == report.records_total - sum(
        c.no_created_at for c in report.collections
    )
    # one bar per dead-letter code
    dead = bars.bars["chart-dead-letters"]
    assert {b["data-code"]: int(str(b["data-count"])) for b in dead} == (
        report.dead_letters_by_code()
    )
    hosts = bars.bars["chart-records-by-host"]
    assert {b["data-host"]: int(str(b["data-count"])) for b in hosts} == {
        h.host: h.records for h in report.hosts
    }

    shot = tmp_path / "shot.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", url)
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    assert colours is not None
    pixels = Counter({rgb: n for n, rgb in colours})
    total = 1280 * 2000
    white = pixels[(255, 255, 255)]
    assert total - white > total * 0.03, "screenshot is (almost) blank"
    assert len(pixels) > 50, "too few colours for a page with charts and text"
    # The biggest collection's bars are painted in its colour, far beyond its
    # 12x12 legend swatch (crisp edges: bar interiors are exactly that colour).
    # Colours are fixed per collection (the same in every report).
    biggest = max(report.collections, key=lambda c: c.records).collection
    assert pixels[_rgb(colour_of(biggest))] > 2_000
    # every collection's legend swatch (at least) was painted
    assert all(pixels[_rgb(colour_of(c.collection))] >= 100 for c in report.collections)


_MEASURE = (
    "<script>document.body.setAttribute('data-page-width', "
    "String(document.documentElement.scrollWidth))</script>"
)


def test_page_fits_1280_pixels_with_many_collections(dataset: Dataset, tmp_path: Path) -> None:
    """With nine collections the page does not scroll sideways at 1280 px: Chromium lays
    it out and reports the document's scroll width (wide tables scroll in their own box)."""
    report = build_report(dataset.out)
    assert len(report.collections) >= 8
    page = tmp_path / "report.html"
    write_html(report, page)
    html = page.read_text()
    assert "</body>" in html
    # The page forbids scripts (its Content-Security-Policy); the measuring copy drops
    # that one line so the probe below may run. Layout is unaffected.
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html, count=1)
    page.write_text(html.replace("</body>", _MEASURE + "</body>", 1))
    dom = run_chromium(tmp_path, "--window-size=1280,2000", "--dump-dom", page.as_uri()).stdout
    marker = 'data-page-width="'
    assert marker in dom, dom[-500:]
    width = int(dom.split(marker, 1)[1].split('"', 1)[0])
    assert 0 < width <= 1280, width
