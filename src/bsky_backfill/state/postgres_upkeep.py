"""The PostgreSQL store's lease, fencing and counter statements.

Where it sits: helpers of `state.postgres.PostgresStateStore`, each run on a
cursor inside one of its transactions; see that module for the lease design.

None of the upkeep statements waits on another transaction (SKIP LOCKED,
try-locks), so upkeep piggy-backed on any call can never deadlock with
another worker. Only `fence` waits, on the committing batch's own repos,
taken in `did` order.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from bsky_backfill.state.base import RepoState
from bsky_backfill.state.errors import LeaseLostError

Cursor = psycopg.Cursor[tuple[Any, ...]]
_COMPACT_LOCK = 0x62736B79  # "bsky": one compactor at a time per database


def default_owner() -> str:
    """A worker id unique per process and start: host, pid, random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def renew(cur: Cursor, owner: str, lease: dt.timedelta) -> int:
    """Push `owner`'s leases to now + `lease`; returns how many it still holds.

    A row skipped by SKIP LOCKED is being reclaimed by another worker right
    now: that lease is lost anyway (commit's fence will say so)."""
    cur.execute(
        """WITH mine AS (
             SELECT did FROM repos WHERE state = 'in_progress' AND lease_owner = %s
             FOR UPDATE SKIP LOCKED)
           UPDATE repos AS r SET lease_expires_at = clock_timestamp() + %s
           FROM mine WHERE r.did = mine.did""",
        (owner, lease),
    )
    return cur.rowcount


def reclaim(cur: Cursor, owner: str | None) -> int:
    """In-progress repos whose lease expired (and, given an owner, that owner's) -> pending."""
    cur.execute(
        """WITH gone AS (
             SELECT did FROM repos WHERE state = 'in_progress'
               AND (lease_expires_at < clock_timestamp() OR lease_owner = %s)
             FOR UPDATE SKIP LOCKED)
           UPDATE repos AS r SET state = 'pending', updated_at = now(),
             lease_owner = NULL, lease_expires_at = NULL
           FROM gone WHERE r.did = gone.did""",
        (owner,),
    )
    return cur.rowcount


def fence(cur: Cursor, dids: Sequence[str], owner: str) -> None:
    """Lock a committing batch's repos and refuse the batch if any is no longer `owner`'s.

    Every row is locked (not only the offending ones): between this check and
    the batch's upserts nobody may reclaim, claim or finish them. A repo may
    be committed when it is in progress under `owner`, or pending and not
    under another worker's live lease (reclaimed but not yet re-claimed: the
    rows in this batch are then the only ones). Unknown DIDs are fine."""
    if not dids:
        return
    cur.execute(
        """SELECT did, state, lease_owner,
             (state = 'in_progress' AND lease_owner = %(me)s)
             OR (state = 'pending' AND (lease_owner IS NULL OR lease_owner = %(me)s
                                        OR lease_expires_at < clock_timestamp()))
           FROM repos WHERE did = ANY(%(dids)s::text[])
           ORDER BY did FOR UPDATE""",
        {"dids": list(dids), "me": owner},
    )
    lost = [(d, s, o) for d, s, o, ok in cur.fetchall() if not ok]
    if lost:
        shown = ", ".join(f"{d} ({s}, {o or 'no owner'})" for d, s, o in lost[:3])
        raise LeaseLostError(
            f"commit refused: {len(lost)} repos are no longer this worker's ({owner}): {shown}",
            [d for d, _, _ in lost],
        )


def compact(cur: Cursor) -> bool:
    """Fold count deltas into repo_counts; False if another worker is doing it."""
    cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (_COMPACT_LOCK,))
    row = cur.fetchone()
    if not (row and row[0]):
        return False
    # One statement, one snapshot: a delta is either folded or still there,
    # and readers (who sum both tables) see the same totals either way.
    cur.execute(
        """WITH gone AS (DELETE FROM repo_count_deltas RETURNING host, state, n)
           INSERT INTO repo_counts(host, state, n)
           SELECT host, state, sum(n) FROM gone GROUP BY host, state
           ON CONFLICT (host, state) DO UPDATE SET n = repo_counts.n + excluded.n"""
    )
    return True


def state_counts(cur: Cursor) -> dict[RepoState, tuple[dict[str, int], int]]:
    """Per state: (count per resolved host, total), from compacted counts plus deltas."""
    cur.execute(
        """SELECT host, state, sum(n) FROM (
             SELECT host, state, n FROM repo_counts
             UNION ALL SELECT host, state, n FROM repo_count_deltas) AS a
           GROUP BY host, state"""
    )
    out: dict[RepoState, tuple[dict[str, int], int]] = {s: ({}, 0) for s in RepoState}
    for host, state, n in cur.fetchall():
        by_host, total = out[RepoState(state)]
        if host and n:
            by_host[host] = int(n)
        out[RepoState(state)] = (by_host, total + int(n))
    return out
