"""A simulated relay: the list of PDS hosts it crawls, and a listRepos of its own.

Where this sits: beside the PDS hosts of a `SimNetwork` (when the scenario asks
for a relay), for products that enumerate the network with `--from-relay`.
`com.atproto.sync.listHosts` pages through every host as a bare `host:port`
name (no scheme), as real relays answer. The relay's own
`com.atproto.sync.listRepos` deliberately leaves out a share of the accounts
(`Scenario.relay_miss_fraction`), as the production relay has been seen to:
a backfill that trusts it instead of asking each host loses accounts.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from bsky_backfill.simulate.pds import PdsHost
from bsky_backfill.simulate.policy import HostPolicy, json_error, site_app

LIST_HOSTS = "com.atproto.sync.listHosts"
LIST_REPOS = "com.atproto.sync.listRepos"


def _json(value: Any) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")


def _route_name(request: web.Request) -> str | None:
    if request.match_info.http_exception is not None:
        return None
    return request.match_info.route.name


def _limit(request: web.Request, default: int) -> int | None:
    try:
        value = int(request.query.get("limit", str(default)))
    except ValueError:
        return None
    return value if 1 <= value <= 1000 else None


class SimRelay:
    """listHosts over the network's PDS hosts; an incomplete listRepos over their accounts."""

    def __init__(
        self, hosts: list[PdsHost], policy: HostPolicy, *, miss_fraction: float, seed: int
    ) -> None:
        self.hosts = hosts
        self.policy = policy
        self.miss_fraction = miss_fraction
        self.seed = seed
        self.url = ""
        # Every account some host lists, in one order (host, then that host's listing order).
        listing: list[dict[str, Any]] = []
        for host in hosts:
            for acct in host.listed_accounts():
                if acct.did in host.moved_out:
                    continue  # a relay follows the account to its new host
                entry: dict[str, Any] = {"did": acct.did, "active": acct.status == "active"}
                if acct.status != "active":
                    entry["status"] = acct.status
                listing.append(entry)
        self.listing = listing
        self.missed = {e["did"] for e in listing if self._misses(e["did"])}

    def _misses(self, did: str) -> bool:
        digest = hashlib.sha256(f"{self.seed}|relay-miss|{did}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.miss_fraction

    @staticmethod
    def hostname(host: PdsHost) -> str:
        """What listHosts calls a host: `host:port`, no scheme."""
        return urlsplit(host.url).netloc

    def app(self) -> web.Application:
        app = site_app(self.policy, _route_name)
        app.router.add_get("/xrpc/_health", self._health, name="_health")
        app.router.add_get(f"/xrpc/{LIST_HOSTS}", self._list_hosts, name=LIST_HOSTS)
        app.router.add_get(f"/xrpc/{LIST_REPOS}", self._list_repos, name=LIST_REPOS)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return _json({"version": "bsky-backfill-sim-relay"})

    async def _list_hosts(self, request: web.Request) -> web.Response:
        limit = _limit(request, 200)
        if limit is None:
            return json_error(400, "InvalidRequest", "limit must be an integer in 1..1000")
        cursor = request.query.get("cursor")
        start = int(cursor) if cursor and cursor.isdigit() else 0
        page = self.hosts[start : start + limit]
        out: dict[str, Any] = {
            "hosts": [
                {
                    "hostname": self.hostname(h),
                    "seq": 1000 + h.index,
                    "accountCount": len(h.accounts),
                    "status": "active",
                }
                for h in page
            ]
        }
        if page:
            out["cursor"] = str(start + len(page))
        return _json(out)

    async def _list_repos(self, request: web.Request) -> web.Response:
        limit = _limit(request, 500)
        if limit is None:
            return json_error(400, "InvalidRequest", "limit must be an integer in 1..1000")
        cursor = request.query.get("cursor")
        start = int(cursor) if cursor and cursor.isdigit() else 0
        kept = [e for e in self.listing if e["did"] not in self.missed]
        page = kept[start : start + limit]
        out: dict[str, Any] = {"repos": page}
        if page:
            out["cursor"] = str(start + len(page))
        return _json(out)
