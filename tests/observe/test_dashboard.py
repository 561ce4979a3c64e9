"""The shipped Grafana dashboard only queries metrics the product exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.manager import Backfill
from bsky_backfill.observe.metrics import RunMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exposed_names() -> set[str]:
    metrics = RunMetrics(Backfill(RunSettings(), None))
    names = set()
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def test_dashboard_queries_exposed_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\bbsky_backfill_\w+", e)}
    exposed = exposed_names()
    assert used and not used - exposed, sorted(used - exposed)
    # each family the product exposes is on the dashboard (histograms through _bucket)
    families = {n for n in exposed if not n.endswith(("_sum", "_count"))}
    assert not families - used, sorted(families - used)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
