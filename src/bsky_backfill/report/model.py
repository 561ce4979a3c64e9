"""The numbers of `bsky-backfill report`, as plain frozen dataclasses.

Where it sits: `queries.build_report` fills a `Report` from the dataset (DuckDB)
and the state store; `render` prints it as rich tables or JSON and `html`
turns it into a page. Everything here is already aggregated: a report holds a
few hundred rows however big the dataset is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

UNKNOWN_HOST = "(unknown)"
"""Host shown for records whose DID the state store does not know."""


@dataclass(frozen=True, slots=True)
class CollectionCount:
    """One table of the dataset: its current view (rows minus the `(uri, cid)` pairs in
    `_deletions`), how many of those have no `created_at`, and how many rows a
    refresh found deleted or replaced by a newer version."""

    collection: str
    records: int
    no_created_at: int
    first_month: str | None
    """Earliest `created_at` month (YYYY-MM, UTC); None when no row has one."""
    last_month: str | None
    deleted: int = 0
    """Rows a refresh found deleted from their repo (`_deletions`, reason `deleted`)."""
    updated: int = 0
    """Rows replaced by a newer version (`_deletions`, reason `updated`)."""


@dataclass(frozen=True, slots=True)
class MonthCount:
    """Rows of one collection whose `created_at` falls in one UTC month (YYYY-MM)."""

    collection: str
    month: str
    records: int


@dataclass(frozen=True, slots=True)
class HostCount:
    """One PDS host: its repos by state (from the state store) and its rows in the dataset."""

    host: str
    repos: int
    done: int
    failed: int
    pending: int
    records: int


@dataclass(frozen=True, slots=True)
class DeadLetterCount:
    """Dead letters of one stage and error code."""

    stage: str
    code: str
    count: int


@dataclass(frozen=True, slots=True)
class Report:
    """A whole dataset summarised. Lists are sorted the way they are shown."""

    out: str
    collections: list[CollectionCount] = field(default_factory=list)
    """By collection name."""
    months: list[MonthCount] = field(default_factory=list)
    """By collection, then month; months without rows are absent."""
    hosts: list[HostCount] = field(default_factory=list)
    """Most records first; empty when there is no state store."""
    dead_letters: list[DeadLetterCount] = field(default_factory=list)
    """Most frequent first."""
    has_state: bool = False
    """Whether a state store was found (without one, hosts are unknown)."""
    filters: dict[str, Any] | None = None
    """The dataset's filters as its runs recorded them (collections, since, until,
    method); None without a state store."""

    @property
    def records_total(self) -> int:
        return sum(c.records for c in self.collections)

    @property
    def deleted_total(self) -> int:
        return sum(c.deleted for c in self.collections)

    @property
    def updated_total(self) -> int:
        return sum(c.updated for c in self.collections)

    @property
    def dead_letters_total(self) -> int:
        return sum(d.count for d in self.dead_letters)

    def dead_letters_by_code(self) -> dict[str, int]:
        """Dead letters per error code over all stages, most frequent first."""
        totals: dict[str, int] = {}
        for d in self.dead_letters:
            totals[d.code] = totals.get(d.code, 0) + d.count
        return dict(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`report --json`): the same numbers the tables show."""
        return {
            "out": self.out,
            "records_total": self.records_total,
            "deleted_total": self.deleted_total,
            "updated_total": self.updated_total,
            "dead_letters_total": self.dead_letters_total,
            "has_state": self.has_state,
            "collections": [dataclasses.asdict(c) for c in self.collections],
            "months": [dataclasses.asdict(m) for m in self.months],
            "hosts": [dataclasses.asdict(h) for h in self.hosts],
            "dead_letters": [dataclasses.asdict(d) for d in self.dead_letters],
            "dead_letters_by_code": self.dead_letters_by_code(),
            "filters": self.filters,
        }
