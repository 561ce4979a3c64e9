"""Identity requests are labelled as what they are, hosts with their port; the metrics
server listens where --metrics-host says."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.manager import Backfill, RunSummary
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.observe.metrics import RunMetrics
from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.observe.test_metrics_run import by_label, scrape


def test_plc_lookups_and_did_web_documents_are_labelled_with_host_and_port(
    tmp_path: Path,
) -> None:
    with run_network_in_thread(Scenario(seed=33, accounts=6, hosts=1, did_web=1)) as net:
        settings = RunSettings(
            out=str(tmp_path / "out"), plc_url=net.plc_url, allow_private_hosts=True,
            rate_limit=None, collections=frozenset({"app.bsky.feed.post"}),
        )  # fmt: skip
        backfill = Backfill(settings, DidSource.from_args(net.truth.input_dids, None))
        metrics = RunMetrics(backfill)
        port = metrics.serve(0, "127.0.0.1")
        metrics.attach()

        async def main() -> RunSummary:
            return await backfill.run()

        try:
            asyncio.run(main())
            samples = scrape(port)
        finally:
            metrics.close()
        plc_lookups = net.stats.count(host="plc")
        web_dids = [d for d in net.truth.input_dids if d.startswith("did:web:")]
    by_endpoint: dict[tuple[str, str], float] = {}
    for (name, labels), value in samples.items():
        if name == "bsky_backfill_requests_total":
            key = (dict(labels)["endpoint"], dict(labels)["host"])
            by_endpoint[key] = by_endpoint.get(key, 0) + value
    plc_host = urlsplit(net.plc_url).netloc
    assert by_endpoint[("plc_lookup", plc_host)] == plc_lookups > 0
    assert "json" not in {endpoint for endpoint, _ in by_endpoint}
    web_hosts = {h for e, h in by_endpoint if e == "did_web_document"}
    assert len(web_hosts) == len(web_dids) and all(":" in h for h in web_hosts)
    assert by_label(samples, "bsky_backfill_requests_total", "host")  # non-empty
