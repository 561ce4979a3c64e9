"""Plain value types shared by several layers.

They sit at the seams of the flow: the engine builds a `RecordFilter` from the
command line, `repo/` + `records/` turn one repository into a `RepoExtract`
(Arrow tables per collection plus dead letters), and `sinks/` commits extracts.
Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING

from bsky_backfill.safetext import clean, is_clean

if TYPE_CHECKING:
    import pyarrow as pa


def utcnow() -> dt.datetime:
    """The current time as an aware UTC datetime (one place, so tests can reason about it)."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Which records a run keeps: wanted collections and a createdAt window [since, until).

    `since`/`until` are aware UTC datetimes or None (unbounded). `validate`:
    check records of collections with a bundled lexicon against it
    (records/validate.py; `--no-validate` turns it off).
    """

    collections: frozenset[str]
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    validate: bool = True


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One repo (uri None) or one record that could not be landed.

    `stage` is where it failed (resolve, fetch, decode, verify, validate, ...);
    `error` is a stable code (RepoTakendown, InvalidRecord, ...); `message` says why.
    For a record whose block could be read, `cid` and `record` (atproto JSON) keep
    the record itself, so an analyst can inspect or recover it. The message and
    uri often quote a server: they are kept safe to print (safetext.py).
    """

    did: str
    uri: str | None
    stage: str
    error: str
    message: str
    _: KW_ONLY
    cid: str | None = None
    record: str | None = None
    failed_at: dt.datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if len(self.message) > 4096 or not is_clean(self.message):
            object.__setattr__(self, "message", clean(self.message))
        if self.uri is not None and (len(self.uri) > 4096 or not is_clean(self.uri)):
            object.__setattr__(self, "uri", clean(self.uri))


@dataclass(slots=True)
class RepoExtract:
    """Everything one repository contributes to the dataset, ready to commit.

    `tables` maps collection NSID -> Arrow table in that collection's schema
    (only collections with at least one row appear). `dead_letters` are the
    record-level failures found while extracting (a whole-repo failure is
    raised as an error instead). `rev` is the commit revision (None for old v2 commits).
    """

    did: str
    rev: str | None
    tables: dict[str, pa.Table]
    dead_letters: list[DeadLetter]
    records_seen: int = 0
    fetched_at: dt.datetime | None = None
    """When the repo (or this part of its listing) was fetched; the rows' `fetched_at`
    (sinks/provenance.py). None: the sink stamps the time it adds them."""

    @property
    def row_count(self) -> int:
        return sum(t.num_rows for t in self.tables.values())
