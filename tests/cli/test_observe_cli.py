"""The operator's flags through the real CLI: --config and environment, --log-format json,
--metrics-port (scraped while the run is going), a port already taken."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bsky_backfill.simulate import RateLimit, Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import collections_in


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_config_file_and_environment_drive_a_run(tmp_path: Path) -> None:
    scenario = Scenario(seed=81, accounts=8, hosts=2, mean_records=20)
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        config = tmp_path / "backfill.toml"
        config.write_text(
            f'dids = "dids.txt"\nout = "from-file"\nplc_url = "{net.plc_url}"\n'
            'collections = ["app.bsky.feed.post", "app.bsky.graph.follow"]\n'
            "allow_private_hosts = true\nrate_limit = 0\nprogress = false\n"
        )
        env_out = tmp_path / "from-env"
        result = subprocess.run(
            [sys.executable, "-m", "bsky_backfill", "run", "--config", str(config),
             "--collections", "app.bsky.feed.post"],
            capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "BSKY_BACKFILL_OUT": str(env_out)},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "from-file").exists()  # env beats file
    assert collections_in(env_out) == ["app.bsky.feed.post"]  # flag beats file


def test_bad_config_value_is_one_line_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('did = ["did:plc:z72i7hdynmk6r22z27h6tvur"]\nrate_limit = "fast"\n')
    result = run_cli("run", "--config", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "rate_limit" in result.stderr
    assert not (tmp_path / "out").exists()


def test_json_logs_and_metrics_during_a_run(tmp_path: Path) -> None:
    limit = RateLimit(limit=1000, window_s=1.0, get_repo_limit=4)
    scenario = Scenario(seed=82, accounts=20, hosts=2, mean_records=20, rate_limit=limit)
    port = free_port()
    with run_network_in_thread(scenario) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bsky_backfill", "-v", "run", "--dids", str(dids), "--out",
             str(tmp_path / "out"), "--plc-url", net.plc_url, "--allow-private-hosts",
             "--no-progress", "--rate-limit", "0", "--log-format", "json",
             "--metrics-port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        scraped = ""
        deadline = time.monotonic() + 60
        while not scraped and proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    scraped = r.read().decode()
            except OSError:
                time.sleep(0.05)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "bsky_backfill_requests_total" in scraped
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert lines and all({"ts", "level", "msg"} <= set(line) for line in lines)
    assert any(line.get("did") for line in lines)  # per-repo lines carry the DID


def test_metrics_port_in_use_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", "--did", "did:plc:z72i7hdynmk6r22z27h6tvur", "--out",
                         str(tmp_path / "out"), "--metrics-port", str(port))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "metrics" in result.stderr.lower()
    assert not (tmp_path / "out").exists()
