"""Per-host behaviour of the simulated servers: rate limits, faults, quirks, threads."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import libipld
import pytest

from bsky_backfill.identity.didkey import key_from_verification_method, verify_signature
from bsky_backfill.simulate import Faults, RateLimit, Scenario, SimNetwork, run_network_in_thread
from tests.simulate.netutil import active, get, on_network, xrpc


def test_rate_limit_headers_and_429() -> None:
    scenario = Scenario(
        seed=23, accounts=6, hosts=1, mean_records=5, did_web=0,
        rate_limit=RateLimit(limit=5, window_s=60, get_repo_limit=2),
    )  # fmt: skip

    async def body(net: SimNetwork, s: aiohttp.ClientSession) -> None:
        acct = active(net)[0]
        url = xrpc(net, acct, "com.atproto.sync.getRepoStatus")
        remaining = []
        for _ in range(5):
            status, _, resp = await get(s, url, did=acct.did)
            assert status == 200
            assert resp.headers["RateLimit-Limit"] == "5"
            assert resp.headers["RateLimit-Policy"] == "5;w=60"
            assert int(resp.headers["RateLimit-Reset"]) >= int(time.time())
            remaining.append(int(resp.headers["RateLimit-Remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        status, err, resp = await get(s, url, did=acct.did)
        assert (status, err["error"]) == (429, "RateLimitExceeded")
        assert resp.headers["RateLimit-Remaining"] == "0" and "Retry-After" not in resp.headers
        # getRepo has its own bucket, and the streamed response carries the headers too
        repo_url = xrpc(net, acct, "com.atproto.sync.getRepo")
        status, _, resp = await get(s, repo_url, did=acct.did)
        assert status == 200 and resp.headers["RateLimit-Limit"] == "2"
        await get(s, repo_url, did=acct.did)
        assert (await get(s, repo_url, did=acct.did))[0] == 429
        assert net.stats.count(host="pds0", status=429) == 2

    on_network(scenario, body)


def test_html_429_without_headers() -> None:
    scenario = Scenario(
        seed=24, accounts=8, hosts=1, mean_records=3, did_web=0,
        rate_limit=RateLimit(limit=1, window_s=60, html_429=True),
    )  # fmt: skip

    async def body(net: SimNetwork, s: aiohttp.ClientSession) -> None:
        acct = active(net)[0]
        url = xrpc(net, acct, "com.atproto.sync.getRepoStatus")
        assert (await get(s, url, did=acct.did))[0] == 200
        status, html, resp = await get(s, url, did=acct.did)
        assert status == 429 and b"<html>" in html
        assert not any(h.lower().startswith("ratelimit") for h in resp.headers)

    on_network(scenario, body)


def test_faults_are_deterministic_and_visible() -> None:
    faults = Faults(error_rate=0.3, truncate_rate=0.3, short_car_rate=0.2, seed=5)
    scenario = Scenario(seed=25, accounts=8, hosts=1, mean_records=200, did_web=0, faults=faults)

    async def run_once() -> list[str]:
        outcomes = []
        async with SimNetwork(scenario) as net, aiohttp.ClientSession() as s:
            acct = active(net)[0]
            url = xrpc(net, acct, "com.atproto.sync.getRepo")
            for _ in range(12):
                try:
                    status, data, _ = await get(s, url, did=acct.did)
                except aiohttp.ClientPayloadError:
                    outcomes.append("cut")
                    continue
                if status != 200:
                    outcomes.append(str(status))
                    continue
                try:
                    libipld.decode_car(data)
                    outcomes.append("ok")
                except Exception:
                    outcomes.append("short")
            assert sum(net.stats.faults().values()) == sum(o != "ok" for o in outcomes)
        return outcomes

    first = asyncio.run(run_once())
    assert first == asyncio.run(run_once())
    assert {"ok", "cut", "short"} <= set(first) and set(first) & {"500", "502", "503"}


def test_hang_is_released_and_unexpected_routes_counted() -> None:
    scenario = Scenario(
        seed=26, accounts=8, hosts=1, mean_records=3, did_web=0,
        faults=Faults(hang_rate=1.0, hang_s=3600,
                      endpoints=frozenset({"com.atproto.sync.getRepo"})),
    )  # fmt: skip

    async def unexpected(net: SimNetwork, s: aiohttp.ClientSession) -> None:
        acct = active(net)[0]
        with pytest.raises(asyncio.TimeoutError):
            async with s.get(
                xrpc(net, acct, "com.atproto.sync.getRepo"),
                params={"did": acct.did},
                timeout=aiohttp.ClientTimeout(total=0.3),
            ) as resp:
                await resp.read()
        status, _, _ = await get(s, f"{net.host_urls[0]}/xrpc/com.atproto.sync.getBlob")
        assert status == 404
        assert [u.path for u in net.stats.unexpected] == ["/xrpc/com.atproto.sync.getBlob"]
        assert net.stats.count(endpoint="unexpected", status=404) == 1

    # The hang outlasts pytest's timeout (600 s): this returns only because closing
    # the network released it.
    on_network(scenario, unexpected)


def test_run_network_in_thread() -> None:
    with run_network_in_thread(Scenario(seed=27, accounts=6, hosts=2, mean_records=5)) as net:
        assert net.plc_url.startswith("http://127.0.0.1:")

        async def probe() -> int:
            async with aiohttp.ClientSession() as s, s.get(f"{net.plc_url}/{net.dids[0]}") as r:
                return r.status

        assert asyncio.run(probe()) == 200
        assert net.stats.total() == 1


def test_host_quirks_hidden_budget_notfound_legacy_doc_cid_order() -> None:
    scenario = Scenario(
        seed=28, accounts=10, hosts=1, mean_records=20, did_web=0, legacy_key_docs=1,
        not_found_error="NotFound", block_order="cid",
        rate_limit=RateLimit(limit=100, window_s=60, get_repo_limit=100, hidden_total=3),
    )  # fmt: skip

    async def body(net: SimNetwork, s: aiohttp.ClientSession) -> None:
        acct = active(net)[0]
        url = xrpc(net, acct, "com.atproto.sync.getRepo")
        status, car, _ = await get(s, url, did=acct.did)
        assert status == 200 and acct.repo is not None
        header, blocks = libipld.decode_car(car)
        assert header["roots"] == [acct.repo.commit_cid]
        assert list(blocks)[1:] == sorted(list(blocks)[1:])  # commit first, then by CID
        status, err, _ = await get(s, url, did="did:plc:nobodyhere00000000000000")
        assert (status, err["error"]) == (400, "NotFound")
        status, _, resp = await get(s, url, did=acct.did)
        assert status == 200
        # the advertised budget says plenty is left, yet the hidden total is spent
        status, _, resp = await get(s, url, did=acct.did)
        assert status == 429 and int(resp.headers["RateLimit-Remaining"]) > 0
        legacy = next(a for a in net.accounts if a.legacy_key_doc)
        _, doc, _ = await get(s, f"{net.plc_url}/{legacy.did}")
        method = doc["verificationMethod"][0]
        assert method["type"].startswith("EcdsaSecp256") and method["id"] == "#atproto"
        assert legacy.repo is not None
        commit = dict(libipld.decode_car(legacy.repo.car)[1][legacy.repo.commit_cid])
        sig = commit.pop("sig")
        key = key_from_verification_method(method)
        assert verify_signature(key, libipld.encode_dag_cbor(commit), sig)

    on_network(scenario, body)


def test_reference_limiter_reports_the_tightest_and_floors_its_reset() -> None:
    """`@atproto/xrpc-server`: a global limiter and a getRepo one, both charged."""
    scenario = Scenario(
        seed=23, accounts=6, hosts=1, mean_records=5, did_web=0,
        rate_limit=RateLimit(limit=6, window_s=60, get_repo_limit=4, reference=True),
    )  # fmt: skip

    async def body(net: SimNetwork, s: aiohttp.ClientSession) -> None:
        acct = active(net)[0]
        repo_url = xrpc(net, acct, "com.atproto.sync.getRepo")
        status_url = xrpc(net, acct, "com.atproto.sync.getRepoStatus")
        seen = []
        for url in (repo_url, repo_url, status_url, status_url, status_url):
            status, _, resp = await get(s, url, did=acct.did)
            assert status == 200
            reset = int(resp.headers["RateLimit-Reset"])
            assert reset <= time.time() + 60  # floored: never later than the window's end
            seen.append((resp.headers["RateLimit-Policy"], resp.headers["RateLimit-Remaining"]))
        # getRepo's limiter is tighter at first (4 vs 6), then the global one is
        assert seen == [("4;w=60", "3"), ("4;w=60", "2"), ("6;w=60", "3"),
                        ("6;w=60", "2"), ("6;w=60", "1")]  # fmt: skip
        await get(s, status_url, did=acct.did)
        status, err, resp = await get(s, repo_url, did=acct.did)  # the global one is out
        assert (status, err["error"]) == (429, "RateLimitExceeded")
        assert resp.headers["RateLimit-Policy"] == "6;w=60"
        policy = net.hosts[0].policy
        assert policy.windows("global") == [6] and policy.windows() == [2]

    on_network(scenario, body)


def test_a_host_that_is_down_drops_connections_until_it_is_back() -> None:
    scenario = Scenario(seed=23, accounts=6, hosts=1, mean_records=3, did_web=0)

    async def body(net: SimNetwork, s: aiohttp.ClientSession) -> None:
        acct = active(net)[0]
        url = xrpc(net, acct, "com.atproto.sync.getRepoStatus")
        policy = net.hosts[0].policy
        policy.down = True
        for _ in range(2):
            with pytest.raises(aiohttp.ClientError):
                await get(s, url, did=acct.did)
        dropped = net.stats.count(host="pds0", status=0)
        assert dropped >= 2  # (aiohttp may retry an idempotent request once by itself)
        policy.down = False
        policy.drop_next = 2
        failed = 0
        for _ in range(3):
            try:
                assert (await get(s, url, did=acct.did))[0] == 200
                break
            except aiohttp.ClientError:
                failed += 1
        assert 1 <= failed <= 2 and policy.drop_next == 0
        assert net.stats.count(host="pds0", status=0) == dropped + 2
        assert net.stats.faults() == {("pds0", "outage"): dropped + 2}

    on_network(scenario, body)
