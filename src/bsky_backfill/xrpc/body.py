"""Reading a response body within bounds: bytes on the wire, bytes decoded, and time.

Where it sits: under xrpc/client.py, for every response of every host (CARs,
listing pages, DID documents, error bodies). A host can send a body that
never ends, that trickles a byte per read timeout, or that inflates a
megabyte of gzip into a gigabyte; none of that may hold a slot, fill the disk
or the memory. So:

* the client asks aiohttp for the raw bytes (no automatic decompression) and
  decodes gzip/deflate here, a bounded piece at a time, counting both sides:
  a body whose decoded size passes its limit, or that inflates more than
  `max_ratio` times its wire size, is refused (terminal) before it is kept;
* `Content-Length` is compared with the bytes on the wire (the decoded size of
  a gzip body is another number: comparing those two once made every valid
  gzip CAR look truncated);
* every request has a deadline, moved on as bytes arrive (`Deadline`): a base
  allowance plus one second per `min_bytes_per_second` received, so a big
  repo may take its time while a trickle is cut off;
* bodies past `spool_bytes` go to a file in the run's spool directory
  (xrpc/spool.py), never to an unowned temporary file.

Written by hand around `zlib` (standard library): aiohttp's own decoder has
no output bound per chunk, which is what a compression bomb exploits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

import aiohttp

from bsky_backfill.errors import TerminalError, TransientError

_PIECE = 1 << 20
"""Decoded bytes produced per zlib call: the most a single wire chunk can cost in memory."""
_RATIO_SLACK = 1 << 20
"""Decoded bytes always allowed before the ratio applies (small, very compressible JSON)."""

SpoolFile = Callable[[], IO[bytes]]
"""Opens a new file for a spooled body (the run's spool directory)."""


@dataclass(slots=True)
class Body:
    """A response body: in memory, or (big CARs) in a spool file until it is decoded."""

    size: int
    data: bytes | None = None
    path: str | None = None
    wire: int = 0
    """Bytes received on the wire (compressed size, when the host compressed it)."""

    def read(self) -> bytes:
        """The bytes; a spooled file is read back and removed."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        with open(self.path, "rb") as fh:
            data = fh.read()
        self.discard()
        return data

    def discard(self) -> None:
        """Free the body (removes a spooled file)."""
        self.data = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """What one body may cost."""

    limit: int
    """Decoded bytes at most."""
    code: str = "BodyTooLarge"
    """The error code of a body over `limit` (`RepoTooLarge` for CARs)."""
    max_ratio: float = 100.0
    """Decoded bytes per wire byte at most (past the first MiB)."""
    spool_bytes: int | None = None
    """Past this many decoded bytes the body goes to a spool file (None: memory only)."""
    truncate: bool = False
    """Stop reading at `limit` instead of refusing the body (error bodies: their first
    bytes say enough)."""


class Deadline:
    """A request's time budget: `base` seconds plus one per `rate` bytes received.

    Wraps `asyncio.timeout`, so the budget holds between chunks too (a host that
    stops sending is cut off at the deadline, not at the next byte)."""

    def __init__(self, base: float, rate: float) -> None:
        self.base = base
        self.rate = rate
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._timeout = asyncio.timeout(self._start + base)
        self.expired = False

    async def __aenter__(self) -> Deadline:
        await self._timeout.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._timeout.__aexit__(*exc)  # type: ignore[arg-type]
        except TimeoutError:
            self.expired = True
            raise

    def received(self, wire_bytes: int) -> None:
        """`wire_bytes` have arrived in all: the deadline moves on accordingly."""
        self._timeout.reschedule(self._start + self.base + wire_bytes / self.rate)

    def allowance(self, wire_bytes: int) -> float:
        return self.base + wire_bytes / self.rate


class _Decoder:
    """Content-Encoding -> bounded pieces of decoded bytes."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._zlib: zlib._Decompress | None = None  # created at the first bytes (deflate)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.encoding == "identity":
            if data:
                yield data
            return
        if self._zlib is None:
            self._zlib = zlib.decompressobj(self._wbits(data))
        decoder = self._zlib
        try:
            while True:
                piece = decoder.decompress(data, _PIECE)
                if piece:
                    yield piece
                data = decoder.unconsumed_tail
                if decoder.eof or (not data and len(piece) < _PIECE):
                    return
        except zlib.error as e:
            raise TerminalError(
                f"body is not valid {self.encoding} ({e})", code="InvalidEncoding", stage="fetch"
            ) from e

    def _wbits(self, first: bytes) -> int:
        if self.encoding == "gzip":
            return 16 + zlib.MAX_WBITS
        # HTTP "deflate" is zlib-wrapped by the RFC, raw deflate by some servers.
        wrapped = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
        return zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS

    def finished(self) -> bool:
        """Whether the encoded stream ended properly (identity: always)."""
        return self.encoding == "identity" or (self._zlib is not None and self._zlib.eof)


def content_encoding(resp: aiohttp.ClientResponse) -> str:
    """The body's encoding; refuses those we did not offer (we send gzip, deflate)."""
    value = resp.headers.get("Content-Encoding", "").strip().lower()
    if value in ("", "identity"):
        return "identity"
    if value in ("gzip", "x-gzip"):
        return "gzip"
    if value == "deflate":
        return "deflate"
    raise TerminalError(
        f"body has Content-Encoding {value[:64]!r}, which was not asked for",
        code="InvalidEncoding",
        stage="fetch",
    )


async def read_body(
    resp: aiohttp.ClientResponse,
    limits: BodyLimits,
    deadline: Deadline,
    spool_file: SpoolFile | None = None,
) -> Body:
    """Stream one body within `limits` and `deadline` (see the module docstring).

    Raises TerminalError (too large, a compression bomb, a bad encoding) or
    TransientError (cut short); the deadline raises TimeoutError, which the
    client maps."""
    encoding = content_encoding(resp)
    declared = resp.content_length  # on the wire: aiohttp decodes nothing for us
    too_big = declared is not None and encoding == "identity" and declared > limits.limit
    if too_big and not limits.truncate:
        raise _too_large(limits, f"body of {declared} bytes exceeds the limit of {limits.limit}")
    decoder = _Decoder(encoding)
    buffer = bytearray()
    file: IO[bytes] | None = None
    wire = size = 0
    try:
        async for chunk in resp.content.iter_chunked(1 << 16):
            wire += len(chunk)
            deadline.received(wire)
            for piece in decoder.feed(chunk):
                size += len(piece)
                if size > limits.limit:
                    if limits.truncate:
                        buffer += piece[: len(piece) - (size - limits.limit)]
                        return Body(size=limits.limit, data=bytes(buffer), wire=wire)
                    raise _too_large(limits, f"body exceeds the limit of {limits.limit} bytes")
                if size > _RATIO_SLACK and size > limits.max_ratio * wire:
                    raise TerminalError(
                        f"body inflates more than {limits.max_ratio:.0f}x "
                        f"({wire} bytes on the wire, {size} decoded so far)",
                        code="CompressionBomb",
                        stage="fetch",
                    )
                if file is not None:
                    file.write(piece)
                    continue
                buffer += piece
                spool = limits.spool_bytes
                if spool_file is not None and spool is not None and len(buffer) > spool:
                    file = spool_file()
                    file.write(buffer)
                    buffer = bytearray()
        if declared is not None and wire != declared:
            raise TransientError(
                f"body truncated: {wire} of {declared} bytes", code="TruncatedBody"
            )
        if not decoder.finished():
            raise TransientError(f"{encoding} body cut short", code="TruncatedBody")
    except BaseException:
        if file is not None:
            file.close()
            with contextlib.suppress(OSError):
                os.unlink(file.name)
        raise
    if file is not None:
        file.close()
        return Body(size=size, path=file.name, wire=wire)
    return Body(size=size, data=bytes(buffer), wire=wire)


def _too_large(limits: BodyLimits, message: str) -> TerminalError:
    return TerminalError(message, code=limits.code, stage="fetch")


def default_spool_file() -> IO[bytes]:
    """A spool file in the system's temporary directory (a client used outside a run)."""
    return tempfile.NamedTemporaryFile(prefix="bsky-backfill-", suffix=".car", delete=False)


__all__ = ["Body", "BodyLimits", "Deadline", "SpoolFile", "content_encoding", "read_body"]
