"""A child process that compacts a dataset and SIGKILLs itself at one step
(`python -m tests.sinks.compact_child OUT STEP`; STEP "none": finish cleanly).

Steps are `DatasetWriter.swap`'s: written, stored, renamed:<i>, deleted:<i>,
compacted; the first table to reach STEP dies there (kill -9: no cleanup, no
atexit, its writer lock released by the kernel).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from bsky_backfill.sinks.compact import CompactConfig, compact_dataset
from bsky_backfill.state.sqlite import SqliteStateStore

STORE = "_state/state.sqlite"
# Tiny targets so a small dataset makes several files and row groups.
SMALL = CompactConfig(row_group_bytes=4096, file_bytes=6000, memory_limit="64MB", threads=1)


def main(out: Path, step: str) -> None:
    def hook(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    store = SqliteStateStore(out / STORE)
    report = compact_dataset(str(out), store, SMALL, step_hook=hook)
    store.close()
    print(f"compacted {report.rows}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
