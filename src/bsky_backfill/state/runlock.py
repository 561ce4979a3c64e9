"""One run per dataset: the lock a run holds on its `--out`, and the state it must find.

Where it sits: `Backfill.run()` (engine/manager.py) takes the lock before it
opens the state store, when the queue is SQLite under OUT (the default): two
runs on one SQLite queue would hand the same repos out twice and land them
twice. With `--queue postgresql://...` many runs share one dataset by design
(leases and fencing keep them apart), and there is no lock. `status` asks the
lock whether a run is alive, to tell repos "in progress" from "interrupted".

The lock is `OUT/_state/run.lock`, held with `flock(2)` for the whole run, and
holding its holder's pid, host and start time (JSON) for the message a second
run prints. The kernel drops a flock when its process dies, `kill -9`
included, so a crashed run's lock is stale by construction: the next run
takes it and says whose it was. (flock is advisory and local: a second run on
another machine over NFS may not see it; share a dataset between machines
through PostgreSQL.)

`check_state_present` refuses a run into an `--out` that holds Parquet data but
no state: without its ledger a run cannot know what landed, and would land it
all again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bsky_backfill.errors import UsageError

log = logging.getLogger("bsky_backfill")

LOCK_NAME = "run.lock"
# A `status` takes the lock shared for an instant to see whether a run holds it;
# a run starting at that very instant waits this long rather than refuse.
_ACQUIRE_PATIENCE_S = 2.0


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds (or last held) a dataset's lock."""

    pid: int | None
    host: str
    since: str

    def alive(self) -> bool:
        """False only when the holder is known dead (a process of this host that is gone)."""
        if self.pid is None or self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True  # exists, owned by someone else
        return True

    def describe(self) -> str:
        pid = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        return f"{pid} on {self.host or 'an unknown host'} since {self.since or '?'}"


def lock_path(out: str | os.PathLike[str]) -> Path:
    return Path(out) / "_state" / LOCK_NAME


def _read_holder(fh: IO[str]) -> Holder | None:
    fh.seek(0)
    text = fh.read()
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return Holder(pid=None, host="", since="")
    if not isinstance(data, dict):
        return Holder(pid=None, host="", since="")
    pid = data.get("pid")
    return Holder(
        pid=pid if isinstance(pid, int) else None,
        host=str(data.get("host", "")),
        since=str(data.get("since", "")),
    )


class RunLock:
    """The run's hold on `OUT/_state/run.lock`; `release()` (or process death) lets go."""

    def __init__(self, fh: IO[str], path: Path) -> None:
        self._fh = fh
        self.path = path

    @classmethod
    def acquire(cls, out: str | os.PathLike[str]) -> RunLock:
        """Hold OUT's lock, or raise `UsageError` naming the live holder (exit 2)."""
        path = lock_path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
        try:
            deadline = time.monotonic() + _ACQUIRE_PATIENCE_S
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = _read_holder(fh)
                    # A live holder that wrote its name is a run. No name, or the
                    # name of a dead process: a run starting, or a `status` peeking
                    # for an instant: worth a short wait.
                    if (holder is not None and holder.alive()) or time.monotonic() >= deadline:
                        who = holder.describe() if holder else "another process"
                        raise UsageError(
                            f"--out {out} is held by another run ({who}); wait for it to "
                            "finish or stop it (many runs share one dataset only through "
                            "--queue postgresql://...)"
                        ) from None
                    time.sleep(0.05)
            stale = _read_holder(fh)
            if stale is not None:
                log.warning(
                    "the previous run on %s (%s) ended without releasing its lock "
                    "(killed?); its unfinished repos are resumed",
                    out,
                    stale.describe(),
                )
            fh.seek(0)
            fh.truncate()
            fh.write(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    }
                )
            )
            fh.flush()
        except BaseException:
            fh.close()
            raise
        return cls(fh, path)

    def release(self) -> None:
        """Let go: the file stays, emptied, so `status` finds no holder."""
        if self._fh.closed:
            return
        with contextlib.suppress(OSError):
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.flush()
        self._fh.close()  # closing the descriptor drops the flock


def live_holder(out: str | os.PathLike[str]) -> Holder | None:
    """The live run holding OUT's lock, or None (no lock file, or nobody holds it).

    Peeks with a shared lock taken for an instant (never held)."""
    path = lock_path(out)
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fh) or Holder(pid=None, host="", since="")
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None


def has_parquet_data(out: Path) -> bool:
    """Whether OUT holds any Parquet file outside `_state` (stops at the first)."""
    if not out.is_dir():
        return False
    for root, dirs, files in os.walk(out):
        if Path(root) == out:
            dirs[:] = [d for d in dirs if d != "_state"]
        if any(f.endswith(".parquet") for f in files):
            return True
    return False


def check_state_present(out: str | os.PathLike[str], state_exists: bool) -> None:
    """Refuse (exit 2, nothing written) a dataset whose state is gone: rerunning into it
    would land again everything it holds."""
    path = Path(out)
    if not state_exists and has_parquet_data(path):
        raise UsageError(
            f"--out {out} holds Parquet data but no backfill state ({path / '_state'} "
            "is missing or empty), so a run cannot know what landed and would land it "
            "again: restore the state directory, or use another --out"
        )


__all__ = ["Holder", "RunLock", "check_state_present", "has_parquet_data", "live_holder"]
