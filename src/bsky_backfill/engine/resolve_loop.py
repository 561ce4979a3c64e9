"""Stage 2 of the run: give every stored repo an identity (its PDS, host and key).

Where it sits: between the source loop (source_loop.py), which stores DIDs and
handles, and the scheduler (scheduler.py), which claims only resolved repos.
Up to `--resolve-concurrency` x 4 lookups are in flight (identity/: the PLC
directory, did:web documents, handles through DNS or HTTPS); resolved
identities are stored in batches, and each wakes the scheduler.

Failures take the same durable retry as a fetch (xrpc/retry.py: retry time and
first-failure time in the store). A paused directory (its circuit breaker,
xrpc/breaker.py) gets no lookups but its one probe, and its DIDs wait without
spending attempts; with both budgets spent, or its host given up, a DID is
dead-lettered `ResolveFailed`. Those dead letters are committed before the loop
says intake is done, so `--workers` followers never finish ahead of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.commits import Commits
from bsky_backfill.engine.flow import Flow
from bsky_backfill.engine.takeover import INTAKE
from bsky_backfill.engine.unexpected import UnexpectedErrors
from bsky_backfill.errors import HostUnreachable, TerminalError, TransientError
from bsky_backfill.identity.handle import HandleResolver, is_handle
from bsky_backfill.identity.resolver import DidResolver, host_key
from bsky_backfill.models import utcnow
from bsky_backfill.state.base import Identity, StateStore
from bsky_backfill.xrpc.breaker import Breaker, BreakerBoard, BreakerState, is_host_failure
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.retry import error_summary, next_attempt

log = logging.getLogger("bsky_backfill")


class ResolveLoop:
    """Resolves the store's unresolved repos until intake is over."""

    def __init__(
        self,
        settings: RunSettings,
        store: StateStore,
        client: XrpcClient,
        resolver: DidResolver,
        handles: HandleResolver,
        breakers: BreakerBoard,
        commits: Commits,
        flow: Flow,
        unexpected: UnexpectedErrors,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.resolver = resolver
        self.handles = handles
        self.breakers = breakers
        self.commits = commits
        self.flow = flow
        self.unexpected = unexpected
        self._rand = random.Random()

    async def run(self) -> None:
        store, flow, commits = self.store, self.flow, self.commits
        in_flight: set[str] = set()
        resolved: list[Identity] = []
        tasks: set[asyncio.Task[None]] = set()
        limit = self.settings.resolve_concurrency * 4
        plc = self.breakers.get(host_key(self.settings.plc_url))

        async def resolve_one(did: str) -> None:
            try:
                if is_handle(did):
                    await self._resolve_handle(did)
                    return
                identity = await self.resolver.resolve(did)
                await self.client.guard.check(identity.pds)
                resolved.append(identity)
                log.debug("resolved %s: PDS %s", did, identity.pds, extra={"did": did})
            except HostUnreachable as e:  # the directory (or did:web host) was given up
                commits.dead_letter(did, "resolve", "ResolveFailed", e.message)
            except TerminalError as e:
                commits.dead_letter(did, e.stage, e.code, e.message)
            except Exception as e:  # transient, or unexpected: a durable retry, never a spin
                try:
                    self._failed(did, e)
                except Exception as fatal:  # the store itself failed: the run cannot go on
                    commits.set_fatal("resolve", fatal)
            finally:
                in_flight.discard(did)
                flow.wake()

        while not flow.stopping:
            if resolved:
                batch, resolved[:] = list(resolved), []
                store.set_identities(batch)
                flow.wake()
            room = limit - len(in_flight)
            # A paused PLC directory gets no lookups but its one probe (its DIDs wait
            # in the store, due when the pause ends; did:web ones wait with them).
            allowed = plc.claimable(len(in_flight))
            if allowed is not None:
                room = min(room, allowed)
            exclude = [*in_flight, *commits.unclaimed_failures]
            batch_dids = store.unresolved(room, exclude=exclude) if room > 0 else []
            for did in batch_dids:
                in_flight.add(did)
                task = asyncio.create_task(resolve_one(did))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if not batch_dids and not in_flight and flow.source_done:
                due = store.next_unresolved()
                if due is None:
                    break
                # DIDs backing off (or waiting for the directory): sleep until due.
                wait = (due - utcnow()).total_seconds()
                if plc.state is BreakerState.OPEN:
                    wait = max(wait, plc.resume_at - time.time())
                await asyncio.sleep(min(1.0, max(0.05, wait)))
                continue
            await asyncio.sleep(0.05 if in_flight else 0.2)
        if resolved:
            store.set_identities(resolved)
        if commits.unclaimed_failures:
            # Resolution failures are durable before followers may finish.
            await commits.commit_now()
        flow.resolver_done = True
        if not flow.stopping:
            store.set_meta(INTAKE, "done")
        flow.wake()

    async def _resolve_handle(self, handle: str) -> None:
        """An account listed by handle: its verified DID takes its place in the
        queue (added before the handle goes, so a crash between keeps both and
        the next run resolves the handle again: the store ignores the repeat)."""
        identity = await self.resolver.resolve(await self.handles.resolve(handle))
        if identity.handle == handle:  # checked both ways just now: `_accounts` says so
            identity = dataclasses.replace(identity, handle_verified=True)
        await self.client.guard.check(identity.pds)
        self.store.enqueue_resolved([identity])
        self.store.withdraw([handle])
        log.info("handle %s is %s", handle, identity.did)

    def _failed(self, did: str, error: Exception) -> None:
        """A DID's resolution failed transiently (or unexpectedly): the same durable
        retry as a fetch. Its directory's pause costs it no attempt; both budgets
        spent, it is dead-lettered `ResolveFailed`."""
        if not isinstance(error, TransientError):
            self.unexpected.log(error, did, "resolve")
        breaker = self._identity_breaker(did)
        attempts, since = self.store.failure_of(did)
        now = utcnow()
        summary = error_summary(error)
        if breaker is not None and breaker.holds(error):
            self.store.retry_later(did, attempts, max(now, breaker.resume_time()), summary)
            return
        if (
            breaker is not None
            and breaker.state is BreakerState.GIVEN_UP
            and is_host_failure(error)
        ):
            self.commits.dead_letter(
                did, "resolve", "ResolveFailed", f"{breaker.host}: {breaker.reason}: {summary}"
            )
            return
        policy = self.settings.retry
        when = next_attempt(policy, error, attempts + 1, now, self._rand.random(), since or now)
        if when is None:
            log.info("giving up resolving %s after %d attempts: %s", did, attempts + 1, summary)
            self.commits.dead_letter(did, "resolve", "ResolveFailed", summary)
            return
        self.store.retry_later(did, attempts + 1, when, summary)

    def _identity_breaker(self, did: str) -> Breaker | None:
        """The breaker of the host a DID's document comes from (PLC, or its did:web host)."""
        if did.startswith("did:plc:"):
            return self.breakers.get(host_key(self.settings.plc_url))
        try:
            return self.breakers.get(host_key(self.resolver.document_url(did)))
        except Exception:  # not a did:web we could ask: no host to hold
            return None
