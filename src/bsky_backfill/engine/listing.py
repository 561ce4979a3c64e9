"""`--method list`: a repo's records through describeRepo + listRecords paging.

Where it sits: the alternative to getRepo in the worker (worker.py picks it by
`RunSettings.method`). It is the original research pipeline's way, kept first
class: a user who wants one small collection from millions of repos spends
one request per 100 records of that collection instead of downloading whole
repos, and some hosts serve listRecords while throttling getRepo.

Rows go through the same `records.columns.RecordColumns` as the CAR path, so
both methods produce identical rows for the same repos and filters (a test
holds them to it). Records arrive as atproto JSON (`{"$link": ...}`), which
the column builder handles as is. Unlike the CAR path, nothing here can be
verified against the signed commit: list mode trusts the host.

Early stop: listRecords pages come newest first by rkey; rkeys are TIDs that
carry their creation time. With `--since`, paging a collection stops after a
page whose records are all older than `since` (by TID time and by createdAt:
a back-dated record with a new TID keeps the paging going).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bsky_backfill.errors import RateLimited, RepoUnavailable, TransientError
from bsky_backfill.models import RecordFilter, RepoExtract
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.state.base import RepoTask
from bsky_backfill.syntax import is_valid_tid, parse_datetime
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.slot import HostSlot

DESCRIBE_REPO = "com.atproto.repo.describeRepo"
LIST_RECORDS = "com.atproto.repo.listRecords"
GET_REPO_STATUS = "com.atproto.sync.getRepoStatus"
PAGE_SIZE = 100
MAX_RATE_LIMIT_WAITS = 50

_STATUS_CODES = {
    "takendown": "RepoTakendown",
    "deactivated": "RepoDeactivated",
    "suspended": "RepoSuspended",
    "deleted": "RepoDeleted",
}
_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
_TID_VALUE = {c: i for i, c in enumerate(_TID_ALPHABET)}

T = TypeVar("T")


def tid_time(rkey: str) -> dt.datetime | None:
    """The creation time inside a TID record key (None when the rkey is not a TID)."""
    if not is_valid_tid(rkey):
        return None
    n = 0
    for ch in rkey:
        n = (n << 5) | _TID_VALUE[ch]
    return dt.datetime.fromtimestamp((n >> 10) / 1e6, dt.UTC)


def page_older_than(records: list[dict[str, Any]], since: dt.datetime) -> bool:
    """True when every record of a (non-empty) page was created before `since`."""
    for item in records:
        uri = item.get("uri")
        rkey = uri.rsplit("/", 1)[-1] if isinstance(uri, str) else ""
        when = tid_time(rkey)
        if when is None or when >= since:
            return False
        value = item.get("value")
        created = value.get("createdAt") if isinstance(value, dict) else None
        parsed = parse_datetime(created) if isinstance(created, str) else None
        if parsed is not None and parsed >= since:
            return False
    return True


class ListFetcher:
    """Fetches one repo's wanted collections page by page through its host slot."""

    def __init__(self, client: XrpcClient, filt: RecordFilter) -> None:
        self.client = client
        self.filter = filt

    async def _call(self, slot: HostSlot, fn: Callable[[], Awaitable[T]]) -> T:
        waits = 0
        while True:
            try:
                return await fn()
            except RateLimited:
                waits += 1  # the slot is paused; the next acquire waits it out
                if waits >= MAX_RATE_LIMIT_WAITS:
                    raise

    async def _json(
        self, slot: HostSlot, task: RepoTask, endpoint: str, params: dict[str, str | int]
    ) -> Any:
        return await self._call(
            slot, lambda: self.client.xrpc_json(task.pds, endpoint, params, slot)
        )

    async def fetch(self, slot: HostSlot, task: RepoTask) -> RepoExtract:
        did = task.did
        try:
            described = await self._json(slot, task, DESCRIBE_REPO, {"repo": did})
        except RepoUnavailable as e:
            raise await self._real_state(slot, task, e) from e
        present = described.get("collections") if isinstance(described, dict) else None
        if not isinstance(present, list):
            raise TransientError("describeRepo answered without collections", code="BadResponse")
        columns = RecordColumns(did, self.filter)
        seen = 0
        for collection in sorted(c for c in present if c in self.filter.collections):
            seen += await self._collection(slot, task, collection, columns)
        tables, dead_letters = columns.finish()
        return RepoExtract(did=did, rev=None, tables=tables, dead_letters=dead_letters,
                           records_seen=seen)  # fmt: skip

    async def _collection(
        self, slot: HostSlot, task: RepoTask, collection: str, columns: RecordColumns
    ) -> int:
        since = self.filter.since
        prefix = f"at://{task.did}/{collection}/"
        cursor: str | None = None
        seen = 0
        while True:
            params: dict[str, str | int] = {
                "repo": task.did, "collection": collection, "limit": PAGE_SIZE,
            }  # fmt: skip
            if cursor:
                params["cursor"] = cursor
            try:
                page = await self._json(slot, task, LIST_RECORDS, params)
            except RepoUnavailable as e:
                raise await self._real_state(slot, task, e) from e
            records = page.get("records") if isinstance(page, dict) else None
            if not isinstance(records, list):
                raise TransientError("listRecords answered without records", code="BadResponse")
            for item in records:
                uri, cid = item.get("uri"), item.get("cid")
                if not (isinstance(uri, str) and uri.startswith(prefix) and isinstance(cid, str)):
                    columns.reject(
                        uri if isinstance(uri, str) else None, "fetch", "InvalidListEntry",
                        f"listRecords entry without a uri under {prefix} or a cid",
                    )  # fmt: skip
                    continue
                columns.add(collection, uri[len(prefix) :], cid, item.get("value"))
            seen += len(records)
            next_cursor = page.get("cursor")
            if not records or not isinstance(next_cursor, str) or next_cursor == cursor:
                return seen
            if since is not None and page_older_than(records, since):
                return seen
            cursor = next_cursor

    async def _real_state(
        self, slot: HostSlot, task: RepoTask, error: RepoUnavailable
    ) -> RepoUnavailable:
        """listRecords says only "Could not find repo": ask getRepoStatus why."""
        try:
            status = await self._json(slot, task, GET_REPO_STATUS, {"did": task.did})
        except RepoUnavailable as e:
            return e
        except TransientError:
            return error
        if isinstance(status, dict) and status.get("active") is False:
            code = _STATUS_CODES.get(str(status.get("status")), "RepoDeactivated")
            return RepoUnavailable(f"getRepoStatus: {status.get('status')}", code=code)
        return error
