"""The signals a run's concurrent loops share: stop, wake, and whether intake is over.

Where it sits: created by the run (manager.py) and handed to each loop. The
source loop (source_loop.py) and the resolver (resolve_loop.py) wake the
scheduler (scheduler.py) when they have stored new work and say when they are
done; a finishing repo (repo_task.py) wakes it too, so a freed slot is refilled
at once instead of at the next timer. All of it lives on the event loop's
thread.
"""

from __future__ import annotations

import asyncio
import contextlib


class Flow:
    """Stop and wake events, and the intake flags, of one run."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self.source_done = False
        """The source loop has stored every DID it will (or a follower was told so)."""
        self.resolver_done = False
        """The resolver has nothing left to resolve (or a follower was told so)."""

    def request_stop(self) -> None:
        """Graceful stop: every loop ends at its next turn."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def intake_done(self) -> bool:
        return self.source_done and self.resolver_done

    def wake(self) -> None:
        """New work or a freed slot: the scheduler looks again now."""
        self._wake.set()

    async def wait(self, timeout: float) -> None:
        """Sleep until woken, or `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()
