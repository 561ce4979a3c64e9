"""The bench's ratios, the issue's targets, and the side-by-side table on stdout.

Where it sits: the end of `python -m bench`, after every row is measured.
`ratios` reads the result dict (see `bench.__main__`) and says, for each
ratio, what is divided by what; `print_report` prints the machine, one line
per row, the ratios and targets, and the rate-bound figures.
"""

from __future__ import annotations

from typing import Any

from bench.import_time import print_import_time

GIB_MIB = 1024.0


def _rate(result: dict[str, Any], *path: str) -> float | None:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if not isinstance(node, dict):
        return None
    value = node.get("records_per_s")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _cpu(result: dict[str, Any], *path: str) -> float | None:
    node: Any = result
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    value = node.get("cpu_s_per_1m_records") if isinstance(node, dict) else None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b is not None else None


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Every ratio the issue asks for, each with what it divides, plus the targets."""
    prod = _rate(result, "product", "default")
    prod_nv = _rate(result, "product", "no_verify")
    prod_w2 = _rate(result, "product", "workers_2")
    c_extract = _rate(result, "ceiling", "extract")
    c_verify = _rate(result, "ceiling", "extract_verify")
    c_tight = _rate(result, "ceiling", "tight")
    c_tight2 = _rate(result, "ceiling", "tight_2proc")
    best = max((x for x in (c_extract, c_tight) if x is not None), default=None)
    base = _rate(result, "baseline")
    out: dict[str, Any] = {
        "product_no_verify / ceiling_best": _ratio(prod_nv, best),
        "product_default / ceiling_extract_verify": _ratio(prod, c_verify),
        "product_default / ceiling_best": _ratio(prod, best),
        "product_default / baseline": _ratio(prod, base),
        "product_workers_2 / product_default": _ratio(prod_w2, prod),
        "product_workers_2 / ceiling_tight_2proc": _ratio(prod_w2, c_tight2),
        "ceiling_tight / ceiling_extract": _ratio(c_tight, c_extract),
        "ceiling_tight_2proc / ceiling_tight": _ratio(c_tight2, c_tight),
    }
    # The same comparison in CPU time (CPU seconds per 1M records, ceiling / product):
    # what the code costs, whatever a busy neighbour did to the wall clock.
    best_cpu = min(
        (x for x in (_cpu(result, "ceiling", "extract"), _cpu(result, "ceiling", "tight")) if x),
        default=None,
    )
    out["cpu: ceiling_best / product_no_verify"] = _ratio(
        best_cpu, _cpu(result, "product", "no_verify")
    )
    out["cpu: ceiling_extract_verify / product_default"] = _ratio(
        _cpu(result, "ceiling", "extract_verify"), _cpu(result, "product", "default")
    )
    # Issue 18: product CPU per record against the decode floor (libipld.decode_car
    # alone, its loop's CPU), both in this run.
    floor = _get(result, ("ceiling", "decode_floor"))
    floor_us = None
    if floor and floor.get("loop_cpu_s") and floor.get("records"):
        floor_us = floor["loop_cpu_s"] / floor["records"] * 1e6
    out["decode floor, CPU us per record"] = None if floor_us is None else round(floor_us, 2)
    cpu_prod = _cpu(result, "product", "default")
    per_floor = None if floor_us is None or not cpu_prod else round(cpu_prod / floor_us, 2)
    out["cpu: product_default / decode_floor"] = per_floor
    product = result.get("product", {})
    # The memory target is about one process backfilling the 1M-record repo; with
    # --workers N each process (leader, follower, helper) is held to it on its own.
    one_process: list[float] = [
        float(product[name]["tree_rss_peak_mib"])
        for name in ("default", "no_verify")
        if product.get(name, {}).get("tree_rss_peak_mib") is not None
    ]
    per_process = product.get("workers_2", {}).get("peak_rss_mib")
    rate = result.get("rate_bound", {})
    # Issue 5: what verification costs end to end (1 - defaults / --no-verify, records/s).
    verify_cost = None
    if _rps(result, "default") and _rps(result, "no_verify"):
        verify_cost = round(1 - _rps(result, "default") / _rps(result, "no_verify"), 3)
    out["verification cost (1 - default / no_verify)"] = verify_cost
    # Issue 17: what lexicon validation costs, in CPU per record (default / --no-validate).
    cpu_default, cpu_nv = _cpu(result, "product", "default"), _cpu(result, "product", "no_validate")
    validate_cost = None
    if cpu_default and cpu_nv:
        validate_cost = round(cpu_default / cpu_nv - 1, 3)
    out["validation cost (cpu: default / no_validate - 1)"] = validate_cost
    imports = result.get("import_time", {})
    out["import: syntax process / bare interpreter"] = imports.get("syntax_process / bare_python")
    out["import: --version / bare interpreter"] = imports.get("version_process / bare_python")
    like_for_like = out["product_no_verify / ceiling_best"]
    scaling = out["product_workers_2 / product_default"]
    out["targets"] = {
        "end_to_end >= 0.7 x ceiling (no-verify vs best ceiling)": _check(like_for_like, 0.7),
        "workers 2 >= 1.6 x workers 1": _check(scaling, 1.6),
        "peak RSS <= 1 GiB (one process, with the 1M-record repo)": (
            None if not one_process else max(one_process) <= GIB_MIB
        ),
        "peak RSS <= 1 GiB per process (--workers 2)": (
            None if per_process is None else float(per_process) <= GIB_MIB
        ),
        "verification < 10% of throughput": (None if verify_cost is None else verify_cost < 0.1),
        "validation < 10% of CPU per record": (
            None if validate_cost is None else validate_cost < 0.1
        ),
        "rate-bound >= 90% of budget (slowest host)": _check(rate.get("min_of_budget"), 0.9),
        "product CPU per record <= 2x the decode floor (issue 18)": (
            None if per_floor is None else per_floor <= 2.0
        ),
    }
    return out


def _rps(result: dict[str, Any], name: str) -> float | None:
    row = result.get("product", {}).get(name)
    value = row.get("records_per_s") if isinstance(row, dict) else None
    return float(value) if value else None


def _check(value: float | None, floor: float) -> bool | None:
    return None if value is None else value >= floor


_ROWS = [
    ("product (defaults: verify on)", ("product", "default")),
    ("product --no-verify", ("product", "no_verify")),
    ("product --no-validate", ("product", "no_validate")),
    ("product --workers 2", ("product", "workers_2")),
    ("product start-up: 1 small repo", ("product", "one_repo")),
    ("ceiling: extract_repo loop", ("ceiling", "extract")),
    ("ceiling: extract_repo + verify", ("ceiling", "extract_verify")),
    ("ceiling: hand-tight loop", ("ceiling", "tight")),
    ("ceiling: hand-tight, 2 processes", ("ceiling", "tight_2proc")),
    ("floor: libipld.decode_car alone", ("ceiling", "decode_floor")),
    ("baseline: seed listRecords, 0.05s", ("baseline",)),
]


def _get(result: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = result
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print()
    print(
        f"bench ({result['mode']}) {m['date_utc']} on {m['cores']} cores, {m['cpu_model']}, "
        f"Python {m['python']}, libipld {m['versions'].get('libipld')}, "
        f"pyarrow {m['versions'].get('pyarrow')}, git {m['git_commit']}"
        f"{' (dirty)' if m['git_dirty'] else ''}; load {m['load_avg_start']} -> "
        f"{m.get('load_avg_end')}"
    )
    sc = result.get("scenario", {})
    if sc:
        print(
            f"scenario: {sc['accounts']} accounts on {sc['hosts']} hosts, "
            f"{sc['served_repos']} repos served ({sc['car_mib']} MiB of CARs), "
            f"{sc['expected_rows']:,} rows to land; largest repos {sc['largest_repos']}"
        )
    head = f"{'':34s} {'records':>10s} {'secs':>6s} {'rec/s':>9s} {'repos/s':>7s} {'CPU s/1M':>8s}"
    print("\n" + head + f" {'cores':>6s} {'peak RSS':>9s} {'tree RSS':>9s}")
    for label, path in _ROWS:
        row = _get(result, path)
        if row is None:
            continue
        if "records_per_s" not in row:
            print(
                f"{label:36s} FAILED (exit {row.get('returncode')}): {row.get('error', '')[-80:]}"
            )
            continue
        print(
            f"{label:34s} {row['records']:>10,} {row['seconds']:>6.1f} "
            f"{_fmt(row['records_per_s'], ',.0f'):>9s} "
            f"{_fmt(row['repos_per_s'], ',.1f'):>7s} "
            f"{_fmt(row['cpu_s_per_1m_records'], ',.1f'):>8s} "
            f"{_fmt(row['cores_busy'], '.2f'):>6s} "
            f"{row['peak_rss_mib']:>8,.0f}M {row['tree_rss_peak_mib']:>8,.0f}M"
        )
    after = [
        f"{name} {row['records_per_s_after_startup']:,.0f}"
        for name, row in result.get("product", {}).items()
        if name != "one_repo" and row.get("records_per_s_after_startup")
    ]
    if after:
        print("product rec/s excluding start-up (wall minus the 1-repo run): " + ", ".join(after))
    print("\nratios:")
    for name, value in result["ratios"].items():
        if name != "targets":
            print(f"  {name:45s} {_fmt(value, '.2f')}")
    print("targets (issue 7):")
    for name, ok in result["ratios"]["targets"].items():
        print(f"  {name:62s} {'n/a' if ok is None else ('met' if ok else 'NOT met')}")
    rate = result.get("rate_bound")
    if rate:
        per = rate["per_host"]
        rates = ", ".join(f"{v['requests_per_s']:.1f}" for v in per.values())
        print(
            f"\nrate-bound: {rate['hosts']} hosts x {rate['repos'] // rate['hosts']} repos, "
            f"budget {rate['budget_per_host']:.0f}/s per host: achieved [{rates}] req/s "
            f"(slowest {rate['min_of_budget']:.0%} of budget); whole run incl. start-up "
            f"{_fmt(rate['whole_run_requests_per_s_per_host'], '.1f')} req/s per host"
        )
    if result.get("import_time"):
        print_import_time(result["import_time"])
    print(f"\nbench took {result['bench_seconds']:.0f}s; phases: {result['phases_s']}")
