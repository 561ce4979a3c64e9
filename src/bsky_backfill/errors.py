"""One error tree for the whole backfill, sorted by what to do about an error.

    BackfillError
    ├── UsageError            bad input from the user: exit 2, one line, nothing written
    ├── FatalError            the run cannot go on (its ledger or dataset is unusable):
    │   │                     it stops with exit 1; a re-run resumes from what was committed
    │   └── StateStoreError   the state store failed (raised by state/ only)
    │       └── StateStoreUnavailable   one call could not reach the store and certainly
    │                         changed nothing: the store retries it itself (state/postgres.py)
    ├── TransientError        worth retrying later (5xx, timeouts, resets, truncated bodies, 429)
    │   ├── RateLimited       the host asked us to slow down; carries `retry_at`
    │   ├── HostPaused        the host's circuit breaker is open: nothing was sent, not an
    │   │                     attempt; carries `retry_at` (xrpc/breaker.py)
    │   └── CommitRefused     a commit refused for certain, nothing of it recorded: its
    │       │                 files are discarded and its repos go back to the queue
    │       ├── LeaseLostError   another worker owns one of its repos (PostgreSQL fencing)
    │       ├── BatchRefused  the writer's own liveness lapsed (sinks/liveness.py)
    │       └── FilesChangedError   a compaction's swap named files no longer committed
    └── TerminalError         retrying will not help: dead-letter the repo with `code`
        ├── ResolveError      the DID cannot be resolved to a PDS (stage resolve)
        ├── HostUnreachable   a host failed for longer than the run's time budget
        ├── RepoUnavailable   the PDS says the repo is gone/taken down/deactivated (stage fetch)
        ├── BlockedAddress    the PDS endpoint points somewhere we refuse to go (stage fetch)
        └── RepoInvalid       the CAR / commit / MST cannot be read or trusted (stage decode/verify)

Library errors (aiohttp, libipld, sqlite3) are mapped into this tree at exactly
one boundary each (xrpc/, repo/, state/) with `raise ... from e`.
Every error that dead-letters carries a stable `code` and the `stage` it belongs to.
Any other exception is a bug or an unmapped library error: the engine treats it
as transient (code `InternalError`, bounded like every transient error) and logs
its traceback once (xrpc/retry.py, engine/unexpected.py).
Messages often quote what a server said: they are made safe on the way in
(control characters escaped, at most a few KB; see safetext.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from bsky_backfill.safetext import clean


class BackfillError(Exception):
    """Root of every error the backfill raises on purpose."""

    code: str = "Error"
    stage: str = "run"

    def __init__(
        self, message: str = "", *, code: str | None = None, stage: str | None = None
    ) -> None:
        super().__init__(clean(message))
        if code is not None:
            self.code = code
        if stage is not None:
            self.stage = stage

    @property
    def message(self) -> str:
        return str(self)


class UsageError(BackfillError):
    """Unusable input from the user (flag, DID line, date, NSID, --out): exit code 2."""

    code = "UsageError"

    @classmethod
    def of_lines(cls, lines: list[str]) -> UsageError:
        """One error told over several lines (every bad line of a file at once);
        each line is cleaned on its own, so only these breaks reach the terminal."""
        error = cls(lines[0])
        error.args = ("\n".join(clean(line) for line in lines),)
        return error


class FatalError(BackfillError):
    """The run cannot go on: it stops (exit code 1) and a re-run resumes from what was
    committed. Never a dead letter: nothing is wrong with any one repo."""

    code = "FatalError"


class StateStoreError(FatalError):
    """The state store failed (locked, corrupt, full disk, schema from a newer version,
    unreachable past its outage budget). Each backend maps its driver's errors into
    this at its own boundary (state/sqlite.py, state/postgres.py)."""

    code = "StateStoreError"
    stage = "state"


class StateStoreUnavailable(StateStoreError):
    """The store could not be reached for one call, and that call certainly changed
    nothing (the connection dropped before COMMIT was sent, the server was restarting,
    a serialization failure rolled it back).

    Raised inside a store only: its calls retry these, reconnecting, for up to the
    store's outage budget, so a database restart costs the run a pause. Escapes as
    a plain `StateStoreError` once the budget is spent.
    """

    code = "StateStoreUnavailable"


class TransientError(BackfillError):
    """A failure worth retrying: the repo goes back to the queue with a backoff."""

    code = "TransientError"
    stage = "fetch"


class RateLimited(TransientError):
    """HTTP 429 (or an exhausted published budget): pause this host until `retry_at`."""

    code = "RateLimited"

    def __init__(self, message: str = "", *, retry_at: dt.datetime | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class HostPaused(TransientError):
    """The host's circuit breaker holds requests back until `retry_at` (xrpc/breaker.py).

    Nothing was sent, so it is not an attempt: the repo waits for the host."""

    code = "HostPaused"

    def __init__(self, message: str = "", *, retry_at: dt.datetime | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class CommitRefused(TransientError):
    """A commit refused for certain: nothing of the batch was recorded. The engine has
    the writer discard the batch's files (`DatasetWriter.discard_batch`) and puts its
    repos back in the queue."""

    code = "CommitRefused"
    stage = "commit"


class LeaseLostError(CommitRefused):
    """A commit held repos this worker no longer owns (another worker re-claimed them
    after this one's lease expired, or finished them); nothing of it was applied.

    `dids` are the offending repos.
    """

    code = "LeaseLost"

    def __init__(self, message: str, dids: Sequence[str]) -> None:
        super().__init__(message)
        self.dids = tuple(dids)


class BatchRefused(CommitRefused):
    """The sink refused a commit before asking the store: the writer's heartbeat (the
    age rule of sinks/liveness.py) lapsed, so others may already treat it as dead."""

    code = "BatchRefused"
    stage = "sink"


class FilesChangedError(CommitRefused):
    """A compaction's swap named files that are no longer committed (another
    compaction replaced them first); nothing of it was applied. The caller
    deletes its new files and may start again from the current set."""

    code = "FilesChanged"
    stage = "compact"

    def __init__(self, message: str, paths: Sequence[str]) -> None:
        super().__init__(message)
        self.paths = tuple(paths)


class TerminalError(BackfillError):
    """A failure retrying will not fix: dead-letter with `code` at `stage`."""

    code = "TerminalError"


class ResolveError(TerminalError):
    """The DID has no usable document: unknown, tombstoned, no #atproto_pds service."""

    code = "DidNotFound"
    stage = "resolve"


class HostUnreachable(TerminalError):
    """A host kept failing (refused, timed out, 5xx) past the run's time budget; `code`
    is its last error's (e.g. ConnectionError), so `run --retry-failed` retries it."""

    code = "HostUnreachable"
    stage = "fetch"

    def __init__(self, message: str = "", *, code: str | None = None, stage: str | None = None):
        super().__init__(message, code=code)
        if stage is not None:
            self.stage = stage


class RepoUnavailable(TerminalError):
    """The PDS refuses the repo for good: RepoNotFound, RepoTakendown, RepoDeactivated, ..."""

    code = "RepoNotFound"
    stage = "fetch"


class BlockedAddress(TerminalError):
    """The PDS endpoint is not one we may contact (private address, bad scheme)."""

    code = "BlockedPrivateAddress"
    stage = "fetch"


class RepoInvalid(TerminalError):
    """The repository as a whole cannot be read or trusted (broken CAR, commit or MST)."""

    code = "InvalidRepo"
    stage = "decode"

    def __init__(self, message: str = "", *, code: str | None = None, stage: str | None = None):
        super().__init__(message, code=code, stage=stage)
