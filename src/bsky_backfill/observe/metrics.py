"""Prometheus metrics of one run, served on 127.0.0.1:PORT/metrics (`--metrics-port`).

Where it sits: beside the engine, listening to it (STYLE habit 9). Three feeds,
none of which costs the engine anything per record:

- at scrape time, a collector reads the engine's own `RunStats` counters
  (requests by host/endpoint/status, 429s, bytes, retries, repos finished,
  dead letters by code): the numbers the run summary is made of, so the two
  always agree, and no work is done between scrapes;
- at every commit (`on_commit`, fed the sink's `CommitSummary`): rows landed
  per collection and the commit's latency. "Landed" means committed: at the
  end of a run the counters equal the dataset's rows;
- on the scheduler's tick, at most once a second: gauges that need the state
  store (repos by state, queue depth) or a walk over the host slots.

Plus `observe_decode(seconds)`, for whoever times repo extraction.

Each run gets its own `CollectorRegistry`, so several runs (tests, the Python
API) can live in one process. The HTTP server is prometheus-client's threaded
one: it answers even while the event loop is busy. The scrape thread only reads
ints and copies of plain dicts (atomic under the GIL) and prometheus-client's
own thread-safe metrics; nothing it touches needs the event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from bsky_backfill.errors import UsageError
from bsky_backfill.observe.snapshot import RunSampler
from bsky_backfill.state.base import RepoState

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from bsky_backfill.engine.manager import Backfill, RunSummary
    from bsky_backfill.engine.stats import RunStats
    from bsky_backfill.sinks.parquet import CommitSummary

PREFIX = "bsky_backfill"
# Commits fsync files and a SQLite transaction: milliseconds to tens of seconds.
COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# One repo's decode + MST walk + transform: sub-millisecond to minutes (giant repos).
DECODE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0)


OTHER = "other"
"""The host label of every host that has no series of its own."""
MAX_HOST_LABELS = 50
"""Hosts with a series of their own, at most (series are what a Prometheus server pays for)."""
HOST_LABEL_THRESHOLD = 100
"""Requests a host must have had before it gets a series of its own..."""
SMALL_RUN_HOSTS = 10
"""...unless the run has talked to at most this many hosts (then every host has one)."""
# Endpoints and statuses come from our own calls and the HTTP status line, but a
# status is a stranger's number: keep the labels to what HTTP defines.
_STATUS_LABELS = frozenset(str(n) for n in range(100, 600))


class HostLabels:
    """Bounded, monotonic `host` labels for counters (a run talks to thousands of hosts,
    and anyone can run one).

    A host gets a series of its own once it has had `threshold` requests (at
    once in a run that talked to at most SMALL_RUN_HOSTS hosts), while fewer
    than `limit` hosts have one; every other host counts under `other`.
    Counters must never go down, so a host's requests from before it got its
    own series stay in `other` (its series starts at what it had then)."""

    def __init__(self, limit: int = MAX_HOST_LABELS, threshold: int = HOST_LABEL_THRESHOLD) -> None:
        self.limit = limit
        self.threshold = threshold
        self._offsets: dict[tuple[str, ...], int] = {}  # (host, *rest) -> count left in other
        self._own: set[str] = set()
        self._folded: set[tuple[str, ...]] = set()  # series shown inside `other` so far
        self._lock = threading.Lock()

    def promote(self, totals: dict[str, int]) -> None:
        """Give hosts past the threshold a series of their own, busiest first, while room lasts."""
        if len(self._own) >= self.limit:
            return
        small = len(totals) <= SMALL_RUN_HOSTS
        ready = [
            h for h, n in totals.items() if (small or n >= self.threshold) and h not in self._own
        ]
        for host in sorted(ready, key=lambda h: (-totals[h], h))[: self.limit - len(self._own)]:
            self._own.add(host)

    def split(
        self, counts: dict[tuple[str, ...], int], new_host: set[str]
    ) -> dict[tuple[str, ...], int]:
        """Counts by (host, *rest) -> counts by (label, *rest), `other` folded in."""
        out: dict[tuple[str, ...], int] = {}
        for key, n in counts.items():
            host, rest = key[0], key[1:]
            if host in self._own:
                if host in new_host and key in self._folded:
                    self._offsets.setdefault(key, n)  # what `other` already showed of it
                before = self._offsets.get(key, 0)
                out[key] = out.get(key, 0) + n - before
                if before:
                    other = (OTHER, *rest)
                    out[other] = out.get(other, 0) + before
            else:
                other = (OTHER, *rest)
                out[other] = out.get(other, 0) + n
                self._folded.add(key)
        return out

    def relabel(self, counts: dict[tuple[str, ...], int]) -> dict[tuple[str, ...], int]:
        """Promote what is due, then fold: the series to expose for `counts`."""
        totals: dict[str, int] = {}
        for key, n in counts.items():
            totals[key[0]] = totals.get(key[0], 0) + n
        with self._lock:  # two scrapes at once (the server is threaded)
            before = set(self._own)
            self.promote(totals)
            return self.split(counts, self._own - before)


class _StatsCollector(Collector):
    """Reads `RunStats` at scrape time (on the server's thread)."""

    def __init__(self, stats: RunStats) -> None:
        self._stats = stats
        self._hosts = HostLabels()
        self._throttled_hosts = HostLabels()

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        requests = dict(stats.requests)  # one C-level copy: safe against the loop's updates
        by_request = CounterMetricFamily(
            f"{PREFIX}_requests",
            "HTTP requests answered, by host (the busiest hosts; the rest as 'other'), "
            "XRPC endpoint (or path) and status ('error': no response: connection failure "
            "or timeout).",
            labels=("host", "endpoint", "status"),
        )
        counts: dict[tuple[str, ...], int] = {}
        throttled: dict[tuple[str, ...], int] = {}
        for (host, endpoint, status), n in requests.items():
            label = "error" if status is None else str(status)
            if label != "error" and label not in _STATUS_LABELS:
                label = "invalid"
            key = (host, endpoint, label)
            counts[key] = counts.get(key, 0) + n
            if status == 429:
                throttled[(host,)] = throttled.get((host,), 0) + n
        for labels, n in self._hosts.relabel(counts).items():
            by_request.add_metric(labels, n)
        yield by_request
        yield _labeled(
            "rate_limited",
            "429 answers, by host (the busiest hosts; the rest as 'other').",
            "host",
            [(k[0], n) for k, n in self._throttled_hosts.relabel(throttled).items()],
        )
        yield _counter("received_bytes", "Response bytes received.", stats.bytes)
        yield _counter(
            "repo_retries",
            "Repos put back for a retry after a transient error.",
            stats.repos_retried,
        )
        yield _labeled(
            "repos_processed",
            "Repos finished by this run: done (added to a batch) or failed (dead-lettered).",
            "result",
            [("done", stats.repos_done), ("failed", stats.repos_failed)],
        )
        yield _labeled(
            "dead_letters",
            "Dead letters (whole repos and single records), by error code.",
            "code",
            dict(stats.dead_letters).items(),
        )


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _labeled(
    name: str, doc: str, label: str, samples: Iterable[tuple[str, float]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    for key, value in samples:
        family.add_metric([key], value)
    return family


class RunMetrics:
    """The metrics of one `Backfill`; `attach()` it before `run()`, `serve()` to expose them."""

    def __init__(self, backfill: Backfill, registry: CollectorRegistry | None = None) -> None:
        self.backfill = backfill
        self.registry = registry if registry is not None else CollectorRegistry()
        self._sampler = RunSampler(top=0)
        self._server: WSGIServer | None = None
        self._last_gauges = -float("inf")
        r = self.registry
        r.register(_StatsCollector(backfill.stats))
        self.records = Counter(
            f"{PREFIX}_records",
            "Records landed (committed to the dataset), by collection.",
            ["collection"],
            registry=r,
        )
        self.commits = Counter(f"{PREFIX}_commits", "Batches committed.", registry=r)
        self.commit_seconds = Histogram(
            f"{PREFIX}_commit_seconds",
            "Seconds one commit (flush) took: close files, store transaction, renames.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            f"{PREFIX}_decode_seconds",
            "Seconds to decode, verify and transform one repo.",
            buckets=DECODE_BUCKETS,
            registry=r,
        )
        # Read from the state store: with a shared (PostgreSQL) queue every instance
        # reports the same cluster-wide value, so dashboards take max(), never sum().
        self.repos = Gauge(
            f"{PREFIX}_repos",
            "Repos in the state store, by state. Cluster-wide with a shared queue: every "
            "instance reports the same value (aggregate with max, not sum).",
            ["state"],
            registry=r,
        )
        for state in RepoState:
            self.repos.labels(state.value)
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth",
            "Repos waiting to be claimed (pending, including those waiting for a retry). "
            "Cluster-wide with a shared queue (aggregate with max, not sum).",
            registry=r,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_repos_in_flight", "Repos being fetched or decoded now.", registry=r
        )
        self.hosts_active = Gauge(
            f"{PREFIX}_hosts_active", "PDS hosts with repos in flight.", registry=r
        )
        self.hosts_paused = Gauge(
            f"{PREFIX}_hosts_paused",
            "Hosts paused now (down: circuit breaker open; rate limited; out of budget).",
            registry=r,
        )
        self.uncommitted = Gauge(
            f"{PREFIX}_uncommitted_repos",
            "Repos finished but not yet committed (the open batch).",
            registry=r,
        )

    # -- feeds ---------------------------------------------------------------------
    def attach(self, backfill: Backfill | None = None) -> None:
        """Listen to the engine: the tick always; commits and decode times where the engine
        offers `on_commit` / `on_decode` hook lists."""
        backfill = backfill or self.backfill
        backfill.on_tick.append(self.on_tick)
        commit_hooks = getattr(backfill, "on_commit", None)
        if commit_hooks is not None:
            commit_hooks.append(self.on_commit)
        decode_hooks = getattr(backfill, "on_decode", None)
        if decode_hooks is not None:
            decode_hooks.append(self.observe_decode)

    def on_commit(self, summary: CommitSummary) -> None:
        """A batch became durable: count its rows as landed. Call on the event-loop thread."""
        if not summary.files and not summary.done and not summary.failed:
            return  # nothing was open: not a flush
        self.commits.inc()
        self.commit_seconds.observe(summary.seconds)
        for collection, rows in summary.rows_by_collection.items():
            if not collection.startswith("_"):  # the sink's own tables (_deadletters)
                self.records.labels(collection).inc(rows)
        self._sampler.invalidate()  # repo states changed with this commit
        self._update_gauges(force=True)

    def observe_decode(self, seconds: float) -> None:
        """One repo's extraction took `seconds` (thread-safe: callable from a worker thread)."""
        self.decode_seconds.observe(seconds)

    def on_tick(self, backfill: Backfill) -> None:
        self._update_gauges(force=False)

    def _update_gauges(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_gauges < 1.0:
            return
        self._last_gauges = now
        backfill = self.backfill
        if getattr(backfill, "store", None) is None:
            return
        counts = self._sampler.counts(backfill)
        for state in RepoState:
            self.repos.labels(state.value).set(counts.get(state, 0))
        self.queue_depth.set(counts.get(RepoState.PENDING, 0))
        hosts = self._sampler.hosts(backfill)
        self.in_flight.set(hosts.in_flight)
        self.hosts_active.set(hosts.active)
        self.hosts_paused.set(hosts.paused)
        sink = getattr(backfill, "sink", None)
        self.uncommitted.set(sink.batch_repos if sink is not None else 0)

    def finish(self, summary: RunSummary) -> None:
        """The run returned (its store is closed): set the gauges from its summary."""
        self.repos.labels(RepoState.DONE.value).set(summary.repos_done)
        self.repos.labels(RepoState.FAILED.value).set(summary.repos_failed)
        self.repos.labels(RepoState.IN_PROGRESS.value).set(0)  # recovered at the next start
        self.repos.labels(RepoState.PENDING.value).set(summary.repos_pending)
        self.queue_depth.set(summary.repos_pending)
        self.in_flight.set(0)
        self.hosts_active.set(0)
        self.uncommitted.set(0)

    # -- the endpoint -------------------------------------------------------------------
    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics on addr:port in a daemon thread; returns the port (0 = any free one).
        `addr` is `--metrics-host` (127.0.0.1 by default; 0.0.0.0 for a scraper elsewhere).

        A port we cannot bind is a usage error (exit 2), raised before the run writes anything.
        """
        if not 0 <= port <= 65535:
            raise UsageError(f"--metrics-port {port}: not a TCP port")
        try:
            server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:
            raise UsageError(
                f"--metrics-port {port} on {addr}: cannot listen ({e.strerror or e})"
            ) from None
        self._server = server
        return int(server.server_port)

    @property
    def port(self) -> int | None:
        return int(self._server.server_port) if self._server is not None else None

    def close(self) -> None:
        """Stop serving (the registry stays readable, e.g. for tests)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


__all__ = ["COMMIT_BUCKETS", "DECODE_BUCKETS", "PREFIX", "RunMetrics"]
