"""A dataset holds one filter: resuming it with another would mix two datasets.

Where it sits: the leader's start-up (manager.py), before any work. The first
run of a dataset records its filter (`--collections`, `--since`, `--until`,
`--method`) in the store's meta as a fingerprint; every later run must ask for
the same, or is refused with a one-line `UsageError` naming both. A refresh
that names no filters takes the dataset's own. `report` reads the same
fingerprint back (report/queries.py).
"""

from __future__ import annotations

import datetime as dt
import json
import sys

from bsky_backfill.config import RunSettings
from bsky_backfill.errors import UsageError
from bsky_backfill.state.base import StateStore


def check_filters(settings: RunSettings, store: StateStore) -> RunSettings:
    """The settings this run goes on with: the same, or (a refresh that named no
    filters) with the dataset's own; other filters than the dataset's are refused."""
    fingerprint = json.dumps(
        {
            "collections": sorted(settings.collections),
            "since": settings.since.isoformat() if settings.since else None,
            "until": settings.until.isoformat() if settings.until else None,
            "method": settings.method,
        },
        sort_keys=True,
    )
    existing = store.get_meta("filter")
    if existing is None:
        store.set_meta("filter", fingerprint)
    elif existing != fingerprint:
        if settings.refresh and not settings.filters_given:
            own = _with_filters(settings, existing)
            sys.stderr.write(f"refresh: using the dataset's own filters: {_shown(existing)}\n")
            return own
        choice = (
            "run --refresh without --collections/--since/--until to use the dataset's own"
            if settings.refresh
            else "repeat the dataset's filters exactly"
        )
        raise UsageError(
            f"--out {settings.out} holds a backfill with other filters "
            f"({_shown(existing)}; this run asks for {_shown(fingerprint)}): "
            f"{choice}, or use another --out for the new filters"
        )
    return settings


def _shown(fingerprint: str) -> str:
    """A filter fingerprint as the flags that make it (for messages)."""
    f = json.loads(fingerprint)
    parts = [f"--collections {','.join(f.get('collections') or []) or '(none)'}"]
    parts += [f"--{k} {f[k]}" for k in ("since", "until") if f.get(k)]
    parts.append(f"--method {f.get('method')}")
    return " ".join(parts)


def _with_filters(settings: RunSettings, fingerprint: str) -> RunSettings:
    """`settings` with the dataset's own filters (a refresh that named none)."""
    f = json.loads(fingerprint)

    def when(v: str | None) -> dt.datetime | None:
        return None if v is None else dt.datetime.fromisoformat(v)

    return settings.model_copy(
        update={
            "collections": frozenset(f.get("collections") or ()),
            "since": when(f.get("since")),
            "until": when(f.get("until")),
            "method": f.get("method", settings.method),
        }
    )
