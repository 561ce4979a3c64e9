"""`--pds URL` (and each host of `--from-relay`): the repos one PDS host lists.

Where it sits: an enumeration source (see base.py). It pages
`com.atproto.sync.listRepos?limit=1000&cursor=...` on the host, through the
host's `HostSlot` (the same rate budget its getRepo calls draw from), with a
durable cursor per host. A cursor that comes back, or a listing past
`MAX_PAGES`, ends the listing (`PageGuard`): a host cannot page forever.

* Active repos are enqueued *unresolved*: the DID document, not the listing,
  is the authority for where a repo lives, so the engine resolves them.
* Inactive repos (`active: false` with a `status`) are not fetched. A host
  keeps listing the accounts that migrated away from it as deactivated, so
  each inactive DID is resolved once here: when its DID document names this
  host, the repo really is inactive and is dead-lettered
  `enumerate/<RepoTakendown|RepoDeactivated|...>`; when it names another host
  the account moved and that host's listing (or the resolver) covers it, so it
  is skipped; when the DID cannot be resolved at all the host's word stands;
  when resolution fails transiently the DID is enqueued and the engine's own
  resolve and fetch decide.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bsky_backfill.engine.enumerate.base import (
    PAGE_RETRY,
    STAGE,
    EnumerationStore,
    OnPage,
    Page,
    PageGuard,
    RepoRejected,
    SlotPool,
    SourceResult,
    retryable,
    with_retries,
)
from bsky_backfill.errors import TerminalError, TransientError
from bsky_backfill.identity.resolver import host_key
from bsky_backfill.state.base import Identity
from bsky_backfill.syntax import is_supported_did
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.retry import RetryPolicy, error_summary
from bsky_backfill.xrpc.slot import HostSlot
from bsky_backfill.xrpc.ssrf import host_to_base_url

log = logging.getLogger("bsky_backfill.enumerate")

LIST_REPOS = "com.atproto.sync.listRepos"

Resolve = Callable[[str], Awaitable[Identity]]
"""DID -> identity (the engine passes `DidResolver.resolve`, which caches per run)."""

SlotFor = Callable[[str], HostSlot]
"""host key -> that host's slot (the engine passes `Backfill.slot`)."""

# listRepos `status` -> the dead-letter code getRepo would have answered.
INACTIVE_CODES = {
    "takendown": "RepoTakendown",
    "deactivated": "RepoDeactivated",
    "suspended": "RepoSuspended",
    "deleted": "RepoDeleted",
}
# Hosting states a relay reports about its own copy; the PDS still serves these repos.
_FETCHABLE_STATES = frozenset({"desynchronized", "throttled"})
# Inactive DIDs resolved at once per page (the resolver bounds its own concurrency too).
_RESOLVE_AT_ONCE = 16


def classify(entry: object) -> tuple[str, str | None, str] | None:
    """A listRepos entry -> (did, None, "") if fetchable, (did, code, status) if inactive,
    None if it is not a usable entry."""
    if not isinstance(entry, Mapping):
        return None
    did = entry.get("did")
    if not isinstance(did, str) or not is_supported_did(did):
        return None
    status = entry.get("status")
    status = status if isinstance(status, str) else ""
    # Hosts from before account states existed send no `active`: they serve every repo.
    if entry.get("active", True) is not False or status in _FETCHABLE_STATES:
        return did, None, ""
    return did, INACTIVE_CODES.get(status, "RepoInactive"), status or "inactive"


class ListReposSource:
    """Pages one PDS host's listRepos from its durable cursor to the end."""

    def __init__(
        self,
        client: XrpcClient,
        host_url: str,
        *,
        resolve: Resolve,
        allow_private: bool = False,
        trusted: bool = True,
        slot_for: SlotFor | None = None,
        limit: int = 1000,
        retry: RetryPolicy = PAGE_RETRY,
    ) -> None:
        self.client = client
        self.base = host_to_base_url(host_url.strip(), allow_private)
        self.host = host_key(self.base)
        self.resolve = resolve
        self.allow_private = allow_private
        # False for hosts named by a relay: untrusted input, checked before any request.
        self.trusted = trusted
        self.slot_for = slot_for or SlotPool()
        self.limit = limit
        self.retry = retry
        self.name = f"listRepos {self.base}"
        self._rand = random.Random()

    async def run(self, store: EnumerationStore, on_page: OnPage) -> SourceResult:
        result = SourceResult(source=self.name)
        cursor = store.get_cursor(self.name)
        pages = PageGuard(f"{self.base} {LIST_REPOS}")
        pages.start(cursor)
        try:
            if not self.trusted:
                await self.client.guard.check(self.base)
            slot = self.slot_for(self.host)
            while True:
                params: dict[str, str | int] = {"limit": self.limit}
                if cursor:
                    params["cursor"] = cursor
                data = await with_retries(
                    functools.partial(self.client.xrpc_json, self.base, LIST_REPOS, params, slot),
                    f"{self.base} {LIST_REPOS}",
                    self.retry,
                    self._rand,
                )
                repos = data.get("repos") if isinstance(data, dict) else None
                if not isinstance(repos, list):
                    raise TerminalError(f"{self.base}: listRepos answer has no repos list")
                if not repos:
                    break
                nxt = data.get("cursor")
                nxt = nxt if isinstance(nxt, str) and nxt else None
                page = await self._store(store, repos, nxt)
                result.add(page)
                await on_page(page)
                if nxt is None:
                    break  # the last page: nothing to resume from beyond the saved cursor
                pages.advance(nxt)  # a cycle or an endless listing stops here
                store.set_cursor(self.name, nxt)
                cursor = nxt
            result.complete = True
        except (TransientError, TerminalError) as e:
            result.error = error_summary(e)
            result.retryable = retryable(e)
        return result

    async def _store(self, store: EnumerationStore, repos: list[Any], cursor: str | None) -> Page:
        active: list[str] = []
        inactive: list[tuple[str, str, str]] = []
        for entry in repos:
            found = classify(entry)
            if found is None:
                continue
            did, code, status = found
            if code is None:
                active.append(did)
            else:
                inactive.append((did, code, status))
        retry_later, rejects = await self._settle_inactive(inactive)
        offered = [*active, *retry_later]
        new = store.enqueue(offered) if offered else 0
        out = set(store.withdraw([r.did for r in rejects])) if rejects else set()
        return Page(
            source=self.name,
            cursor=cursor,
            offered=len(offered),
            new=new,
            dropped=len(inactive) - len(retry_later),
            rejected=tuple(r for r in rejects if r.did in out),
        )

    async def _settle_inactive(
        self, inactive: list[tuple[str, str, str]]
    ) -> tuple[list[str], list[RepoRejected]]:
        """Which inactive repos are really this host's: (enqueue instead, dead-letter)."""
        limit = asyncio.Semaphore(_RESOLVE_AT_ONCE)

        async def settle(did: str, code: str, status: str) -> tuple[str, RepoRejected | None]:
            message = f"{self.base} lists the repo as {status}"
            async with limit:
                try:
                    identity = await self.resolve(did)
                except TransientError:
                    return "enqueue", None  # the engine resolves and fetches it later
                except TerminalError as e:
                    message += f"; its DID does not resolve ({error_summary(e)})"
                    return "reject", RepoRejected(did, STAGE, code, message)
            if host_key(identity.pds) != self.host:
                return "moved", None  # its new host's listing covers it
            return "reject", RepoRejected(did, STAGE, code, message)

        outcomes = await asyncio.gather(*(settle(*item) for item in inactive))
        retry_later = [
            item[0] for item, (what, _) in zip(inactive, outcomes, strict=True) if what == "enqueue"
        ]
        rejects = [r for _, r in outcomes if r is not None]
        return retry_later, rejects
