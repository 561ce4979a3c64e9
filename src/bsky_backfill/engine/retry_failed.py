"""`run --retry-failed [CODE,...]`: failed repos back to pending, their failures made history.

Where it sits: the leader's start-up, after recovery and before the sources
run (engine/manager.py). Page by page (DID order), the failed repos whose
code is asked for are named in one `_superseded` file (sinks/superseded.py)
committed by the same store transaction that reopens them
(`StateStore.reopen_failed`): the dataset keeps every dead letter ever
written, and both the store's counts and the documented Parquet view count
each repo's latest verdict once.

Which codes: none named, every code but the terminal verdicts (the host's word
on the account, an untrustworthy repository: `xrpc.retry.TERMINAL_VERDICTS`);
named, exactly those, verdicts included.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter

from bsky_backfill.models import utcnow
from bsky_backfill.sinks.parquet import DatasetWriter
from bsky_backfill.sinks.superseded import SUPERSEDED, superseded_table
from bsky_backfill.state.base import CommittedFile, FailedRepo, StateStore
from bsky_backfill.xrpc.retry import TERMINAL_VERDICTS

log = logging.getLogger("bsky_backfill")

PAGE = 20_000
"""Failed repos reopened per transaction (and per `_superseded` file)."""


def reopen_failed(store: StateStore, sink: DatasetWriter, codes: tuple[str, ...]) -> Counter[str]:
    """Put the failed repos with `codes` (() = the default set) back; returns them by code."""
    named = sorted(set(codes)) or None
    exclude = () if named else tuple(sorted(TERMINAL_VERDICTS))
    at = utcnow()
    reopened: Counter[str] = Counter()
    after = ""
    while page := store.failed_repos(named, exclude=exclude, after=after, limit=PAGE):
        after = page[-1].did
        n = _reopen_page(store, sink, page, at)
        reopened.update(r.code for r in page)
        if n != len(page):  # another worker got to some first (PostgreSQL)
            log.info(
                "--retry-failed: %d of %d repos were no longer failed", len(page) - n, len(page)
            )
    if reopened:
        shown = ", ".join(f"{code} {n}" for code, n in reopened.most_common())
        log.warning("--retry-failed: %d failed repos back to pending (%s)", reopened.total(), shown)
    else:
        which = ", ".join(named) if named else "retryable codes"
        log.warning("--retry-failed: no failed repos with %s", which)
    return reopened


def _reopen_page(
    store: StateStore, sink: DatasetWriter, page: list[FailedRepo], at: dt.datetime
) -> int:
    """One page: its `_superseded` file and the reopening, in one store transaction."""
    reopened: list[int] = []

    def record(file: CommittedFile) -> None:
        reopened.append(store.reopen_failed(page, at, file))

    sink.commit_file(SUPERSEDED, superseded_table(page, at), record)
    return reopened[0]


__all__ = ["reopen_failed"]
