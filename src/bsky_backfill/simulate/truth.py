"""Ground truth of a simulated network, written while its repos are built.

Where this sits: `generator.py` records every account and record here as it
creates them (from the Python values, before any encoding), and tests compare
the product's Parquet output and dead letters with `expected_rows` and
`expected_dead_letters`, never with the product's own decoder.

Semantics a correct backfill must meet (window = [since, until) on createdAt):

* A record **lands** iff its collection is wanted, its account is fetchable
  (status active, DID resolvable, and, when verifying, its commit signature
  valid), the record is valid, and it passes the window. The window applies
  when the collection's lexicon requires createdAt (post, like, repost,
  follow, block, list, listitem); it does not apply to known lexicons where
  createdAt is optional or absent (app.bsky.actor.profile, chat.bsky.actor.
  declaration: always kept, `created_at` set when present); for collections
  without a known lexicon it applies only when the record has a createdAt
  (such records never carry an unparseable one here).
* A record is **invalid** when its `$type` differs from its collection, or a
  lexicon that requires createdAt finds it missing or unparseable. Only known
  lexicons get invalid records injected.
* **Dead letters** (did, uri, stage, code): a tombstoned or unknown DID gives
  `resolve/DidNotFound`; a non-active account gives `fetch/RepoTakendown |
  RepoDeactivated | RepoSuspended | RepoNotFound`; a bad commit signature
  gives `verify/VerificationFailed` (when verifying); an invalid record in a
  wanted collection of a fetchable account gives `validate/InvalidRecord` with
  its uri, whatever the window (an invalid createdAt cannot be placed in it).
* **Damaged repos** (`damage.py`): a commit naming another DID gives
  `verify/VerificationFailed` (verifying or not); a missing MST node gives
  `verify/VerificationFailed` (`decode/InvalidMST` without verifying); a
  tampered record gives `verify/VerificationFailed` when verifying and its
  collection is wanted (otherwise the repo lands, the tampered record with
  its altered bytes); a record whose block is missing or undecodable gives
  `decode/RecordBlockMissing | InvalidRecordBlock` with its uri (the rest lands).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from bsky_backfill.simulate.content import (
    BLOCK,
    CHAT_DECLARATION,
    FOLLOW,
    LIKE,
    LIST,
    LISTITEM,
    POST,
    PROFILE,
    REPOST,
)

Status = Literal[
    "active", "takendown", "deactivated", "suspended", "notfound", "tombstoned", "unknown"
]

#: Known lexicons whose records must carry a valid createdAt (the window applies).
CREATED_AT_REQUIRED = frozenset({POST, LIKE, REPOST, FOLLOW, BLOCK, LIST, LISTITEM})
#: Known lexicons where createdAt is optional or absent (always kept).
CREATED_AT_OPTIONAL = frozenset({PROFILE, CHAT_DECLARATION})
KNOWN_LEXICONS = CREATED_AT_REQUIRED | CREATED_AT_OPTIONAL
#: The app.bsky record types the simulation writes (the product's default selection).
APP_BSKY_COLLECTIONS = frozenset(c for c in KNOWN_LEXICONS if c.startswith("app.bsky."))

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_STATUS_CODES = {
    "takendown": "RepoTakendown",
    "deactivated": "RepoDeactivated",
    "suspended": "RepoSuspended",
    "notfound": "RepoNotFound",
}


class RecordTruth(NamedTuple):
    """One record as the simulation wrote it, with the typed fields the output should carry.

    A NamedTuple rather than a dataclass: a benchmark network holds ~10^6 of
    them and tuples are several times cheaper to create.
    """

    uri: str
    did: str
    collection: str
    rkey: str
    cid: str
    created_us: int | None
    """The instant createdAt names, in microseconds since the epoch; None when absent
    or unparseable. `created_at` gives it as an aware UTC datetime."""
    text: str | None
    valid: bool
    invalid_reason: str | None = None
    langs: tuple[str, ...] | None = None
    reply_root_uri: str | None = None
    reply_parent_uri: str | None = None
    subject_uri: str | None = None
    subject_cid: str | None = None
    subject_did: str | None = None

    @property
    def created_at(self) -> dt.datetime | None:
        """createdAt as an aware UTC datetime (None when absent or unparseable)."""
        if self.created_us is None:
            return None
        return _EPOCH + dt.timedelta(microseconds=self.created_us)


@dataclass(frozen=True, slots=True)
class AccountTruth:
    """One input DID: where it lives and what a backfill will find there."""

    did: str
    handle: str
    method: Literal["plc", "web"]
    status: Status
    host: str | None
    """The PDS URL the DID document names (None for tombstoned/unknown DIDs)."""
    host_name: str | None
    rev: str | None
    commit_cid: str | None
    signing_key: str | None
    """The did:key published in the DID document."""
    signature_valid: bool = True
    records: int = 0
    damage: str | None = None
    """How the repo is damaged (`simulate/damage.py`; one of `scenario.DAMAGE_KNOBS`)."""
    damaged_uri: str | None = None
    """The record served with altered bytes (damage `tampered_record`)."""


@dataclass(frozen=True, slots=True)
class ExpectedDeadLetter:
    did: str
    uri: str | None
    stage: str
    code: str


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def in_window(rec: RecordTruth, since: dt.datetime | None, until: dt.datetime | None) -> bool:
    """Whether the [since, until) window keeps `rec` (assumed valid)."""
    if rec.collection in CREATED_AT_OPTIONAL:
        return True
    created = rec.created_at
    if created is None:
        # Only unknown lexicons reach here validly: no createdAt, nothing to filter on.
        return rec.collection not in CREATED_AT_REQUIRED
    lo, hi = _as_utc(since), _as_utc(until)
    if lo is not None and created < lo:
        return False
    return hi is None or created < hi


@dataclass
class GroundTruth:
    """Every account, record and unreachable block of one built network."""

    accounts: dict[str, AccountTruth] = field(default_factory=dict)
    records: list[RecordTruth] = field(default_factory=list)
    unreachable_cids: set[str] = field(default_factory=set)
    """CIDs of record blocks present in CARs but not reachable from the MST (must not land)."""
    input_dids: list[str] = field(default_factory=list)
    """What a user would list: every account plus the tombstoned and unknown DIDs."""
    broken_records: dict[str, str] = field(default_factory=dict)
    """uri -> code (RecordBlockMissing, InvalidRecordBlock) of records whose block is
    absent from, or not valid DAG-CBOR in, an otherwise valid repo (damage `broken_records`)."""

    def fetchable(
        self, did: str, *, verify: bool = True, collections: Iterable[str] | None = None
    ) -> bool:
        """Whether `did`'s repo lands (its records then land or fail one by one)."""
        return self._acct_ok(did) and self._repo_failure(did, verify, collections) is None

    def _acct_ok(self, did: str) -> bool:
        acct = self.accounts.get(did)
        return acct is not None and acct.status == "active"

    def _repo_failure(
        self, did: str, verify: bool, collections: Iterable[str] | None
    ) -> ExpectedDeadLetter | None:
        """The whole-repo dead letter of an active account whose repo cannot be trusted."""
        acct = self.accounts[did]
        if verify and not acct.signature_valid:
            return ExpectedDeadLetter(did, None, "verify", "VerificationFailed")
        if acct.damage == "foreign_commit":  # the DID check is made even without verifying
            return ExpectedDeadLetter(did, None, "verify", "VerificationFailed")
        if acct.damage == "missing_mst_node":
            if verify:
                return ExpectedDeadLetter(did, None, "verify", "VerificationFailed")
            return ExpectedDeadLetter(did, None, "decode", "InvalidMST")
        if acct.damage == "tampered_record" and verify and acct.damaged_uri:
            # Only blocks that would land are hashed: an unwanted one goes unnoticed.
            wanted = APP_BSKY_COLLECTIONS if collections is None else frozenset(collections)
            if acct.damaged_uri.split("/")[3] in wanted:
                return ExpectedDeadLetter(did, None, "verify", "VerificationFailed")
        return None

    def records_of(self, did: str) -> list[RecordTruth]:
        return [r for r in self.records if r.did == did]

    def expected_rows(
        self,
        collections: Iterable[str] | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        *,
        dids: Iterable[str] | None = None,
        verify: bool = True,
    ) -> dict[str, RecordTruth]:
        """uri -> record for exactly the records a correct backfill lands (module docstring).

        `collections` None means the app.bsky record types; `dids` None means
        `input_dids`; naive `since`/`until` are taken as UTC.
        """
        wanted = APP_BSKY_COLLECTIONS if collections is None else frozenset(collections)
        chosen = set(self.input_dids if dids is None else dids)
        ok = {d for d in chosen if self.fetchable(d, verify=verify, collections=wanted)}
        lo, hi = _as_utc(since), _as_utc(until)
        broken = self.broken_records
        return {
            r.uri: r
            for r in self.records
            if r.did in ok
            and r.collection in wanted
            and r.valid
            and r.uri not in broken
            and in_window(r, lo, hi)
        }

    def expected_dead_letters(
        self,
        collections: Iterable[str] | None = None,
        *,
        dids: Iterable[str] | None = None,
        verify: bool = True,
    ) -> set[ExpectedDeadLetter]:
        """Every (did, uri, stage, code) a correct backfill dead-letters (module docstring)."""
        wanted = APP_BSKY_COLLECTIONS if collections is None else frozenset(collections)
        chosen = set(self.input_dids if dids is None else dids)
        out: set[ExpectedDeadLetter] = set()
        for did in chosen:
            acct = self.accounts.get(did)
            if acct is None or acct.status in ("tombstoned", "unknown"):
                out.add(ExpectedDeadLetter(did, None, "resolve", "DidNotFound"))
            elif acct.status != "active":
                out.add(ExpectedDeadLetter(did, None, "fetch", _STATUS_CODES[acct.status]))
            else:
                failure = self._repo_failure(did, verify, wanted)
                if failure is not None:
                    out.add(failure)
        landing = {d for d in chosen if self.fetchable(d, verify=verify, collections=wanted)}
        for r in self.records:
            if r.collection not in wanted or r.did not in landing:
                continue
            if r.uri in self.broken_records:
                out.add(ExpectedDeadLetter(r.did, r.uri, "decode", self.broken_records[r.uri]))
            elif not r.valid:
                out.add(ExpectedDeadLetter(r.did, r.uri, "validate", "InvalidRecord"))
        return out

    def counts(self) -> dict[str, int]:
        """Records per collection (all accounts, valid or not): for summaries and sanity checks."""
        out: dict[str, int] = {}
        for r in self.records:
            out[r.collection] = out.get(r.collection, 0) + 1
        return out
