"""Where the dataset lives: `--out` as a pyarrow filesystem, plus the layout rules.

Where it sits: under `sinks.parquet.DatasetWriter`, which needs a few file
operations (create, move, delete, list) and, on a local disk, fsync of files and
directories. Going through `pyarrow.fs` keeps `--out s3://...` a small step
later; fsync is a no-op there (object stores are durable once a PUT returns).

Layout (relative to OUT):
    <collection>/part-<id>.parquet       committed data, what readers glob
    _deadletters/part-<id>.parquet       committed dead letters
    _state/tmp/<quoted final path>.tmp   files of the open batch: flat, beside
                                         the run's other state, matched by no
                                         `*.parquet` glob and under no table
"""

from __future__ import annotations

import os
import posixpath
import re
import urllib.parse

import pyarrow.fs as pafs

TMP_DIR = "_state/tmp"
DEAD_LETTERS = "_deadletters"
DELETIONS = "_deletions"
"""Records a refresh found deleted or replaced (see engine/refresh.py)."""
_TMP_SUFFIX = ".tmp"
# Collection names come from repository data, i.e. from strangers: only
# NSID-shaped names may become a directory (no "/", "..", leading "_" or ".").
_NSID = re.compile(r"[A-Za-z][A-Za-z0-9-]*(\.[A-Za-z0-9-]+)+")


def check_collection(name: str) -> None:
    """Refuse a collection name that is not a safe, NSID-shaped directory name."""
    if name == DELETIONS:
        return
    if len(name) > 317 or not _NSID.fullmatch(name):
        raise ValueError(f"unsafe collection name for the dataset: {name!r}")


def tmp_path(final: str) -> str:
    """The temporary twin of a final relative path (flat: one directory to fsync)."""
    return f"{TMP_DIR}/{urllib.parse.quote(final, safe='')}{_TMP_SUFFIX}"


def final_path(tmp_name: str) -> str | None:
    """Inverse of `tmp_path` for a file name inside TMP_DIR; None if not ours."""
    if not tmp_name.endswith(_TMP_SUFFIX):
        return None
    return urllib.parse.unquote(tmp_name[: -len(_TMP_SUFFIX)])


class Storage:
    """OUT on a pyarrow filesystem; every path argument is relative to OUT."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        out_s = os.fspath(out)
        if "://" in out_s:
            fs, base = pafs.FileSystem.from_uri(out_s)
        else:
            fs, base = pafs.LocalFileSystem(), os.path.abspath(out_s)
        self.fs: pafs.FileSystem = fs
        self.base: str = base.rstrip("/")
        self.local = isinstance(fs, pafs.LocalFileSystem)

    def abs(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def makedirs(self, rel: str) -> None:
        """Create a directory (and parents) so that its name survives a power cut."""
        self.fs.create_dir(self.abs(rel), recursive=True)
        while rel:
            rel = posixpath.dirname(rel)
            self.fsync_dir(rel)

    def move(self, src: str, dst: str) -> None:
        # Local: rename(2), atomic, replaces dst. Object stores: copy + delete,
        # which recovery tolerates (it finishes or skips a half-done move).
        self.fs.move(self.abs(src), self.abs(dst))

    def delete(self, rel: str) -> None:
        self.fs.delete_file(self.abs(rel))

    def list_names(self, rel_dir: str) -> list[str]:
        """Names of the plain files directly in `rel_dir` ([] if it does not exist)."""
        sel = pafs.FileSelector(self.abs(rel_dir), recursive=False, allow_not_found=True)
        return [
            posixpath.basename(i.path)
            for i in self.fs.get_file_info(sel)
            if i.type == pafs.FileType.File
        ]

    def fsync_file(self, rel: str) -> None:
        if self.local:
            _fsync(self.abs(rel), os.O_RDONLY)

    def fsync_dir(self, rel: str) -> None:
        """Make the names in a directory (creations, renames, deletions) durable."""
        if self.local:
            _fsync(self.abs(rel), os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
