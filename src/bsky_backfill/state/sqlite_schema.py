"""The SQLite state store's schema, as ordered migrations.

Where it sits: `SqliteStateStore` applies `MIGRATIONS[schema_version:]` in one
transaction when it opens a file, so a file from an older version is upgraded
in place and reopening is a no-op. Append only: never edit a released step.
"""

from __future__ import annotations

# schema_version = how many steps have been applied.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE repos (
            did TEXT PRIMARY KEY,
            state TEXT NOT NULL DEFAULT 'pending',
            pds TEXT,
            host TEXT,
            signing_key TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL DEFAULT 0,
            error_code TEXT,
            last_error TEXT,
            rev TEXT,
            records INTEGER,
            updated_at INTEGER NOT NULL
        )""",
        # Partial indexes hold only the rows a hot query can want, so they stay
        # small while done repos pile up. Queries must spell `state = 'pending'`
        # literally for the planner to pick them. repos_claim also serves
        # unresolved() (host IS NULL sorts as one more "host").
        "CREATE INDEX repos_claim ON repos(host, next_attempt_at) WHERE state = 'pending'",
        """CREATE INDEX repos_due ON repos(next_attempt_at)
            WHERE state = 'pending' AND host IS NOT NULL""",
        "CREATE INDEX repos_in_progress ON repos(host) WHERE state = 'in_progress'",
        """CREATE TABLE repo_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL)
            WITHOUT ROWID""",
        """INSERT INTO repo_counts(state, n)
            VALUES ('pending', 0), ('in_progress', 0), ('done', 0), ('failed', 0)""",
        """CREATE TRIGGER repos_count_insert AFTER INSERT ON repos BEGIN
            UPDATE repo_counts SET n = n + 1 WHERE state = new.state;
        END""",
        """CREATE TRIGGER repos_count_update AFTER UPDATE OF state ON repos
            WHEN old.state <> new.state BEGIN
            UPDATE repo_counts SET n = n - 1 WHERE state = old.state;
            UPDATE repo_counts SET n = n + 1 WHERE state = new.state;
        END""",
        """CREATE TRIGGER repos_count_delete AFTER DELETE ON repos BEGIN
            UPDATE repo_counts SET n = n - 1 WHERE state = old.state;
        END""",
        # Per host and state, for `status` without a scan of every repo.
        """CREATE TABLE host_counts (
            host TEXT NOT NULL,
            state TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (host, state)
        ) WITHOUT ROWID""",
        """CREATE TRIGGER repos_host_count_insert AFTER INSERT ON repos
            WHEN new.host IS NOT NULL BEGIN
            INSERT INTO host_counts(host, state, n) VALUES (new.host, new.state, 1)
              ON CONFLICT(host, state) DO UPDATE SET n = n + 1;
        END""",
        """CREATE TRIGGER repos_host_count_update AFTER UPDATE OF state, host ON repos
            WHEN old.state IS NOT new.state OR old.host IS NOT new.host BEGIN
            UPDATE host_counts SET n = n - 1 WHERE host = old.host AND state = old.state;
            INSERT INTO host_counts(host, state, n)
              SELECT new.host, new.state, 1 WHERE new.host IS NOT NULL
              ON CONFLICT(host, state) DO UPDATE SET n = n + 1;
        END""",
        """CREATE TRIGGER repos_host_count_delete AFTER DELETE ON repos
            WHEN old.host IS NOT NULL BEGIN
            UPDATE host_counts SET n = n - 1 WHERE host = old.host AND state = old.state;
        END""",
        """CREATE TABLE files (
            path TEXT PRIMARY KEY,
            collection TEXT NOT NULL,
            rows INTEGER NOT NULL,
            committed_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE dead_letter_counts (
            stage TEXT NOT NULL,
            code TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (stage, code)
        ) WITHOUT ROWID""",
        """CREATE TABLE cursors (
            source TEXT PRIMARY KEY,
            cursor TEXT NOT NULL,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
    (
        # `run --refresh`: a done repo goes back to pending with refresh = 1; its
        # `rev` is what the diff is taken from (getRepo since=rev).
        "ALTER TABLE repos ADD COLUMN refresh INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # Long runs (issue 12). When a repo first failed transiently since it last
        # landed (NULL: it has not): the retry policy's time budget counts from here.
        "ALTER TABLE repos ADD COLUMN first_failed_at INTEGER",
        # The stage of a failed repo's dead letter, so --retry-failed can un-count it.
        "ALTER TABLE repos ADD COLUMN error_stage TEXT",
        # `status` lists failed repos by code; --retry-failed pages them by code.
        "CREATE INDEX repos_failed ON repos(error_code, did) WHERE state = 'failed'",
        # Failures put back by --retry-failed: history, no longer counted.
        """CREATE TABLE superseded (
            did TEXT NOT NULL,
            stage TEXT NOT NULL,
            code TEXT NOT NULL,
            superseded_at INTEGER NOT NULL
        )""",
        "CREATE INDEX superseded_did ON superseded(did)",
        # Hosts whose circuit breaker holds them back, for `status`.
        """CREATE TABLE host_pauses (
            host TEXT PRIMARY KEY,
            until INTEGER,
            reason TEXT NOT NULL,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
    (
        # Compaction (issue 16): files a compaction took out of `files` in the same
        # transaction that recorded their replacements; listed until their deletion
        # from storage is confirmed, so recovery can finish it after a crash.
        """CREATE TABLE retired_files (
            path TEXT PRIMARY KEY,
            collection TEXT NOT NULL,
            retired_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
    (
        # Refresh (issue 14): each landed repo's key index (every MST key and its
        # record CID at the landed rev, repo.diff.pack_index), written by the
        # commit that lands the repo; `run --refresh` diffs against it.
        """CREATE TABLE repo_keys (
            did TEXT PRIMARY KEY,
            keys BLOB NOT NULL
        ) WITHOUT ROWID""",
        # `_deletions` rows per collection and reason: `status` counts the current
        # view (rows minus these) without reading the dataset.
        """CREATE TABLE deletion_counts (
            collection TEXT NOT NULL,
            reason TEXT NOT NULL,
            count BIGINT NOT NULL,
            PRIMARY KEY (collection, reason)
        )""",
    ),
    (
        # Handles out (issue 19): the handle the DID document names, and whether the
        # run verified it both ways (its input was that handle), for `_accounts` rows.
        "ALTER TABLE repos ADD COLUMN handle TEXT",
        "ALTER TABLE repos ADD COLUMN handle_verified INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # Big repos first (issue 18): the size of each landed repo's whole CAR in
        # bytes (NULL: unknown), and the partial index claim() walks to start a
        # host's known-size repos biggest first. Partial, so repos never landed (a
        # first run) cost it nothing; repos_claim keeps serving the others.
        "ALTER TABLE repos ADD COLUMN car_bytes INTEGER",
        """CREATE INDEX repos_claim_sized ON repos(host, car_bytes DESC, next_attempt_at)
            WHERE state = 'pending' AND car_bytes IS NOT NULL""",
    ),
    (
        # Host leases (issue 18): which process of a `--workers` team (one run on
        # one machine) works a host now, until when. A few rows per live host, so
        # no index beyond the key.
        """CREATE TABLE host_leases (
            host TEXT NOT NULL,
            team TEXT NOT NULL,
            owner TEXT NOT NULL,
            until INTEGER NOT NULL,
            PRIMARY KEY (host, team)
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
