"""Helpers for the simulated-server tests: run a network, GET over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bsky_backfill.simulate import Scenario, SimNetwork
from bsky_backfill.simulate.accounts import SimAccount

SMALL = Scenario(seed=21, accounts=16, hosts=2, mean_records=30)

Body = Callable[[SimNetwork, aiohttp.ClientSession], Awaitable[None]]


def on_network(scenario: Scenario, body: Body) -> None:
    async def main() -> None:
        async with SimNetwork(scenario) as net, aiohttp.ClientSession() as session:
            await body(net, session)
            assert not net.stats.unexpected or body.__name__ == "unexpected"

    asyncio.run(main())


async def get(
    session: aiohttp.ClientSession, url: str, **params: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with session.get(url, params=params) as resp:
        body = await resp.read()
        kind = resp.headers.get("Content-Type", "")
        if "json" in kind and "jsonlines" not in kind:
            return resp.status, await resp.json(content_type=None), resp
        return resp.status, body, resp


def xrpc(net: SimNetwork, acct: SimAccount, nsid: str) -> str:
    return f"{net.host_urls[acct.host_index]}/xrpc/{nsid}"


def find_blobs(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        found = [value] if value.get("$type") == "blob" else []
        return found + [b for v in value.values() for b in find_blobs(v)]
    if isinstance(value, list):
        return [b for v in value for b in find_blobs(v)]
    return []


def active(net: SimNetwork) -> list[SimAccount]:
    return [a for a in net.accounts if a.status == "active" and a.repo and a.repo.records]
