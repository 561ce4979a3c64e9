"""The simulated PDS endpoints over real loopback HTTP: getRepo, listRecords, listRepos, ..."""

from __future__ import annotations

from typing import Any

import aiohttp
import libipld

from bsky_backfill.simulate import SimNetwork
from tests.simulate.netutil import SMALL, active, find_blobs, get, on_network, xrpc


def test_get_repo_and_errors() -> None:
    async def body(net: SimNetwork, s: aiohttp.ClientSession) -> None:
        for acct in net.accounts:
            if acct.status in ("tombstoned",) or acct.method == "web":
                continue
            status, data, resp = await get(
                s, xrpc(net, acct, "com.atproto.sync.getRepo"), did=acct.did
            )
            if acct.status == "active":
                assert status == 200
                assert resp.headers["Content-Type"] == "application/vnd.ipld.car"
                assert acct.repo is not None and data == acct.repo.car
                header, _ = libipld.decode_car(data)
                assert header["roots"] == [acct.repo.commit_cid]
            else:
                code = {
                    "takendown": "RepoTakendown",
                    "deactivated": "RepoDeactivated",
                    "suspended": "RepoSuspended",
                    "notfound": "RepoNotFound",
                }[acct.status]
                assert (status, data["error"]) == (400, code), acct.status
        acct = active(net)[0]
        url = xrpc(net, acct, "com.atproto.sync.getRepo")
        assert (await get(s, url))[0] == 400
        status, data, _ = await get(s, url, did="did:plc:nobodyhere00000000000000")
        assert (status, data["error"]) == (400, "RepoNotFound")
        assert acct.repo is not None
        _, diff, _ = await get(s, url, did=acct.did, since=acct.repo.rev)
        header, blocks = libipld.decode_car(diff)
        assert list(blocks) == [acct.repo.commit_cid]
        status, st, _ = await get(
            s, xrpc(net, acct, "com.atproto.sync.getRepoStatus"), did=acct.did
        )
        assert st == {"did": acct.did, "active": True, "rev": acct.repo.rev}
        gone = next(a for a in net.accounts if a.status == "deactivated")
        _, st, _ = await get(s, xrpc(net, gone, "com.atproto.sync.getRepoStatus"), did=gone.did)
        assert st["active"] is False and st["status"] == "deactivated"
        _, lc, _ = await get(s, xrpc(net, acct, "com.atproto.sync.getLatestCommit"), did=acct.did)
        assert lc["rev"] == acct.repo.rev and lc["cid"] == net.truth.accounts[acct.did].commit_cid
        assert net.stats.count(endpoint="com.atproto.sync.getRepo", status=400) >= 5

    on_network(SMALL, body)


def test_list_records_paging() -> None:
    async def body(net: SimNetwork, s: aiohttp.ClientSession) -> None:
        acct = max(active(net), key=lambda a: a.repo.record_count if a.repo else 0)
        assert acct.repo is not None
        collection = max(acct.repo.records, key=lambda c: len(acct.repo.records[c]))  # type: ignore[union-attr]
        rows = acct.repo.records[collection]
        assert len(rows) > 7
        url = xrpc(net, acct, "com.atproto.repo.listRecords")
        truth = {r.uri: r for r in net.truth.records_of(acct.did)}
        for reverse in (False, True):
            got: list[str] = []
            cursor: str | None = None
            pages = 0
            while True:
                params: dict[str, Any] = {"repo": acct.did, "collection": collection, "limit": 3}
                if reverse:
                    params["reverse"] = "true"
                if cursor:
                    params["cursor"] = cursor
                status, page, _ = await get(s, url, **params)
                assert status == 200
                pages += 1
                if not page["records"]:
                    assert "cursor" not in page
                    break
                assert page["cursor"] == page["records"][-1]["uri"].rsplit("/", 1)[1]
                for rec in page["records"]:
                    assert truth[rec["uri"]].cid == rec["cid"]
                    assert rec["value"]["$type"] in (
                        collection,
                        "app.bsky.feed.like",
                        "app.bsky.feed.post",
                    )
                got.extend(r["uri"].rsplit("/", 1)[1] for r in page["records"])
                cursor = page["cursor"]
            rkeys = [r[0] for r in rows]
            assert got == (rkeys if reverse else rkeys[::-1])
            assert pages == -(-len(rows) // 3) + 1  # one empty page at the end
        # default limit 50, limits out of range refused, unknown collection is empty
        _, page, _ = await get(s, url, repo=acct.handle, collection=collection)
        assert len(page["records"]) == min(50, len(rows))
        assert (await get(s, url, repo=acct.did, collection=collection, limit=101))[0] == 400
        assert (await get(s, url, repo=acct.did, collection=collection, limit=0))[0] == 400
        _, page, _ = await get(s, url, repo=acct.did, collection="com.example.none")
        assert page == {"records": []}
        # links and blobs come back as atproto JSON ({"$link": ...})
        blobs = 0
        for c in acct.repo.records:
            _, page, _ = await get(s, url, repo=acct.did, collection=c, limit=100)
            for rec in page["records"]:
                for blob in find_blobs(rec["value"]):
                    assert set(blob["ref"]) == {"$link"} and blob["ref"]["$link"].startswith(
                        "bafkrei"
                    )
                    blobs += 1
        assert blobs
        # an inactive repo: InvalidRequest, without saying why
        gone = next(a for a in net.accounts if a.status == "takendown")
        status, err, _ = await get(
            s, xrpc(net, gone, "com.atproto.repo.listRecords"), repo=gone.did, collection=collection
        )
        assert (status, err["error"]) == (400, "InvalidRequest")
        status, err, _ = await get(
            s, xrpc(net, gone, "com.atproto.repo.describeRepo"), repo=gone.did
        )
        assert (status, err["error"]) == (400, "RepoTakendown")
        status, desc, _ = await get(
            s, xrpc(net, acct, "com.atproto.repo.describeRepo"), repo=acct.did
        )
        assert status == 200 and desc["collections"] == sorted(acct.repo.records)
        assert desc["didDoc"]["id"] == acct.did and desc["handle"] == acct.handle

    on_network(SMALL, body)


def test_list_repos_paging() -> None:
    async def body(net: SimNetwork, s: aiohttp.ClientSession) -> None:
        for host in net.hosts:
            seen: list[dict[str, Any]] = []
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": 3}
                if cursor:
                    params["cursor"] = cursor
                _, page, _ = await get(s, f"{host.url}/xrpc/com.atproto.sync.listRepos", **params)
                if not page["repos"]:
                    break
                seen.extend(page["repos"])
                cursor = page["cursor"]
            hosted = {a.did: a for a in net.accounts if a.hosted and a.host_index == host.index}
            assert {r["did"] for r in seen} == set(hosted) and len(seen) == len(hosted)
            for r in seen:
                acct = hosted[r["did"]]
                assert r["active"] is (acct.status == "active")
                assert r.get("status") == (None if acct.status == "active" else acct.status)

    on_network(SMALL, body)
