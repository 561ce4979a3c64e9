"""`report --queue URL`: a dataset whose run kept its queue in PostgreSQL still gets its
hosts (the DID -> host map is streamed from the store, `StateStore.host_map`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from bsky_backfill.report import build_report
from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.state.pg import fresh_schema_url

COLLECTIONS = ("app.bsky.feed.post", "app.bsky.feed.like")


def test_report_reads_hosts_from_a_postgresql_queue(tmp_path: Path) -> None:
    out = tmp_path / "out"
    scenario = Scenario(seed=5, accounts=12, hosts=3, mean_records=20)
    with fresh_schema_url() as queue, run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        result = run_cli(
            "run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
            "--allow-private-hosts", "--no-progress", "--queue", queue,
            "--collections", ",".join(COLLECTIONS),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        truth = net.truth
        rows = truth.expected_rows(COLLECTIONS)
        by_host = Counter(urlsplit(truth.accounts[r.did].host or "").netloc for r in rows.values())
        assert len(by_host) == 3

        # Without the queue, OUT holds no state: hosts are unknown.
        alone = build_report(out)
        assert not alone.has_state and alone.hosts == []
        report = build_report(out, queue)
        assert report.has_state
        assert {h.host: h.records for h in report.hosts if h.records} == dict(by_host)
        assert sum(h.records for h in report.hosts) == len(rows)  # none on an unknown host

        cli = run_cli("report", "--out", str(out), "--queue", queue, "--json")
        assert cli.returncode == 0, cli.stderr
        hosts = {h["host"]: h["records"] for h in json.loads(cli.stdout)["hosts"]}
        assert {h: n for h, n in hosts.items() if n} == dict(by_host)

    # A queue that holds no backfill is bad input: exit 2, one line.
    with fresh_schema_url() as empty:
        bad = run_cli("report", "--out", str(out), "--queue", empty)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "no backfill state" in bad.stderr
