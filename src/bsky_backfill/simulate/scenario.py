"""What a simulated network looks like: sizes, account states, limits, faults.

Where this sits: the one input of `SimNetwork` (and of `generator.generate`).
Frozen; `content_key()` hashes what shapes the repos, so a scenario can key an
on-disk cache, and equal scenarios build byte-identical repos (did:web
accounts aside: their DIDs carry the port they are served on).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from bsky_backfill.simulate.content import (
    BLOCK,
    CHAT_DECLARATION,
    EXAMPLE_THING,
    FOLLOW,
    LIKE,
    LIST,
    LISTITEM,
    POST,
    REPOST,
)

#: Scenario knobs that damage an account's repo (each names `SimAccount.damage`).
DAMAGE_KNOBS = ("tampered_record", "foreign_commit", "missing_mst_node", "broken_records")

#: Relative frequency of each collection among an account's records (the
#: profile is extra: most accounts have exactly one, rkey "self").
DEFAULT_COLLECTION_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        LIKE: 42.0,
        POST: 30.0,
        FOLLOW: 13.0,
        REPOST: 9.0,
        BLOCK: 1.5,
        LISTITEM: 2.0,
        LIST: 0.5,
        EXAMPLE_THING: 0.7,
        CHAT_DECLARATION: 0.3,
    }
)


@dataclass(frozen=True)
class RateLimit:
    """A host's published and enforced budget (reference PDS: 3000/5 min, getRepo 6000/5 min).

    Fixed windows: a bucket's window opens at its first request and refills
    `window_s` later. Every response carries `RateLimit-Limit`, `-Remaining`,
    `-Reset` (unix seconds) and `-Policy: N;w=W`; an exhausted bucket answers
    429 `{"error": "RateLimitExceeded"}` without `Retry-After`, like the reference.
    """

    limit: int = 3000
    """Requests per window for every endpoint except getRepo."""
    window_s: float = 300.0
    get_repo_limit: int | None = 6000
    """getRepo's own bucket; None = getRepo shares the general bucket."""
    hidden_total: int | None = None
    """Also enforce this many requests per window over all endpoints, without saying so
    (Bluesky-run hosts advertise 6000 for getRepo but enforce 3000 in total)."""
    html_429: bool = False
    """Answer 429 as bare HTML with no RateLimit-* headers (seen on some production hosts)."""
    headers: bool = True
    """Send RateLimit-* headers on non-429 responses."""
    reference: bool = False
    """Limit the way the reference PDS does (`@atproto/xrpc-server`): a global per-IP
    limiter (`limit` per `window_s`) that every request charges, plus per-route ones
    (getRepo's `get_repo_limit` per `window_s`, and `routes`) that the route's requests
    charge too, rejected ones included; each answer describes the tightest limiter (an
    exhausted one, else the one with fewest left) and floors its reset:
    `RateLimit-Reset = floor((now_ms + msBeforeNext) / 1000)`."""
    routes: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    """Reference mode: more per-route limiters, endpoint -> (requests, window seconds)."""


@dataclass(frozen=True)
class Faults:
    """Injected failures per request, each decided by hashing (seed, host, request, attempt).

    Deterministic: the n-th identical request to a host meets the same fate in
    every run, however requests interleave.
    """

    error_rate: float = 0.0
    """Probability of a 500 / 502 / 503 answer (502/503 with an HTML body, like a proxy)."""
    hang_rate: float = 0.0
    """Probability of sleeping `hang_s` before answering (clients should time out)."""
    hang_s: float = 60.0
    truncate_rate: float = 0.0
    """Probability that a getRepo body stops mid-stream (connection dropped)."""
    short_car_rate: float = 0.0
    """Probability that a getRepo body ends cleanly but the CAR inside is cut short."""
    endpoints: frozenset[str] | None = None
    """Only these XRPC methods fail (None = all)."""
    seed: int = 0


@dataclass(frozen=True)
class Scenario:
    """A whole simulated network. Counts of special accounts come out of `accounts`."""

    seed: int = 1
    accounts: int = 40
    """Accounts hosted on the PDS hosts (did:plc and did:web, all states)."""
    hosts: int = 4
    mean_records: float = 60.0
    """Mean records per repo; sizes are lognormal (heavy-tailed) with `size_sigma`."""
    size_sigma: float = 1.3
    max_records: int = 20_000
    """Cap on a lognormal draw (the giant repo is exempt)."""
    empty_repos: int = 1
    """Accounts with no records at all (one empty MST node)."""
    giant_repo: int | None = None
    """If set, one account gets exactly this many records."""
    did_web: int = 2
    statuses: Mapping[str, int] = field(
        default_factory=lambda: {"takendown": 1, "deactivated": 1, "suspended": 1, "notfound": 1}
    )
    """Accounts per non-active state (`notfound`: PLC points at a host without the repo)."""
    tombstoned: int = 1
    """Extra did:plc DIDs tombstoned at the PLC directory (input DIDs, no repo)."""
    unknown: int = 1
    """Extra did:plc DIDs the PLC directory has never heard of (input DIDs, no repo)."""
    migrated: int = 2
    """Accounts whose first PLC operation named another host (newest op wins)."""
    other_service_first: int = 3
    """DID documents that list another service before #atproto_pds."""
    legacy_key_docs: int = 0
    """DID documents with a legacy EcdsaSecp256k1VerificationKey2019 key."""
    p256_fraction: float = 0.2
    """Share of accounts signing with P-256 instead of secp256k1."""
    distinct_keys: int | None = 64
    """Accounts share this many signing keys round-robin (a secp256k1 key takes ~1.5 ms
    to derive); None = one key per account."""
    bad_signature: int = 0
    """Active accounts whose commit is signed by a key other than the published one."""
    tampered_record: int = 0
    """Active accounts whose CAR carries one app.bsky record altered after signing (CID kept)."""
    foreign_commit: int = 0
    """Active accounts whose commit, validly signed, names another DID."""
    missing_mst_node: int = 0
    """Active accounts whose CAR lacks one MST node (a non-root one when there is one)."""
    broken_records: int = 0
    """Active accounts whose CAR lacks one app.bsky record block and holds another that is
    not valid DAG-CBOR (signed as it is): only those two records fail (getRepo only)."""
    invalid_rate: float = 0.01
    """Share of records made invalid (missing/unparseable createdAt, wrong $type)."""
    orphan_rate: float = 0.1
    """Share of repos whose CAR also holds unreachable record blocks (old deleted records)."""
    collection_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_COLLECTION_WEIGHTS)
    )
    start: dt.datetime = dt.datetime(2023, 2, 1, tzinfo=dt.UTC)
    end: dt.datetime = dt.datetime(2025, 10, 1, tzinfo=dt.UTC)
    block_order: Literal["dfs", "cid"] = "dfs"
    """CAR block order after the commit: tree walk order, or sorted by CID (reference PDS)."""
    rate_limit: RateLimit | None = None
    faults: Faults | None = None
    """Failures injected by every PDS host."""
    plc_faults: Faults | None = None
    """Failures injected by the PLC directory."""
    plc_down_requests: int = 0
    """The PLC directory drops its first this many requests (the connection closes
    without an answer, as when it is down); then it serves."""
    not_found_error: Literal["RepoNotFound", "NotFound"] = "RepoNotFound"
    """getRepo's error for a repo the host does not hold (some production hosts: NotFound)."""
    plc_tombstone_status: Literal[404, 410] = 410
    """410 like plc.directory; 404 like the npm @did-plc/server."""
    plc_export_seq: bool = True
    """PLC `/export` entries carry an integer `seq` and `after` takes one (newer servers);
    False = a legacy server: no `seq`, `after` is a createdAt timestamp."""
    plc_legacy_create: int = 0
    """Active did:plc accounts whose genesis is a legacy `create` op (signingKey, service)."""
    plc_nullified: int = 0
    """Active did:plc accounts whose log holds a nullified op (naming a bogus PDS) followed
    by the recovery op that nullified it."""
    old_host_lists_migrated: bool = False
    """Hosts keep the accounts that migrated away, deactivated: their listRepos lists them
    `active: false` and getRepo refuses them (the reference PDS after a migration)."""
    relay: bool = False
    """Also serve a relay (`SimNetwork.relay_url`): listHosts over every PDS host, and a
    listRepos of its own."""
    relay_miss_fraction: float = 0.0
    """Share of accounts the relay's own listRepos leaves out (production: about a third)."""
    workers: int | None = None
    """Processes building repos: None = automatic (several only for big networks)."""
    cache_dir: Path | None = None
    """Keep built did:plc repos on disk, keyed by `content_key()`, for big benchmark runs."""

    def __post_init__(self) -> None:
        # Plain dicts: mapping proxies cannot be pickled to builder processes.
        object.__setattr__(self, "statuses", dict(self.statuses))
        object.__setattr__(self, "collection_weights", dict(self.collection_weights))
        unknown = set(self.statuses) - {"takendown", "deactivated", "suspended", "notfound"}
        if unknown:
            raise ValueError(f"unknown account statuses {sorted(unknown)}")
        for name in ("invalid_rate", "orphan_rate", "p256_fraction", "relay_miss_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.accounts < 0 or self.hosts < 1:
            raise ValueError("a network needs accounts >= 0 and hosts >= 1")

    def content_key(self) -> str:
        """Hash of every field that shapes repo content (not limits, faults or cache)."""
        shaping = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name
            not in {
                "rate_limit",
                "faults",
                "plc_faults",
                "plc_down_requests",
                "plc_tombstone_status",
                "plc_export_seq",
                "plc_legacy_create",
                "plc_nullified",
                "old_host_lists_migrated",
                "relay",
                "relay_miss_fraction",
                "cache_dir",
                "workers",
            }
        }
        # Damage knobs left at 0 stay out, so older scenarios keep their cache keys.
        for knob in DAMAGE_KNOBS:
            if not shaping.get(knob):
                shaping.pop(knob, None)
        blob = json.dumps(shaping, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:24]
