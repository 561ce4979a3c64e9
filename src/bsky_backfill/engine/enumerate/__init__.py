"""Whole-network enumeration: the sources behind `--all-from-plc`, `--from-relay`, `--pds`.

Where it sits: the first stage of the engine, beside the DIDs-file source
(engine/sources.py). Each source streams DIDs into the state store page by
page, with a durable cursor per source (and per host), so downloads start
while enumeration still runs and an interrupted enumeration resumes where it
stopped. One entry point for the engine:

    result = await run_source(source, store, on_page)

    PlcExportSource(client, plc_url)            PLC /export; identities from the ops
    ListReposSource(client, url, resolve=...)   one PDS host's listRepos (--pds)
    RelaySource(client, url, resolve=...)       listHosts, then listRepos per host

`on_page(Page)` runs after a page is stored and before its cursor is saved:
wake the scheduler there, and dead-letter `page.rejected` durably (e.g.
`sink.add_failed(r.repo_failed(), r.dead_letter())` for each, then commit).

Limits worth knowing:

* A repo claimed by a worker keeps the identity it was claimed with. When the
  PLC export is read from the start, an account's migration operation can come
  long after the engine fetched it from its old host, which then answers
  RepoDeactivated / RepoNotFound; the engine can catch this by looking the DID
  up once at the PLC directory when such a fetch fails and retrying at the new
  PDS if it changed.
* Legacy (timestamp) export cursors page by `createdAt` strictly after the
  cursor, so operations sharing the last timestamp of a page can be skipped;
  servers that send `seq` do not have this problem.
* A tombstoned DID that a worker already finished stays in the dataset.
"""

from bsky_backfill.engine.enumerate.base import (
    PAGE_RETRY,
    STAGE,
    EnumerationStore,
    OnPage,
    Page,
    RepoRejected,
    SlotPool,
    Source,
    SourceResult,
    ignore_page,
    run_source,
)
from bsky_backfill.engine.enumerate.listrepos import ListReposSource, Resolve
from bsky_backfill.engine.enumerate.plc import PlcExportSource
from bsky_backfill.engine.enumerate.relay import RelaySource

__all__ = [
    "PAGE_RETRY",
    "STAGE",
    "EnumerationStore",
    "ListReposSource",
    "OnPage",
    "Page",
    "PlcExportSource",
    "RelaySource",
    "RepoRejected",
    "Resolve",
    "SlotPool",
    "Source",
    "SourceResult",
    "ignore_page",
    "run_source",
]
