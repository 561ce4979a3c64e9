"""`--from-relay` and `--pds` enumeration against a simulated relay and PDS hosts.

The simulated relay's own listRepos misses about a third of the accounts, and
hosts keep listing the accounts that migrated away as deactivated (as the
reference PDS does). Asking every host the relay names must still find every
active account exactly once, dead-letter the really inactive ones without
fetching them, and leave migrated accounts to their new host.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bsky_backfill.engine.enumerate import ListReposSource, RelaySource, SlotPool
from bsky_backfill.identity.resolver import DidResolver
from bsky_backfill.simulate import Scenario, SimNetwork
from bsky_backfill.xrpc.client import XrpcClient
from tests.engine.test_enumerate_units import Collector, EnumStore, collect

SCENARIO = Scenario(
    seed=42,
    accounts=30,
    hosts=3,
    mean_records=2,
    did_web=2,
    migrated=3,
    relay=True,
    relay_miss_fraction=0.34,
    old_host_lists_migrated=True,
)
LIST_REPOS = "com.atproto.sync.listRepos"
CODES = {
    "takendown": "RepoTakendown",
    "deactivated": "RepoDeactivated",
    "suspended": "RepoSuspended",
}


def relay(net: SimNetwork, **options: Any) -> Callable[[XrpcClient], RelaySource]:
    """A source factory for `collect`; loopback hosts are allowed unless said otherwise."""
    options.setdefault("allow_private", True)

    def make(client: XrpcClient) -> RelaySource:
        resolver = DidResolver(client, net.plc_url, allow_private=True)
        return RelaySource(client, net.relay_url, resolve=resolver.resolve, **options)

    return make


def active_dids(net: SimNetwork) -> set[str]:
    return {a.did for a in net.accounts if a.hosted and a.status == "active"}


def check_outcome(net: SimNetwork, store: EnumStore, rejected: list[Any]) -> None:
    # Every active account is queued (unresolved: the DID document decides the PDS).
    assert store.rows() == {did: ("pending", None, None, None) for did in active_dids(net)} | {
        r.did: ("failed", None, None, None) for r in rejected
    }
    # The inactive ones are dead-lettered once each, with the code getRepo would give.
    inactive = {a.did: CODES[a.status] for a in net.accounts if a.status in CODES}
    assert sorted(r.did for r in rejected) == sorted(inactive)
    assert {r.did: (r.stage, r.code) for r in rejected} == {
        did: ("enumerate", code) for did, code in inactive.items()
    }
    # ...and nothing was fetched, nor asked of the relay's own (incomplete) listRepos.
    assert net.stats.count(endpoint="com.atproto.sync.getRepo") == 0
    assert net.stats.count(host="relay", endpoint=LIST_REPOS) == 0
    # Only inactive listings were looked up (to tell migrated accounts apart), once each.
    moved = {a.did for a in net.accounts if a.migrated_from is not None}
    assert net.stats.count(host="plc", endpoint="resolve") == len(inactive) + len(moved)


def test_relay_hosts_find_what_the_relay_misses(tmp_path: Path) -> None:
    async def main() -> None:
        async with SimNetwork(SCENARIO) as net:
            assert net.relay is not None
            missed = net.relay.missed & active_dids(net)
            assert missed  # the relay alone would lose these
            moved = [a for a in net.accounts if a.migrated_from is not None]
            assert moved and all(a.did in net.hosts[a.migrated_from].moved_out for a in moved)
            with EnumStore(tmp_path / "state.sqlite") as store:
                pages = Collector(store)
                result = await collect(relay(net, limit=5), store, pages)
                assert result.complete and result.error is None
                assert len(result.hosts) == len(net.hosts)
                assert all(h.complete for h in result.hosts.values())
                check_outcome(net, store, pages.rejected)
                # Migrated accounts were listed twice (old host: deactivated), queued once.
                assert all(store.offered[a.did] == 1 for a in moved)

    asyncio.run(main())


def test_relay_enumeration_interrupted_and_resumed(tmp_path: Path) -> None:
    async def main() -> None:
        async with SimNetwork(SCENARIO) as net:
            # One host at a time, 3 repos a page, one host per listHosts page: the
            # order of requests is fixed, so the request count can be predicted.
            source = relay(net, limit=3, hosts_limit=1, host_concurrency=1)
            # listRepos requests per host: full pages, then the empty one that ends it.
            pages_per_host = [-(-len(h.listed_accounts()) // 3) + 1 for h in net.hosts]
            assert all(n >= 3 for n in pages_per_host)
            with EnumStore(tmp_path / "state.sqlite") as store:
                # Interrupted inside host 1's second page, before its cursor is saved.
                first = Collector(store, stop_after=pages_per_host[0] - 1 + 2)
                with pytest.raises(asyncio.CancelledError):
                    await collect(source, store, first)
                # Host 0 finished, so the host-list cursor moved past it; host 1 has its own.
                assert store.get_cursor(f"listHosts {net.relay_url}") == "1"
                assert store.get_cursor(f"listRepos {net.hosts[1].url}") is not None
                second = Collector(store)
                result = await collect(source, store, second)
                assert result.complete
                check_outcome(net, store, first.rejected + second.rejected)
                # Resumed, not restarted: host 0 is not listed again, and only the page
                # interrupted before its cursor was saved is read twice.
                assert net.stats.count(endpoint=LIST_REPOS) == sum(pages_per_host) + 1

    asyncio.run(main())


def test_hosts_named_by_a_relay_pass_the_ssrf_guard(tmp_path: Path) -> None:
    """Without --allow-private-hosts, a relay naming loopback hosts gets none of them asked."""

    async def main() -> None:
        async with SimNetwork(SCENARIO) as net:
            with EnumStore(tmp_path / "state.sqlite") as store:
                source = relay(net, allow_private=False)
                # The relay itself is the operator's (trusted, as the engine does); the
                # hosts it names are strangers.
                result = await collect(
                    source, store, Collector(store), allow_private=False, trusted=[net.relay_url]
                )
                assert len(result.hosts) == len(net.hosts)
                assert all(
                    (h.error or "").startswith("BlockedPrivateAddress") and not h.retryable
                    for h in result.hosts.values()
                )
                assert store.rows() == {}
                assert sum(net.stats.count(host=h.name) for h in net.hosts) == 0

    asyncio.run(main())


def test_pds_source_lists_one_host_through_its_slot(tmp_path: Path) -> None:
    async def main() -> None:
        async with SimNetwork(SCENARIO) as net:
            host = net.hosts[0]
            hostport = host.url.removeprefix("http://")
            slots = SlotPool(rate=None)

            def source(client: XrpcClient) -> ListReposSource:
                resolver = DidResolver(client, net.plc_url, allow_private=True)
                # A bare host:port, as a user may type it: loopback is reached over http.
                return ListReposSource(
                    client, hostport, resolve=resolver.resolve, allow_private=True, slot_for=slots
                )

            with EnumStore(tmp_path / "state.sqlite") as store:
                pages = Collector(store)
                result = await collect(source, store, pages)
                assert result.complete
                listed_active = {
                    a.did
                    for a in host.listed_accounts()
                    if a.status == "active" and a.did not in host.moved_out
                }
                assert {
                    d for d, row in store.rows().items() if row[0] == "pending"
                } == listed_active
                assert {r.did for r in pages.rejected} == {
                    a.did for a in host.accounts.values() if a.status in CODES
                }
                assert slots.slots[hostport].requests == net.stats.count(host=host.name) == 2

    asyncio.run(main())
