"""The spool directory: each process owns a sub-directory; dead ones are swept at start-up."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

from bsky_backfill.xrpc.spool import SpoolDir, sweep


def _spool_and_die(root: str, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    spool = SpoolDir.open(root)
    with spool.new_file() as fh:
        fh.write(b"x" * 1000)
    ready.set()
    signal.pause()  # killed here, never closing the spool


def test_a_killed_process_leaves_files_that_the_next_start_removes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_spool_and_die, args=(str(tmp_path), ready))
    child.start()
    assert ready.wait(60)
    live = SpoolDir.open(tmp_path)  # sweeps while the child lives: its files stay
    assert len([p for p in tmp_path.rglob("body-*")]) == 1
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(30)
    assert sweep(tmp_path) != []  # now the dead child's directory goes
    assert list(tmp_path.rglob("body-*")) == []
    assert live.path.is_dir()  # ours stays while we live
    with live.new_file() as fh:
        fh.write(b"y")
    live.close()
    assert list(tmp_path.iterdir()) == []
