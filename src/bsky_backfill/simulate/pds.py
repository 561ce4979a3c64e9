"""One simulated PDS host: the XRPC endpoints a backfill calls, answered from memory.

Where this sits: the product's fetch stage calls these over loopback HTTP.
`getRepo` streams the account's CAR (`RepoImage.car`) in chunks; listRecords,
describeRepo, listRepos, getRepoStatus and getLatestCommit answer from the
same repo image. Errors follow the reference PDS (0.4.x): getRepo for an
unusable account is HTTP 400 `RepoTakendown | RepoDeactivated | RepoSuspended
| RepoNotFound`; listRecords for one is 400 `InvalidRequest` "Could not find
repo" (it does not say why; getRepoStatus does).

With `list_moved_out`, a host also keeps the accounts that migrated away from
it, deactivated, as the reference PDS does after a migration: listRepos lists
them with `active: false, status: deactivated`, getRepo refuses them with
RepoDeactivated.
"""

from __future__ import annotations

import bisect
from typing import Any

import libipld
import orjson
from aiohttp import web

from bsky_backfill.simulate.accounts import SimAccount
from bsky_backfill.simulate.atjson import to_atproto_json
from bsky_backfill.simulate.car import RepoImage, encode_car
from bsky_backfill.simulate.directory import did_document
from bsky_backfill.simulate.ids import cid_str
from bsky_backfill.simulate.mutate import diff_car
from bsky_backfill.simulate.policy import FAULT, HostPolicy, json_error, site_app

CHUNK = 64 * 1024
_STATUS_ERRORS = {
    "takendown": ("RepoTakendown", "Repo has been takendown"),
    "deactivated": ("RepoDeactivated", "Repo has been deactivated"),
    "suspended": ("RepoSuspended", "Repo has been suspended"),
}
_ROUTES = {
    "com.atproto.sync.getRepo": "_get_repo",
    "com.atproto.sync.getRepoStatus": "_get_repo_status",
    "com.atproto.sync.getLatestCommit": "_get_latest_commit",
    "com.atproto.sync.listRepos": "_list_repos",
    "com.atproto.repo.describeRepo": "_describe_repo",
    "com.atproto.repo.listRecords": "_list_records",
}


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


def _missing(name: str) -> web.Response:
    return json_error(400, "InvalidRequest", f'Error: Params must have the property "{name}"')


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if lo <= value <= hi else None


def _route_name(request: web.Request) -> str | None:
    if request.match_info.http_exception is not None:
        return None
    return request.match_info.route.name


class PdsHost:
    """The repos of the accounts whose PDS is this host, and their XRPC routes."""

    def __init__(
        self,
        index: int,
        url: str,
        accounts: list[SimAccount],
        policy: HostPolicy,
        not_found_error: str = "RepoNotFound",
        *,
        list_moved_out: bool = False,
    ) -> None:
        self.index = index
        self.not_found_error = not_found_error
        self.name = policy.name
        self.url = url
        self.policy = policy
        self.accounts = {a.did: a for a in accounts if a.hosted and a.host_index == index}
        self.by_handle = {a.handle: a for a in self.accounts.values()}
        # Accounts that migrated away and stay here deactivated (empty unless asked for).
        self.moved_out = {
            a.did: a
            for a in accounts
            if list_moved_out and a.hosted and a.migrated_from == index and a.host_index != index
        }
        # listRepos order: account creation, then DID; the cursor is the last key served.
        self._listing = sorted(
            (f"{a.created_us // 1000}::{a.did}", a)
            for a in [*self.accounts.values(), *self.moved_out.values()]
        )
        self._listing_keys = [k for k, _ in self._listing]
        self._rkey_cache: dict[tuple[str, str], list[str]] = {}

    def listed_accounts(self) -> list[SimAccount]:
        """Every account this host's listRepos lists (moved-out ones too), in its order."""
        return [acct for _, acct in self._listing]

    def app(self) -> web.Application:
        app = site_app(self.policy, _route_name)
        app.router.add_get("/xrpc/_health", self._health, name="_health")
        for nsid, method in _ROUTES.items():
            app.router.add_get(f"/xrpc/{nsid}", getattr(self, method), name=nsid)
        return app

    def _repo_error(self, did: str) -> tuple[SimAccount | None, web.Response | None]:
        """(account, None) when the repo may be served, else the getRepo-style error."""
        acct = self.accounts.get(did)
        if acct is None and did in self.moved_out:
            return None, json_error(400, "RepoDeactivated", f"Repo has been deactivated: {did}")
        if acct is None:
            if self.not_found_error == "NotFound":
                return None, json_error(400, "NotFound", "Repo not found")
            return None, json_error(400, "RepoNotFound", f"Could not find repo for DID: {did}")
        if acct.status in _STATUS_ERRORS:
            code, text = _STATUS_ERRORS[acct.status]
            return None, json_error(400, code, f"{text}: {did}")
        return acct, None

    async def _health(self, request: web.Request) -> web.Response:
        return _json({"version": "bsky-backfill-sim"})

    async def _get_repo(self, request: web.Request) -> web.StreamResponse:
        did = request.query.get("did")
        if not did:
            return _missing("did")
        acct, error = self._repo_error(did)
        if error is not None or acct is None or acct.repo is None:
            return error or json_error(400, "RepoNotFound", f"Could not find repo for DID: {did}")
        repo = acct.repo
        body = repo.car
        since = request.query.get("since")
        if since and since >= repo.rev:
            # Nothing changed after `since`: a diff CAR holding just the commit.
            body = encode_car(repo.commit_cid, [(repo.commit_cid, repo.commit_block)])
        elif since:
            older = [image for image in acct.history if image.rev == since]
            if older:  # what changed after `since`; an unknown rev gets the whole repo
                body = diff_car(repo, older[-1])
        return await self._stream(request, body, request.get(FAULT))

    async def _stream(
        self, request: web.Request, body: bytes, fault: str | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.ipld.car"})
        await response.prepare(request)
        end = len(body)
        if fault in ("truncate", "short_car"):
            end = max(1, len(body) // 2)
        view = memoryview(body)
        for start in range(0, end, CHUNK):
            chunk = view[start : min(start + CHUNK, end)]
            await response.write(chunk)
        if fault == "truncate" and request.transport is not None:
            # Drop the connection mid-body: the client never sees the final chunk.
            request.transport.abort()
            return response
        await response.write_eof()
        return response

    async def _get_repo_status(self, request: web.Request) -> web.Response:
        did = request.query.get("did")
        if not did:
            return _missing("did")
        acct = self.accounts.get(did)
        if acct is None and did in self.moved_out:
            return _json({"did": did, "active": False, "status": "deactivated"})
        if acct is None:
            return json_error(400, "RepoNotFound", f"Could not find repo for DID: {did}")
        out: dict[str, Any] = {"did": did, "active": acct.status == "active"}
        if acct.status != "active":
            out["status"] = acct.status
        if acct.repo is not None:
            out["rev"] = acct.repo.rev
        return _json(out)

    async def _get_latest_commit(self, request: web.Request) -> web.Response:
        did = request.query.get("did")
        if not did:
            return _missing("did")
        acct, error = self._repo_error(did)
        if error is not None or acct is None or acct.repo is None:
            return error or json_error(400, "RepoNotFound", f"Could not find repo for DID: {did}")
        return _json({"cid": cid_str(acct.repo.commit_cid), "rev": acct.repo.rev})

    async def _list_repos(self, request: web.Request) -> web.Response:
        limit = _int_param(request, "limit", 500, 1, 1000)
        if limit is None:
            return json_error(400, "InvalidRequest", "limit must be an integer in 1..1000")
        cursor = request.query.get("cursor")
        start = bisect.bisect_right(self._listing_keys, cursor) if cursor else 0
        page = self._listing[start : start + limit]
        repos = []
        for _, acct in page:
            entry: dict[str, Any] = {"did": acct.did}
            if acct.repo is not None:
                entry["head"] = cid_str(acct.repo.commit_cid)
                entry["rev"] = acct.repo.rev
            if acct.did in self.moved_out:
                entry.update(active=False, status="deactivated")
                repos.append(entry)
                continue
            entry["active"] = acct.status == "active"
            if acct.status != "active":
                entry["status"] = acct.status
            repos.append(entry)
        out: dict[str, Any] = {"repos": repos}
        if page:
            out["cursor"] = page[-1][0]
        return _json(out)

    def _rkeys(
        self, did: str, collection: str, rows: list[tuple[str, bytes, int, int]]
    ) -> list[str]:
        """The sorted rkeys of one collection, kept so paging a huge repo stays O(log n)."""
        keys = self._rkey_cache.get((did, collection))
        if keys is None:
            keys = self._rkey_cache[(did, collection)] = [r[0] for r in rows]
        return keys

    def _find(self, repo: str) -> SimAccount | None:
        return self.accounts.get(repo) or self.by_handle.get(repo)

    async def _describe_repo(self, request: web.Request) -> web.Response:
        repo_param = request.query.get("repo")
        if not repo_param:
            return _missing("repo")
        acct = self._find(repo_param)
        if acct is None:
            return json_error(400, "InvalidRequest", f"Could not find repo: {repo_param}")
        if acct.status in _STATUS_ERRORS:
            code, text = _STATUS_ERRORS[acct.status]
            return json_error(400, code, f"{text}: {acct.did}")
        image: RepoImage | None = acct.repo
        return _json(
            {
                "handle": acct.handle,
                "did": acct.did,
                "didDoc": did_document(acct, self.url),
                "collections": sorted(image.records) if image else [],
                "handleIsCorrect": True,
            }
        )

    async def _list_records(self, request: web.Request) -> web.Response:
        repo_param = request.query.get("repo")
        collection = request.query.get("collection")
        if not repo_param:
            return _missing("repo")
        if not collection:
            return _missing("collection")
        limit = _int_param(request, "limit", 50, 1, 100)
        if limit is None:
            return json_error(400, "InvalidRequest", "limit must be an integer in 1..100")
        acct = self._find(repo_param)
        if acct is None or acct.status != "active" or acct.repo is None:
            # The reference PDS does not say why (deactivated, taken down, ...).
            return json_error(400, "InvalidRequest", f"Could not find repo: {repo_param}")
        image = acct.repo
        rows = image.records.get(collection, [])
        reverse = request.query.get("reverse", "false").lower() == "true"
        cursor = request.query.get("cursor")
        keys = self._rkeys(acct.did, collection, rows)
        if reverse:  # oldest first: rkeys after the cursor, ascending
            start = bisect.bisect_right(keys, cursor) if cursor else 0
            page = rows[start : start + limit]
        else:  # newest first: rkeys before the cursor, descending
            stop = bisect.bisect_left(keys, cursor) if cursor else len(rows)
            page = rows[max(0, stop - limit) : stop][::-1]
        records = [
            {
                "uri": f"at://{acct.did}/{collection}/{rkey}",
                "cid": cid_str(cid),
                "value": to_atproto_json(libipld.decode_dag_cbor(image.car[start_b:end_b])),
            }
            for rkey, cid, start_b, end_b in page
        ]
        out: dict[str, Any] = {"records": records}
        if page:
            out["cursor"] = page[-1][0]
        return _json(out)
