"""Seeded, deterministic builder of a whole simulated network's repositories.

Where this sits: `SimNetwork` binds its ports, then calls `generate` once; the
result (`SimContent`) holds each account's `RepoImage` (served by the PDS
hosts) and the `GroundTruth` written record by record along the way.

Order of work, chosen so the output never depends on how it was computed:

1. `plan_accounts`: who exists, where, in which state.
2. The first `POPULAR` did:plc accounts are written one after the other; their
   posts become the pool every later record may reply to, quote, like or
   repost (a few popular accounts draw most interactions, as on the network).
3. The remaining did:plc accounts only read that frozen pool, so they are
   independent: big networks build them in worker processes, and an on-disk
   cache can hold them (their bytes do not depend on any port).
4. did:web accounts last (their DIDs carry the port they are served on).
"""

from __future__ import annotations

import bisect
import concurrent.futures
import functools
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import libipld

from bsky_backfill.simulate.accounts import SimAccount, plan_accounts, unknown_dids
from bsky_backfill.simulate.atjson import to_atproto_json
from bsky_backfill.simulate.content import Pools
from bsky_backfill.simulate.damage import Damage
from bsky_backfill.simulate.scenario import Scenario
from bsky_backfill.simulate.truth import AccountTruth, GroundTruth
from bsky_backfill.simulate.writer import AccountOut, RepoWriter

#: Accounts whose posts everyone else interacts with (built first, sequentially).
POPULAR = 64
#: Below this many expected records, worker processes cost more than they save.
_PARALLEL_MIN_RECORDS = 150_000


@dataclass
class SimContent:
    """Everything `generate` built: accounts (with repos), unknown DIDs, and the truth."""

    accounts: list[SimAccount]
    unknown_dids: list[str]
    truth: GroundTruth
    records_built: int = 0

    @functools.cached_property
    def _by_did(self) -> dict[str, SimAccount]:
        return {a.did: a for a in self.accounts}

    def account(self, did: str) -> SimAccount:
        return self._by_did[did]

    def record_value(self, uri: str) -> Any:
        """A record as stored (decoded DAG-CBOR: links are raw CID bytes), by at:// URI."""
        did, collection, rkey = uri.removeprefix("at://").split("/", 2)
        acct = self._by_did.get(did)
        rows = acct.repo.records.get(collection, []) if acct and acct.repo else []
        i = bisect.bisect_left(rows, (rkey,))
        if acct is None or acct.repo is None or i == len(rows) or rows[i][0] != rkey:
            raise KeyError(uri)
        return libipld.decode_dag_cbor(acct.repo.car[rows[i][2] : rows[i][3]])

    def record_json(self, uri: str) -> Any:
        """A record in atproto JSON (`{"$link": ...}` links), as the `record` column holds it."""
        return to_atproto_json(self.record_value(uri))


def generate(
    scenario: Scenario,
    web_dids: list[str] | None = None,
    host_urls: list[str] | None = None,
) -> SimContent:
    """Build every repo of `scenario`.

    `web_dids` are the did:web DIDs the servers can serve (one per did:web
    account), `host_urls` the PDS base URLs (placeholders when only the
    content matters). Deterministic: equal arguments give identical repos and
    truth, whatever `scenario.workers` says.
    """
    urls = host_urls or [f"http://pds{i}.invalid" for i in range(scenario.hosts)]
    web_dids = list(web_dids or [])
    accounts = plan_accounts(scenario, web_dids)
    hosted = [a for a in accounts if a.status != "tombstoned"]
    plc = [a for a in hosted if a.method == "plc"]
    web = [a for a in hosted if a.method == "web"]
    pools = Pools(accounts=[(a.did, a.handle) for a in plc if a.status == "active"])
    plc_outs = _cached(scenario, web_dids, plc, pools)
    pools.frozen = True
    web_outs = [RepoWriter(scenario, a, pools).write() for a in web]

    truth = GroundTruth()
    damages: dict[str, Damage] = {}
    built = 0
    for acct, out in zip(plc + web, plc_outs + web_outs, strict=True):
        built += len(out.records)
        if acct.status == "notfound":
            continue  # a repo no host holds is never served, so never landed
        acct.repo = out.repo
        truth.records.extend(out.records)
        truth.unreachable_cids.update(out.orphans)
        if out.damage is not None:
            truth.broken_records.update(out.damage.broken)
            damages[acct.did] = out.damage
    unknown = unknown_dids(scenario)
    for acct in accounts:
        truth.accounts[acct.did] = account_truth(acct, urls, damages.get(acct.did))
    for did in unknown:
        truth.accounts[did] = AccountTruth(did, "", "plc", "unknown", None, None, None, None, None)
    truth.input_dids = [a.did for a in accounts] + unknown
    return SimContent(accounts, unknown, truth, built)


def account_truth(
    acct: SimAccount, host_urls: list[str], damage: Damage | None = None
) -> AccountTruth:
    """What the truth says about one account, given the URLs its hosts were bound to."""
    repo = acct.repo
    tombstoned = acct.status == "tombstoned"
    return AccountTruth(
        did=acct.did,
        handle=acct.handle,
        method=acct.method,
        status=acct.status,
        host=None if tombstoned else host_urls[acct.host_index],
        host_name=None if tombstoned else f"pds{acct.host_index}",
        rev=repo.rev if repo else None,
        commit_cid=libipld.encode_cid(repo.commit_cid) if repo else None,
        signing_key=None if tombstoned else acct.published_key.did_key,
        signature_valid=not acct.bad_signature,
        records=repo.record_count if repo else 0,
        damage=damage.kind if damage else None,
        damaged_uri=damage.uri if damage else None,
    )


def _build_plc(
    scenario: Scenario, web_dids: list[str], plc: list[SimAccount], pools: Pools
) -> list[AccountOut]:
    """Steps 2 and 3 of the module docstring; fills `pools.posts` as a side effect."""
    outs = [RepoWriter(scenario, a, pools).write() for a in plc[:POPULAR]]
    pools.frozen = True
    rest = plc[POPULAR:]
    workers = min(_workers(scenario, rest), len(rest))
    if workers <= 1:
        return outs + [RepoWriter(scenario, a, pools).write() for a in rest]
    # Small chunks dealt round-robin, so one giant repo does not leave the others idle.
    size = max(1, len(rest) // (workers * 8))
    groups: list[list[int]] = [[] for _ in range(workers)]
    for n, start in enumerate(range(0, len(rest), size)):
        groups[n % workers].extend(a.index for a in rest[start : start + size])
    with concurrent.futures.ThreadPoolExecutor(workers) as threads:
        payloads = [pickle.dumps((scenario, web_dids, g, pools.posts)) for g in groups]
        built: dict[int, AccountOut] = {}
        for result in threads.map(_run_worker, payloads):
            built.update(result)
    return outs + [built[a.index] for a in rest]


def _workers(scenario: Scenario, rest: list[SimAccount]) -> int:
    if scenario.workers is not None:
        return scenario.workers
    cpus = os.cpu_count() or 1
    # Shipping results back costs about a third of building them: only worth it
    # for big networks on machines with cores to spare.
    if cpus < 4 or sum(a.size for a in rest) < _PARALLEL_MIN_RECORDS:
        return 1
    return min(cpus, 8)


def _run_worker(payload: bytes) -> dict[int, AccountOut]:
    """Build some accounts in a fresh interpreter (pickles in on stdin, out on stdout).

    A plain subprocess rather than multiprocessing: spawn-mode multiprocessing
    re-imports the caller's `__main__`, which breaks unguarded scripts, and fork
    is unsafe in a process that runs an event loop in another thread.
    """
    code = "from bsky_backfill.simulate.generator import worker_main; worker_main()"
    done = subprocess.run(
        [sys.executable, "-c", code], input=payload, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"repo builder process failed: {done.stderr.decode()[-2000:]}")
    result: dict[int, AccountOut] = pickle.loads(done.stdout)
    return result


def worker_main() -> None:
    """Entry point of a builder process: re-plan the (deterministic) accounts, build some."""
    scenario, web_dids, indices, posts = pickle.load(sys.stdin.buffer)
    accounts = plan_accounts(scenario, web_dids)
    active = [(a.did, a.handle) for a in accounts if a.method == "plc" and a.status == "active"]
    pools = Pools(posts=posts, accounts=active, frozen=True)
    built = {i: RepoWriter(scenario, accounts[i], pools).write() for i in indices}
    sys.stdout.buffer.write(pickle.dumps(built, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


def _cached(
    scenario: Scenario, web_dids: list[str], plc: list[SimAccount], pools: Pools
) -> list[AccountOut]:
    """`_build_plc` through an on-disk pickle keyed by the scenario's content hash, if set."""
    if scenario.cache_dir is None:
        return _build_plc(scenario, web_dids, plc, pools)
    # The did:web DIDs (which carry their ports) shape the other repos too.
    path = scenario.cache_dir / f"simnet-{scenario.content_key()}-w{len(web_dids)}.pickle"
    if path.exists():
        with path.open("rb") as f:
            outs, posts = pickle.load(f)
        pools.posts[:] = posts
        return outs  # type: ignore[no-any-return]
    outs = _build_plc(scenario, web_dids, plc, pools)
    scenario.cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        pickle.dump((outs, pools.posts), f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)  # atomic: a crashed build never leaves a half-written cache
    return outs
