"""Exceptions outside the error tree (a bug, an unmapped library error), logged once.

Where it sits: the resolver (resolve_loop.py) and the per-repo task
(repo_task.py) retry such an exception like a transient error; before they do,
they report it here, so a bug that hits every repo logs its traceback once per
place it comes from and one line each time after.
"""

from __future__ import annotations

import logging
import traceback

log = logging.getLogger("bsky_backfill")


class UnexpectedErrors:
    """The places (exception type, file:line) whose traceback was logged already."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def log(self, error: BaseException, did: str, where: str) -> None:
        """Log `error` met on `did` at `where` (a host, or a stage): its traceback the
        first time it comes from its place, then one line. The caller retries it."""
        frames = traceback.extract_tb(error.__traceback__)
        place = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        key = (type(error).__name__, place)
        extra = {"did": did, "host": where}
        if key in self._seen:
            log.warning(
                "unexpected %s on %s (%s) again: %s; retrying",
                type(error).__name__,
                did,
                where,
                error,
                extra=extra,
            )
            return
        self._seen.add(key)
        log.error(
            "unexpected error on %s (%s); retried like a transient error "
            "(this traceback is logged once)",
            did,
            where,
            exc_info=error,
            extra=extra,
        )
