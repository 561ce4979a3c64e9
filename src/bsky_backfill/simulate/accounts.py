"""Who lives on the simulated network: DIDs, handles, hosts, keys, states.

Where this sits: the first step of `generator.generate`. `plan_accounts` draws
every account's identity and fate from the scenario seed (which are taken
down, which migrated between hosts, which DID documents list another service
first, ...); `generator.py` then fills their repos, and the PLC / did:web /
PDS servers publish them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from bsky_backfill.identity.didkey import Curve, PublicKey
from bsky_backfill.simulate.car import RepoImage
from bsky_backfill.simulate.ids import datetime_to_micros, plc_did
from bsky_backfill.simulate.keys import SigningKey
from bsky_backfill.simulate.scenario import DAMAGE_KNOBS, Scenario
from bsky_backfill.simulate.truth import Status

_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
_DAY_US = 86_400 * 1_000_000


@dataclass(eq=False)
class SimAccount:
    """One DID of the network: identity, where its repo is, and what state it is in."""

    index: int
    did: str
    handle: str
    method: Literal["plc", "web"]
    host_index: int
    status: Status
    curve: Curve
    key_seed: bytes
    created_us: int
    """Account creation time (microseconds since the epoch): records come after it."""
    migrated_from: int | None = None
    """Host index named by the account's first PLC operation, if it moved since."""
    other_service_first: bool = False
    legacy_key_doc: bool = False
    bad_signature: bool = False
    damage: str | None = None
    """One of `scenario.DAMAGE_KNOBS`: how this account's repo is damaged (None: it is not)."""
    size: int = 0
    """Records to generate."""
    repo: RepoImage | None = field(default=None, repr=False)
    history: list[RepoImage] = field(default_factory=list, repr=False)
    """Earlier images of `repo` (after `mutate.mutate_account`), oldest first."""

    @cached_property
    def signing_key(self) -> SigningKey:
        """The key commits are signed with."""
        return SigningKey.from_seed(self.key_seed, self.curve)

    @cached_property
    def published_key(self) -> PublicKey:
        """The key the DID document names: a different one when `bad_signature`."""
        if self.bad_signature:
            return SigningKey.from_seed(self.key_seed + b":published", self.curve).public
        return self.signing_key.public

    @cached_property
    def rotation_key(self) -> SigningKey:
        """Signs this DID's PLC operations."""
        return SigningKey.from_seed(self.key_seed + b":rotation", "k256")

    @property
    def hosted(self) -> bool:
        """Whether a PDS host holds this repo (even if it refuses to serve it)."""
        return self.status in ("active", "takendown", "deactivated", "suspended")


def _lognormal_size(rng: random.Random, scenario: Scenario) -> int:
    sigma = scenario.size_sigma
    mu = math.log(max(scenario.mean_records, 1e-9)) - sigma * sigma / 2
    return min(int(rng.lognormvariate(mu, sigma)), scenario.max_records)


def plan_accounts(scenario: Scenario, web_dids: list[str]) -> list[SimAccount]:
    """Every DID of the network in index order: hosted accounts (did:plc then did:web),
    then tombstoned DIDs (PLC only). Unknown DIDs are not accounts; see `unknown_dids`.
    """
    rng = random.Random(f"{scenario.seed}:plan")
    n_web = min(len(web_dids), scenario.accounts)
    n_plc = scenario.accounts - n_web
    start = datetime_to_micros(scenario.start)
    end = datetime_to_micros(scenario.end)
    span_end = max(start + 1, end - 30 * _DAY_US)
    accounts: list[SimAccount] = []
    key_count = scenario.distinct_keys or (scenario.accounts + scenario.tombstoned)
    for i in range(scenario.accounts + scenario.tombstoned):
        web = n_plc <= i < scenario.accounts
        did = web_dids[i - n_plc] if web else plc_did(f"{scenario.seed}:acct:{i}".encode())
        curve: Curve = "p256" if rng.random() < scenario.p256_fraction else "k256"
        accounts.append(
            SimAccount(
                index=i,
                did=did,
                handle=f"{_NAMES[i % len(_NAMES)]}{i}.{'web' if web else 'sim'}.test",
                method="web" if web else "plc",
                host_index=i % max(scenario.hosts, 1),
                status="active" if i < scenario.accounts else "tombstoned",
                curve=curve,
                key_seed=f"{scenario.seed}:key:{i % key_count}".encode(),
                created_us=rng.randint(start, span_end),
                size=_lognormal_size(rng, scenario),
            )
        )
    _assign_fates(rng, scenario, accounts[:n_plc], accounts[n_plc : scenario.accounts])
    return accounts


def _assign_fates(
    rng: random.Random, scenario: Scenario, plc: list[SimAccount], web: list[SimAccount]
) -> None:
    """Pick which accounts get special treatment; each account gets at most one state."""
    pool = plc[:]
    rng.shuffle(pool)

    def take(n: int) -> list[SimAccount]:
        picked = pool[:n]
        del pool[:n]
        return picked

    for status, count in sorted(scenario.statuses.items()):
        if status not in ("takendown", "deactivated", "suspended", "notfound"):
            raise ValueError(f"unknown account status {status!r}")
        for acct in take(count):
            acct.status = status  # type: ignore[assignment]
    if scenario.giant_repo is not None:
        giant = take(1)
        if not giant:
            raise ValueError("no active did:plc account left for the giant repo")
        giant[0].size = scenario.giant_repo
    for acct in take(scenario.bad_signature):
        acct.bad_signature = True
    for acct in take(scenario.empty_repos):
        acct.size = 0
    for knob in DAMAGE_KNOBS:
        for acct in take(getattr(scenario, knob)):
            acct.damage = knob
            acct.size = max(acct.size, 12)  # enough records to damage and still land some
    # The rest is active, non-empty, validly signed: identity quirks go there, so
    # tests can check that quirks alone never lose a record.
    quirky = pool[:]
    rng.shuffle(quirky)
    for acct in quirky[: scenario.migrated]:
        if scenario.hosts > 1:
            acct.migrated_from = (acct.host_index + 1) % scenario.hosts
    rng.shuffle(quirky)
    for acct in quirky[: scenario.other_service_first]:
        acct.other_service_first = True
    rng.shuffle(quirky)
    for acct in quirky[: scenario.legacy_key_docs]:
        acct.legacy_key_doc = True
    for acct in web:
        if acct.size == 0:
            acct.size = 3  # did:web accounts are few; give each something to land


def unknown_dids(scenario: Scenario) -> list[str]:
    """DIDs a user might list that the PLC directory has never seen."""
    return [plc_did(f"{scenario.seed}:unknown:{i}".encode()) for i in range(scenario.unknown)]
