"""The embedded simulated AT Protocol network (used by `demo`, end-to-end tests, benchmarks).

A PLC directory, did:web sites and several PDS hosts on 127.0.0.1, serving real,
signed repositories of synthetic but realistic accounts, plus the ground truth
written while those repos were built. Build order, module by module:

    scenario  ->  accounts (who, where, which state)  ->  generator + content
      (records)  ->  mst + car (signed commit, CAR v1)  ->  truth
    network  ->  directory (PLC, did:web)  +  pds (XRPC)  [+ relay]  behind  policy
      (rate limits, faults)  ->  stats (what was asked)
"""

from bsky_backfill.simulate.generator import SimContent, generate
from bsky_backfill.simulate.network import SimHost, SimNetwork, run_network_in_thread
from bsky_backfill.simulate.scenario import Faults, RateLimit, Scenario
from bsky_backfill.simulate.stats import RequestStats
from bsky_backfill.simulate.truth import (
    APP_BSKY_COLLECTIONS,
    AccountTruth,
    ExpectedDeadLetter,
    GroundTruth,
    RecordTruth,
)

__all__ = [
    "APP_BSKY_COLLECTIONS",
    "AccountTruth",
    "ExpectedDeadLetter",
    "Faults",
    "GroundTruth",
    "RateLimit",
    "RecordTruth",
    "RequestStats",
    "Scenario",
    "SimContent",
    "SimHost",
    "SimNetwork",
    "generate",
    "run_network_in_thread",
]
