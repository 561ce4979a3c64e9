"""DID -> PDS endpoint and signing key: did:plc via the PLC directory, did:web via HTTPS.

Where it sits: the engine's resolver stage calls `DidResolver.resolve` for
every DID whose identity the state store does not know yet; the answer is
stored, so later runs never look it up again. Like indigo's `Directory`, the
resolvers wrap one another: `DidResolver` adds the per-run cache and the
concurrency bound around the two method-specific ones.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from urllib.parse import unquote, urlsplit

from bsky_backfill.errors import BlockedAddress, HostUnreachable, ResolveError, TerminalError
from bsky_backfill.identity.document import DidDocInfo, parse_did_document
from bsky_backfill.state.base import Identity
from bsky_backfill.syntax import is_valid_handle
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.ssrf import host_to_base_url, parse_endpoint

#: Codes of a directory's or host's answer that say the document itself is bad.
_BAD_DOCUMENT = {"InvalidJson", "BodyTooLarge", "CompressionBomb", "InvalidEncoding"}


def host_key(pds: str) -> str:
    """The key that groups repos into host slots: lower-cased `host[:port]` of the endpoint."""
    try:
        parts = urlsplit(pds)
    except ValueError:  # not a URL (an unclosed bracket): refused before it is contacted
        return pds.lower()[:255]
    return (parts.netloc or pds).lower()[:255]


def _document_error(source: str, error: TerminalError) -> ResolveError:
    """A terminal answer to a document fetch -> the resolve-stage dead letter it means."""
    if error.code in ("Http404", "Gone", "RepoNotFound"):
        # 404 (unknown, or tombstoned at @did-plc/server) and 410 (tombstoned at
        # plc.directory) are both terminal for the DID. One code for both: the
        # same DID must get the same code whichever PLC server answers.
        state = "tombstoned" if error.code == "Gone" else "not found"
        return ResolveError(f"{source}: {state} ({error.message})", code="DidNotFound")
    if error.code in _BAD_DOCUMENT:
        return ResolveError(f"{source}: {error.message}", code="InvalidDidDocument")
    return ResolveError(f"{source}: {error.message}", code=error.code)


class PlcResolver:
    """did:plc documents from the operator's (trusted) PLC directory."""

    def __init__(self, client: XrpcClient, plc_url: str) -> None:
        self._client = client
        self._plc = plc_url.rstrip("/")

    async def resolve(self, did: str) -> DidDocInfo:
        try:
            doc = await self._client.fetch_json(
                f"{self._plc}/{did}", trusted=True, label="plc_lookup"
            )
        except (ResolveError, HostUnreachable):
            # HostUnreachable: the directory is given up, not the DID (a retryable
            # ResolveFailed).
            raise
        except TerminalError as e:
            raise _document_error("PLC directory", e) from e
        return parse_did_document(did, doc)


class WebResolver:
    """did:web documents from `https://<host>/.well-known/did.json` (untrusted host)."""

    def __init__(self, client: XrpcClient, allow_private: bool) -> None:
        self._client = client
        self._allow_private = allow_private

    def document_url(self, did: str) -> str:
        rest = did[len("did:web:") :]
        if ":" in rest:
            # atproto allows only host-level did:web (no path segments).
            raise ResolveError(f"{did}: did:web with a path is not supported", code="DidNotFound")
        host = unquote(rest)  # `%3A` encodes the port separator
        return f"{host_to_base_url(host, self._allow_private)}/.well-known/did.json"

    async def resolve(self, did: str) -> DidDocInfo:
        url = self.document_url(did)
        try:
            await self._client.guard.check(url)
            doc = await self._client.fetch_json(url, trusted=False, label="did_web_document")
        except (ResolveError, HostUnreachable):
            raise
        except BlockedAddress as e:
            raise ResolveError(f"did:web document: {e.message}", code=e.code) from e
        except TerminalError as e:
            raise _document_error("did:web document", e) from e
        return parse_did_document(did, doc)


CACHE_ENTRIES = 65_536
"""Identities kept in memory (~300 bytes each, ~20 MB). The state store keeps every
answer for good; the cache only spares a second lookup while a DID is in play
(e.g. a listRepos page resolved, then its repos claimed), so it is an LRU bounded
whatever the input: a whole-network run resolves ~40M DIDs."""


class DidResolver:
    """Dispatch by DID method, cache recent answers (LRU), bound concurrency.

    The boundary of identity resolution: whatever a directory, a did:web host
    or a document says, `resolve` raises only ResolveError / BlockedAddress /
    TerminalError (with a stable code) or TransientError. (An exception of
    another type would be a bug here, not the document's fault.)"""

    def __init__(
        self,
        client: XrpcClient,
        plc_url: str,
        *,
        allow_private: bool,
        concurrency: int = 32,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self._plc = PlcResolver(client, plc_url)
        self._plc_url = plc_url
        self._web = WebResolver(client, allow_private)
        self._cache: OrderedDict[str, Identity] = OrderedDict()
        self._cache_entries = cache_entries
        self._limit = asyncio.Semaphore(concurrency)
        self.lookups = 0

    def document_url(self, did: str) -> str:
        """Where `did`'s document comes from (the engine keys host pauses by it)."""
        if did.startswith("did:web:"):
            return self._web.document_url(did)
        return self._plc_url

    async def resolve(self, did: str) -> Identity:
        """Identity for `did`; raises ResolveError (terminal) or TransientError."""
        cached = self._cache.get(did)
        if cached is not None:
            self._cache.move_to_end(did)
            return cached
        identity, _ = await self.resolve_document(did)
        return identity

    async def resolve_document(self, did: str) -> tuple[Identity, str | None]:
        """Identity for `did` and the handle its document names (never cached: handle
        checks want the document as it is now); the identity is cached for `resolve`."""
        async with self._limit:
            self.lookups += 1
            info = await self._lookup(did)
            parse_endpoint(info.pds)  # a stranger's URL: usable, or a dead letter now
        # The claimed handle as the `_accounts` table shows it: lower case, and
        # only if it is one (the document is a stranger's text).
        claimed = info.handle.lower() if info.handle is not None else None
        identity = Identity(
            did=did,
            pds=info.pds,
            host=host_key(info.pds),
            signing_key=info.signing_key,
            handle=claimed if claimed is not None and is_valid_handle(claimed) else None,
        )
        self._cache[did] = identity
        if len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        return identity, info.handle

    async def document_handle(self, did: str) -> str | None:
        """The handle `did`'s document names (identity/handle.py's check)."""
        _, handle = await self.resolve_document(did)
        return handle

    @property
    def cached(self) -> int:
        """Identities held in memory now (at most `cache_entries`)."""
        return len(self._cache)

    async def _lookup(self, did: str) -> DidDocInfo:
        if did.startswith("did:plc:"):
            return await self._plc.resolve(did)
        if did.startswith("did:web:"):
            return await self._web.resolve(did)
        raise ResolveError(f"unsupported DID method: {did[:100]}", code="UnsupportedDid")


__all__ = ["DidResolver", "PlcResolver", "WebResolver", "host_key"]
