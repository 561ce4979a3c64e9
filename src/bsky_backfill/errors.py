"""One error tree for the whole backfill, sorted by what to do about an error.

    BackfillError
    ├── UsageError            bad input from the user: exit 2, one line, nothing written
    ├── TransientError        worth retrying later (5xx, timeouts, resets, truncated bodies, 429)
    │   ├── RateLimited       the host asked us to slow down; carries `retry_at`
    │   └── HostPaused        the host's circuit breaker is open: nothing was sent, not an
    │                         attempt; carries `retry_at` (xrpc/breaker.py)
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
its traceback once (xrpc/retry.py, engine/worker.py).
Messages often quote what a server said: they are made safe on the way in
(control characters escaped, at most a few KB; see safetext.py).
"""

from __future__ import annotations

import datetime as dt

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
