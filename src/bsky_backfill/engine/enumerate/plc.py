"""`--all-from-plc`: every DID of the PLC directory, with its identity, from `/export`.

Where it sits: an enumeration source (see base.py). It pages
`GET {plc}/export?count=1000&after=<cursor>` (JSON lines, oldest first) and
takes each DID's PDS endpoint and `#atproto` key straight from its newest
operation, so the DIDs go into the queue already resolved: no per-DID PLC
lookup is ever made for them.

The newest operation wins, but it may come pages later than an older one, and
the whole log (tens of millions of DIDs) is never held in memory. So each page
is settled on its own, against what the store already holds:

* the newest non-nullified operation per DID *within the page* is kept
  (nullified operations were overridden by a recovery and never count);
* an operation naming a PDS -> `enqueue_resolved` (a DID still pending from an
  earlier page takes the newer identity: that is how a migration lands);
* a tombstone, or an operation without an atproto PDS -> `withdraw`: a DID
  still pending is taken out of the queue, so it is never fetched; a deleted
  account is not a repo, so nothing is dead-lettered for it;
* an operation whose PDS endpoint we refuse (not http(s), loopback, private)
  -> `withdraw`, then dead-letter `fetch/BlockedPrivateAddress` (the code a
  `--dids` run gives the same DID), unless a worker already had the repo.

A repo a worker already claimed keeps the identity it was claimed with (see
the package docstring for what that means for accounts that moved).

The export is read as a stranger's data even though the operator chose the
directory: a DID must have the syntax an input DID must have (a
`did:plc:../../etc/passwd` is skipped), an endpoint goes through the run's
address policy like any other, and the cursor must move forward on every page
(`seq` up, or `createdAt` later) within at most `max_pages` pages, so that a
directory cannot keep a run listing forever.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson

from bsky_backfill.engine.enumerate.base import (
    PAGE_RETRY,
    EnumerationStore,
    OnPage,
    Page,
    RepoRejected,
    SourceResult,
    retryable,
    with_retries,
)
from bsky_backfill.errors import BackfillError, TerminalError, TransientError
from bsky_backfill.identity.resolver import host_key
from bsky_backfill.state.base import Identity
from bsky_backfill.syntax import is_supported_did, is_valid_handle, parse_datetime
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.retry import RetryPolicy, error_summary
from bsky_backfill.xrpc.ssrf import no_lookup

log = logging.getLogger("bsky_backfill.enumerate")

#: An export page is ~1000 operations of < 2 KB each; anything far beyond is not an export.
_MAX_PAGE_BYTES = 64 * 1024 * 1024
#: Pages of one export run at most: ~1B operations, far beyond the real directory.
MAX_PAGES = 1_000_000


@dataclass
class ExportPage:
    """One export page settled per DID (newest non-nullified operation wins)."""

    identities: list[Identity] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    """Tombstoned, or no atproto PDS: not a repo (any more)."""
    endpoints_to_check: dict[str, Identity] = field(default_factory=dict)
    cursor: str | None = None
    """Where the next page starts: the last entry's `seq`, else its `createdAt`."""
    skipped: int = 0
    """Lines that were not export entries for a did:plc (logged, ignored)."""


def _endpoint(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip().rstrip("/")[:2048]  # longer is refused by the endpoint check
    return None


def _did_key(value: object) -> str | None:
    if isinstance(value, str) and value.startswith("did:key:") and len(value) <= 256:
        return value
    return None


def identity_from_operation(did: str, op: Mapping[str, Any]) -> Identity | None:
    """The identity an operation gives `did`, or None (tombstone, no atproto PDS, unknown type).

    `plc_operation`: `services.atproto_pds.endpoint`, `verificationMethods.atproto`
    and the first `at://` of `alsoKnownAs` (the claimed handle, for `_accounts`);
    legacy `create`: `service`, `signingKey` and `handle`.
    """
    kind = op.get("type")
    pds: str | None = None
    key: str | None = None
    handle: str | None = None
    if kind == "plc_operation":
        services = op.get("services")
        service = services.get("atproto_pds") if isinstance(services, dict) else None
        if isinstance(service, dict):
            pds = _endpoint(service.get("endpoint"))
        methods = op.get("verificationMethods")
        key = _did_key(methods.get("atproto")) if isinstance(methods, dict) else None
        aka = op.get("alsoKnownAs")
        names = aka if isinstance(aka, list) else []
        handle = next((n[5:] for n in names if isinstance(n, str) and n.startswith("at://")), None)
    elif kind == "create":
        pds = _endpoint(op.get("service"))
        key = _did_key(op.get("signingKey"))
        handle = op.get("handle") if isinstance(op.get("handle"), str) else None
    if pds is None:
        return None
    if handle is not None:
        handle = handle.lower() if is_valid_handle(handle.lower()) else None
    return Identity(did=did, pds=pds, host=host_key(pds), signing_key=key, handle=handle)


def _is_plc_did(did: str) -> bool:
    """The syntax an input did:plc must have (syntax.py), for DIDs the export names."""
    return did.startswith("did:plc:") and is_supported_did(did)


def cursor_advances(before: str | None, after: str) -> bool:
    """Whether an export cursor moved forward: `seq` numbers up, `createdAt` later."""
    if before is None:
        return True
    if before.isdigit() and after.isdigit():
        return int(after) > int(before)
    old, new = parse_datetime(before), parse_datetime(after)
    if old is not None and new is not None:
        return new > old
    return after > before


def export_cursor(entry: Mapping[str, Any]) -> str | None:
    """Newer servers number entries (`seq`); legacy ones page by `createdAt`."""
    seq = entry.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool):
        return str(seq)
    created = entry.get("createdAt")
    return created if isinstance(created, str) and created else None


def settle_page(lines: Iterable[bytes]) -> ExportPage:
    """Parse one export page and keep the newest non-nullified operation per DID."""
    page = ExportPage()
    newest: dict[str, Mapping[str, Any]] = {}  # insertion order = first seen; value = newest
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            page.skipped += 1
            continue
        if not isinstance(entry, dict):
            page.skipped += 1
            continue
        page.cursor = export_cursor(entry) or page.cursor
        did, op = entry.get("did"), entry.get("operation")
        if not (isinstance(did, str) and _is_plc_did(did) and isinstance(op, dict)):
            page.skipped += 1
            continue
        if entry.get("nullified") is True:
            continue  # overridden by a recovery operation: never the DID's state
        newest[did] = op
    for did, op in newest.items():
        identity = identity_from_operation(did, op)
        if identity is None:
            page.gone.append(did)
        else:
            page.endpoints_to_check[did] = identity
    return page


async def fetch_bytes(client: XrpcClient, url: str) -> bytes:
    """GET `url` from the trusted PLC directory as raw bytes (the export is JSON lines)."""
    return await client.fetch_bytes(url, trusted=True, limit=_MAX_PAGE_BYTES, label="export")


class PlcExportSource:
    """Pages the PLC directory's `/export` from the durable cursor to its end."""

    def __init__(
        self,
        client: XrpcClient,
        plc_url: str,
        *,
        allow_private: bool = False,
        count: int = 1000,
        retry: RetryPolicy = PAGE_RETRY,
        max_pages: int = MAX_PAGES,
    ) -> None:
        self.client = client
        self.max_pages = max_pages
        self.plc_url = plc_url.rstrip("/")
        self.allow_private = allow_private
        self.count = count
        self.retry = retry
        self.name = f"plc-export {self.plc_url}"
        self._rand = random.Random()

    def url(self, cursor: str | None) -> str:
        params: dict[str, str | int] = {"count": self.count}
        if cursor is not None:
            params["after"] = cursor
        return f"{self.plc_url}/export?{urlencode(params)}"

    async def run(self, store: EnumerationStore, on_page: OnPage) -> SourceResult:
        result = SourceResult(source=self.name)
        cursor = store.get_cursor(self.name)
        try:
            while True:
                url = self.url(cursor)
                body = await with_retries(
                    functools.partial(fetch_bytes, self.client, url), url, self.retry, self._rand
                )
                settled = settle_page(body.splitlines())
                if settled.skipped:
                    log.warning("%s: skipped %d malformed export lines", url, settled.skipped)
                if settled.cursor is None:
                    result.complete = True  # an empty page: the export is exhausted
                    return result
                if not cursor_advances(cursor, settled.cursor):
                    raise TerminalError(
                        f"{url}: the export cursor does not move forward "
                        f"({cursor!r:.64} -> {settled.cursor!r:.64})",
                        code="CursorCycle",
                    )
                if result.pages >= self.max_pages:
                    raise TerminalError(
                        f"{url}: more than {self.max_pages} export pages", code="TooManyPages"
                    )
                page = await self._store(store, settled)
                result.add(page)
                await on_page(page)
                store.set_cursor(self.name, settled.cursor)
                cursor = settled.cursor
        except (TransientError, TerminalError) as e:
            result.error = error_summary(e)
            result.retryable = retryable(e)
            return result

    async def _store(self, store: EnumerationStore, settled: ExportPage) -> Page:
        identities: list[Identity] = []
        blocked: dict[str, str] = {}
        verdicts: dict[str, str | None] = {}  # per endpoint, within the page
        for did, identity in settled.endpoints_to_check.items():
            if identity.pds not in verdicts:
                verdicts[identity.pds] = await self._refusal(identity.pds)
            refusal = verdicts[identity.pds]
            if refusal is None:
                identities.append(identity)
            else:
                blocked[did] = refusal
        new = store.enqueue_resolved(identities) if identities else 0
        out = store.withdraw([*settled.gone, *blocked]) if settled.gone or blocked else []
        rejected = tuple(
            RepoRejected(did=did, stage="fetch", code="BlockedPrivateAddress", message=blocked[did])
            for did in out
            if did in blocked
        )
        return Page(
            source=self.name,
            cursor=settled.cursor,
            offered=len(identities),
            new=new,
            dropped=len(settled.gone) + len(blocked),
            rejected=rejected,
        )

    async def _refusal(self, pds: str) -> str | None:
        """Why the endpoint must not be contacted, or None.

        Only the static checks run here (syntax, normalisation, literals,
        localhost): a DNS lookup per DID would cost millions of queries. The
        client's connect-time guard sees every address these hosts resolve to."""
        try:
            await self.client.guard.check(pds, lookup=no_lookup)
        except BackfillError as e:
            return e.message
        return None
