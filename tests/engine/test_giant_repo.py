"""A repo of one million records lands exactly (issue 7's memory case; slow, runs in CI)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli

GIANT = 1_000_000


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the run's own guard below (1200 s) ends first
def test_a_million_record_repo_lands_exactly(tmp_path: Path) -> None:
    scenario = Scenario(seed=121, accounts=3, hosts=1, mean_records=50, giant_repo=GIANT,
                        did_web=0, statuses={}, tombstoned=0, unknown=0, invalid_rate=0.0,
                        orphan_rate=0.0)  # fmt: skip
    out = tmp_path / "out"
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        result = run_cli("run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
                         "--allow-private-hosts", "--no-progress", "--rate-limit", "0",
                         timeout=1200)  # fmt: skip
        expected = net.truth.expected_rows()
    assert result.returncode == 0, result.stderr
    assert len(expected) > GIANT * 0.7  # most of the giant repo is in app.bsky collections
    truth = pa.table({"uri": list(expected), "cid": [r.cid for r in expected.values()]})
    del expected
    con = duckdb.connect()
    con.register("truth", truth)
    glob = str(out / "app.bsky.*" / "*.parquet").replace("'", "''")
    con.execute(
        f"CREATE VIEW landed AS SELECT uri, cid FROM read_parquet('{glob}', union_by_name=true)"
    )
    total, distinct = con.execute("SELECT count(*), count(DISTINCT uri) FROM landed").fetchone()  # type: ignore[misc]
    assert total == distinct == truth.num_rows
    missing = con.execute("SELECT count(*) FROM truth ANTI JOIN landed USING (uri, cid)").fetchone()
    extra = con.execute("SELECT count(*) FROM landed ANTI JOIN truth USING (uri, cid)").fetchone()
    assert missing == (0,) and extra == (0,)
