"""A child process that writes batches and dies on purpose (`python -m tests.sinks.crash_child`).

    crash_child OUT STEP   claim everything, commit one batch, then die with
                           os._exit at STEP of the second commit ("add": after
                           the adds, before commit); "none": finish cleanly
    crash_child OUT loop   claim and commit small batches until the queue is
                           empty; the parent SIGKILLs it at a random moment
    crash_child OUT two    two writers: the first keeps an open batch (tmp files
                           written, not committed), the second commits and pauses
                           after the store commit, before any rename (prints
                           "stored"); on a line from stdin both finish their
                           commits ("done"); the parent may SIGKILL it instead

The store must already hold resolved DIDs on host "h1" (see test_crash.py).
"""

from __future__ import annotations

import datetime as dt
import json
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
    if step == "two":
        two_writers(out, store, now)
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


def two_writers(out: Path, store: SqliteStateStore, now: dt.datetime) -> None:
    cfg = SinkConfig(row_group_rows=8, max_file_rows=20)
    holding = DatasetWriter(out, store, cfg)
    opened = [t.did for t in store.claim("h1", 4, now)]
    for did in opened:
        add_repo(holding, did)
    say("open", opened, holding.writer_id)
    stored = [t.did for t in store.claim("h1", 4, now)]

    def pause(name: str) -> None:
        if name == "stored":
            say("stored", stored, committing.writer_id)
            sys.stdin.readline()

    committing = DatasetWriter(out, store, cfg, step_hook=pause)
    for did in stored:
        add_repo(committing, did)
    committing.commit()  # pauses after the store commit, before the renames
    holding.commit()
    holding.close()
    committing.close()
    say("done", [], "")


def say(event: str, dids: list[str], writer: str) -> None:
    """One JSON line for the parent: [event, DIDs, writer id]."""
    print(json.dumps([event, dids, writer]), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
