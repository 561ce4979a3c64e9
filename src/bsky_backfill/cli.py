"""The command line: run, status, demo, simulate, report, query. Parsing and printing only.

Where it sits: the outermost layer. It validates user input completely before
anything is written (bad input: exit 2, one line on stderr, no traceback),
builds a `RunSettings`, and hands over to the engine. Exit codes (the README's
"Exit codes"): 0 finished, 2 unusable input (also: `--out` held by
another run, or holding data without its state), 3 repos were attempted and
none landed, 1 unexpected fatal error; a run stopped by SIGINT/SIGTERM exits
130/143 after committing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from bsky_backfill import __version__
from bsky_backfill.errors import UsageError
from bsky_backfill.observe.logs import setup_logging
from bsky_backfill.run_options import run_flags
from bsky_backfill.settings_file import dataset_options, merge_options
from bsky_backfill.state.open import redact
from bsky_backfill.state.runlock import live_holder

# The engine and what it pulls in (aiohttp, pyarrow, duckdb: ~0.5 s) are imported
# inside the commands that use them, so `--help`, `--version` and a usage error
# answer without loading them (bench/import_time.py measures it).
if TYPE_CHECKING:
    from bsky_backfill.config import RunSettings
    from bsky_backfill.engine.manager import RunSummary
    from bsky_backfill.engine.sources import DidSource
    from bsky_backfill.sinks.compact import CompactReport

EXIT_USAGE = 2
EXIT_FATAL = 1
EXIT_NOTHING_LANDED = 3


def _fail_usage(message: str) -> NoReturn:
    click.echo(f"bsky-backfill: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


# -- commands ------------------------------------------------------------------------
def _set_verbosity(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """-v/-vv before or after the subcommand: the most said wins (info, debug)."""
    if not value:
        return
    obj = ctx.find_root().ensure_object(dict)
    level = min(obj.get("log_level", logging.WARNING), logging.WARNING - 10 * min(value, 2))
    obj["log_level"] = level
    setup_logging(level, "text")


_VERBOSE_HELP = "More log output on stderr (-v info, -vv debug)."


def _verbose(f: Any) -> Any:
    return click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_set_verbosity,
        help=_VERBOSE_HELP,
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(__version__, prog_name="bsky-backfill")
@_verbose
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Backfill Bluesky / AT Protocol repositories into a Parquet dataset.

    Start with `bsky-backfill simulate` (a practice network) or `bsky-backfill demo`;
    `bsky-backfill COMMAND --help` describes each command."""
    obj = ctx.ensure_object(dict)
    obj.setdefault("log_level", logging.WARNING)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(0)
    setup_logging(obj["log_level"], "text")


@cli.command()
@_verbose
@run_flags
@click.option(
    "--config",
    "config_file",
    metavar="FILE.toml",
    help="Any flag from a TOML file (flags > BSKY_BACKFILL_* env > file).",
)
@click.pass_context
def run(ctx: click.Context, /, **opts: Any) -> None:
    """Backfill repositories into OUT.

    Every flag can also come from a TOML file (--config) or a BSKY_BACKFILL_<FLAG>
    environment variable; a flag on the command line wins over the environment,
    which wins over the file."""
    from bsky_backfill.options import settings_from_options
    from bsky_backfill.output import nothing_landed_line, print_summary, start_line

    explicitly_set = {
        name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    try:
        opts = merge_options(opts, explicitly_set, opts["config_file"], os.environ)
        setup_logging((ctx.obj or {}).get("log_level", logging.WARNING), opts["log_format"])
        settings, source = settings_from_options(opts)
    except UsageError as e:
        _fail_usage(e.message)
    summary = _run_engine(
        settings,
        source,
        metrics_port=opts["metrics_port"],
        metrics_host=opts["metrics_host"],
        announce=start_line(settings, source, opts["dids_file"]),
    )
    print_summary(summary, settings.out)
    if summary.stopped:
        sys.exit(130)
    if settings.compact:
        _compact_after_run(settings)
    if summary.nothing_landed:
        click.echo(f"bsky-backfill: {nothing_landed_line(summary, settings.out)}", err=True)
        sys.exit(EXIT_NOTHING_LANDED)


def _run_engine(
    settings: RunSettings,
    source: DidSource | None,
    *,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    announce: str | None = None,
) -> RunSummary:
    from bsky_backfill.engine.manager import Backfill
    from bsky_backfill.observe.start import start_observers

    async def main() -> RunSummary:
        backfill = Backfill(settings, source)
        observers = start_observers(
            backfill,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            live_progress=settings.progress,
        )
        if announce:  # once nothing can refuse the run any more (e.g. the metrics port)
            click.echo(announce)
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if backfill.stopping:
                os._exit(128 + signum)  # second signal: leave at once
            logging.getLogger("bsky_backfill").warning("stopping: committing finished repos")
            backfill.request_stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            summary = await backfill.run()
            observers.finish(summary)
            return summary
        finally:
            observers.close()

    try:
        return asyncio.run(main())
    except UsageError as e:
        _fail_usage(e.message)


def _compact_after_run(settings: RunSettings) -> None:
    """`run --compact`: the finished run's dataset compacted with the defaults."""
    from bsky_backfill.sinks.compact import compact_dataset
    from bsky_backfill.state.open import open_store

    store = open_store(settings.queue, settings.state_path)
    try:
        report = compact_dataset(settings.out, store)
    finally:
        store.close()
    _print_compaction(report)


def _print_compaction(report: CompactReport) -> None:
    for t in report.tables:
        what = t.skipped or (
            f"{t.files_before} files ({t.bytes_before >> 20} MiB) -> "
            f"{t.files_after} files ({t.bytes_after >> 20} MiB)"
        )
        click.echo(f"{t.collection}: {t.rows} rows, {what}")
    click.echo(f"compacted {report.rows} rows in {report.seconds:.1f} s")


_OUT_HELP = "The dataset's directory (as given to `run`)."
_CONFIG_HELP = "Take --out/--queue from this TOML file (as `run --config`); env: BSKY_BACKFILL_OUT."


def _where(
    ctx: click.Context, out: str, queue: str | None, config_file: str | None
) -> tuple[str, str | None]:
    """--out and --queue of a command that reads a dataset: flag > env > file > default."""
    explicitly_set = {
        name
        for name in ("out", "queue")
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    try:
        merged = dataset_options(
            {"out": out, "queue": queue}, explicitly_set, config_file, os.environ
        )
    except UsageError as e:
        _fail_usage(e.message)
    return str(merged["out"]), merged["queue"]


@cli.command()
@_verbose
@click.option("--out", default="bsky-data", show_default=True, metavar="DIR", help=_OUT_HELP)
@click.option("--queue", metavar="URL", help="The run's state store (default: OUT's SQLite).")
@click.option("--config", "config_file", metavar="FILE.toml", help=_CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(
    ctx: click.Context, /, out: str, queue: str | None, config_file: str | None, as_json: bool
) -> None:
    """Progress of the backfill in OUT (or --queue)."""
    from bsky_backfill.output import print_status
    from bsky_backfill.state.open import open_store, store_exists

    out, queue = _where(ctx, out, queue, config_file)

    state_path = Path(out) / "_state" / "state.sqlite"
    try:
        if not store_exists(queue, state_path):
            where = f"in the queue {redact(queue)}" if queue else f"under {out}"
            raise UsageError(f"no backfill state {where} (run `bsky-backfill run` first)")
        store = open_store(queue, state_path)
    except UsageError as e:
        _fail_usage(e.message)
    try:
        report = store.status()
    finally:
        store.close()
    holder = None
    if queue is None or queue.startswith("sqlite:///"):
        # One run per dataset: whether it is alive tells in progress from interrupted.
        holder = live_holder(out)
        if holder is None:
            report.interrupted = report.in_progress
            report.paused_hosts = []  # a dead run's pauses are over
    print_status(report, as_json=as_json, out=out, queue=queue, holder=holder)


@cli.command()
@_verbose
@click.option("--out", default=None, metavar="DIR", help="Default: a new temporary directory.")
@click.option("--accounts", default=60, show_default=True, help="Simulated accounts.")
@click.option("--hosts", default=4, show_default=True, help="Simulated PDS hosts.")
def demo(out: str | None, accounts: int, hosts: int) -> None:
    """Backfill an embedded, simulated AT Protocol network and show the result."""
    from bsky_backfill.demo import run_demo
    from bsky_backfill.options import check_out_writable

    out_path = Path(out) if out else Path(tempfile.mkdtemp(prefix="bsky-backfill-demo-"))
    try:
        check_out_writable(out_path)
    except UsageError as e:
        _fail_usage(e.message)
    run_demo(out_path, accounts=accounts, hosts=hosts)


@cli.command()
@_verbose
@click.option(
    "--dids",
    "dids_file",
    default="sim-dids.txt",
    show_default=True,
    metavar="FILE",
    help="Where to write the network's DIDs (for `run --dids`).",
)
@click.option(
    "--out",
    default="sim-data",
    show_default=True,
    metavar="DIR",
    help="The --out of the printed `run` command (nothing is written there by simulate).",
)
@click.option("--accounts", default=60, show_default=True, help="Simulated accounts.")
@click.option("--hosts", default=4, show_default=True, help="Simulated PDS hosts.")
@click.option("--seed", default=2024, show_default=True, help="Same seed, same records.")
@click.option("--handles", is_flag=True, help="List the accounts by handle (@name.sim.test).")
def simulate(dids_file: str, out: str, accounts: int, hosts: int, seed: int, handles: bool) -> None:
    """Serve the embedded simulated network until Ctrl-C, to practise `run` offline.

    Writes the network's DIDs to a file and prints the `run` command that
    backfills them."""
    from bsky_backfill.practice import check_writable_file, serve

    try:
        if not 1 <= accounts <= 100_000 or not 1 <= hosts <= 64:
            raise UsageError("--accounts must be 1..100000 and --hosts 1..64")
        check_writable_file(Path(dids_file), "--dids")
    except UsageError as e:
        _fail_usage(e.message)
    serve(Path(dids_file), out, accounts=accounts, hosts=hosts, seed=seed, handles=handles)


@cli.command()
@_verbose
@click.option("--out", default="bsky-data", show_default=True, metavar="DIR", help=_OUT_HELP)
@click.option("--html", "html_file", metavar="FILE", help="Also write a page with charts.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--queue", metavar="URL", help="The run's state store, for hosts (default: OUT's).")
@click.option("--config", "config_file", metavar="FILE.toml", help=_CONFIG_HELP)
@click.pass_context
def report(
    ctx: click.Context,
    /,
    out: str,
    html_file: str | None,
    as_json: bool,
    queue: str | None,
    config_file: str | None,
) -> None:
    """Records per collection and month, top hosts, dead letters of the dataset in OUT."""
    from bsky_backfill.report import build_report, print_report, write_html

    out, queue = _where(ctx, out, queue, config_file)
    html_path = Path(html_file) if html_file else None
    try:
        if html_path is not None and (html_path.is_dir() or not html_path.parent.is_dir()):
            raise UsageError(f"--html {html_file}: not a file in an existing directory")
        summary = build_report(Path(out), queue)
    except UsageError as e:
        _fail_usage(e.message)
    print_report(summary, as_json=as_json)
    if html_path is not None:
        try:
            write_html(summary, html_path)
        except OSError as e:
            _fail_usage(f"--html {html_file}: cannot write ({e.strerror or e})")
        if not as_json:
            click.echo(f"wrote {html_path}")


@cli.command()
@_verbose
@click.option("--out", default="bsky-data", show_default=True, metavar="DIR",
              help="The dataset: a directory or s3://bucket/prefix.")  # fmt: skip
@click.option("--queue", metavar="URL", help="The run's state store (default: OUT's).")
@click.option("--collections", metavar="NSID[,NSID...]", help="Only these tables.")
@click.option("--memory-limit", default="1GB", show_default=True,
              help="Memory for the sort (DuckDB); it spills to disk beyond it.")  # fmt: skip
@click.option("--row-group-size", default="128MiB", show_default=True,
              help="Target row group size (uncompressed).")  # fmt: skip
@click.option("--file-size", default="512MiB", show_default=True,
              help="Target file size on storage.")  # fmt: skip
@click.option("--sort", "order", type=click.Choice(["month", "did"]), default="month",
              show_default=True,
              help="month: by month of created_at, then DID (per-month and per-DID queries "
                   "skip data); did: by DID only (per-DID queries skip the most).")  # fmt: skip
def compact(
    out: str,
    queue: str | None,
    collections: str | None,
    memory_limit: str,
    row_group_size: str,
    file_size: str,
    order: str,
) -> None:
    """Rewrite the tables' committed files as large files sorted by month, DID, rkey.

    Exactly once (safe under kill -9) and safe beside a run landing into OUT."""
    from bsky_backfill.options import parse_size
    from bsky_backfill.sinks.compact import CompactConfig, compact_dataset
    from bsky_backfill.state.open import open_store, store_exists

    try:
        cfg = CompactConfig(
            row_group_bytes=parse_size(row_group_size, "--row-group-size"),
            file_bytes=parse_size(file_size, "--file-size"),
            memory_limit=_memory_limit(memory_limit),
            order=order,
        )
        wanted = [c.strip() for c in collections.split(",") if c.strip()] if collections else None
        remote = "://" in out
        if remote and queue is None:
            raise UsageError(f"--out {out} is remote: name the run's state store with --queue")
        if not remote and not Path(out).is_dir():
            raise UsageError(f"--out {out}: no such directory")
        state_path = Path(out) / "_state" / "state.sqlite"
        if not store_exists(queue, state_path):
            where = f"in the queue {redact(queue)}" if queue else f"under {out}"
            raise UsageError(f"no backfill state {where} (run `bsky-backfill run` first)")
        store = open_store(queue, state_path)
    except UsageError as e:
        _fail_usage(e.message)
    try:
        report = compact_dataset(out, store, cfg, collections=wanted)
    finally:
        store.close()
    _print_compaction(report)


def _memory_limit(value: str) -> str:
    from bsky_backfill.options import parse_size

    return f"{parse_size(value, '--memory-limit') >> 20}MB"


@cli.command()
@_verbose
@click.argument("sql")
@click.option("--out", default="bsky-data", show_default=True, metavar="DIR", help=_OUT_HELP)
@click.option(
    "--to",
    "to_file",
    metavar="FILE",
    help="Write the result to FILE instead: .csv, .json, .jsonl/.ndjson or .parquet.",
)
@click.option(
    "--history",
    is_flag=True,
    help="Every row ever landed (default: the current view, minus _deletions) "
    "every dead letter (default: those that stand) and every accounts row "
    "(default: each DID's latest).",
)
@click.option(
    "--max-rows", type=int, default=40, show_default=True, metavar="N", help="Rows printed."
)
@click.option("--config", "config_file", metavar="FILE.toml", help=_CONFIG_HELP)
@click.pass_context
def query(
    ctx: click.Context,
    /,
    sql: str,
    out: str,
    to_file: str | None,
    history: bool,
    max_rows: int,
    config_file: str | None,
) -> None:
    """Run SQL (DuckDB) over the dataset in OUT and print the result as a table.

    Views: one per collection under its NSID ("app.bsky.feed.post", quoted)
    and a short name (posts, likes, reposts, follows, blocks, profiles, lists,
    listitems, listblocks, starterpacks, threadgates, postgates,
    feed_generators, labelers, verifications, statuses), plus accounts (each
    DID's handle, PDS and latest status; join on did), dead_letters and
    deletions. Example:

        bsky-backfill query --out study-data "SELECT did, count(*) FROM posts GROUP BY did"
    """
    from bsky_backfill.query import check_target, connect, export, run_query

    out, _ = _where(ctx, out, None, config_file)
    try:
        if max_rows < 1:
            raise UsageError("--max-rows must be at least 1")
        target = Path(to_file) if to_file else None
        if target is not None:
            check_target(target)
        con, views = connect(Path(out), history=history)
        try:
            result = run_query(con, sql, views)
            if result is not None and target is not None:
                export(con, result, target)
                click.echo(f"wrote {target}")
            elif result is not None:
                width = shutil.get_terminal_size((120, 40)).columns
                result.show(max_rows=max_rows, max_width=max(width, 40))
        finally:
            con.close()
    except UsageError as e:
        _fail_usage(e.message)


def main() -> None:
    """Console-script entry point: click usage errors become one line and exit 2."""
    try:
        cli.main(prog_name="bsky-backfill", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.ClickException as e:
        click.echo(f"bsky-backfill: error: {e.format_message()}", err=True)
        sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code)
    except SystemExit:
        raise
    except BaseException as e:  # the contract's exit 1: unexpected fatal error
        logging.getLogger("bsky_backfill").exception("fatal error")
        click.echo(f"bsky-backfill: fatal: {type(e).__name__}: {e}", err=True)
        sys.exit(EXIT_FATAL)


if __name__ == "__main__":  # pragma: no cover
    main()
