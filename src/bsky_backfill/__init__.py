"""bsky-backfill: backfill AT Protocol repositories into a Parquet dataset.

The flow, end to end (each step is a package below this one):

    sources (engine/)  ->  identity/ (DID -> PDS, key)  ->  engine/ per-host slots
      -> xrpc/ (getRepo, rate limits)  ->  repo/ (CAR, MST)  ->  records/ (validate,
      transform to Arrow)  ->  sinks/ (Parquet, atomic commit)  +  state/ (work queue)
"""

__version__ = "0.1.0"

from bsky_backfill.api import Backfill, RunSummary  # the public API

__all__ = ["Backfill", "RunSummary", "__version__"]
