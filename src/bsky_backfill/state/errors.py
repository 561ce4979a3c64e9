"""Errors of the state layer, as the one error tree (errors.py) defines them.

Every backend maps its driver's errors (sqlite3, psycopg) into `StateStoreError`
at its own boundary, so the engine sees one fatal error kind for "the queue is
unusable" instead of driver exceptions; `StateStoreUnavailable` stays inside a
store (it retries those calls); `LeaseLostError` is a refused commit, which the
engine retries.
"""

from __future__ import annotations

from bsky_backfill.errors import LeaseLostError, StateStoreError, StateStoreUnavailable

__all__ = ["LeaseLostError", "StateStoreError", "StateStoreUnavailable"]
