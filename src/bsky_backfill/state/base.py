"""The state store: the durable work queue and ledger of one backfill.

Where it sits: the engine enqueues DIDs from a source, stores what identity
resolution found, claims repos per PDS host, records retries, and at every
sink commit marks repos done/failed *in the same transaction* that records the
committed Parquet files. That single transaction is what makes a crash at any
moment lose nothing and duplicate nothing (see sinks/parquet.py).

`StateStore` is the Protocol every backend implements (state/sqlite.py,
state/postgres.py; their shared row logic in state/common.py) and one shared
test suite checks (tests/state/test_store_contract.py). Methods are synchronous and short:
each is one small transaction. What only some backends can do is a small
capability Protocol of its own (`ReclaimsExpiredLeases`, `SharesHostBudget`),
which the engine tests a store against with `isinstance`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from bsky_backfill.models import DeadLetter


class RepoState(enum.StrEnum):
    """Lifecycle of one repo: pending -> in_progress -> done | failed (| back to pending)."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Identity:
    """What resolution learned about a DID: its PDS endpoint (base URL), host key, signing key."""

    did: str
    pds: str
    host: str
    signing_key: str | None
    handle: str | None = None
    """The handle the DID document names (its first `at://` alsoKnownAs), if any."""
    handle_verified: bool = False
    """True when `handle` was also checked the other way (the run's input was that
    handle, resolved to this DID: identity/handle.py); else it is only claimed."""


@dataclass(frozen=True, slots=True)
class Account:
    """What the `_accounts` row of a landed or failed repo says besides its DID and
    status (sinks/accounts.py): where it was fetched from and its handle."""

    pds: str | None = None
    handle: str | None = None
    handle_verified: bool = False


@dataclass(frozen=True, slots=True)
class RepoTask:
    """A claimed repo, ready to fetch: identity plus retry bookkeeping."""

    did: str
    pds: str
    host: str
    signing_key: str | None
    attempts: int
    refresh: bool = False
    """Fetch only what changed since `since` and compare with what landed before."""
    since: str | None = None
    """The commit rev that landed last time (refresh only; None: compare the whole repo)."""
    failing_since: dt.datetime | None = None
    """When this repo first failed transiently since it last landed or was reopened
    (None: it has not): the retry policy's time budget counts from here."""
    handle: str | None = None
    handle_verified: bool = False
    """The identity's handle and whether it was verified (`Identity`)."""

    @property
    def account(self) -> Account:
        """The `_accounts` details of this repo as claimed."""
        return Account(pds=self.pds, handle=self.handle, handle_verified=self.handle_verified)


@dataclass(frozen=True, slots=True)
class CommittedFile:
    """One Parquet file made durable by a commit: final relative path, table, rows."""

    path: str
    collection: str
    rows: int


@dataclass(frozen=True, slots=True)
class RepoDone:
    """A repo whose every row is in this commit's files."""

    did: str
    rev: str | None
    records: int
    keys: bytes | None = None
    """The repo's key index at `rev` (`repo.diff.pack_index`: every MST key and its
    record CID), stored in the same transaction; None: keep none (list mode):
    its next refresh fetches the repo whole."""
    deletions: tuple[tuple[str, str, int], ...] = ()
    """(collection, reason, rows) of the `_deletions` rows this commit lands for the
    repo (a refresh): `status` counts the current view (rows minus these)."""
    superseded: tuple[tuple[str, str, int], ...] = ()
    """(stage, code, n) of earlier record dead letters this commit supersedes (a
    refresh found the records changed or gone): no longer counted."""
    account: Account | None = None
    """The repo's `_accounts` details (None: unknown, the row has nulls)."""
    car_bytes: int | None = None
    """The size of the repo's whole CAR as fetched (None: not known here, e.g. a
    refresh's diff or list mode; the size stored before is kept). A later run's
    `claim` starts a host's biggest repos first."""


@dataclass(frozen=True, slots=True)
class RepoFailed:
    """A repo dead-lettered whole (its dead letter rides in the same commit)."""

    did: str
    code: str
    message: str
    stage: str = ""
    """The dead letter's stage (kept so `run --retry-failed` can un-count it)."""
    account: Account | None = None
    """The repo's `_accounts` details when known (a fetch failure; not a resolve one)."""


@dataclass(frozen=True, slots=True)
class FailedRepo:
    """A repo in the failed state: its code and stage (`run --retry-failed`)."""

    did: str
    code: str
    stage: str


@dataclass(frozen=True, slots=True)
class HostPause:
    """A host whose circuit breaker holds its work back (`status`, the live view)."""

    host: str
    until: dt.datetime | None
    """When the next probe may go (None: the pause is over, or given up: see reason)."""
    reason: str


@dataclass(slots=True)
class HostStatus:
    host: str
    total: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0


@dataclass(slots=True)
class StatusReport:
    """What `bsky-backfill status` prints."""

    total: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    in_progress: int = 0
    records_by_collection: dict[str, int] = field(default_factory=dict)
    """The current view: rows committed minus those a refresh found deleted or updated."""
    deleted_by_collection: dict[str, int] = field(default_factory=dict)
    """Rows a refresh found deleted from their repo (`_deletions`, reason `deleted`)."""
    updated_by_collection: dict[str, int] = field(default_factory=dict)
    """Rows a refresh found replaced by a newer version (reason `updated`)."""
    dead_letters_by_code: dict[str, int] = field(default_factory=dict)
    """Dead letters that stand: whole-repo ones superseded by `--retry-failed` are not here."""
    hosts: list[HostStatus] = field(default_factory=list)
    interrupted: int = 0
    """In progress under a run that is gone (PostgreSQL: an expired lease; SQLite:
    the `status` command sets it when no live run holds OUT's lock)."""
    failed_by_code: dict[str, int] = field(default_factory=dict)
    """Repos in the failed state, by their latest error code."""
    superseded_by_code: dict[str, int] = field(default_factory=dict)
    """Whole-repo dead letters kept as history: their repos were put back by
    `--retry-failed` (each repo's latest verdict is counted once, above)."""
    paused_hosts: list[HostPause] = field(default_factory=list)


class StateStore(Protocol):
    """The durable queue. Times are aware UTC datetimes."""

    def enqueue(self, dids: Iterable[str]) -> int:
        """Add DIDs as pending (unknown identity); existing DIDs are left as they are.
        Returns how many were new. Streams: callers pass chunks of ~10k."""
        ...

    def enqueue_resolved(self, identities: Iterable[Identity]) -> int:
        """Add DIDs whose identity is already known (e.g. from a PLC export)."""
        ...

    def unresolved(self, limit: int, exclude: Sequence[str] = ()) -> list[str]:
        """Pending DIDs with no identity yet (oldest first), not in `exclude`."""
        ...

    def set_identities(self, identities: Sequence[Identity]) -> None:
        """Store resolved identities (the repo stays pending, now claimable by host)."""
        ...

    def pending_hosts(self, now: dt.datetime) -> dict[str, int]:
        """Hosts with resolved, pending repos due now (next_attempt_at <= now): host -> count."""
        ...

    def next_due(self) -> dt.datetime | None:
        """Earliest next_attempt_at among pending repos (None if there are none)."""
        ...

    def claim(self, host: str, limit: int, now: dt.datetime) -> list[RepoTask]:
        """Atomically move up to `limit` due, resolved, pending repos of `host` to in_progress:
        those whose size is known (`RepoDone.car_bytes` of an earlier landing) biggest
        first, then the others, each group in due order."""
        ...

    def withdraw(self, dids: Sequence[str]) -> list[str]:
        """Take DIDs out of the queue unless a worker has had them: pending repos are
        deleted; in-progress, done and failed ones are kept. Returns, in input order,
        the DIDs that are not in the store afterwards (removed now, or never there).
        Enumeration uses it for tombstoned DIDs and endpoints it refuses."""
        ...

    def mark_refresh(self) -> int:
        """`run --refresh`: every done repo becomes pending again, marked as a refresh
        (its stored rev is the `since`). Returns how many."""
        ...

    def retry_later(
        self, did: str, attempts: int, next_attempt_at: dt.datetime, error: str
    ) -> None:
        """Put an in-progress repo back to pending with its attempt count, due time and error.
        When `attempts` grows, the repo's first failure time is set if it is not (the
        retry policy's time budget); a put-back with the same count (its host was
        paused) leaves it."""
        ...

    def recover(self) -> int:
        """Take back orphaned claims: every in-progress repo whose claimer cannot still
        be working on it goes back to pending, its attempts, failure time and due time
        as they were (a claim is no attempt). Returns how many; a second call at
        once finds none. Pending, done and failed repos are never touched.

        Orphans are this store's own claims and those of claimers known to be gone.
        A backend that records a live claimer per repo (PostgreSQL: leases) knows
        the gone ones by their expired leases and leaves live workers' claims
        alone. One that does not (SQLite) counts every claim as an orphan: its
        caller calls it only while no other process of the run can hold a claim
        (the dataset's run lock is held: at start-up before worker processes
        start, or once every one of them has exited).

        The engine calls it at start-up, so a crash loses no repo."""
        ...

    def commit(
        self,
        files: Sequence[CommittedFile],
        done: Sequence[RepoDone],
        failed: Sequence[RepoFailed],
        dead_letters: Sequence[DeadLetter],
        cursors: Sequence[tuple[str, str | None]] = (),
    ) -> None:
        """One transaction: record files, mark repos done/failed, count dead letters,
        and set (or, for None, delete) cursors whose progress those files hold
        (list mode's per-repo page cursors)."""
        ...

    def get_cursor(self, source: str) -> str | None:
        """A durable cursor (enumeration sources, list-mode page progress)."""
        ...

    def set_cursor(self, source: str, cursor: str) -> None:
        """Save a cursor on its own (after the work it follows is stored)."""
        ...

    def committed_files(self) -> list[CommittedFile]:
        """Every committed file that is part of the dataset (used by the sink's
        start-up recovery); files a compaction replaced are not among them."""
        ...

    # -- compaction (issue 16) ----------------------------------------------------------

    def replace_files(self, old: Sequence[str], new: Sequence[CommittedFile]) -> None:
        """`compact`, one transaction: the committed files `old` leave the dataset
        (recorded as retired, to be deleted from storage) and `new`, holding exactly
        their rows, are recorded as committed. Raises `FilesChangedError` (applying
        nothing) if any of `old` is not committed any more."""
        ...

    def retired_files(self) -> list[str]:
        """Paths of files a compaction replaced whose deletion is not yet confirmed
        (`forget_retired`): recovery deletes whichever still exist."""
        ...

    def forget_retired(self, paths: Sequence[str]) -> None:
        """The files at `paths` are deleted from storage: stop listing them."""
        ...

    def counts(self) -> dict[RepoState, int]:
        """Repos per state."""
        ...

    def status(self) -> StatusReport:
        """Whole-run summary for `status`."""
        ...

    def host_map(self, batch: int = 100_000) -> Iterator[list[tuple[str, str]]]:
        """(did, PDS host) of every repo whose host is known, `batch` rows at a time:
        `report` joins the dataset's DIDs to hosts (tens of millions of rows on a
        whole-network run, so streamed, never one list)."""
        ...

    def get_meta(self, key: str) -> str | None:
        """A small key/value table for run settings and schema version."""
        ...

    # -- long runs: failures, supersession, host pauses (issue 12) ---------------------

    def failure_of(self, did: str) -> tuple[int, dt.datetime | None]:
        """(attempts, first transient failure) of a repo; (0, None) if unknown. The
        resolver's durable retries read it (claimed repos carry it in `RepoTask`).
        `retry_later` sets the first failure time when `attempts` grows."""
        ...

    def update_identity(self, identity: Identity) -> None:
        """A claimed repo's identity resolved again (`run --refresh`: the account may
        have moved or rotated its key): its endpoint, host and key, whatever its state."""
        ...

    def repo_keys(self, did: str) -> bytes | None:
        """The key index the last commit of `did` stored (`RepoDone.keys`), or None.
        `run --refresh` diffs against it (repo/diff.py): no dataset scan."""
        ...

    def next_unresolved(self) -> dt.datetime | None:
        """Earliest next_attempt_at among pending repos with no identity yet (None if
        there are none): the resolver waits for DIDs backing off instead of ending."""
        ...

    def failed_repos(
        self,
        codes: Sequence[str] | None = None,
        *,
        exclude: Sequence[str] = (),
        after: str = "",
        limit: int = 10_000,
    ) -> list[FailedRepo]:
        """Failed repos with a code in `codes` (None: any) and not in `exclude`, DIDs
        greater than `after`, in DID order (page with the last DID)."""
        ...

    def reopen_failed(
        self,
        repos: Sequence[FailedRepo],
        at: dt.datetime,
        file: CommittedFile | None = None,
    ) -> int:
        """`run --retry-failed`, one transaction: each still-failed repo of `repos` goes
        back to pending as new (attempts 0, identity forgotten so it is resolved again;
        a refresh stays a refresh), its failure is recorded as superseded at `at` and
        taken out of the dead-letter counts, and `file` (the dataset's `_superseded`
        rows naming them) is recorded as committed. Returns how many were reopened."""
        ...

    def set_host_pauses(self, pauses: Sequence[HostPause]) -> None:
        """Record paused hosts; a pause whose host is no longer held back (`until`
        None and no reason) is removed."""
        ...

    def host_pauses(self) -> list[HostPause]:
        """Hosts recorded as paused (the live run's view, as of its last change)."""
        ...

    # -- host leases: which process of a `--workers` team works a host (issue 18) -------

    def acquire_host(
        self, team: str, host: str, owner: str, now: dt.datetime, until: dt.datetime
    ) -> bool:
        """Lease `host` to `owner` among the processes of `team` (one `--workers` run on
        one machine: they share one IP, so one of them at a time paces a host) until
        `until`. True if the host was free, its lease had expired (by `now`), or it
        was already `owner`'s (then the lease is renewed); False while another owner
        holds it. Times come from the team's machine (one clock for every caller)."""
        ...

    def release_host(self, team: str, host: str, owner: str) -> None:
        """Give `host` up if `owner` holds it (another process of the team may take it)."""
        ...

    def release_hosts(self, team: str, owner: str | None = None) -> int:
        """Give up every host `owner` holds in `team` (its end), or with None every
        host of the team (no other process of it is left: a take-over). Returns how
        many leases went."""
        ...

    def set_meta(self, key: str, value: str) -> None: ...

    def close(self) -> None: ...


# -- capabilities only some backends have ------------------------------------------------


@runtime_checkable
class ReclaimsExpiredLeases(Protocol):
    """A store whose claims carry leases that expire (PostgreSQL): a dead worker's
    repos can be put back at any time, while live workers keep theirs. The engine
    calls it while it waits on work other processes hold (engine/takeover.py)."""

    def reclaim_expired(self) -> int:
        """Repos whose lease expired go back to pending; returns how many."""
        ...


@runtime_checkable
class SharesHostBudget(Protocol):
    """A store that keeps a per-host request budget for every worker of a cluster
    (PostgreSQL, `--global-host-rate`: xrpc/shared.py)."""

    def take_host_tokens(self, host: str, want: int, per_second: int) -> tuple[int, float]:
        """Up to `want` requests to `host` from this second's shared budget of
        `per_second`. Returns (granted, seconds until the next second starts)."""
        ...
