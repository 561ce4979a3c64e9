"""Sources of accounts: a file (or stdin) of one account per line, or `--did` values.

Where it sits: the first stage. A source is validated *before* anything is
written (bad lines are exit 2 with nothing created, all of them reported at
once), then streamed into the state store in chunks while the rest of the
engine is already fetching. Files of tens of millions of lines are read twice
(validate, then stream) rather than held in memory; standard input is spooled
to a temporary file for that.

Lines come as people make them: a UTF-8 byte-order mark (Excel, Notepad),
CRLF line ends, stray spaces, `# comments`, and an account written as a DID,
a handle (`alice.bsky.social` or `@alice.bsky.social`), an `at://` URI (its
authority) or a profile URL (`https://bsky.app/profile/<handle-or-did>`). Each
is reduced to a DID or a lower-case handle (`account_of`) before it reaches the
store; handles are resolved and verified by the identity stage
(identity/handle.py), which puts the DID in their place.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bsky_backfill.errors import UsageError
from bsky_backfill.identity.handle import normalize_handle
from bsky_backfill.syntax import is_supported_did

MAX_SHOWN = 20
"""Bad lines named one by one in the error; the rest are counted."""

_WHAT = "a did:plc/did:web DID or a handle (or an at:// URI or bsky.app profile URL of one)"
# https://bsky.app/profile/<actor>[/post/...][?query][#fragment]; scheme and www optional.
_PROFILE_URL = re.compile(r"(?:https?://)?(?:www\.)?bsky\.app/profile/([^/?#\s]+)(?:[/?#]\S*)?")
_AT_URI = re.compile(r"at://([^/?#\s]+)(?:/\S*)?")


def _clean(line: str) -> str | None:
    """The account text of one line, or None for blank lines and comments.

    A `#` starts a comment anywhere on the line (no accepted form holds one);
    a byte-order mark, surrounding spaces and quotes (a one-column CSV) go.
    """
    text = line.replace("\ufeff", "").split("#", 1)[0].strip().strip("\"'").strip()
    return text or None


def account_of(text: str) -> str | None:
    """The account named by one cleaned line: a DID, or a handle (lower case, no `@`,
    resolved by the engine's identity stage), from any accepted form; else None."""
    match = _AT_URI.fullmatch(text) or _PROFILE_URL.fullmatch(text)
    actor = match.group(1) if match else text
    if actor.startswith("did:"):
        return actor if is_supported_did(actor) else None
    return normalize_handle(actor)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def bad_lines_error(name: str, bad: list[tuple[int, str]], total: int) -> UsageError:
    """One error for every bad line: the first `MAX_SHOWN` named, the rest counted."""
    if total == 1:
        number, text = bad[0]
        return UsageError(f"{name} line {number}: {_shown(text)} is not {_WHAT}")
    lines = [f"{name}: {total} lines are not {_WHAT}:"]
    lines += [f"  line {number}: {_shown(text)}" for number, text in bad]
    if total > len(bad):
        lines.append(f"  ... and {total - len(bad)} more")
    return UsageError.of_lines(lines)


@dataclass
class DidSource:
    """DIDs from `--did` values and/or a `--dids` file (path or '-' for stdin)."""

    dids: list[str] = field(default_factory=list)
    path: Path | None = None
    _spool: IO[str] | None = None
    count: int = 0
    handles: int = 0
    """How many of `count` are handles (resolved by the identity stage)."""

    @classmethod
    def from_args(cls, dids: Iterable[str], file: str | None) -> DidSource:
        """Validate everything now; raise UsageError naming every bad value."""
        source = cls()
        bad_values = []
        for value in dids:
            did = account_of(_clean(value) or "")
            if did is None:
                bad_values.append(value)
            else:
                source.dids.append(did)
                source.handles += not did.startswith("did:")
        if bad_values:
            shown = ", ".join(_shown(v) for v in bad_values[:MAX_SHOWN])
            more = f" and {len(bad_values) - MAX_SHOWN} more" if len(bad_values) > MAX_SHOWN else ""
            raise UsageError(f"--did {shown}{more}: not {_WHAT}")
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
                with path.open(encoding="utf-8-sig", newline=None) as fh:
                    source._validate(fh, file, copy_to=None)
            except UnicodeDecodeError as e:
                raise UsageError(f"--dids {file}: not UTF-8 text ({e.reason})") from e
            source.path = path
        source.count += len(source.dids)
        if source.count == 0:
            raise UsageError("no DIDs given (the list is empty)")
        return source

    def _validate(self, fh: IO[str], name: str, copy_to: IO[str] | None) -> None:
        bad: list[tuple[int, str]] = []
        total_bad = 0
        for number, line in enumerate(fh, 1):
            text = _clean(line)
            if text is None:
                continue
            did = account_of(text)
            if did is None:
                total_bad += 1
                if len(bad) < MAX_SHOWN:
                    bad.append((number, text))
                continue
            self.count += 1
            self.handles += not did.startswith("did:")
            if copy_to is not None:
                copy_to.write(did + "\n")
        if total_bad:
            raise bad_lines_error(name, bad, total_bad)

    def chunks(self, size: int = 10_000) -> Iterator[list[str]]:
        """Stream the DIDs in chunks (order kept, duplicates left to the store)."""
        chunk: list[str] = list(self.dids)
        handle: IO[str] | None = self._spool
        opened = False
        if handle is None and self.path is not None:
            handle = self.path.open(encoding="utf-8-sig")
            opened = True
        try:
            for line in handle or ():
                text = _clean(line)
                did = account_of(text) if text is not None else None
                if did is None:
                    continue  # validated already: only blank lines and comments
                chunk.append(did)
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
        finally:
            if opened and handle is not None:
                handle.close()
        if chunk:
            yield chunk
