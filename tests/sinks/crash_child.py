"""A child process that writes batches and dies on purpose (`python -m tests.sinks.crash_child`).

    crash_child OUT STEP   claim everything, commit one batch, then die with
                           os._exit at STEP of the second commit ("add": after
                           the adds, before commit); "none": finish cleanly
    crash_child OUT loop   claim and commit small batches until the queue is
                           empty; the parent SIGKILLs it at a random moment

The store must already hold resolved DIDs on host "h1" (see test_crash.py).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

from bsky_backfill.models import DeadLetter
from bsky_backfill.sinks import DatasetWriter, SinkConfig
from bsky_backfill.state.base import RepoFailed
from bsky_backfill.state.sqlite import SqliteStateStore
from tests.sinks.builders import extract

STORE = "_state/state.sqlite"


def failing(did: str) -> bool:
    return did.endswith("7")


def add_repo(writer: DatasetWriter, did: str) -> None:
    if failing(did):
        letter = DeadLetter(did, None, "fetch", "RepoTakendown", "taken down")
        writer.add_failed(RepoFailed(did, "RepoTakendown", "taken down"), letter)
    else:
        writer.add(*extract(did, bad_records=did.endswith("3")))


def main(out: Path, step: str) -> None:
    store = SqliteStateStore(out / STORE)
    now = dt.datetime.now(dt.UTC)

    armed = False  # only the second batch's commit dies

    def hook(name: str) -> None:
        if armed and name == step:
            os._exit(3)

    if step == "loop":
        cfg = SinkConfig(commit_rows=60, commit_seconds=0.05, row_group_rows=16)
        writer = DatasetWriter(out, store, cfg)
        print("ready", flush=True)
        while tasks := store.claim("h1", 3, now):
            for t in tasks:
                add_repo(writer, t.did)
            if writer.should_commit():
                writer.commit()
        writer.commit()
        return
    writer = DatasetWriter(
        out, store, SinkConfig(row_group_rows=8, max_file_rows=20), step_hook=hook
    )
    tasks = store.claim("h1", 1000, now)
    half = len(tasks) // 2
    for t in tasks[:half]:
        add_repo(writer, t.did)
    writer.commit()
    armed = True
    for t in tasks[half:]:
        add_repo(writer, t.did)
    hook("add")
    writer.commit()
    store.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
