"""Sources of DIDs: a file (or stdin) of one DID per line, or DIDs given on the command line.

Where it sits: the first stage. A source is validated *before* anything is
written (a bad line is exit 2 with nothing created), then streamed into the
state store in chunks while the rest of the engine is already fetching. Files
of tens of millions of lines are read twice (validate, then stream) rather than
held in memory; standard input is spooled to a temporary file for that.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bsky_backfill.errors import UsageError
from bsky_backfill.syntax import is_supported_did


def _clean(line: str) -> str | None:
    """A DID from one line, or None for blank lines and comments. A `#` starts a
    comment anywhere on the line (DIDs never contain one)."""
    text = line.split("#", 1)[0].strip()
    return text or None


@dataclass
class DidSource:
    """DIDs from `--did` values and/or a `--dids` file (path or '-' for stdin)."""

    dids: list[str] = field(default_factory=list)
    path: Path | None = None
    _spool: IO[str] | None = None
    count: int = 0

    @classmethod
    def from_args(cls, dids: list[str], file: str | None) -> DidSource:
        """Validate everything now; raise UsageError naming the first bad value."""
        source = cls()
        for did in dids:
            if not is_supported_did(did):
                raise UsageError(f"--did {did!r} is not a valid did:plc or did:web DID")
            source.dids.append(did)
        if file == "-":
            # Kept open for the run (read back by chunks()); closed with the process.
            source._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
            source._validate(sys.stdin, "<stdin>", copy_to=source._spool)
            source._spool.seek(0)
        elif file is not None:
            path = Path(file)
            if not path.is_file():
                raise UsageError(f"--dids {file}: no such file")
            try:
                with path.open(encoding="utf-8") as fh:
                    source._validate(fh, file, copy_to=None)
            except UnicodeDecodeError as e:
                raise UsageError(f"--dids {file}: not UTF-8 text ({e.reason})") from e
            source.path = path
        source.count += len(source.dids)
        if source.count == 0:
            raise UsageError("no DIDs given (the list is empty)")
        return source

    def _validate(self, fh: IO[str], name: str, copy_to: IO[str] | None) -> None:
        for number, line in enumerate(fh, 1):
            did = _clean(line)
            if did is None:
                continue
            if not is_supported_did(did):
                shown = did if len(did) <= 80 else did[:77] + "..."
                raise UsageError(f"{name} line {number}: {shown!r} is not a did:plc or did:web DID")
            self.count += 1
            if copy_to is not None:
                copy_to.write(did + "\n")

    def chunks(self, size: int = 10_000) -> Iterator[list[str]]:
        """Stream the DIDs in chunks (order kept, duplicates left to the store)."""
        chunk: list[str] = list(self.dids)
        handle: IO[str] | None = self._spool
        opened = False
        if handle is None and self.path is not None:
            handle = self.path.open(encoding="utf-8")
            opened = True
        try:
            for line in handle or ():
                did = _clean(line)
                if did is None:
                    continue
                chunk.append(did)
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
        finally:
            if opened and handle is not None:
                handle.close()
        if chunk:
            yield chunk
