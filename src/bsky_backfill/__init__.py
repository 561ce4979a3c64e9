"""bsky-backfill: backfill AT Protocol repositories into a Parquet dataset.

The flow, end to end (each step is a package below this one):

    sources (engine/)  ->  identity/ (DID -> PDS, key)  ->  engine/ per-host slots
      -> xrpc/ (getRepo, rate limits)  ->  repo/ (CAR, MST)  ->  records/ (validate,
      transform to Arrow)  ->  sinks/ (Parquet, atomic commit)  +  state/ (work queue)

The package root is lazy: `Backfill` and `RunSummary` load the engine on first
use, so importing a leaf module (`bsky_backfill.syntax`, or a helper process's
`bsky_backfill.records.stream`) does not pull in aiohttp, duckdb and the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from bsky_backfill.api import Backfill, RunSummary

__all__ = ["Backfill", "RunSummary", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Backfill", "RunSummary"):
        from bsky_backfill import api

        return getattr(api, name)
    raise AttributeError(f"module 'bsky_backfill' has no attribute {name!r}")
