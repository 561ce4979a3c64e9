"""The aiohttp side of the address guard: a resolver that drops non-public answers.

Where it sits: xrpc/client.py builds its connector with `GuardedResolver`
when private hosts are not allowed (`AddressPolicy.allow_private` false);
the rules themselves are xrpc/ssrf.py's `blocked_reason`. Kept apart from
ssrf.py so that the checks of user input there do not import aiohttp.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from bsky_backfill.xrpc.ssrf import REFUSED, AddressPolicy, BlockedAddressOSError, blocked_reason

__all__ = ["GuardedResolver", "resolver_for"]


def resolver_for(policy: AddressPolicy) -> AbstractResolver | None:
    """For aiohttp's connector: a resolver that drops non-public answers (None: no guard)."""
    return None if policy.allow_private else GuardedResolver()


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops non-public addresses (defence against DNS rebinding)."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if blocked_reason(ipaddress.ip_address(r["host"])) is None]
        if not allowed:
            raise BlockedAddressOSError(f"{REFUSED}: {host} resolves only to non-public addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"GuardedResolver({self._inner!r})"

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - passthrough
        return getattr(self._inner, name)
