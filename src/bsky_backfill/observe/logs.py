"""Logging setup: human-readable lines by default, JSON lines with `--log-format json`.

Where it sits: called once by the CLI (or an embedding program) before a run;
the rest of the code just uses `logging.getLogger("bsky_backfill...")` and
passes context as `extra={"host": ..., "did": ...}`. Nothing logs per record:
per-repo events are INFO (dead letters, give-ups), per-run events WARNING.

A JSON line is one object: `ts` (UTC, ISO 8601, milliseconds), `level`,
`logger`, `msg`, then whichever of the context fields (`host`, `did`, `code`,
`stage`, `endpoint`, `status`, `attempt`) the call gave, and `exc` with the
traceback when there is one.

Progress summaries (`bsky_backfill.progress`, one line every few seconds when
there is no live display) are shown at the default level too: that logger is
set to INFO unless the chosen level is more verbose.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any, Literal, TextIO

import orjson

from bsky_backfill.safetext import clean

LogFormat = Literal["text", "json"]
CONTEXT_FIELDS = ("host", "did", "code", "stage", "endpoint", "status", "attempt")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROGRESS_LOGGER = "bsky_backfill.progress"
MAX_LOGGED = 16_384
"""Characters of one log message at most (server text in messages is already cut to 4 KB)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on odd `extra` values (they become strings)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage()[:MAX_LOGGED],
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then ` [host=... did=...]` for context not in the message.

    One event is one line: what servers wrote (error messages, host names) has its
    control characters escaped (safetext.py), so a `\n` cannot forge a line and an
    escape sequence cannot reach the terminal. A traceback keeps its own lines,
    each of them cleaned."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        message = clean(record.getMessage(), MAX_LOGGED)
        record.message = message
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        context = [
            f"{name}={clean(str(value), 300)}"
            for name in CONTEXT_FIELDS
            if (value := record.__dict__.get(name)) is not None and str(value) not in message
        ]
        if context:
            text = f"{text} [{' '.join(context)}]"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for extra in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if extra:
                text += "\n" + "\n".join(clean(line, MAX_LOGGED) for line in extra.splitlines())
        return text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is *now*: a rich live display swaps it for a proxy
    that prints above the display, and log lines must go through that proxy."""

    _fixed: TextIO | None = None

    @property
    def stream(self) -> TextIO:
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value: TextIO | None) -> None:
        # StreamHandler.__init__ assigns sys.stderr when given no stream: stay dynamic then.
        self._fixed = None if value is None or value is sys.stderr else value


def setup_logging(
    level: int | str = logging.WARNING,
    fmt: LogFormat = "text",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route the root logger to stderr (or `stream`) in `fmt`; safe to call again (it
    replaces the handler it installed before). Returns the handler."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: use 'text' or 'json'")
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"log level {level!r}: use debug, info, warning or error")
    handler = _StderrHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _StderrHandler):  # ours from an earlier call; others stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.getLogger(PROGRESS_LOGGER).setLevel(min(numeric, logging.INFO))
    # Library chatter (aiohttp access logs, asyncio debug) only when asked for debug.
    for noisy in ("aiohttp", "asyncio"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    return handler


__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "LogFormat", "TextFormatter", "setup_logging"]
