"""The simulated PLC directory and did:web sites over real loopback HTTP."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from bsky_backfill.simulate import Scenario, SimNetwork
from tests.simulate.netutil import SMALL, get, on_network


def test_identity_endpoints() -> None:
    async def body(net: SimNetwork, s: aiohttp.ClientSession) -> None:
        truth = net.truth
        for did in net.dids:
            acct = truth.accounts[did]
            if acct.method == "web":
                port = did.rsplit("%3A", 1)[1]
                status, doc, _ = await get(s, f"http://127.0.0.1:{port}/.well-known/did.json")
            else:
                status, doc, _ = await get(s, f"{net.plc_url}/{did}")
            if acct.status in ("tombstoned", "unknown"):
                assert status == (410 if acct.status == "tombstoned" else 404), did
                continue
            assert status == 200 and doc["id"] == did
            assert doc["alsoKnownAs"] == [f"at://{acct.handle}"]
            pds = [x for x in doc["service"] if x["id"] == "#atproto_pds"]
            assert pds[0]["serviceEndpoint"] == acct.host
            assert doc["verificationMethod"][0]["publicKeyMultibase"] in acct.signing_key
        decoys = [a for a in net.accounts if a.other_service_first]
        assert decoys
        _, doc, _ = await get(s, f"{net.plc_url}/{decoys[0].did}")
        assert doc["service"][0]["id"] != "#atproto_pds"

    on_network(SMALL, body)


def test_plc_tombstone_as_404_and_audit_export() -> None:
    scenario = Scenario(seed=22, accounts=10, hosts=2, mean_records=5, plc_tombstone_status=404)

    async def body(net: SimNetwork, s: aiohttp.ClientSession) -> None:
        tomb = next(a for a in net.accounts if a.status == "tombstoned")
        assert (await get(s, f"{net.plc_url}/{tomb.did}"))[0] == 404
        status, log, _ = await get(s, f"{net.plc_url}/{tomb.did}/log/audit")
        assert status == 200 and log[-1]["operation"]["type"] == "plc_tombstone"
        migrated = next(a for a in net.accounts if a.migrated_from is not None)
        _, log, _ = await get(s, f"{net.plc_url}/{migrated.did}/log/audit")
        assert len(log) == 2 and log[1]["operation"]["prev"] == log[0]["cid"]
        assert (
            log[-1]["operation"]["services"]["atproto_pds"]["endpoint"]
            == (net.host_urls[migrated.host_index])
        )
        # /export pages by seq: every did:plc DID appears, the newest op wins
        seen: dict[str, Any] = {}
        after = 0
        while True:
            status, raw, _ = await get(s, f"{net.plc_url}/export", count=4, after=after)
            lines = [json.loads(line) for line in raw.decode().splitlines()]
            if not lines:
                break
            assert len(lines) <= 4 and [e["seq"] for e in lines] == list(
                range(after + 1, after + 1 + len(lines))
            )
            for entry in lines:
                seen[entry["did"]] = entry
            after = lines[-1]["seq"]
        plc = {a.did for a in net.accounts if a.method == "plc"}
        assert set(seen) == plc
        assert seen[tomb.did]["operation"]["type"] == "plc_tombstone"
        # the legacy timestamp cursor works too
        first = await get(s, f"{net.plc_url}/export", count=1)
        stamp = json.loads(first[1].decode().splitlines()[0])["createdAt"]
        _, raw, _ = await get(s, f"{net.plc_url}/export", count=1000, after=stamp)
        assert all(json.loads(x)["createdAt"] > stamp for x in raw.decode().splitlines())

    on_network(scenario, body)
