"""The resolver's cache is bounded: a whole-network run must not keep every DID it saw."""

from __future__ import annotations

import asyncio

from bsky_backfill.identity.resolver import DidResolver
from bsky_backfill.simulate import Scenario, SimNetwork
from bsky_backfill.xrpc.client import HttpSettings, XrpcClient


def test_cache_keeps_only_the_most_recent_identities() -> None:
    async def go() -> None:
        async with SimNetwork(Scenario(seed=7, accounts=40, hosts=2, mean_records=1)) as net:
            dids = [a.did for a in net.accounts if a.did.startswith("did:plc:")][:30]
            async with XrpcClient(HttpSettings(), allow_private=True) as client:
                resolver = DidResolver(client, net.plc_url, allow_private=True, cache_entries=8)
                for did in dids:
                    await resolver.resolve(did)
                assert resolver.cached == 8
                assert resolver.lookups == len(dids)
                # The most recent ones are answered from memory...
                for did in dids[-8:]:
                    await resolver.resolve(did)
                assert resolver.lookups == len(dids)
                # ...an evicted one is looked up again, and evicts the least recent.
                await resolver.resolve(dids[0])
                assert resolver.lookups == len(dids) + 1
                assert resolver.cached == 8
                await resolver.resolve(dids[-7])  # still cached (used after dids[-8])
                assert resolver.lookups == len(dids) + 1
                await resolver.resolve(dids[-8])  # the least recently used: evicted
                assert resolver.lookups == len(dids) + 2

    asyncio.run(go())
