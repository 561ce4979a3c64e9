"""`--out s3://bucket/prefix`: the Parquet sink against a real S3-compatible server.

moto runs in server mode on 127.0.0.1 (a real HTTP server speaking the S3
API, no patched client); the sink reaches it through pyarrow's S3 filesystem,
which takes the endpoint from AWS_ENDPOINT_URL like the AWS SDKs do. What
lands is read back over S3 with pyarrow.dataset.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from moto.server import ThreadedMotoServer

from bsky_backfill.sinks import DatasetWriter, SinkConfig
from bsky_backfill.sinks.storage import TMP_DIR, tmp_name
from bsky_backfill.state.base import Identity, RepoState
from bsky_backfill.state.sqlite import SqliteStateStore
from tests.sinks.builders import LIKE, POST, expected_uris, extract

BUCKET = "backfill"


@pytest.fixture(scope="module")
def s3() -> Iterator[pafs.S3FileSystem]:
    """A moto S3 server on loopback, the environment pointing at it, and one bucket."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }.items():
            mp.setenv(name, value)
        mp.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint,
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(BUCKET)
        try:
            yield fs
        finally:
            server.stop()


def landed_uris(fs: pafs.S3FileSystem, prefix: str) -> Counter[str]:
    """Every row's uri, read back over S3 the way a reader globbing the tables would."""
    got: Counter[str] = Counter()
    for table in (POST, LIKE):
        base = f"{BUCKET}/{prefix}/{table}"
        if fs.get_file_info(base).type == pafs.FileType.NotFound:
            continue
        dataset = ds.dataset(base, filesystem=fs, format="parquet")
        got.update(dataset.to_table(columns=["uri"]).column("uri").to_pylist())
    return got


def object_keys(fs: pafs.S3FileSystem, prefix: str) -> set[str]:
    sel = pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
    root = f"{BUCKET}/{prefix}/"
    return {
        i.path.removeprefix(root) for i in fs.get_file_info(sel) if i.type == pafs.FileType.File
    }


def test_commits_land_a_dataset_on_s3(s3: pafs.S3FileSystem, tmp_path: Path) -> None:
    dids = [f"did:plc:s3r{i:02d}" for i in range(6)]
    with SqliteStateStore(tmp_path / "state.sqlite") as store:
        w = DatasetWriter(f"s3://{BUCKET}/run1", store, SinkConfig())
        for d in dids[:4]:
            w.add(*extract(d, bad_records=1 if d.endswith("1") else 0))
        first = w.commit()
        for d in dids[4:]:
            w.add(*extract(d))
        w.commit()
        w.close()
        assert first.done == 4 and first.dead_letters == 1
        assert store.counts()[RepoState.DONE] == 6
        committed = {f.path for f in store.committed_files()}
    want = set().union(*(expected_uris(d) for d in dids))
    got = landed_uris(s3, "run1")
    assert set(got) == want and all(n == 1 for n in got.values())
    keys = object_keys(s3, "run1")
    # Exactly the committed files are under the tables; nothing left in the tmp dir.
    assert {k for k in keys if k.endswith(".parquet")} == committed
    assert not [k for k in keys if k.startswith(f"{TMP_DIR}/")]
    dead = ds.dataset(f"{BUCKET}/run1/_deadletters", filesystem=s3, format="parquet")
    assert dead.to_table(columns=["did"]).column("did").to_pylist() == ["did:plc:s3r01"]


class Crash(Exception):
    """Stands in for the process dying at a commit step."""


def test_recovery_on_s3_finishes_a_committed_batch_and_drops_an_open_one(
    s3: pafs.S3FileSystem, tmp_path: Path
) -> None:
    out = f"s3://{BUCKET}/run2"
    committed_dids = [f"did:plc:s3c{i}" for i in range(3)]
    open_dids = [f"did:plc:s3o{i}" for i in range(2)]
    with SqliteStateStore(tmp_path / "state.sqlite") as store:
        store.enqueue_resolved(Identity(d, "http://h1", "h1", None) for d in committed_dids)
        store.enqueue_resolved(Identity(d, "http://h1", "h1", None) for d in open_dids)
        assert len(store.claim("h1", 10, dt.datetime.now(dt.UTC))) == 5

        def die_after_store(step: str) -> None:
            if step == "stored":
                raise Crash(step)

        w = DatasetWriter(out, store, SinkConfig(), step_hook=die_after_store)
        for d in committed_dids:
            w.add(*extract(d))
        with pytest.raises(Crash):
            w.commit()  # recorded in the store, not yet renamed on S3
        # What a writer of an earlier version (flat tmp layout) killed before its
        # store commit leaves: a tmp object (its repos, open_dids, are still
        # in_progress in the store).
        dead = f"{TMP_DIR}/{tmp_name(f'{POST}/part-dead-000000.parquet')}"
        with s3.open_output_stream(f"{BUCKET}/run2/{dead}") as f:
            f.write(b"PAR1 half a file")
        assert landed_uris(s3, "run2") == Counter()

        # The next start: the store puts in-flight repos back, the sink settles the
        # tmp dir. The crashed writer `w` still beats (an hour has not passed):
        # its committed files are renamed all the same.
        assert store.recover() == len(open_dids)
        fresh = DatasetWriter(out, store, SinkConfig())
        report = fresh.recover()
        assert report.renamed > 0 and report.deleted == 1 and report.missing == ()
        assert report.live_writers == 1 and report.dead_writers == 0
        w.close()
        fresh.close()
    got = landed_uris(s3, "run2")
    assert set(got) == set().union(*(expected_uris(d) for d in committed_dids))
    assert all(n == 1 for n in got.values())
    assert not [k for k in object_keys(s3, "run2") if k.startswith(f"{TMP_DIR}/")]


def test_recovery_on_s3_keeps_a_live_writers_open_batch(
    s3: pafs.S3FileSystem, tmp_path: Path
) -> None:
    """Object stores have no locks: a writer is alive while its heartbeat is young."""
    out = f"s3://{BUCKET}/run3"
    dids = [f"did:plc:s3l{i}" for i in range(4)]
    with SqliteStateStore(tmp_path / "state.sqlite") as store:
        # Small files, so some parts are closed (visible objects) while the batch is open.
        busy = DatasetWriter(out, store, SinkConfig(max_file_rows=5))
        for d in dids:
            busy.add(*extract(d))
        mine = f"{TMP_DIR}/{busy.writer_id}/"
        open_parts = {
            k for k in object_keys(s3, "run3") if k.startswith(mine) and k.endswith(".tmp")
        }
        assert open_parts
        other = DatasetWriter(out, store, SinkConfig())
        report = other.recover()
        assert (report.kept, report.deleted, report.live_writers) == (len(open_parts), 0, 1)
        assert open_parts <= object_keys(s3, "run3")
        busy.commit()  # lands whole
        busy.close()
        other.close()
    got = landed_uris(s3, "run3")
    assert set(got) == set().union(*(expected_uris(d) for d in dids))
    assert all(n == 1 for n in got.values())
    assert not [k for k in object_keys(s3, "run3") if k.startswith(f"{TMP_DIR}/")]


def test_cli_backfill_to_s3_with_a_postgresql_queue(s3: pafs.S3FileSystem, tmp_path: Path) -> None:
    """The whole product: `run --out s3://... --queue postgresql://...` on the simulator."""
    from bsky_backfill.simulate import Scenario, run_network_in_thread
    from tests.conftest import run_cli
    from tests.state.pg import fresh_schema_url

    scenario = Scenario(seed=71, accounts=10, hosts=2, mean_records=20)
    with fresh_schema_url() as queue, run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        out = f"s3://{BUCKET}/cli-run"
        result = run_cli(
            "run", "--dids", str(dids), "--out", out, "--queue", queue, "--plc-url",
            net.plc_url, "--allow-private-hosts", "--no-progress", "--rate-limit", "0",
        )  # fmt: skip
        truth = net.truth
    assert result.returncode == 0, result.stderr
    expected = truth.expected_rows()
    got: Counter[str] = Counter()
    for collection in {r.collection for r in expected.values()}:
        dataset = ds.dataset(f"{BUCKET}/cli-run/{collection}", filesystem=s3, format="parquet")
        got.update(dataset.to_table(columns=["uri"]).column("uri").to_pylist())
    assert got == Counter(list(expected))
    letters = ds.dataset(f"{BUCKET}/cli-run/_deadletters", filesystem=s3, format="parquet")
    got_letters = {
        (r["did"], r["uri"], r["stage"], r["error"])
        for r in letters.to_table(columns=["did", "uri", "stage", "error"]).to_pylist()
    }
    want = {(d.did, d.uri, d.stage, d.code) for d in truth.expected_dead_letters()}
    assert got_letters == want


def test_cli_refresh_on_s3_reads_the_key_index_not_the_dataset(
    s3: pafs.S3FileSystem, tmp_path: Path
) -> None:
    """`run --refresh --out s3://...`: the key index in the queue stands in for the
    dataset, so a remote dataset refreshes too (new posts land, deletions recorded)."""
    from bsky_backfill.simulate import Scenario, run_network_in_thread
    from tests.conftest import run_cli
    from tests.state.pg import fresh_schema_url

    scenario = Scenario(seed=72, accounts=8, hosts=2, mean_records=20)
    out = f"s3://{BUCKET}/cli-refresh"
    with fresh_schema_url() as queue, run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        common = ["--out", out, "--queue", queue, "--plc-url", net.plc_url,
                  "--allow-private-hosts", "--no-progress", "--rate-limit", "0"]  # fmt: skip
        first = run_cli("run", "--dids", str(dids), *common)
        assert first.returncode == 0, first.stderr
        posts = sorted(r for r in net.truth.expected_rows().values() if r.collection == POST)
        gone = posts[0]
        net.mutate(gone.did, delete_uris=(gone.uri,))
        grown = net.mutate(posts[-1].did, add_posts=3)
        refresh = run_cli("run", "--refresh", *common)
        assert refresh.returncode == 0, refresh.stderr
        assert "refresh: 3 new, 0 updated, 1 deleted records" in refresh.stdout
    deletions = ds.dataset(f"{BUCKET}/cli-refresh/_deletions", filesystem=s3, format="parquet")
    rows = deletions.to_table(columns=["uri", "cid", "reason"]).to_pylist()
    assert rows == [{"uri": gone.uri, "cid": gone.cid, "reason": "deleted"}]
    uris = landed_uris(s3, "cli-refresh")
    assert {r.uri for r in grown.added} <= set(uris)
    assert max(uris.values()) == 1
