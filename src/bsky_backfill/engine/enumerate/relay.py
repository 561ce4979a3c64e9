"""`--from-relay URL`: the relay's hosts (`com.atproto.sync.listHosts`), then each host's repos.

Where it sits: an enumeration source (see base.py) made of many. It pages the
relay's host list and runs a `ListReposSource` for every host it names, a few
hosts at once. The relay's own listRepos is never used: it is known to miss
about a third of the accounts the hosts themselves list.

Hostnames from a relay are untrusted input: each becomes a base URL with
`host_to_base_url` and passes the run's address policy (`client.guard`,
xrpc/ssrf.py) before any request is sent to it; the host-list cursor must not
come back and the list is capped (`PageGuard`), so a relay cannot page forever.

Durability: every host keeps its own listRepos cursor. The relay's host-list
cursor moves past a page of hosts only once every host on it has been listed
to its end (or failed for good), so an interrupted run takes up each
unfinished host where it stopped. A host that failed transiently (retries
exhausted) holds the cursor back, so a later run tries it again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import deque

from bsky_backfill.engine.enumerate.base import (
    PAGE_RETRY,
    EnumerationStore,
    OnPage,
    PageGuard,
    SlotPool,
    SourceResult,
    retryable,
    with_retries,
)
from bsky_backfill.engine.enumerate.listrepos import ListReposSource, Resolve, SlotFor
from bsky_backfill.errors import TerminalError, TransientError
from bsky_backfill.identity.resolver import host_key
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.retry import RetryPolicy, error_summary
from bsky_backfill.xrpc.ssrf import host_to_base_url

log = logging.getLogger("bsky_backfill.enumerate")

LIST_HOSTS = "com.atproto.sync.listHosts"
# Host states whose repos are not worth asking for (the relay refuses the host).
_SKIPPED_HOST_STATES = frozenset({"banned"})


class RelaySource:
    """listHosts on a relay, then listRepos on each host it names."""

    def __init__(
        self,
        client: XrpcClient,
        relay_url: str,
        *,
        resolve: Resolve,
        allow_private: bool = False,
        slot_for: SlotFor | None = None,
        host_concurrency: int = 8,
        limit: int = 1000,
        hosts_limit: int = 1000,
        retry: RetryPolicy = PAGE_RETRY,
    ) -> None:
        self.client = client
        # The operator named the relay (like --plc-url): it is not put through the guard.
        self.base = host_to_base_url(relay_url.strip(), allow_private)
        self.resolve = resolve
        self.allow_private = allow_private
        self.slot_for = slot_for or SlotPool()
        self.host_concurrency = host_concurrency
        self.limit = limit  # repos per listRepos page
        self.hosts_limit = hosts_limit  # hosts per listHosts page
        self.retry = retry
        self.name = f"listHosts {self.base}"
        self._rand = random.Random()

    def host_source(self, hostname: str) -> ListReposSource:
        """The listRepos source for one host the relay named (untrusted)."""
        return ListReposSource(
            self.client,
            hostname,
            resolve=self.resolve,
            allow_private=self.allow_private,
            trusted=False,
            slot_for=self.slot_for,
            limit=self.limit,
            retry=self.retry,
        )

    async def run(self, store: EnumerationStore, on_page: OnPage) -> SourceResult:
        result = SourceResult(source=self.name)
        room = asyncio.Semaphore(self.host_concurrency)
        tasks: set[asyncio.Task[SourceResult]] = set()
        # (cursor after a page of hosts, that page's host tasks), oldest first.
        waiting: deque[tuple[str | None, list[asyncio.Task[SourceResult]]]] = deque()
        held = False  # a host failed transiently: keep the host-list cursor where it is

        async def list_host(source: ListReposSource) -> SourceResult:
            async with room:
                return await source.run(store, on_page)

        def advance() -> None:
            """Save the host-list cursor past every leading page whose hosts are all done."""
            nonlocal held
            while waiting and all(t.done() for t in waiting[0][1]):
                cursor, page_tasks = waiting.popleft()
                for task in page_tasks:
                    host = task.result()  # re-raises what stops the run (state store, bugs)
                    result.hosts[host.source] = host
                    for name in ("pages", "offered", "new", "dropped", "rejected"):
                        setattr(result, name, getattr(result, name) + getattr(host, name))
                    if host.error:
                        log.warning("%s: %s", host.source, host.error)
                    if host.error and host.retryable:
                        held = True
                if cursor is not None and not held:
                    store.set_cursor(self.name, cursor)

        cursor = store.get_cursor(self.name)
        seen: set[str] = set()
        pages = PageGuard(f"{self.base} {LIST_HOSTS}")
        pages.start(cursor)
        try:
            slot = self.slot_for(host_key(self.base))
            while True:
                params: dict[str, str | int] = {"limit": self.hosts_limit}
                if cursor:
                    params["cursor"] = cursor
                try:
                    data = await with_retries(
                        functools.partial(
                            self.client.xrpc_json, self.base, LIST_HOSTS, params, slot
                        ),
                        f"{self.base} {LIST_HOSTS}",
                        self.retry,
                        self._rand,
                    )
                except (TransientError, TerminalError) as e:
                    result.error = error_summary(e)
                    result.retryable = retryable(e)
                    break
                hosts = data.get("hosts") if isinstance(data, dict) else None
                if not isinstance(hosts, list):
                    result.error = f"{self.base}: listHosts answer has no hosts list"
                    break
                if not hosts:
                    result.complete = True
                    break
                nxt = data.get("cursor")
                nxt = nxt if isinstance(nxt, str) and nxt and nxt != cursor else None
                if nxt is not None:
                    try:
                        pages.advance(nxt)  # a cycle or an endless host list stops here
                    except TerminalError as e:
                        result.error = error_summary(e)
                        nxt = None
                page_tasks = []
                for entry in hosts:
                    source = self._source_for(entry, seen)
                    if source is not None:
                        task = asyncio.create_task(list_host(source), name=source.name)
                        tasks.add(task)
                        page_tasks.append(task)
                waiting.append((nxt, page_tasks))
                advance()
                if nxt is None:
                    result.complete = result.error is None
                    break
                cursor = nxt
            while waiting:
                await asyncio.wait(waiting[0][1])
                advance()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        result.complete = result.complete and not held
        return result

    def _source_for(self, entry: object, seen: set[str]) -> ListReposSource | None:
        """A listRepos source for one listHosts entry, or None (junk, banned, seen)."""
        if not isinstance(entry, dict):
            return None
        hostname = entry.get("hostname")
        if not isinstance(hostname, str) or not hostname.strip() or "/" in hostname.strip():
            log.warning("%s: ignoring host entry %.200r", self.base, entry)
            return None
        status = entry.get("status")
        if isinstance(status, str) and status in _SKIPPED_HOST_STATES:
            log.info("%s: skipping %s (%s)", self.base, hostname, status)
            return None
        try:
            source = self.host_source(hostname)
        except ValueError:  # not even a URL once a scheme is added
            log.warning("%s: ignoring host %r", self.base, hostname)
            return None
        if source.name in seen:
            return None
        seen.add(source.name)
        return source
