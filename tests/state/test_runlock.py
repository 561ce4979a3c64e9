"""One run per dataset: the lock on `--out` and the refusal of data without state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bsky_backfill.errors import UsageError
from bsky_backfill.state.runlock import (
    RunLock,
    check_state_present,
    has_parquet_data,
    live_holder,
    lock_path,
)


def test_a_held_out_refuses_a_second_run_naming_the_holder(tmp_path: Path) -> None:
    assert live_holder(tmp_path) is None  # no lock file yet
    lock = RunLock.acquire(tmp_path)
    try:
        holder = live_holder(tmp_path)
        assert holder is not None and holder.pid == os.getpid()
        with pytest.raises(UsageError, match=rf"held by another run \(pid {os.getpid()} on "):
            RunLock.acquire(tmp_path)
    finally:
        lock.release()
    assert live_holder(tmp_path) is None
    RunLock.acquire(tmp_path).release()  # free again


def test_a_killed_holders_lock_is_stale(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A child takes the lock and dies with it (SIGKILL: no clean-up at all).
    code = (
        "import os, signal, sys; from bsky_backfill.state.runlock import RunLock; "
        f"RunLock.acquire({str(tmp_path)!r}); os.kill(os.getpid(), signal.SIGKILL)"
    )
    child = subprocess.run([sys.executable, "-c", code], check=False)
    assert child.returncode == -9
    left = json.loads(lock_path(tmp_path).read_text())
    assert isinstance(left["pid"], int) and left["pid"] != os.getpid()
    assert live_holder(tmp_path) is None  # the kernel dropped the flock with the process
    lock = RunLock.acquire(tmp_path)
    lock.release()
    assert any("ended without releasing its lock" in r.getMessage() for r in caplog.records)


def test_data_without_state_is_refused(tmp_path: Path) -> None:
    check_state_present(tmp_path / "nothing", state_exists=False)  # an empty --out is fine
    (tmp_path / "_state").mkdir()
    (tmp_path / "_state" / "x.parquet").write_bytes(b"")  # the state's own files do not count
    assert not has_parquet_data(tmp_path)
    table = tmp_path / "app.bsky.feed.post"
    table.mkdir()
    (table / "part-1.parquet").write_bytes(b"PAR1")
    assert has_parquet_data(tmp_path)
    check_state_present(tmp_path, state_exists=True)
    with pytest.raises(UsageError, match="holds Parquet data but no backfill state"):
        check_state_present(tmp_path, state_exists=False)
