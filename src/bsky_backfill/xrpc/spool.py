"""The run's spool directory: where response bodies too big for memory wait to be decoded.

Where it sits: the engine opens one `SpoolDir` per process at start-up
(`OUT/_state/spool/` for a local dataset, a folder under the system's
temporary directory for a remote one) and hands it to the HTTP client
(xrpc/body.py writes big CARs there) and the worker (which maps them).

A process killed while spooling leaves its files behind; nothing else would
ever remove them (a killed run once left a 245 MB CAR in /tmp). So each
process spools into its own sub-directory holding an exclusive `flock` on a
`.lock` file for as long as it lives, and every process, when it opens its
own, first removes every sub-directory whose lock nobody holds: those of dead
processes. A live process's files (another worker, another run sharing the
dataset through PostgreSQL) are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO

LOCK = ".lock"


class SpoolDir:
    """This process's spool sub-directory (see the module docstring)."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> SpoolDir:
        """Sweep dead processes' leftovers under `root`, then claim a sub-directory."""
        root_path = Path(root)
        root_path.mkdir(parents=True, exist_ok=True)
        sweep(root_path)
        path = root_path / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path.mkdir()
        fd = os.open(path / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return cls(path, fd)

    def new_file(self) -> IO[bytes]:
        """A new spool file; whoever ends up with it removes it (Body.discard)."""
        return tempfile.NamedTemporaryFile(
            prefix="body-", suffix=".car", dir=self.path, delete=False
        )

    def close(self) -> None:
        """Remove this process's directory and everything left in it."""
        if self._lock_fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> SpoolDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sweep(root: Path) -> list[str]:
    """Remove the sub-directories of `root` no live process holds; returns their names."""
    removed: list[str] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir():
            with contextlib.suppress(OSError):
                entry.unlink()  # nothing of ours lives directly here
            continue
        try:
            fd = os.open(entry / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # held: a live process's directory
        try:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        finally:
            os.close(fd)
    return removed


def spool_root(out: str, state_dir: Path | None) -> Path:
    """Where a run spools: under its local state directory, else under the system's
    temporary directory (a remote dataset has no local state)."""
    if state_dir is not None and "://" not in out:
        return state_dir / "spool"
    return Path(tempfile.gettempdir()) / "bsky-backfill-spool"


__all__ = ["SpoolDir", "spool_root", "sweep"]
