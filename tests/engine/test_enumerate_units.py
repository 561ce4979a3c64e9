"""Enumeration sources, pure parts: export pages and listRepos entries; plus shared helpers.

The helpers (`EnumStore`, `collect`) are imported by the simulator tests in
test_enumerate_plc.py and test_enumerate_relay.py.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import orjson

from bsky_backfill.engine.enumerate import Page, RepoRejected, Source, SourceResult, run_source
from bsky_backfill.engine.enumerate.listrepos import classify
from bsky_backfill.engine.enumerate.plc import identity_from_operation, settle_page
from bsky_backfill.state.base import Identity
from bsky_backfill.state.sqlite import SqliteStateStore
from bsky_backfill.xrpc.breaker import BreakerBoard
from bsky_backfill.xrpc.client import HttpSettings, XrpcClient

# -- helpers shared by the enumeration tests ---------------------------------------------


class EnumStore(SqliteStateStore):
    """The SQLite store, recording what enumeration offered it.

    Carries `withdraw` until the StateStore Protocol has it (the lead adds it to
    state/); the SQL below is the one proposed for SqliteStateStore.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.offered: collections.Counter[str] = collections.Counter()
        self.identities: list[Identity] = []  # every identity offered, in order

    def enqueue(self, dids: Iterable[str]) -> int:
        dids = list(dids)
        self.offered.update(dids)
        return super().enqueue(dids)

    def enqueue_resolved(self, identities: Iterable[Identity]) -> int:
        identities = list(identities)
        self.offered.update(i.did for i in identities)
        self.identities.extend(identities)
        return super().enqueue_resolved(identities)

    if not hasattr(SqliteStateStore, "withdraw"):

        def withdraw(self, dids: Sequence[str]) -> list[str]:
            with self._write() as c:
                c.executemany(
                    "DELETE FROM repos WHERE did = ? AND state = 'pending'", [(d,) for d in dids]
                )
                kept = {
                    d
                    for d in dids
                    if c.execute("SELECT 1 FROM repos WHERE did = ?", (d,)).fetchone()
                }
            return [d for d in dids if d not in kept]

    def rows(self) -> dict[str, tuple[str, str | None, str | None, str | None]]:
        """did -> (state, pds, host, signing_key) for every repo in the queue."""
        found = self._conn.execute("SELECT did, state, pds, host, signing_key FROM repos")
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in found.fetchall()}


class Collector:
    """An engine-like `on_page`: records every page, makes rejected repos durable
    (failed in the store, as the engine's sink commit would), and can interrupt the
    run by cancelling `victim` while it is inside the hook (before the page's
    cursor is saved)."""

    def __init__(self, store: EnumStore, stop_after: int | None = None) -> None:
        self.store = store
        self.pages: list[Page] = []
        self.rejected: list[RepoRejected] = []
        self.stop_after = stop_after
        self.victim: asyncio.Task[SourceResult] | None = None

    async def __call__(self, page: Page) -> None:
        self.pages.append(page)
        if page.rejected:
            self.rejected.extend(page.rejected)
            self.store.commit(
                [],
                [],
                [r.repo_failed() for r in page.rejected],
                [r.dead_letter() for r in page.rejected],
            )
        if self.stop_after is not None and len(self.pages) == self.stop_after:
            assert self.victim is not None
            self.victim.cancel()
            await asyncio.Event().wait()  # never set: the cancellation lands here


async def collect(
    make: Callable[[XrpcClient], Source],
    store: EnumStore,
    on_page: Collector,
    *,
    allow_private: bool = True,
    breakers: BreakerBoard | None = None,
    trusted: Sequence[str] = (),
) -> SourceResult:
    """Run one source on a fresh client; `on_page.victim` is the task running it.
    `trusted`: the URLs the operator named (the engine trusts them)."""
    settings = HttpSettings()
    async with XrpcClient(
        settings, allow_private=allow_private, breakers=breakers, trusted=trusted
    ) as client:
        task = asyncio.create_task(run_source(make(client), store, on_page))
        on_page.victim = task
        return await task


# -- the PLC export page --------------------------------------------------------------------

KEY = "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"
A = "did:plc:" + "a" * 24
B = "did:plc:" + "b" * 24
C = "did:plc:" + "c" * 24
D = "did:plc:" + "d" * 24


def _op(pds: str | None, key: str = KEY) -> dict[str, object]:
    services = (
        {"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": pds}} if pds else {}
    )
    return {
        "type": "plc_operation",
        "services": {**services, "atproto_labeler": {"endpoint": "https://labels.example"}},
        "verificationMethods": {"atproto": key},
        "rotationKeys": [],
        "alsoKnownAs": [],
        "prev": None,
    }


def _line(seq: int | None, did: str, op: dict[str, object], nullified: bool = False) -> bytes:
    entry: dict[str, object] = {
        "did": did,
        "operation": op,
        "cid": f"cid{seq}",
        "nullified": nullified,
        "createdAt": f"2024-01-01T00:00:{seq or 0:02d}.000Z",
    }
    if seq is not None:
        entry["seq"] = seq
    return orjson.dumps(entry)


def test_settle_page_keeps_the_newest_usable_operation_per_did() -> None:
    legacy_create = {
        "type": "create",
        "signingKey": KEY,
        "recoveryKey": KEY,
        "handle": "d.test",
        "service": "https://legacy.example/",
        "prev": None,
    }
    lines = [
        _line(1, A, _op("https://old.example")),
        _line(2, B, _op("https://b.example")),
        _line(3, A, _op("https://new.example/")),  # A migrates: newest wins
        _line(4, A, _op("https://bogus.example"), nullified=True),  # never counts
        _line(5, B, {"type": "plc_tombstone", "prev": "cid2"}),  # B is deleted
        _line(6, C, _op(None)),  # no atproto PDS: not a repo
        _line(7, D, legacy_create),
        _line(8, "did:web:example.com", _op("https://web.example")),
        b"{not json",
        b"",
    ]
    page = settle_page(lines)
    assert page.cursor == "8"
    assert page.skipped == 2  # the did:web entry and the broken line
    assert sorted(page.gone) == [B, C]
    found = page.endpoints_to_check
    assert set(found) == {A, D}
    assert found[A] == Identity(A, "https://new.example", "new.example", KEY)
    assert found[D] == Identity(D, "https://legacy.example", "legacy.example", KEY, "d.test")


def test_settle_page_legacy_cursor_is_the_last_timestamp() -> None:
    page = settle_page([_line(None, A, _op("https://a.example")), _line(None, B, _op("https://b"))])
    assert page.cursor == "2024-01-01T00:00:00.000Z"
    assert settle_page([]).cursor is None  # an empty page ends the export


def test_identity_from_operation_edge_cases() -> None:
    assert identity_from_operation(A, {"type": "plc_tombstone"}) is None
    assert identity_from_operation(A, {"type": "something_new", "service": "https://x"}) is None
    weird = identity_from_operation(A, _op("https://x.example", key="zQ3-not-a-did-key"))
    assert weird is not None and weird.signing_key is None and weird.host == "x.example"
    assert identity_from_operation(A, _op("https://[::1")) is not None  # refused later, not here


def test_identity_from_operation_claims_the_first_at_handle() -> None:
    op = {**_op("https://x.example"), "alsoKnownAs": ["https://a.example", "at://Alice.Example"]}
    got = identity_from_operation(A, op)
    assert got is not None and (got.handle, got.handle_verified) == ("alice.example", False)
    bad = identity_from_operation(A, {**op, "alsoKnownAs": ["at://not a handle"]})
    assert bad is not None and bad.handle is None  # a stranger's text: only a handle is kept
    assert identity_from_operation(A, _op("https://x.example")).handle is None  # type: ignore[union-attr]
    legacy = {"type": "create", "service": "https://x.example", "signingKey": KEY,
              "handle": "bob.example"}  # fmt: skip
    assert identity_from_operation(A, legacy).handle == "bob.example"  # type: ignore[union-attr]


# -- listRepos entries ----------------------------------------------------------------------


def test_classify_listrepos_entries() -> None:
    assert classify({"did": A, "head": "x", "rev": "y", "active": True}) == (A, None, "")
    assert classify({"did": A}) == (A, None, "")  # hosts from before account states
    assert classify({"did": A, "active": False, "status": "takendown"}) == (
        A,
        "RepoTakendown",
        "takendown",
    )
    assert classify({"did": A, "active": False, "status": "deactivated"})[1] == "RepoDeactivated"
    assert classify({"did": A, "active": False, "status": "weird"})[1] == "RepoInactive"
    assert classify({"did": A, "active": False})[1:] == ("RepoInactive", "inactive")
    assert classify({"did": A, "active": False, "status": "throttled"}) == (A, None, "")
    assert classify({"did": "not-a-did", "active": True}) is None
    assert classify(["did", A]) is None


def test_withdraw_only_takes_back_what_no_worker_had(tmp_path: Path) -> None:
    from bsky_backfill.state.base import RepoDone

    with EnumStore(tmp_path / "s.sqlite") as store:
        store.enqueue([A, B])
        store.commit([], [RepoDone(did=B, rev=None, records=0)], [], [])
        assert store.withdraw([A, B, C]) == [A, C]  # A removed, B done (kept), C never there
        assert set(store.rows()) == {B}
        assert sum(store.counts().values()) == 1  # the count triggers followed the delete
