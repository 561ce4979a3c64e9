"""The command line: `run`, `status`, `demo`. Parsing and printing only.

Where it sits: the outermost layer. It validates user input completely before
anything is written (bad input: exit 2, one line on stderr, no traceback),
builds a `RunSettings`, and hands over to the engine. Exit codes follow
../shared/CONTRACT.md: 0 finished, 2 unusable input, 1 unexpected fatal
error; a run stopped by SIGINT/SIGTERM exits 130/143 after committing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click
from click.core import ParameterSource

from bsky_backfill import __version__
from bsky_backfill.config import RunSettings
from bsky_backfill.engine.manager import Backfill, RunSummary
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.errors import UsageError
from bsky_backfill.observe import setup_logging, start_observers
from bsky_backfill.output import print_status, print_summary
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.settings_file import merge_options
from bsky_backfill.syntax import is_valid_nsid, parse_datetime
from bsky_backfill.xrpc.client import HttpSettings
from bsky_backfill.xrpc.retry import RetryPolicy

EXIT_USAGE = 2
EXIT_FATAL = 1


def _fail_usage(message: str) -> NoReturn:
    click.echo(f"bsky-backfill: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


# -- input parsing (all before anything is written) -------------------------------------
def parse_when(value: str | None, flag: str) -> dt.datetime | None:
    """ISO 8601 date or datetime -> aware UTC; a date or naive time is taken as UTC."""
    if value is None:
        return None
    strict = parse_datetime(value)
    if strict is not None:
        return strict
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not an ISO 8601 date or datetime") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def parse_collections(value: str | None) -> frozenset[str]:
    if value is None:
        return frozenset(DEFAULT_COLLECTIONS)
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise UsageError("--collections is empty")
    for name in names:
        if not is_valid_nsid(name):
            raise UsageError(f"--collections: {name!r} is not a valid NSID")
    return frozenset(names)


_SIZE_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(value: str, flag: str) -> int:
    """`500MB`, `4GiB`, `123456` -> bytes."""
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("kmgtib")
    unit = text[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not a size like 500MB or 4GiB") from None
    if unit not in _SIZE_UNITS or amount <= 0:
        raise UsageError(f"{flag} {value!r} is not a size like 500MB or 4GiB")
    return int(amount * _SIZE_UNITS[unit])


def check_out_writable(out: Path) -> None:
    """Refuse an --out we could not write, without leaving anything behind."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    probe_dir = out
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UsageError(f"--out {out}: {probe_dir} is not a directory")
    try:
        # os.access is not enough as root or on read-only mounts: try for real.
        probe = tempfile.mkdtemp(prefix=".bsky-backfill-probe-", dir=probe_dir)
        os.rmdir(probe)
    except OSError as e:
        raise UsageError(f"--out {out}: not writable ({e.strerror or e})") from None


# -- commands ------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bsky-backfill")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Backfill Bluesky / AT Protocol repositories into a Parquet dataset."""
    level = logging.WARNING - 10 * min(verbose, 2)
    ctx.obj = {"log_level": level}
    setup_logging(level, "text")


@cli.command()
@click.option("--dids", "dids_file", metavar="FILE", help="File of DIDs, one per line; - = stdin.")
@click.option("--did", "did_list", multiple=True, metavar="DID", help="A DID (repeatable).")
@click.option("--all-from-plc", is_flag=True, help="Every DID in the PLC directory.")
@click.option("--from-relay", metavar="URL", help="Every repo the relay's hosts list.")
@click.option("--pds", multiple=True, metavar="URL", help="Every repo on this PDS (repeatable).")
@click.option("--collections", metavar="NSID[,NSID...]", help="Default: the app.bsky types.")
@click.option("--since", metavar="ISO8601", help="Keep records with createdAt >= since.")
@click.option("--until", metavar="ISO8601", help="Keep records with createdAt < until.")
@click.option("--out", default="bsky-data", show_default=True, metavar="DIR")
@click.option("--queue", metavar="URL", help="State store; default SQLite under OUT/_state.")
@click.option("--plc-url", default="https://plc.directory", show_default=True)
@click.option("--method", type=click.Choice(["car", "list"]), default="car", show_default=True)
@click.option("--rate-limit", type=float, default=10.0, show_default=True, metavar="N")
@click.option("--allow-private-hosts", is_flag=True, help="Allow loopback/private PDS hosts.")
@click.option("--no-verify", is_flag=True, help="Skip commit-signature / MST verification.")
@click.option("--progress/--no-progress", default=None, help="Live progress (default: on a TTY).")
@click.option("--metrics-port", type=int, metavar="N")
@click.option("--workers", type=int, default=1, show_default=True, metavar="N")
@click.option("--refresh", is_flag=True, help="Fetch only what changed since the last run.")
@click.option("--config", "config_file", metavar="FILE.toml")
@click.option(
    "--host-concurrency",
    type=int,
    default=4,
    show_default=True,
    metavar="N",
    help="Repos fetched at once from one host.",
)
@click.option(
    "--commit-rows",
    type=int,
    default=200_000,
    show_default=True,
    metavar="N",
    help="Commit the open batch at this many rows...",
)
@click.option(
    "--commit-seconds",
    type=float,
    default=10.0,
    show_default=True,
    metavar="S",
    help="...or when it is this old.",
)
@click.option("--connect-timeout", type=float, default=10.0, show_default=True, metavar="S")
@click.option(
    "--read-timeout",
    type=float,
    default=60.0,
    show_default=True,
    metavar="S",
    help="Abandon a request after this long without a byte (retried).",
)
@click.option(
    "--max-car-size",
    default="4GiB",
    show_default=True,
    metavar="SIZE",
    help="Dead-letter repos whose CAR is larger (RepoTooLarge).",
)
@click.option(
    "--max-attempts",
    type=int,
    default=6,
    show_default=True,
    metavar="N",
    help="Attempts per repo for transient errors before it is dead-lettered.",
)
@click.option(
    "--retry-base",
    type=float,
    default=2.0,
    show_default=True,
    metavar="S",
    help="First retry delay; doubles per attempt (with jitter).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines on stderr: human text or JSON lines.",
)
@click.pass_context
def run(ctx: click.Context, /, **opts: Any) -> None:
    """Backfill repositories into OUT.

    Every flag can also come from a TOML file (--config) or a BSKY_BACKFILL_<FLAG>
    environment variable; a flag on the command line wins over the environment,
    which wins over the file."""
    explicitly_set = {
        name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    try:
        opts = merge_options(opts, explicitly_set, opts["config_file"], os.environ)
        setup_logging((ctx.obj or {}).get("log_level", logging.WARNING), opts["log_format"])
        settings, source = _settings_from_options(opts)
    except UsageError as e:
        _fail_usage(e.message)
    summary = _run_engine(settings, source, metrics_port=opts["metrics_port"])
    print_summary(summary, settings.out)
    if summary.stopped:
        sys.exit(130)


def _looks_like_host(value: str) -> bool:
    """`host[:port]` or an http(s) URL with a host."""
    url = value if "://" in value else f"https://{value}"
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in value


def _settings_from_options(opts: dict[str, Any]) -> tuple[RunSettings, DidSource | None]:
    for flag, key in (("--host-concurrency", "host_concurrency"), ("--commit-rows", "commit_rows")):
        if opts[key] < 1:
            raise UsageError(f"{flag} must be at least 1")
    if opts["commit_seconds"] <= 0:
        raise UsageError("--commit-seconds must be positive")
    for flag, key in (
        ("--connect-timeout", "connect_timeout"),
        ("--read-timeout", "read_timeout"),
        ("--retry-base", "retry_base"),
    ):
        if opts[key] <= 0:
            raise UsageError(f"{flag} must be positive")
    if opts["max_attempts"] < 1:
        raise UsageError("--max-attempts must be at least 1")
    max_car_bytes = parse_size(opts["max_car_size"], "--max-car-size")
    if opts["workers"] < 1:
        raise UsageError("--workers must be at least 1")
    if opts["rate_limit"] is not None and opts["rate_limit"] < 0:
        raise UsageError("--rate-limit must be >= 0 (0 = only the server's limits)")
    enumerating = bool(opts["all_from_plc"] or opts["from_relay"] or opts["pds"])
    listed = bool(opts["dids_file"] or opts["did_list"])
    if not (listed or enumerating or opts["refresh"]):
        raise UsageError(
            "name what to backfill: --dids FILE, --did DID, --all-from-plc, "
            "--from-relay URL or --pds URL (or --refresh an existing --out)"
        )
    for flag, value in [("--from-relay", opts["from_relay"]), *(("--pds", p) for p in opts["pds"])]:
        if value is not None and not _looks_like_host(value):
            raise UsageError(f"{flag} {value!r} is not a host name or an http(s) URL")
    since = parse_when(opts["since"], "--since")
    until = parse_when(opts["until"], "--until")
    if since and until and since >= until:
        raise UsageError("--since must be earlier than --until")
    collections = parse_collections(opts["collections"])
    if not opts["plc_url"].startswith(("http://", "https://")):
        raise UsageError(f"--plc-url {opts['plc_url']!r} must be an http(s) URL")
    source = DidSource.from_args(list(opts["did_list"]), opts["dids_file"]) if listed else None
    out = opts["out"]
    if "://" in out:
        if not opts["queue"]:
            raise UsageError(
                f"--out {out}: a remote dataset needs --queue postgresql://... "
                "(the state cannot live on object storage)"
            )
        if opts["refresh"]:
            raise UsageError("--refresh needs a local --out (it reads what landed with DuckDB)")
    else:
        check_out_writable(Path(out))
    progress = opts["progress"] if opts["progress"] is not None else sys.stdout.isatty()
    settings = RunSettings(
        out=out,
        queue=opts["queue"],
        plc_url=opts["plc_url"],
        method=opts["method"],
        collections=collections,
        since=since,
        until=until,
        rate_limit=opts["rate_limit"] or None,
        allow_private_hosts=opts["allow_private_hosts"],
        verify=not opts["no_verify"],
        progress=progress,
        host_concurrency=opts["host_concurrency"],
        workers=opts["workers"],
        all_from_plc=opts["all_from_plc"],
        from_relay=opts["from_relay"],
        pds=tuple(opts["pds"]),
        refresh=opts["refresh"],
        commit_rows=opts["commit_rows"],
        commit_seconds=opts["commit_seconds"],
        http=HttpSettings(
            connect_timeout=opts["connect_timeout"],
            read_timeout=opts["read_timeout"],
            max_car_bytes=max_car_bytes,
        ),
        retry=RetryPolicy(max_attempts=opts["max_attempts"], base_seconds=opts["retry_base"]),
    )
    return settings, source


def _run_engine(
    settings: RunSettings, source: DidSource | None, *, metrics_port: int | None = None
) -> RunSummary:
    async def main() -> RunSummary:
        backfill = Backfill(settings, source)
        observers = start_observers(
            backfill, metrics_port=metrics_port, live_progress=settings.progress
        )
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


@cli.command()
@click.option("--out", default="bsky-data", show_default=True, metavar="DIR")
@click.option("--queue", metavar="URL")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(out: str, queue: str | None, as_json: bool) -> None:
    """Progress of the backfill in OUT (or --queue)."""
    from bsky_backfill.state.open import open_store, store_exists

    state_path = Path(out) / "_state" / "state.sqlite"
    try:
        if not store_exists(queue, state_path):
            raise UsageError(f"no backfill state under {out} (run `bsky-backfill run` first)")
        store = open_store(queue, state_path)
    except UsageError as e:
        _fail_usage(e.message)
    try:
        print_status(store.status(), as_json=as_json)
    finally:
        store.close()


@cli.command()
@click.option("--out", default=None, metavar="DIR", help="Default: a new temporary directory.")
@click.option("--accounts", default=60, show_default=True, help="Simulated accounts.")
@click.option("--hosts", default=4, show_default=True, help="Simulated PDS hosts.")
def demo(out: str | None, accounts: int, hosts: int) -> None:
    """Backfill an embedded, simulated AT Protocol network and show the result."""
    from bsky_backfill.demo import run_demo

    out_path = Path(out) if out else Path(tempfile.mkdtemp(prefix="bsky-backfill-demo-"))
    try:
        check_out_writable(out_path)
    except UsageError as e:
        _fail_usage(e.message)
    run_demo(out_path, accounts=accounts, hosts=hosts)


@cli.command()
@click.option("--out", default="bsky-data", show_default=True, metavar="DIR")
@click.option("--html", "html_file", metavar="FILE", help="Also write a page with charts.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def report(out: str, html_file: str | None, as_json: bool) -> None:
    """Records per collection and month, top hosts, dead letters of the dataset in OUT."""
    from bsky_backfill.report import build_report, print_report, write_html

    html_path = Path(html_file) if html_file else None
    try:
        if html_path is not None and (html_path.is_dir() or not html_path.parent.is_dir()):
            raise UsageError(f"--html {html_file}: not a file in an existing directory")
        summary = build_report(Path(out))
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


def main() -> None:
    """Console-script entry point: click usage errors become one line and exit 2."""
    try:
        cli.main(standalone_mode=False)
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
