"""`--method list`: a repo's records through describeRepo + listRecords paging.

Where it sits: the alternative to getRepo in the worker (repo_task.py picks it by
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

A host decides what its pages hold, so nothing it sends may make a record
land twice: every record key of a collection is remembered for the fetch
(`SeenKeys`) and a key that comes again is dropped; a cursor that comes back
(A -> B -> A) or a listing past `MAX_PAGES` ends the fetch with a dead letter
(enumerate/base.py `PageGuard`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bsky_backfill.engine.enumerate.base import PageGuard
from bsky_backfill.engine.enumerate.listrepos import INACTIVE_CODES
from bsky_backfill.errors import RepoUnavailable, TerminalError, TransientError
from bsky_backfill.models import RecordFilter, RepoExtract, utcnow
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.state.base import RepoTask
from bsky_backfill.syntax import is_valid_tid, parse_datetime
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.slot import HostSlot, through_rate_limits

DESCRIBE_REPO = "com.atproto.repo.describeRepo"
LIST_RECORDS = "com.atproto.repo.listRecords"
GET_REPO_STATUS = "com.atproto.sync.getRepoStatus"
PAGE_SIZE = 100
MAX_PAGES = 100_000
"""listRecords pages of one collection at most (10M records)."""

_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
_TID_VALUE = {c: i for i, c in enumerate(_TID_ALPHABET)}


def tid_value(rkey: str) -> int | None:
    """A TID record key as its 64-bit number (None when the rkey is not a TID)."""
    if not is_valid_tid(rkey):
        return None
    n = 0
    for ch in rkey:
        n = (n << 5) | _TID_VALUE[ch]
    return n


def tid_time(rkey: str) -> dt.datetime | None:
    """The creation time inside a TID record key (None when the rkey is not a TID)."""
    n = tid_value(rkey)
    return None if n is None else dt.datetime.fromtimestamp((n >> 10) / 1e6, dt.UTC)


class SeenKeys:
    """The record keys one collection's listing has delivered: exact, and ~8 bytes a
    key while the host keeps the protocol's order.

    listRecords gives keys newest first, i.e. TIDs descending: each such key is
    below every key seen so far, so it cannot be a repeat, and appending it keeps
    an array of (2^64 - 1 - TID) sorted for binary search. A key out of that
    order, or not a TID, is looked up in the array and a set (kept for those
    only). Written by hand: a set of a million key strings costs ~90 MB."""

    def __init__(self) -> None:
        self._ordered = array("Q")
        self._other: set[str] = set()

    def add(self, rkey: str) -> bool:
        """True when `rkey` is new (and now remembered), False for a repeat."""
        n = tid_value(rkey)
        if n is not None:
            key = 0xFFFF_FFFF_FFFF_FFFF - n
            ordered = self._ordered
            if not ordered or key > ordered[-1]:
                ordered.append(key)  # below every TID seen: new, and the array stays sorted
                return True
            i = bisect_left(ordered, key)
            if i < len(ordered) and ordered[i] == key:
                return False
        if rkey in self._other:
            return False
        self._other.add(rkey)
        return True

    def __len__(self) -> int:
        return len(self._ordered) + len(self._other)


def page_older_than(records: list[dict[str, Any]], since: dt.datetime) -> bool:
    """True when every record of a (non-empty) page was created before `since`."""
    for item in records:
        if not isinstance(item, dict):
            return False
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


PartialSink = Callable[[RepoExtract, str, str], None]
"""(rows so far, progress key, progress value): hand a big repo's finished pages to the sink."""


def progress_key(did: str) -> str:
    """The cursor row that records how far list mode got in one repo."""
    return f"list:{did}"


@dataclass
class _Progress:
    """How far list mode got in one repo: finished collections, and the page
    cursor to continue `collection` from."""

    done: set[str] = field(default_factory=set)
    collection: str | None = None
    cursor: str | None = None

    @classmethod
    def parse(cls, value: str | None) -> _Progress:
        if not value:
            return cls()
        data = json.loads(value)
        return cls(set(data.get("done", [])), data.get("collection"), data.get("cursor"))

    def dump(self) -> str:
        return json.dumps(
            {"done": sorted(self.done), "collection": self.collection, "cursor": self.cursor}
        )


@dataclass
class _RepoRun:
    """One fetch of one repo: rows not yet handed over, and counters."""

    did: str
    columns: RecordColumns
    state: _Progress
    keys: dict[str, SeenKeys] = field(default_factory=dict)
    """Record keys delivered so far, per collection (duplicates are dropped)."""
    seen: int = 0
    unflushed: int = 0
    flushed: bool = False
    fetched_at: dt.datetime | None = None
    """When the pages not yet handed over began to be fetched (their rows' `fetched_at`)."""


class ListFetcher:
    """Fetches one repo's wanted collections page by page through its host slot.

    Big repos are handed to the sink in parts of about `flush_records` rows,
    each with a progress value (collections finished, page cursor of the
    current one) that commits in the same transaction as the rows: a restart
    resumes after the last committed page instead of fetching it again. Small
    repos (the common case) go in one piece and write no progress at all.
    """

    def __init__(
        self,
        client: XrpcClient,
        filt: RecordFilter,
        *,
        load_progress: Callable[[str], str | None] = lambda key: None,
        load_landed: Callable[[str], Iterable[str]] | None = None,
        emit_partial: PartialSink | None = None,
        flush_records: int = 5000,
    ) -> None:
        self.client = client
        self.filter = filt
        self.load_progress = load_progress
        # did -> "collection/rkey" keys already in the dataset (a resumed repo's pages)
        self.load_landed = load_landed
        self.emit_partial = emit_partial
        self.flush_records = flush_records
        # Progress handed to the sink but maybe not committed yet: a retry in this
        # process must resume from here, not from the store's older value; and the
        # keys those pages delivered, so that no retry lands one of them again.
        self.progress: dict[str, str] = {}
        self._keys: dict[str, dict[str, SeenKeys]] = {}

    async def _json(
        self, slot: HostSlot, task: RepoTask, endpoint: str, params: dict[str, str | int]
    ) -> Any:
        return await through_rate_limits(
            lambda: self.client.xrpc_json(task.pds, endpoint, params, slot)
        )

    async def fetch(
        self, slot: HostSlot, task: RepoTask
    ) -> tuple[RepoExtract, list[tuple[str, str | None]]]:
        """The repo's remaining rows, and the cursor updates to commit with its done mark
        (deleting its progress row when it had one)."""
        did = task.did
        try:
            described = await self._json(slot, task, DESCRIBE_REPO, {"repo": did})
        except RepoUnavailable as e:
            raise await self._real_state(slot, task, e) from e
        present = described.get("collections") if isinstance(described, dict) else None
        if not isinstance(present, list):
            raise TransientError("describeRepo answered without collections", code="BadResponse")
        key = progress_key(did)
        saved = self.progress.get(did) or self.load_progress(key)
        state = _Progress.parse(saved)
        keys = self._keys.get(did)
        if keys is None:
            keys = await self._landed_keys(did) if saved is not None else {}
        run = _RepoRun(did, RecordColumns(did, self.filter), state, keys, fetched_at=utcnow())
        wanted = {c for c in present if isinstance(c, str) and c in self.filter.collections}
        try:
            for collection in sorted(wanted):
                if collection in state.done:
                    continue
                await self._collection(slot, task, collection, run)
                state.done.add(collection)
                state.collection, state.cursor = None, None
        except TerminalError:
            self.forget(did)  # the repo is dead-lettered: nothing to resume
            raise
        tables, dead_letters = run.columns.finish()
        self.forget(did)
        extract = RepoExtract(did=did, rev=None, tables=tables, dead_letters=dead_letters,
                              records_seen=run.seen, fetched_at=run.fetched_at)  # fmt: skip
        cleanup: list[tuple[str, str | None]] = []
        if saved is not None or run.flushed:
            cleanup.append((key, None))
        return extract, cleanup

    def forget(self, did: str) -> None:
        """Drop what this process holds for a repo's resumption."""
        self.progress.pop(did, None)
        self._keys.pop(did, None)

    async def _landed_keys(self, did: str) -> dict[str, SeenKeys]:
        """A resumed repo: the keys its committed pages landed (read from the dataset)."""
        keys: dict[str, SeenKeys] = {}
        load = self.load_landed
        if load is None:
            return keys
        for key in await asyncio.to_thread(lambda: list(load(did))):
            collection, _, rkey = key.partition("/")
            keys.setdefault(collection, SeenKeys()).add(rkey)
        return keys

    def _flush(self, run: _RepoRun) -> None:
        """Hand the rows so far to the sink with the progress they complete."""
        if self.emit_partial is None:
            return
        tables, dead_letters = run.columns.finish()
        value = run.state.dump()
        part = RepoExtract(
            did=run.did, rev=None, tables=tables, dead_letters=dead_letters,
            fetched_at=run.fetched_at,
        )  # fmt: skip
        self.emit_partial(part, progress_key(run.did), value)
        self.progress[run.did] = value
        self._keys[run.did] = run.keys
        run.columns = RecordColumns(run.did, self.filter)
        run.fetched_at = utcnow()  # the next part's pages are fetched from now on
        run.unflushed = 0
        run.flushed = True

    async def _collection(
        self, slot: HostSlot, task: RepoTask, collection: str, run: _RepoRun
    ) -> None:
        since = self.filter.since
        prefix = f"at://{task.did}/{collection}/"
        cursor = run.state.cursor if run.state.collection == collection else None
        pages = PageGuard(f"{task.did} {LIST_RECORDS} {collection}", MAX_PAGES)
        pages.start(cursor)
        seen = run.keys.setdefault(collection, SeenKeys())
        while True:
            columns = run.columns
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
            fresh = repeats = 0
            for item in records:
                uri = item.get("uri") if isinstance(item, dict) else None
                cid = item.get("cid") if isinstance(item, dict) else None
                if not (isinstance(uri, str) and uri.startswith(prefix) and isinstance(cid, str)):
                    columns.reject(
                        uri if isinstance(uri, str) else None, "fetch", "InvalidListEntry",
                        f"listRecords entry without a uri under {prefix} or a cid",
                    )  # fmt: skip
                    continue
                if not seen.add(uri[len(prefix) :]):
                    repeats += 1
                    continue  # delivered before in this fetch: a record lands once
                fresh += 1
                columns.add(collection, uri[len(prefix) :], cid, item.get("value"))
            run.seen += fresh
            run.unflushed += fresh
            next_cursor = page.get("cursor")
            if not records or not isinstance(next_cursor, str) or next_cursor == cursor:
                return
            if since is not None and page_older_than(records, since):
                return
            if repeats == len(records):
                # Nothing new on a page that goes on: the host is serving what it has
                # served before (fresh cursors over the same records), not a listing.
                raise TerminalError(
                    f"{task.did} {LIST_RECORDS} {collection}: a page repeats only records "
                    "already delivered", code="CursorCycle", stage="fetch",
                )  # fmt: skip
            pages.advance(next_cursor)  # a cycle or an endless listing: dead-lettered
            cursor = next_cursor
            if run.unflushed >= self.flush_records:
                run.state.collection, run.state.cursor = collection, cursor
                self._flush(run)

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
            code = INACTIVE_CODES.get(str(status.get("status")), "RepoDeactivated")
            return RepoUnavailable(f"getRepoStatus: {status.get('status')}", code=code)
        return error
