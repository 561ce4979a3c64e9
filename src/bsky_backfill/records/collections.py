"""The collections a user means: NSID patterns, typo warnings, empty-collection lines.

Where it sits in the flow: `options.build_settings` expands `--collections`
(exact NSIDs and patterns like `app.bsky.feed.*`) into the set of exact names
the run wants (`RecordFilter.collections`, a frozenset: the hot path checks a
record key's collection with one set lookup); the engine logs
`collection_warnings` when a run starts, and `output.print_summary` prints
`empty_collection_lines` when it ends.

A pattern is an NSID prefix ending in `.*` and matches the record types of the
bundled lexicons under it (`app.bsky.*` = every app.bsky record type, the
default). Custom collections are named in full (any valid NSID): the records
of a namespace we have no lexicons for cannot be listed before they are seen.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

from bsky_backfill.errors import UsageError
from bsky_backfill.records.validate import known_record_types
from bsky_backfill.syntax import is_valid_nsid

__all__ = [
    "collection_warnings",
    "empty_collection_lines",
    "expand_collections",
    "is_collection_pattern",
]

# One or more NSID segments, then `.*` (`app.*`, `app.bsky.*`, `app.bsky.feed.*`).
_PATTERN = re.compile(r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]{1,63})*\.\*")


def is_collection_pattern(name: str) -> bool:
    """Whether `name` is a pattern such as `app.bsky.feed.*`."""
    return len(name) <= 317 and _PATTERN.fullmatch(name) is not None


def _suggest(name: str, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    return close[0] if close else None


def expand_collections(names: Iterable[str]) -> frozenset[str]:
    """Exact NSIDs and patterns -> the exact collection names wanted.

    Raises UsageError for a name that is neither, or a pattern that matches no
    bundled record type (a typo: `app.bsky.feeds.*`).
    """
    known = known_record_types()
    out: set[str] = set()
    for name in names:
        if is_collection_pattern(name):
            prefix = name[:-1]  # keep the dot: `app.bsky.feed.`
            matched = {n for n in known if n.startswith(prefix)}
            if not matched:
                hint = _suggest(name, {n.rpartition(".")[0] + ".*" for n in known})
                more = f"; did you mean {hint}?" if hint else " (name custom collections in full)"
                raise UsageError(f"--collections: {name} matches no known collection{more}")
            out |= matched
        elif is_valid_nsid(name):
            out.add(name)
        else:
            raise UsageError(
                f"--collections: {name!r} is not a valid NSID or a pattern like app.bsky.feed.*"
            )
    return frozenset(out)


def collection_warnings(wanted: Iterable[str]) -> list[str]:
    """One line per wanted collection without a bundled lexicon (a typo, or custom)."""
    known = known_record_types()
    lines = []
    for name in sorted(wanted):
        if name in known:
            continue
        hint = _suggest(name, known)
        if hint is not None:
            lines.append(f"{name} is not a known collection; did you mean {hint}?")
        else:
            lines.append(
                f"{name} is not a known collection: its records land without lexicon validation"
            )
    return lines


def empty_collection_lines(
    wanted: Iterable[str], records: Mapping[str, int], repos_done: int, *, default: bool
) -> list[str]:
    """Wanted collections that hold no record after a run over `repos_done` repos.

    A line each; for the default set (every app.bsky type, most of them rare)
    one line naming them all, so a plain run is not buried in them.
    """
    if repos_done <= 0:
        return []
    empty = sorted(c for c in wanted if not records.get(c))
    if not empty:
        return []
    repos = f"{repos_done:,} repo{'s' if repos_done != 1 else ''}"
    if default:
        return [f"no records in {repos} for: {', '.join(empty)}"]
    return [f"{c}: 0 records landed in {repos}" for c in empty]
