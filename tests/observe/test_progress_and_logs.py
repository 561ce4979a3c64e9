"""The progress display's rendering, the progress log line, and JSON log lines.

Pure pieces, no network: a `RunSnapshot` and a `HostsView` built by hand, the
display rendered to a recording rich Console, log lines parsed back.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest
from rich.console import Console

from bsky_backfill.observe.logs import setup_logging
from bsky_backfill.observe.progress import (
    HOST_COLUMNS,
    ProgressLog,
    RateWindow,
    format_duration,
    render,
    summary_line,
)
from bsky_backfill.observe.snapshot import HostsView, HostView, RunSnapshot, hosts_view
from bsky_backfill.xrpc.slot import HostSlot


def snapshot(at: float, finished: int, records: int, nbytes: int, **kw: object) -> RunSnapshot:
    base: dict[str, object] = dict(
        at=at, elapsed=at, repos_total=1000, repos_finished=finished, repos_failed=7,
        repos_pending=1000 - finished, repos_in_flight=12, records=records, bytes=nbytes,
        requests=finished * 2, throttled=3, hosts_seen=40, hosts_active=5, hosts_paused=2,
        stopping=False,
    )  # fmt: skip
    base.update(kw)
    return RunSnapshot(**base)  # type: ignore[arg-type]


def view(host: str, active: int, paused: str = "") -> HostView:
    return HostView(host, active, done=10, failed=1, requests=99, throttled=2, bytes=2_500_000,
                    paused=paused)  # fmt: skip


def test_display_shows_totals_rates_eta_and_the_hosts_table() -> None:
    rates = RateWindow(seconds=10)
    rates.add(snapshot(100.0, 400, 40_000, 8_000_000))
    rates.add(snapshot(110.0, 500, 50_000, 18_000_000))
    records_s, bytes_s, repos_s = rates.rates()
    assert (records_s, bytes_s, repos_s) == (1000.0, 1_000_000.0, 10.0)
    slow = view("pds.slow.example", 2, "rate limited (429) for 40s")
    limited = view("pds.limited.example", 0, "server budget used up until its window resets")
    hosts = HostsView(
        in_flight=12,
        active=5,
        paused=3,
        throttled=3,
        busiest=(view("pds.busy.example", 4), slow),
        paused_hosts=(slow, limited),
    )
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(render(snapshot(110.0, 500, 50_000, 18_000_000), rates.rates(), hosts))
    text = console.export_text()
    assert "repos 500/1,000 (50%), 7 failed, 12 in flight" in text
    assert "━━  ETA 50s" in text.replace("─", "━")
    assert "50,000 records (1,000/s), 1.0 MB/s\nhosts 5 active, 2 paused, 3 429s" in text
    header = next(line for line in text.splitlines() if "host" in line and "state" in line)
    positions = [header.index(column) for column in HOST_COLUMNS]
    assert positions == sorted(positions), header  # every column, in order
    rows = [line for line in text.splitlines() if ".example" in line]
    assert [r.split()[0] for r in rows] == [
        "pds.busy.example",
        "pds.slow.example",
        "pds.limited.example",
    ]  # fmt: skip  (busiest first; a paused host that is also busy is listed once)
    assert "working" in rows[0] and "2.5" in rows[0]
    lines = text.splitlines()
    # A paused host's reason has a line of its own, under its row (80 columns).
    after = {line.split()[0]: lines[i + 1] for i, line in enumerate(lines) if ".example" in line}
    assert rows[1].rstrip().endswith("paused")
    assert after["pds.slow.example"].strip() == "paused: rate limited (429) for 40s"
    assert after["pds.limited.example"].strip().startswith("paused: server budget used up")
    assert "1 more paused hosts" in text  # 3 paused, 2 listed


def test_display_fits_80_columns() -> None:
    rates = RateWindow(seconds=10)
    rates.add(snapshot(100.0, 400, 40_000, 8_000_000))
    rates.add(snapshot(110.0, 500, 50_000_000, 18_000_000_000, repos_total=40_000_000))
    reason = "server budget used up, resumes 12:34:56 UTC (in 3599s)"
    long_host = view("a-very-long-pds-host-name.us-west.host.bsky.network:4433", 16, reason)
    hosts = HostsView(in_flight=16, active=1, paused=1, throttled=12_345,
                      busiest=(long_host,), paused_hosts=(long_host,))  # fmt: skip
    snap = snapshot(110.0, 12_345_678, 50_000_000, 18_000_000_000, repos_total=40_000_000,
                    repos_failed=1_234_567, repos_in_flight=16_000, throttled=12_345)  # fmt: skip
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(render(snap, rates.rates(), hosts))
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80, lines
    assert any("ETA" in line for line in lines) and any(reason in line for line in lines)


def test_final_frame_agrees_with_the_summary() -> None:
    from bsky_backfill.engine.manager import RunSummary
    from bsky_backfill.observe.progress import ProgressDisplay

    console = Console(record=True, width=80, file=io.StringIO(), force_terminal=True)
    display = ProgressDisplay(console)
    display.start()
    summary = RunSummary(
        repos_total=20, repos_done=15, repos_failed=5, repos_pending=0,
        records={"app.bsky.feed.post": 900}, dead_letters={}, seconds=12.0, requests=20,
        bytes=1, stopped=False, records_this_run={"app.bsky.feed.post": 600},
    )  # fmt: skip
    display.finish(summary)
    display.stop()
    text = console.export_text()
    assert "finished: repos 20/20 (100%), 5 failed, 0 pending" in text
    assert "600 records this run (50/s) in 12s" in text
    assert "in flight" not in text


def test_hosts_view_picks_busiest_and_really_paused_hosts() -> None:
    slots = [HostSlot(f"h{i}", 10.0, 4) for i in range(5)]
    for i, slot in enumerate(slots):
        slot.active = i
    now = time.time()
    slots[1].bucket("com.atproto.sync.getRepo").pause(now + 30, "rate limited (429)")
    slots[2].bucket("x").pause(now - 1, "rate limited (429)")  # over: not paused any more
    budget = slots[3].bucket("x")  # the server's budget is used up for 5 more seconds
    budget.server_remaining, budget.server_reset = 0.0, now + 5
    v = hosts_view(slots, top=2)
    assert [h.host for h in v.busiest] == ["h4", "h3"]
    assert [h.host for h in v.paused_hosts] == ["h1", "h3"] and v.paused == 2
    assert v.paused_hosts[0].paused.startswith("rate limited (429) for ")
    assert v.paused_hosts[1].paused.startswith("server budget used up")
    assert v.busiest[1].paused == v.paused_hosts[1].paused  # the busy h3 shows it too
    assert (v.in_flight, v.active) == (10, 4)


def test_eta_and_durations() -> None:
    assert format_duration(None) == "?"
    assert [format_duration(s) for s in (5, 75, 7260, 90000)] == ["5s", "1m15s", "2h01m", "1d01h"]
    done = snapshot(1.0, 1000, 1, 1)
    assert "ETA 0s" in summary_line(done, (0.0, 0.0, 0.0))
    assert "ETA ?" in summary_line(snapshot(1.0, 10, 1, 1), (0.0, 0.0, 0.0))


class _FakeRun:
    """What `ProgressLog` reads of a Backfill, with a real sampler behind it."""

    def __init__(self) -> None:
        from bsky_backfill.engine.stats import RunStats

        self.stats = RunStats()
        self.slots: dict[str, HostSlot] = {}
        self.stopping = False


def test_progress_log_writes_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressLog(interval=0.05)
    run = _FakeRun()
    caplog.set_level(logging.INFO, logger="bsky_backfill.progress")
    reporter.on_tick(run)  # type: ignore[arg-type]
    assert not caplog.records  # nothing before the first interval
    reporter._next_sample = 0.0  # let the next tick sample (normally once a second)
    time.sleep(0.06)
    run.stats.records["app.bsky.feed.post"] += 5
    reporter.on_tick(run)  # type: ignore[arg-type]
    reporter.on_tick(run)  # type: ignore[arg-type]  (not due again yet)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith("progress: repos 0/0") and "5 records" in lines[0]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_json_log_lines_parse_with_context() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    worker = logging.getLogger("bsky_backfill.worker")
    worker.info(
        "dead-lettered %s", "did:plc:abc", extra={"host": "pds.example", "did": "did:plc:abc"}
    )
    worker.debug("not shown at info")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("bsky_backfill").exception("fatal error", extra={"code": "X"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert set(first) == {"ts", "level", "logger", "msg", "host", "did"}
    assert (first["level"], first["logger"]) == ("info", "bsky_backfill.worker")
    assert first["msg"] == "dead-lettered did:plc:abc"
    assert (first["host"], first["did"]) == ("pds.example", "did:plc:abc")
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert second["level"] == "error" and second["code"] == "X"
    assert "ValueError: boom" in second["exc"] and "\n" not in out.getvalue().splitlines()[1]


@pytest.mark.usefixtures("restore_logging")
def test_text_logs_are_human_and_setup_replaces_its_handler() -> None:
    first, out = io.StringIO(), io.StringIO()
    setup_logging("warning", "text", stream=first)
    setup_logging("warning", "text", stream=out)  # replaces, does not add
    log = logging.getLogger("bsky_backfill.worker")
    log.warning("host %s is failing", "pds.example", extra={"host": "pds.example", "did": "did:x"})
    log.info("hidden at warning")
    logging.getLogger("bsky_backfill.progress").info("progress: shown at the default level")
    lines = out.getvalue().splitlines()
    assert first.getvalue() == ""
    assert len(lines) == 2, lines
    assert " WARNING bsky_backfill.worker: host pds.example is failing [did=did:x]" in lines[0]
    assert lines[1].endswith("INFO bsky_backfill.progress: progress: shown at the default level")
    with pytest.raises(ValueError):
        setup_logging("info", "yaml")  # type: ignore[arg-type]


def test_a_host_paused_by_its_breaker_shows_why_and_when_it_resumes() -> None:
    from bsky_backfill.errors import TransientError
    from bsky_backfill.xrpc.breaker import Breaker, BreakerPolicy

    down, fine = HostSlot("pds.down.example", 10.0, 4), HostSlot("pds.fine.example", 10.0, 4)
    breaker = Breaker("pds.down.example", BreakerPolicy(threshold=2, base_seconds=60, jitter=0))
    down.breaker = breaker
    for _ in range(2):
        breaker.failure(TransientError("refused", code="ConnectionError"))
    v = hosts_view([down, fine], top=4)
    assert v.paused == 1 and [h.host for h in v.paused_hosts] == ["pds.down.example"]
    why = v.paused_hosts[0].paused
    resume = time.strftime("%H:%M:%S", time.gmtime(breaker.resume_at))
    assert why.startswith("unreachable (ConnectionError, 2 failures in a row)")
    assert f"resumes {resume} UTC" in why
