"""Prometheus metrics scraped over real HTTP during a simulator run, and at its end.

The run is in-process (a `Backfill` on the simulator over loopback) so the test
can hold the metrics server open after `run()` returns; the live progress
display is attached too, rendering into a recording console. At the end, the
counters must add up to the run's final summary (which comes from the state
store) and to what the simulated servers saw.
"""

from __future__ import annotations

import asyncio
import io
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.manager import Backfill, RunSummary
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.observe.metrics import RunMetrics
from bsky_backfill.observe.progress import HOST_COLUMNS, ProgressDisplay
from bsky_backfill.simulate import RateLimit, Scenario, run_network_in_thread
from bsky_backfill.simulate.truth import APP_BSKY_COLLECTIONS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name and v}


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def hook_commits(backfill: Backfill, metrics: RunMetrics) -> None:
    """Feed commits to the metrics until the engine calls `on_commit` hooks itself."""
    if hasattr(backfill, "on_commit"):
        return  # RunMetrics.attach() found the engine's hook list

    def wrap(b: Backfill) -> None:
        sink = b.sink
        if getattr(sink, "_observed", False):
            return
        commit = sink.commit

        def observed_commit():  # type: ignore[no-untyped-def]
            summary = commit()
            metrics.on_commit(summary)
            return summary

        sink.commit = observed_commit  # type: ignore[method-assign]
        sink._observed = True  # type: ignore[attr-defined]

    backfill.on_tick.insert(0, wrap)


def test_metrics_scraped_during_a_run_add_up_to_its_summary(tmp_path: Path) -> None:
    # Hosts that publish no budget and answer bare 429s: the run meets real throttling.
    scenario = Scenario(
        seed=31, accounts=28, hosts=2, mean_records=12, did_web=1,
        rate_limit=RateLimit(limit=1000, window_s=1.0, get_repo_limit=6, html_429=True,
                             headers=False),
    )  # fmt: skip
    console = Console(file=io.StringIO(), record=True, force_terminal=True, width=150)
    with run_network_in_thread(scenario) as net:
        settings = RunSettings(
            out=tmp_path / "out",
            plc_url=net.plc_url,
            allow_private_hosts=True,
            collections=frozenset(APP_BSKY_COLLECTIONS),
            rate_limit=None,
            commit_seconds=0.2,
        )
        backfill = Backfill(settings, DidSource.from_args(net.truth.input_dids, None))
        metrics = RunMetrics(backfill)
        port = metrics.serve(0)
        metrics.attach()
        hook_commits(backfill, metrics)
        display = ProgressDisplay(console, refresh=0.1)
        display.attach(backfill)
        display.start()
        try:
            summary, mid_run = asyncio.run(run_and_scrape(backfill, port))
            final = scrape(port)  # before finish(): the gauges must already be right
        finally:
            display.stop()
            metrics.close()
        truth_requests = net.stats.total()
        truth_429s = net.stats.count(status=429)
        hosts = net.hosts

    assert not summary.stopped and summary.repos_pending == 0
    # a scrape while work was under way saw part of it
    assert 0 < total(mid_run, "bsky_backfill_records_total") < summary.records_total
    assert by_label(mid_run, "bsky_backfill_repos", "state").get("pending", 0) > 0 or (
        total(mid_run, "bsky_backfill_uncommitted_repos") > 0
    )

    # records landed = committed rows, per collection; dead letters per code
    assert by_label(final, "bsky_backfill_records_total", "collection") == summary.records
    assert by_label(final, "bsky_backfill_dead_letters_total", "code") == summary.dead_letters
    assert summary.dead_letters, "the scenario has taken-down and missing repos"
    # requests: ours, the summary's and the servers' counts agree; 429s were met
    assert total(final, "bsky_backfill_requests_total") == summary.requests == truth_requests
    assert total(final, "bsky_backfill_rate_limited_total") == truth_429s > 0
    assert total(final, "bsky_backfill_received_bytes_total") == summary.bytes > 0
    # repos by state, from the store at the last commit
    repos = by_label(final, "bsky_backfill_repos", "state")
    assert repos.get("done", 0) == summary.repos_done > 0
    assert repos.get("failed", 0) == summary.repos_failed > 0
    assert repos.get("pending", 0) == 0 and repos.get("in_progress", 0) == 0
    processed = by_label(final, "bsky_backfill_repos_processed_total", "result")
    assert processed == {"done": summary.repos_done, "failed": summary.repos_failed}
    commits = total(final, "bsky_backfill_commits_total")
    assert commits >= 2
    assert final[("bsky_backfill_commit_seconds_count", ())] == commits

    # the live display drew the progress line and the hosts table
    text = console.export_text()
    assert "repos " in text and "records" in text and "ETA" in text
    for column in HOST_COLUMNS:
        assert column in text, column
    assert any(urlsplit(host.url).netloc in text for host in hosts)


async def run_and_scrape(backfill: Backfill, port: int) -> tuple[RunSummary, Samples]:
    """Run the backfill; scrape once (from another thread) after its first commit with
    rows while repos are still outstanding."""
    run = asyncio.create_task(backfill.run())
    mid_run: Samples = {}
    while not run.done():
        await asyncio.sleep(0.05)
        if not mid_run and backfill.stats.commits >= 1:
            samples = await asyncio.to_thread(scrape, port)
            if total(samples, "bsky_backfill_records_total") > 0:
                mid_run = samples
    summary = await run
    assert mid_run, "no scrape happened while the run was working"
    return summary, mid_run
