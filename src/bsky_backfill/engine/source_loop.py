"""Stage 1 of the run: DIDs into the store, from the input and from listings.

Where it sits: the leader's first loop (manager.py). It streams the DIDs and
handles given as input (sources.py) into the store in chunks, then pages
through the listings asked for (`--all-from-plc`, `--from-relay`, `--pds`:
engine/enumerate/), each page stored with its cursor. Every stored chunk or
page wakes the scheduler (scheduler.py) and the resolver (resolve_loop.py);
when both are exhausted, the loop says the source is done (flow.py).

A listing page may refuse entries (a malformed DID, an inactive account):
those are dead-lettered and committed before the page's cursor moves on, so a
restart never loses them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.commits import Commits
from bsky_backfill.engine.enumerate import (
    ListReposSource,
    Page,
    PlcExportSource,
    RelaySource,
    Source,
    run_source,
)
from bsky_backfill.engine.flow import Flow
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.identity.resolver import DidResolver
from bsky_backfill.state.base import StateStore
from bsky_backfill.xrpc.client import XrpcClient
from bsky_backfill.xrpc.slot import HostSlot

log = logging.getLogger("bsky_backfill")


class SourceLoop:
    """Feeds the store from the input source and the listings."""

    def __init__(
        self,
        settings: RunSettings,
        source: DidSource | None,
        store: StateStore,
        client: XrpcClient,
        resolver: DidResolver,
        slot_for: Callable[[str], HostSlot],
        commits: Commits,
        flow: Flow,
    ) -> None:
        self.settings = settings
        self.source = source
        self.store = store
        self.client = client
        self.resolver = resolver
        self.slot_for = slot_for
        self.commits = commits
        self.flow = flow

    async def run(self) -> None:
        if self.source is not None:
            for chunk in self.source.chunks():
                if self.flow.stopping:
                    return
                self.store.enqueue(chunk)
                self.flow.wake()
                await asyncio.sleep(0)
        await self._enumerate()
        self.flow.source_done = True
        self.flow.wake()

    async def _enumerate(self) -> None:
        """--all-from-plc, --from-relay, --pds: page through listings into the store."""
        s = self.settings
        private = s.allow_private_hosts
        sources: list[Source] = []
        if s.all_from_plc:
            sources.append(PlcExportSource(self.client, s.plc_url, allow_private=private))
        if s.from_relay:
            sources.append(
                RelaySource(
                    self.client, s.from_relay, resolve=self.resolver.resolve,
                    allow_private=private, slot_for=self.slot_for,
                )
            )  # fmt: skip
        for url in s.pds:
            sources.append(
                ListReposSource(
                    self.client, url, resolve=self.resolver.resolve, allow_private=private,
                    slot_for=self.slot_for,
                )
            )  # fmt: skip
        if not sources:
            return
        results = await asyncio.gather(
            *(run_source(src, self.store, self._on_page) for src in sources)
        )
        for result in results:
            log.info("enumeration finished: %s", result)

    async def _on_page(self, page: Page) -> None:
        """A listing page is stored: dead-letter what it refused (durably, before its
        cursor moves on) and let the scheduler see the new repos."""
        for rejected in page.rejected:
            self.commits.dead_letter(rejected.did, rejected.stage, rejected.code, rejected.message)
        if page.rejected:
            await self.commits.commit_now()
        self.flow.wake()
