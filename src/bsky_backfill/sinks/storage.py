"""Where the dataset lives: `--out` as a pyarrow filesystem, plus the layout rules.

Where it sits: under `sinks.parquet.DatasetWriter` and `sinks.recovery`, which
need a few file operations (create, move, delete, list with times) and, on a
local disk, fsync of files and directories. Going through `pyarrow.fs` keeps
`--out s3://...` working; fsync is a no-op there (object stores are durable
once a PUT returns).

Layout (relative to OUT):
    <collection>/part-<writer>-<seq>.parquet   committed data, what readers glob
    <collection>/compact-<writer>-<seq>.parquet   the same rows, rewritten by compaction
                                               (`table_dir`: an NSID too long for a file
                                               name is cut, with a hash: `<prefix>~<hash>`)
    _deadletters/part-<writer>-<seq>.parquet   committed dead letters
    _superseded/part-<writer>-<seq>.parquet    dead letters made history by --retry-failed
    _accounts/part-<writer>-<seq>.parquet      a row per repo landed or failed (accounts.py)
    _state/tmp/<writer>/.lock                  the writer's liveness marker (liveness.py)
    _state/tmp/<writer>/<quoted final>.tmp     files of that writer's open batch: beside
                                               the run's other state, matched by no
                                               `*.parquet` glob and under no table
    _state/tmp/<quoted final>.tmp              the flat layout of earlier versions: no
                                               owner, treated as a dead writer's

One directory per writer (process or machine) so that recovery can tell whose
tmp files are whose, and leave a live writer's open batch alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import posixpath
import re
import urllib.parse
import uuid
from dataclasses import dataclass, field

import pyarrow.fs as pafs

TMP_DIR = "_state/tmp"
DEAD_LETTERS = "_deadletters"
DELETIONS = "_deletions"
"""Records a refresh found deleted or replaced (see engine/refresh.py)."""
SUPERSEDED = "_superseded"
"""Whole-repo dead letters that `run --retry-failed` made history (sinks/superseded.py)."""
ACCOUNTS = "_accounts"
"""One row per repo each time a commit lands or fails it (sinks/accounts.py)."""
LOCK_NAME = ".lock"
"""A writer's liveness marker inside its tmp dir (see liveness.py)."""
_TMP_SUFFIX = ".tmp"
# Collection names come from repository data, i.e. from strangers: only
# NSID-shaped names may become a directory (no "/", "..", leading "_" or ".").
_NSID = re.compile(r"[A-Za-z][A-Za-z0-9-]*(\.[A-Za-z0-9-]+)+")
# What `new_writer_id` makes; recovery leaves any other directory alone.
_WRITER_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{12}")


def check_collection(name: str) -> None:
    """Refuse a collection name that is not a safe, NSID-shaped directory name."""
    if name in (DELETIONS, SUPERSEDED, ACCOUNTS):
        return
    if len(name) > 317 or not _NSID.fullmatch(name):
        raise ValueError(f"unsafe collection name for the dataset: {name!r}")


TABLE_DIR_MAX = 200
"""Characters of a table directory name at most: an NSID may have 317, a file name 255
bytes, and a tmp file's name is its final path quoted (plus ~55 characters)."""


def table_dir(collection: str) -> str:
    """The directory (relative to OUT) of a collection's table: its NSID, or for an NSID
    too long to be a file name, its first characters and a hash of the whole
    (`~` never occurs in an NSID, so the two forms cannot meet). The `collection`
    column keeps the full name either way."""
    if len(collection) <= TABLE_DIR_MAX:
        return collection
    digest = hashlib.sha256(collection.encode()).hexdigest()[:16]
    return f"{collection[: TABLE_DIR_MAX - 17]}~{digest}"


def new_writer_id() -> str:
    """A writer id unique per writer instance (process, machine); the time prefix
    keeps listings in write order."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{uuid.uuid4().hex[:12]}"


def is_writer_id(name: str) -> bool:
    return _WRITER_ID.fullmatch(name) is not None


STAGING_PREFIX = ".new-"
"""A writer's directory is made under `TMP_DIR/.new-<writer>-<n>` with its lock
held, then renamed to its final name (see liveness.py): never a writer id."""


def staging_writer(name: str) -> bool:
    """Whether a directory name under TMP_DIR is a writer directory being created."""
    if not name.startswith(STAGING_PREFIX):
        return False
    writer, _, n = name[len(STAGING_PREFIX) :].rpartition("-")
    return is_writer_id(writer) and n.isdigit()


def writer_dir(writer: str) -> str:
    """A writer's own tmp directory (relative to OUT)."""
    if not is_writer_id(writer):
        raise ValueError(f"not a writer id: {writer!r}")
    return f"{TMP_DIR}/{writer}"


def tmp_path(final: str, writer: str) -> str:
    """The temporary twin of a final relative path, in `writer`'s tmp directory
    (flat inside it: one directory to fsync per commit)."""
    return f"{writer_dir(writer)}/{tmp_name(final)}"


def tmp_name(final: str) -> str:
    """The file name (no directory) of a final path's temporary twin."""
    return f"{urllib.parse.quote(final, safe='')}{_TMP_SUFFIX}"


def final_path(tmp_name: str) -> str | None:
    """Inverse of `tmp_name`, for a file name inside a tmp directory; None if not ours."""
    if not tmp_name.endswith(_TMP_SUFFIX):
        return None
    return urllib.parse.unquote(tmp_name[: -len(_TMP_SUFFIX)])


@dataclass(slots=True)
class Listing:
    """One directory level: plain files with their modification times, and subdirectories."""

    files: dict[str, dt.datetime | None] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)


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

    def move_committed(self, src: str, dst: str) -> bool:
        """Move a committed tmp file into place; False if someone else just did.

        Any process may rename a committed file (the store says it is final), so
        its owner and a recovering writer can race: the loser finds its source
        gone and the destination there, which is the outcome both wanted.
        """
        try:
            self.move(src, dst)
        except OSError:
            # S3 reports a vanished source as a generic OSError (NoSuchKey), so
            # look instead of trusting the exception type.
            if not self.exists(src) and self.exists(dst):
                return False
            raise
        return True

    def delete(self, rel: str) -> None:
        self.fs.delete_file(self.abs(rel))

    def exists(self, rel: str) -> bool:
        return bool(self.fs.get_file_info(self.abs(rel)).type == pafs.FileType.File)

    def list_dir(self, rel_dir: str) -> Listing:
        """One level of `rel_dir` (empty if it does not exist)."""
        sel = pafs.FileSelector(self.abs(rel_dir), recursive=False, allow_not_found=True)
        for attempt in range(3):
            try:
                infos = self.fs.get_file_info(sel)
                break
            except FileNotFoundError:
                # pyarrow (local) lists, and on ENOENT checks whether the directory
                # exists: one created in between (another writer's first file of
                # a collection) makes that an error. Listing again sees it.
                if attempt == 2:
                    raise
        out = Listing()
        for i in infos:
            name = posixpath.basename(i.path.rstrip("/"))
            if i.type == pafs.FileType.File:
                out.files[name] = i.mtime
            elif i.type == pafs.FileType.Directory:
                out.dirs.append(name)
        return out

    def list_names(self, rel_dir: str) -> list[str]:
        """Names of the plain files directly in `rel_dir` ([] if it does not exist)."""
        return list(self.list_dir(rel_dir).files)

    def mtime(self, rel: str) -> dt.datetime | None:
        """Last modification (the object store's clock for remote files)."""
        t = self.fs.get_file_info(self.abs(rel)).mtime
        return t if isinstance(t, dt.datetime) else None

    def dir_mtime(self, rel: str) -> dt.datetime | None:
        """A directory's own modification time (local only; None elsewhere or if gone)."""
        if not self.local:
            return None
        try:
            return dt.datetime.fromtimestamp(os.stat(self.abs(rel)).st_mtime, dt.UTC)
        except FileNotFoundError:
            return None

    def touch(self, rel: str) -> None:
        """Create `rel` empty, or bring its modification time to now."""
        if self.local:
            path = self.abs(rel)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
            os.utime(path)
        else:
            # An object's time can only change by writing it again.
            with self.fs.open_output_stream(self.abs(rel)) as f:
                f.write(b"")

    def remove_dir_if_empty(self, rel: str) -> bool:
        """Remove a directory that holds nothing; False if it holds something or is gone."""
        if self.local:
            # rmdir(2) refuses a non-empty directory atomically: a file created
            # concurrently is never lost.
            try:
                os.rmdir(self.abs(rel))
            except OSError:
                return False
            self.fsync_dir(posixpath.dirname(rel))
            return True
        listing = self.list_dir(rel)
        if listing.files or listing.dirs:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(self.abs(rel))  # the empty "directory" marker object
        return True

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
