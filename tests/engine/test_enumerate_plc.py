"""`--all-from-plc` enumeration against the simulated PLC directory over loopback HTTP.

Ground truth: every did:plc account that is not tombstoned lands in the queue
once, already resolved to the PDS and key of its *newest* operation (the
simulator writes migrations, tombstones, nullified operations and legacy
`create` genesis operations), and the directory never sees a per-DID lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bsky_backfill.engine.enumerate import PlcExportSource
from bsky_backfill.identity.resolver import host_key
from bsky_backfill.simulate import Faults, Scenario, SimNetwork
from bsky_backfill.simulate.plclog import NULLIFIED_ENDPOINT
from bsky_backfill.state.base import RepoDone
from bsky_backfill.xrpc.breaker import BreakerBoard, BreakerPolicy
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.retry import RetryPolicy
from tests.engine.test_enumerate_units import Collector, EnumStore, collect

SCENARIO = Scenario(
    seed=41,
    accounts=24,
    hosts=3,
    mean_records=2,
    did_web=1,
    tombstoned=3,
    migrated=3,
    plc_nullified=2,
    plc_legacy_create=2,
)
FAST = RetryPolicy(max_attempts=8, base_seconds=0.01, cap_seconds=0.05)


def expected(net: SimNetwork) -> dict[str, tuple[str, str | None, str | None, str | None]]:
    """did -> (state, pds, host, key) the queue must hold after the whole export."""
    out = {}
    for acct in net.accounts:
        if acct.method != "plc" or acct.status == "tombstoned":
            continue
        pds = net.host_urls[acct.host_index]
        out[acct.did] = ("pending", pds, host_key(pds), acct.published_key.did_key)
    return out


def plc(net: SimNetwork, **options: Any) -> Callable[[XrpcClient], PlcExportSource]:
    """A source factory for `collect` (each run gets a fresh client)."""
    return lambda client: PlcExportSource(client, net.plc_url, **options)


def cursor_key(net: SimNetwork) -> str:
    return f"plc-export {net.plc_url}"


def export_requests(net: SimNetwork) -> int:
    return net.stats.count(host="plc", endpoint="export", status=200)


def no_lookups(net: SimNetwork) -> None:
    assert net.stats.count(host="plc", endpoint="resolve") == 0
    assert net.stats.count(host="plc", endpoint="audit") == 0


def test_export_interrupted_and_resumed_from_the_durable_cursor(tmp_path: Path) -> None:
    async def main() -> None:
        async with SimNetwork(SCENARIO) as net:
            ops = len(net.plc.log.export)

            # count=1: every operation is a page of its own, so a migration, a
            # tombstone and a recovery always arrive pages after what they override.
            source = plc(net, allow_private=True, count=1, retry=FAST)

            with EnumStore(tmp_path / "state.sqlite") as store:
                first = Collector(store, stop_after=ops // 2)
                with pytest.raises(asyncio.CancelledError):
                    await collect(source, store, first)
                # Interrupted inside the hook: that page's cursor was never saved.
                assert store.get_cursor(cursor_key(net)) == str(ops // 2 - 1)
                assert 0 < len(store.rows()) < len(expected(net))

                second = Collector(store)
                result = await collect(source, store, second)
                assert result.complete and result.error is None
                assert store.get_cursor(cursor_key(net)) == str(ops)
                assert store.rows() == expected(net)

                tombstoned = [a.did for a in net.accounts if a.status == "tombstoned"]
                migrated = [a.did for a in net.accounts if a.migrated_from is not None]
                nullified = [e["did"] for e in net.plc.log.export if e["nullified"]]
                assert tombstoned and migrated and nullified
                # Tombstoned DIDs were queued by their genesis page, then withdrawn.
                assert all(store.offered[d] >= 1 and d not in store.rows() for d in tombstoned)
                # Migrations: queued at the old host first, moved by the newer operation.
                assert all(store.offered[d] >= 2 for d in migrated)
                # A nullified operation never reaches the queue, not even for a while.
                assert NULLIFIED_ENDPOINT not in {i.pds for i in store.identities}
                assert not first.rejected and not second.rejected
                # Resumed, not restarted: every page once, the interrupted one twice,
                # plus the empty page that ends the export.
                assert export_requests(net) == ops + 2
                no_lookups(net)

    asyncio.run(main())


def test_legacy_timestamp_cursor_and_bigger_pages(tmp_path: Path) -> None:
    scenario = Scenario(**{**SCENARIO.__dict__, "plc_export_seq": False})

    async def main() -> None:
        async with SimNetwork(scenario) as net:
            with EnumStore(tmp_path / "state.sqlite") as store:
                pages = Collector(store)
                result = await collect(plc(net, allow_private=True, count=7), store, pages)
                assert result.complete
                assert store.rows() == expected(net)
                last = net.plc.log.export[-1]["createdAt"]
                assert store.get_cursor(cursor_key(net)) == last
                # Within a page the newest operation wins too: pages hold several ops.
                assert len(pages.pages) == -(-len(net.plc.log.export) // 7)
                no_lookups(net)

    asyncio.run(main())


def test_refused_endpoints_are_dead_lettered_unless_already_fetched(tmp_path: Path) -> None:
    """Without --allow-private-hosts every simulated PDS (127.0.0.1) is refused."""

    async def main() -> None:
        async with SimNetwork(SCENARIO) as net:
            want = expected(net)
            done = sorted(want)[0]
            with EnumStore(tmp_path / "state.sqlite") as store:
                store.commit([], [RepoDone(did=done, rev=None, records=0)], [], [])
                pages = Collector(store)
                source = plc(net, allow_private=False)
                result = await collect(source, store, pages, allow_private=False)
                assert result.complete
                assert {r.did for r in pages.rejected} == set(want) - {done}
                assert {(r.stage, r.code) for r in pages.rejected} == {
                    ("fetch", "BlockedPrivateAddress")
                }
                states = {did: row[0] for did, row in store.rows().items()}
                assert states == {did: "failed" for did in want if did != done} | {done: "done"}

    asyncio.run(main())


def test_transient_export_errors_are_retried_then_stop_the_source(tmp_path: Path) -> None:
    flaky = Scenario(
        **{
            **SCENARIO.__dict__,
            "plc_faults": Faults(error_rate=0.3, endpoints=frozenset({"export"})),
        }
    )
    broken = Scenario(
        **{
            **SCENARIO.__dict__,
            "plc_faults": Faults(error_rate=1.0, endpoints=frozenset({"export"})),
        }
    )

    async def main() -> None:
        async with SimNetwork(flaky) as net:
            with EnumStore(tmp_path / "flaky.sqlite") as store:
                source = plc(net, allow_private=True, count=5, retry=FAST)
                result = await collect(source, store, Collector(store))
                assert result.complete and store.rows() == expected(net)
                assert sum(n for (_, kind), n in net.stats.faults().items() if kind == "error") > 0
        async with SimNetwork(broken) as net:
            with EnumStore(tmp_path / "broken.sqlite") as store:
                # 5xx on every page: the directory is down, not a page. Its circuit
                # breaker pauses it (probing once per pause) and, never having
                # answered, gives it up after `unreachable_after`: the source stops.
                retry = RetryPolicy(max_attempts=3, base_seconds=0.01)
                source = plc(net, allow_private=True, retry=retry)
                board = BreakerBoard(
                    BreakerPolicy(threshold=3, base_seconds=0.01, cap_seconds=0.02,
                                  unreachable_after=0.3)
                )  # fmt: skip
                board.mark_operator(host_key(net.plc_url))
                result = await collect(source, store, Collector(store), breakers=board)
                assert not result.complete and result.retryable
                assert result.error is not None and result.error.startswith("Http5")
                assert "given up" in result.error
                # more than the page's 3 tries: host failures are the breaker's to bound
                assert net.stats.count(host="plc", endpoint="export") > 3
                assert store.get_cursor(cursor_key(net)) is None

    asyncio.run(main())
