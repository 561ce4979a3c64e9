"""The `OUT/_accounts` table: one row per repo each time a commit lands or fails it.

Where it sits: `DatasetWriter.add` (a landed repo, `RepoDone`) and `add_failed`
(a repo dead-lettered whole, `RepoFailed`) append a row to the open batch, so
it is committed by the same store transaction as the repo's records and its
done/failed mark: exactly once, like `_deadletters` (a batch lost to a crash
is refetched and writes its rows then). A repo landed again (`--refresh`,
`--retry-failed`) gets a new row; its latest row (by `fetched_at`) is its
current one, which is what `bsky-backfill query`'s `accounts` view shows.

Columns: `did`; `handle` (the first `at://` alsoKnownAs of the DID document
when it was resolved, lower case; null if none or the repo failed before
resolution); `handle_verified` (true only when the run's input was that
handle and it resolved to this DID both ways, identity/handle.py; a DID input's
handle is the document's claim, not checked by DNS: one lookup per DID would
cost more than the backfill's own requests); `pds`; `rev` (the landed
revision; null for a failure); `fetched_at` (when the repo was fetched, or
failed); `status` (`landed`, or the dead letter's error code).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pyarrow as pa

from bsky_backfill.records.schema import TIMESTAMP
from bsky_backfill.state.base import Account

LANDED = "landed"
"""`status` of a repo that landed (a failed one's is its error code)."""

ACCOUNTS_SCHEMA = pa.schema(
    [
        pa.field("did", pa.string(), nullable=False),
        pa.field("handle", pa.string()),
        pa.field("handle_verified", pa.bool_(), nullable=False),
        pa.field("pds", pa.string()),
        pa.field("rev", pa.string()),
        pa.field("fetched_at", TIMESTAMP, nullable=False),
        pa.field("status", pa.string(), nullable=False),
    ]
)


def accounts_table(
    rows: Sequence[tuple[str, Account | None, str | None, dt.datetime, str]],
) -> pa.Table:
    """Rows `(did, account, rev, fetched_at, status)` as the `_accounts` table."""
    none = Account()
    accounts = [a or none for _, a, _, _, _ in rows]
    return pa.table(
        {
            "did": [r[0] for r in rows],
            "handle": [a.handle for a in accounts],
            "handle_verified": [a.handle_verified and a.handle is not None for a in accounts],
            "pds": [a.pds for a in accounts],
            "rev": [r[2] for r in rows],
            "fetched_at": [r[3] for r in rows],
            "status": [r[4] for r in rows],
        },
        schema=ACCOUNTS_SCHEMA,
    )


__all__ = ["ACCOUNTS_SCHEMA", "LANDED", "accounts_table"]
