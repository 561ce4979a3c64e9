"""Human and JSON renderings of a run summary and of `status` (rich tables).

Where it sits: called by cli.py after the engine returns; never by the engine.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.manager import RunSummary
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.safetext import printable
from bsky_backfill.state.base import StatusReport
from bsky_backfill.state.open import redact
from bsky_backfill.state.runlock import Holder
from bsky_backfill.xrpc.retry import retried_by_default


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


def start_line(settings: RunSettings, source: DidSource | None, file: str | None) -> str:
    """What a run is about to do, echoed first: source, filters, method, where to."""
    what: list[str] = []
    if source is not None:
        handles = f", {source.handles:,} of them handles" if source.handles else ""
        where = f" from {'standard input' if file == '-' else file}" if file else ""
        what.append(f"{source.count:,} accounts{where}{handles}")
    if settings.all_from_plc:
        what.append(f"every DID in the PLC directory {settings.plc_url}")
    if settings.from_relay:
        what.append(f"every repo of the relay {settings.from_relay}'s hosts")
    if settings.pds:
        what.append(f"every repo on {', '.join(settings.pds)}")
    if settings.refresh:
        what.append("what changed in the finished repos (refresh)")
    if settings.retry_failed is not None:
        what.append("failed repos put back (--retry-failed)")
    if set(settings.collections) == set(DEFAULT_COLLECTIONS):
        kinds = "every app.bsky record type"
    else:
        kinds = ", ".join(sorted(settings.collections))
    window = ""
    if settings.since or settings.until:
        lo = settings.since.isoformat() if settings.since else "the beginning"
        hi = settings.until.isoformat() if settings.until else "now"
        window = f", createdAt in [{lo}, {hi})"
    return (
        f"backfilling {'; '.join(what) or 'the dataset'}: {kinds}{window}; "
        f"method {settings.method}{'' if settings.verify else ', unverified'}; into {settings.out}"
    )


def print_summary(summary: RunSummary, out: Path | str) -> None:
    """What a run prints when it ends."""
    console = _console()
    verb = "stopped" if summary.stopped else "finished"
    console.print(
        f"[bold]{verb}[/bold] in {summary.seconds:.1f}s: repos {summary.repos_done} done, "
        f"{summary.repos_failed} failed, {summary.repos_pending} pending of "
        f"{summary.repos_total}; {summary.records_landed:,} records landed by this run "
        f"({summary.records_per_second:,.0f}/s), {summary.records_total:,} in the dataset; "
        f"{summary.requests:,} requests, {summary.bytes / 1e6:,.1f} MB"
    )
    if summary.changes_this_run is not None:
        new, updated, deleted = summary.changes_this_run
        console.print(
            f"refresh: {new:,} new, {updated:,} updated, {deleted:,} deleted records "
            "(the counts below are the current view)"
        )
    _print_counts(console, summary.records, summary.dead_letters)
    for line in summary.empty_collections:
        console.print(escape(line))
    console.print(f"dataset: {escape(str(out))}")


def _print_failed(
    console: Console, report: StatusReport, out: Path | str, queue: str | None
) -> None:
    """Failed repos by code, and the commands that retry them."""
    if not report.failed_by_code:
        return
    table = Table("error", "repos", "retried by", title="failed repos", title_justify="left")
    verdicts = []
    for code, n in report.failed_by_code.items():
        default = retried_by_default(code)
        table.add_row(code, f"{n:,}", "--retry-failed" if default else f"--retry-failed {code}")
        if not default:
            verdicts.append(code)
    console.print(table)
    if len(verdicts) < len(report.failed_by_code):
        console.print(f"retry them (with the run's flags): {retry_command(out, (), queue)}")
    if verdicts:
        console.print(
            f"verdicts about the repo, retried only by name: {retry_command(out, verdicts, queue)}"
        )
    if report.superseded_by_code:
        n = sum(report.superseded_by_code.values())
        console.print(f"{n:,} earlier dead letters superseded by --retry-failed (kept as history)")


def duckdb_hint(out: Path) -> str:
    """How to query the output (printed by `demo`): the package's own DuckDB."""
    where = shlex.quote(str(out))
    return (
        "query it, e.g.\n"
        f'  bsky-backfill query --out {where} "SELECT did, count(*) FROM posts GROUP BY did"\n'
        f'  bsky-backfill query --out {where} "SELECT error, count(*) FROM dead_letters GROUP BY 1"'
    )


def retry_command(out: Path | str, codes: Iterable[str] = (), queue: str | None = None) -> str:
    """The command that puts failed repos back (`codes` empty: the retryable ones)."""
    where = f"--queue {redact(queue)} --out {out}" if queue else f"--out {out}"
    named = ",".join(codes)
    return f"bsky-backfill run {where} --retry-failed" + (f" {named}" if named else "")


def nothing_landed_line(summary: RunSummary, out: Path | str) -> str:
    """Exit status 3's one line: how many failed, the commonest code, the retry command."""
    failed = summary.failed_this_run
    code, n = max(failed.items(), key=lambda item: (item[1], item[0]))
    codes = (code,) if not retried_by_default(code) else ()
    return (
        f"nothing landed: {sum(failed.values()):,} repos failed, most with {code} "
        f"({n:,}); fix the cause (see OUT/_deadletters) and retry them with the run's "
        f"flags and: {retry_command(out, codes)}"
    )


def status_as_dict(
    report: StatusReport,
    *,
    out: Path | str = "",
    queue: str | None = None,
    holder: Holder | None = None,
) -> dict[str, object]:
    data = dataclasses.asdict(report)
    if report.failed_by_code:
        data["retry_command"] = retry_command(out, (), queue)
    data["run"] = None if holder is None else dataclasses.asdict(holder)
    return data


def print_status(
    report: StatusReport,
    *,
    as_json: bool,
    out: Path | str = "",
    queue: str | None = None,
    holder: Holder | None = None,
) -> None:
    if as_json:
        data = status_as_dict(report, out=out, queue=queue, holder=holder)
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    console = _console()
    live = report.in_progress - report.interrupted
    console.print(
        f"repos: {report.total} total, {report.done} done, {report.failed} failed, "
        f"{report.pending} pending, {live} in progress"
        + (
            f", {report.interrupted} interrupted (their run is gone; the next run resumes them)"
            if report.interrupted
            else ""
        )
    )
    if holder is not None:
        console.print(f"running: {holder.describe()}")
    if report.deleted_by_collection or report.updated_by_collection:
        console.print(
            f"current view: {sum(report.deleted_by_collection.values()):,} records deleted and "
            f"{sum(report.updated_by_collection.values()):,} updated by refreshes are left out"
        )
    _print_counts(console, report.records_by_collection, report.dead_letters_by_code)
    _print_failed(console, report, out, queue)
    if report.paused_hosts:
        table = Table("host", "why", "resumes", title="paused hosts", title_justify="left")
        for pause in report.paused_hosts:
            when = pause.until.strftime("%Y-%m-%d %H:%M:%S UTC") if pause.until else "-"
            table.add_row(pause.host, pause.reason, when)
        console.print(table)
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
