"""Handle -> DID, the way atproto specifies, checked both ways.

Where it sits: the engine's identity stage, before DID resolution. An account
listed as a handle (`alice.bsky.social`, `@alice.bsky.social`) is looked up
first in DNS (`TXT _atproto.<handle>` = `did=<DID>`), then over HTTPS
(`https://<handle>/.well-known/atproto-did`, the DID as text); the DID's own
document must then name the handle (`alsoKnownAs: at://<handle>`), or the
handle is not that account's (anyone can point a name at any DID).

Failures are the account's dead letter at stage `resolve`: `HandleNotFound`
(no DNS record and no well-known answer, or two different DIDs) or
`HandleMismatch` (the DID's document names another handle). A DNS server or
a handle's web site that does not answer means that route found nothing (the
message says so): a dead nameserver must not hold a run for a day of retries,
and `run --retry-failed HandleNotFound` asks again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bsky_backfill.errors import BackfillError, ResolveError
from bsky_backfill.identity.dns import DnsError, TxtLookup
from bsky_backfill.syntax import is_supported_did, is_valid_handle
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.ssrf import host_to_base_url

DocumentHandle = Callable[[str], Awaitable[str | None]]
"""did -> the handle its document names (alsoKnownAs), or None."""

_WELL_KNOWN_LIMIT = 2048
# Top-level domains no public web site can have (RFC 6761 and atproto's list of
# disallowed handle TLDs): their handles resolve through DNS hooks only.
_NO_WEB_TLDS = frozenset(
    {"test", "invalid", "local", "localhost", "example", "arpa", "internal", "onion", "alt"}
)


def is_handle(account: str) -> bool:
    """A queued account that is a handle, not a DID (resolved here first)."""
    return not account.startswith("did:")


def normalize_handle(text: str) -> str | None:
    """`@Alice.Bsky.Social` -> `alice.bsky.social`; None if it is not a handle."""
    handle = text[1:] if text.startswith("@") else text
    handle = handle.rstrip(".").lower()
    return handle if is_valid_handle(handle) else None


class HandleResolver:
    """Resolve and verify handles; `txt` is the DNS hook (None: DNS is skipped)."""

    def __init__(
        self,
        client: XrpcClient,
        document_handle: DocumentHandle,
        *,
        txt: TxtLookup | None,
        allow_private: bool,
    ) -> None:
        self._client = client
        self._document_handle = document_handle
        self._txt = txt
        self._allow_private = allow_private
        self.lookups = 0

    async def resolve(self, handle: str) -> str:
        """The verified DID of `handle`; ResolveError (terminal) or TransientError."""
        self.lookups += 1
        dns_failure = ""
        try:
            did = await self._from_dns(handle)
        except DnsError as e:
            # Not a retry: a DNS server that does not answer must not hold the run
            # (the well-known route may still know; if not, --retry-failed can).
            did, dns_failure = None, f" (DNS: {e})"
        if did is None:
            did = await self._from_well_known(handle)
        if did is None:
            raise ResolveError(
                f"handle {handle}: no DNS TXT _atproto.{handle}{dns_failure} and no "
                f"https://{handle}/.well-known/atproto-did answer",
                code="HandleNotFound",
            )
        named = await self._document_handle(did)
        if named is None or named.lower() != handle:
            raise ResolveError(
                f"handle {handle} points to {did}, whose DID document names {named or 'no handle'}",
                code="HandleMismatch",
            )
        return did

    async def _from_dns(self, handle: str) -> str | None:
        if self._txt is None:
            return None
        records = await self._txt(f"_atproto.{handle}")
        dids = {r[4:].strip() for r in records if r.startswith("did=")}
        if len(dids) > 1:
            raise ResolveError(
                f"handle {handle}: DNS names {len(dids)} different DIDs", code="HandleNotFound"
            )
        did = dids.pop() if dids else None
        return did if did is not None and is_supported_did(did) else None

    async def _from_well_known(self, handle: str) -> str | None:
        if handle.rsplit(".", 1)[-1] in _NO_WEB_TLDS:
            return None
        try:
            url = f"{host_to_base_url(handle, self._allow_private)}/.well-known/atproto-did"
            await self._client.guard.check(url)
            body = await self._client.fetch_bytes(
                url, trusted=False, limit=_WELL_KNOWN_LIMIT, label="atproto-did"
            )
        except BackfillError:
            # No such site, a refused address, an error status, no answer: most
            # handles live in DNS only, so this is "not found here", not a retry.
            return None
        did = body.decode("utf-8", "replace").strip()
        return did if is_supported_did(did) else None


__all__ = ["HandleResolver", "is_handle", "normalize_handle"]
