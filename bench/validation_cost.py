"""What does lexicon validation cost? `extract_repo` CPU per record, validation on vs off.

Run: `.venv/bin/python -m bench.validation_cost [--accounts 150] [--rounds 5]`.

Inputs: the real @bsky.app export (tests/fixtures: 604 records, 11 collections,
posts with facets and embeds) and the repos of a simulated network (the
simulator writes real-PDS-like content: embeds of every kind, facets, replies,
lists). Each input is extracted `--rounds` times with `RecordFilter(validate=True)`
and with `validate=False`, the two interleaved so drift on a shared machine hits
both; the figure is the lowest process CPU time of each (time.process_time, so
neighbours on the machine move it less than wall time); the validators'
memories of valid values (kept only with the Python format checks) are
emptied before every pass, so a pass meets its values for the first time, as
a backfill does. Also printed: the
validators alone over the same decoded records (what validation adds per record,
without the rest of the extraction), and whether the string-format checks are
the C ones (records/formats.py). Ratio = validate / no-validate, same run.
Not a test: numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bsky_backfill.models import RecordFilter
from bsky_backfill.records import formats
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS, KNOWN_COLLECTIONS
from bsky_backfill.records.transform import extract_repo
from bsky_backfill.records.validate import record_checks
from bsky_backfill.records.validate_codegen import clear_memos
from bsky_backfill.repo.car import read_car
from bsky_backfill.repo.commit import read_commit
from bsky_backfill.repo.mst import walk_mst
from bsky_backfill.simulate import Scenario, run_network_in_thread

ROOT = Path(__file__).resolve().parents[1]
BSKY_APP = ROOT / "tests" / "fixtures" / "atproto" / "car" / "laravel-bluesky" / "bsky-app.car"
WANTED = KNOWN_COLLECTIONS | DEFAULT_COLLECTIONS


def _cpu(repos: list[tuple[bytes, str]], validate: bool, repeat: int) -> tuple[float, int]:
    filt = RecordFilter(collections=WANTED, validate=validate)
    rows = 0
    spent = 0.0
    for _ in range(repeat):
        clear_memos()  # each pass meets its values for the first time
        start = time.process_time()
        for data, did in repos:
            rows += extract_repo(data, did, filt).row_count
        spent += time.process_time() - start
    return spent, rows


def _records(repos: list[tuple[bytes, str]]) -> list[tuple[Any, dict[str, Any]]]:
    out = []
    for data, _did in repos:
        car = read_car(data)
        for key, cid in walk_mst(car.blocks, read_commit(car).data):
            checks = record_checks(key.partition("/")[0], trust_created_at=True)
            record = car.blocks.get(cid)
            if checks is not None and record.__class__ is dict:
                out.append((checks[0], record))  # what the hot path calls
    return out


def measure(label: str, repos: list[tuple[bytes, str]], rounds: int, repeat: int) -> None:
    _cpu(repos, True, 1)  # warm up: imports, lexicon compilation
    best = {True: float("inf"), False: float("inf")}
    rows = 0
    for _ in range(rounds):
        for validate in (False, True):
            seconds, rows = _cpu(repos, validate, repeat)
            best[validate] = min(best[validate], seconds)
    per = {v: best[v] / rows * 1e6 for v in best}
    records = _records(repos)
    alone = float("inf")
    for _ in range(rounds):
        spent = 0.0
        for _ in range(repeat):
            clear_memos()
            start = time.process_time()
            for validate, record in records:
                validate(record)
            spent += time.process_time() - start
        alone = min(alone, spent)
    alone_us = alone / (len(records) * repeat) * 1e6
    print(
        f"{label}: {rows // repeat:,} rows/pass; extract_repo CPU per record "
        f"--no-validate {per[False]:.2f} us, validate {per[True]:.2f} us "
        f"(ratio {per[True] / per[False]:.3f}, +{(per[True] / per[False] - 1) * 100:.1f} %); "
        f"validators alone {alone_us:.2f} us per record "
        f"({alone_us / per[False] * 100:.1f} % of the unvalidated extraction's CPU)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    checks = "C (records/_formats.c)" if formats.NATIVE else "Python (syntax.py's regexes)"
    print(f"string-format checks: {checks}")
    data = BSKY_APP.read_bytes()
    measure("bsky-app.car (real)", [(data, read_commit(read_car(data)).did)], args.rounds, 40)
    scenario = Scenario(seed=17, accounts=args.accounts, hosts=2, mean_records=200)
    with run_network_in_thread(scenario) as net:
        repos = [
            (acct.repo.car, acct.did)
            for acct in net.accounts
            if acct.repo is not None and acct.status == "active"
        ]
    measure(f"simulator ({len(repos)} repos)", repos, args.rounds, 3)


if __name__ == "__main__":
    main()
