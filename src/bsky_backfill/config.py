"""One frozen, typed settings object for a run; every field documented.

Where it sits: options.py builds a `RunSettings` from the user's options (the
flags, a config file, the environment or `Backfill(...)`'s arguments, all of
one model: run_options.py); the engine reads nothing else. Defaults here are
those of the options (tests/cli/test_options_model.py holds them equal), for
the settings that tests, the demo and benchmarks build directly.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bsky_backfill.models import RecordFilter
from bsky_backfill.xrpc.breaker import BreakerPolicy
from bsky_backfill.xrpc.client import HttpSettings
from bsky_backfill.xrpc.retry import RetryPolicy


class RunSettings(BaseModel):
    """Everything `bsky-backfill run` needs to know."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    out: str = "bsky-data"
    """Dataset root: a local directory or a pyarrow/fsspec URL (`s3://bucket/prefix`)
    holding the Parquet tables per collection, `_deadletters/` and (local) `_state/`."""
    all_from_plc: bool = False
    """Enumerate every DID in the PLC directory's /export."""
    from_relay: str | None = None
    """Enumerate the relay's hosts (listHosts), then each host's repos (listRepos)."""
    pds: tuple[str, ...] = ()
    """Enumerate these PDS hosts' repos (listRepos)."""
    queue: str | None = None
    """State store URL; None = SQLite at OUT/_state/state.sqlite."""
    plc_url: str = "https://plc.directory"
    """PLC directory (trusted: the operator chose it)."""
    method: Literal["car", "list"] = "car"
    """`car` (com.atproto.sync.getRepo) or `list` (com.atproto.repo.listRecords)."""
    collections: frozenset[str] = frozenset()
    """Collections to keep; set by the CLI (default: the app.bsky record types)."""
    filters_given: bool = True
    """False when the command line named none of --collections/--since/--until:
    `run --refresh` then takes the dataset's own filters."""
    since: dt.datetime | None = None
    """Keep records with createdAt >= since (aware UTC)."""
    until: dt.datetime | None = None
    """Keep records with createdAt < until (aware UTC)."""
    rate_limit: float | None = 10.0
    """Our requests/second per PDS host (None = only the server's limits)."""
    global_host_rate: int | None = None
    """Requests/second per host for the whole cluster (PostgreSQL queue only): for
    machines that share one egress IP. None: each machine paces hosts on its own."""
    host_concurrency: int = 4
    """Repos fetched at once from one host."""
    max_active_hosts: int = 256
    """Hosts worked on at once (each has its own slot)."""
    resolve_concurrency: int = 32
    """DID resolutions in flight at once."""
    dns_server: str | None = None
    """`HOST[:PORT]` asked for handles' `_atproto` TXT records; None: the system's
    nameserver (/etc/resolv.conf)."""
    handle_txt: Any = Field(default=None, exclude=True)
    """A resolver hook (Python API, tests): an async `name -> [TXT strings]` used
    instead of asking a DNS server. Not passed to `--workers` processes (they
    never resolve: the first process takes the input in)."""
    allow_private_hosts: bool = False
    """Allow PDS endpoints on loopback/private addresses (tests, local networks)."""
    refresh: bool = False
    """Check finished repos for what changed since their landed revision."""
    compact: bool = False
    """Compact the dataset once the run has finished (sinks/compact.py)."""
    workers: int = 1
    """Processes on this machine (each host is worked by one of them at a time)."""
    verify: bool = True
    """Check commit signatures and MST structure (--no-verify turns it off)."""
    validate_records: bool = True
    """Check records against their bundled lexicon (--no-validate turns it off)."""
    progress: bool = False
    """Show a live progress display."""
    stream_bytes: int = 64 * 1024 * 1024
    """CARs at least this big are extracted in parts and committed on their own
    (bounded memory for repos of a million records)."""
    commit_rows: int = 200_000
    """Commit the open batch once it holds this many rows..."""
    commit_seconds: float = 10.0
    """...or is this many seconds old (whichever comes first)."""
    http: HttpSettings = Field(default_factory=HttpSettings)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    """Transient failures: backoff, and the tries and time a repo gets before it fails."""
    unreachable_after: float | None = 600.0
    """Seconds after which an endpoint the operator named (the PLC directory, a relay,
    --pds hosts) that has not answered once in this run is given up (likely a wrong
    URL); other hosts get `retry.give_up_after`."""
    retry_failed: tuple[str, ...] | None = None
    """`--retry-failed`: put failed repos back to pending at the start. () = every
    code but the terminal verdicts (xrpc/retry.py); else exactly these codes."""

    @property
    def breaker_policy(self) -> BreakerPolicy:
        """Per-host circuit breakers (xrpc/breaker.py): paused as long as repos back off."""
        r = self.retry
        return BreakerPolicy(
            base_seconds=r.base_seconds,
            cap_seconds=r.cap_seconds,
            give_up_after=r.give_up_after,
            unreachable_after=self.unreachable_after,
        )

    @property
    def record_filter(self) -> RecordFilter:
        return RecordFilter(
            collections=self.collections,
            since=self.since,
            until=self.until,
            validate=self.validate_records,
        )

    @field_validator("out", mode="before")
    @classmethod
    def _out_as_text(cls, value: object) -> object:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @property
    def remote_out(self) -> bool:
        """Whether OUT is on a remote filesystem (then the queue must be elsewhere)."""
        return "://" in self.out

    @property
    def state_path(self) -> Path:
        """The default SQLite queue: OUT/_state/state.sqlite (local OUT only)."""
        return Path(self.out) / "_state" / "state.sqlite"
