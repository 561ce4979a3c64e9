"""The PostgreSQL state store's schema, as ordered migrations.

Where it sits: `PostgresStateStore` applies `MIGRATIONS[current:]` when it
connects, inside one transaction that holds a per-schema advisory lock, and
records each step in `schema_version` (one row per applied step). So several
workers starting at once migrate exactly once; the others wait on the lock and
then find the schema up to date. DDL is transactional in PostgreSQL: a step
that fails leaves nothing behind. Append only: never edit a released step.

Every statement runs with `search_path` set to the backfill's own schema, so
names here are unqualified. Functions pin `search_path FROM CURRENT` so a
trigger never resolves a table in some other schema.

Why counts go through a delta log: status and the scheduler need counts per
state and per host without scanning tens of millions of repos. SQLite keeps
them in counter rows updated by row triggers; with many workers those few rows
would serialize every claim and commit and, worse, deadlock (a claim locks
`pending` then `in_progress`, a retry the other way round). Here statement
triggers append aggregated deltas to `repo_count_deltas` (an append never
waits on another transaction), readers sum `repo_counts` + deltas in one
statement, and `compact()` folds the deltas into `repo_counts` from time to
time under a try-lock.
"""

from __future__ import annotations

_COUNT_TRIGGERS = tuple(
    stmt
    for event, body in (
        (
            "INSERT",
            "SELECT coalesce(host, ''), state, count(*) FROM new_rows GROUP BY 1, 2",
        ),
        (
            "UPDATE",
            """SELECT h, s, sum(d) FROM (
                 SELECT coalesce(host, '') AS h, state AS s, -1 AS d FROM old_rows
                 UNION ALL
                 SELECT coalesce(host, ''), state, 1 FROM new_rows) AS x
               GROUP BY h, s HAVING sum(d) <> 0""",
        ),
        (
            "DELETE",
            "SELECT coalesce(host, ''), state, -count(*) FROM old_rows GROUP BY 1, 2",
        ),
    )
    for stmt in (
        f"""CREATE FUNCTION repos_count_{event.lower()}() RETURNS trigger
            LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
            BEGIN
              INSERT INTO repo_count_deltas(host, state, n) {body};
              RETURN NULL;
            END $$""",
        f"""CREATE TRIGGER repos_count_{event.lower()} AFTER {event} ON repos
            REFERENCING {"OLD TABLE AS old_rows" if event != "INSERT" else ""}
                        {"NEW TABLE AS new_rows" if event != "DELETE" else ""}
            FOR EACH STATEMENT EXECUTE FUNCTION repos_count_{event.lower()}()""",
    )
)

# schema_version holds one row per applied step: version = index + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE repos (
            did TEXT PRIMARY KEY,
            -- insertion order, for "oldest first" among equally due repos
            seq BIGINT GENERATED ALWAYS AS IDENTITY,
            state TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'in_progress', 'done', 'failed')),
            pds TEXT,
            host TEXT,
            signing_key TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT '1970-01-01 00:00:00+00',
            -- who works on the repo and until when (DB clock): set by claim()
            -- (in_progress) and by unresolved() (pending, being resolved)
            lease_owner TEXT,
            lease_expires_at TIMESTAMPTZ,
            error_code TEXT,
            last_error TEXT,
            rev TEXT,
            records BIGINT,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
        # Partial indexes hold only the rows a hot query can want, so they stay
        # small while done repos pile up.
        "CREATE INDEX repos_claim ON repos(host, next_attempt_at) WHERE state = 'pending'",
        """CREATE INDEX repos_due ON repos(next_attempt_at)
            WHERE state = 'pending' AND host IS NOT NULL""",
        """CREATE INDEX repos_unresolved ON repos(next_attempt_at, seq)
            WHERE state = 'pending' AND host IS NULL""",
        """CREATE INDEX repos_leased ON repos(lease_owner, lease_expires_at)
            WHERE state = 'in_progress'""",
        # Compacted counts per (host, state); host '' = not resolved yet.
        """CREATE TABLE repo_counts (
            host TEXT NOT NULL,
            state TEXT NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (host, state)
        )""",
        # Appended by the statement triggers below; no key, so no waiting.
        """CREATE TABLE repo_count_deltas (
            host TEXT NOT NULL,
            state TEXT NOT NULL,
            n BIGINT NOT NULL
        )""",
        *_COUNT_TRIGGERS,
        """CREATE TABLE files (
            path TEXT PRIMARY KEY,
            collection TEXT NOT NULL,
            rows BIGINT NOT NULL,
            committed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            committed_by TEXT
        )""",
        """CREATE TABLE dead_letter_counts (
            stage TEXT NOT NULL,
            code TEXT NOT NULL,
            count BIGINT NOT NULL,
            PRIMARY KEY (stage, code)
        )""",
        """CREATE TABLE cursors (
            source TEXT PRIMARY KEY,
            cursor TEXT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
    ),
    (
        # `run --refresh`: a done repo goes back to pending with refresh set; its
        # `rev` is what the diff is taken from (getRepo since=rev).
        "ALTER TABLE repos ADD COLUMN refresh BOOLEAN NOT NULL DEFAULT false",
    ),
    (
        # `--global-host-rate`: requests per second per host shared by every worker
        # (for operators whose machines share one egress IP). One row per host:
        # the second it counts, and how many requests that second has handed out.
        """CREATE TABLE host_caps (
            host TEXT PRIMARY KEY,
            second BIGINT NOT NULL,
            used INTEGER NOT NULL
        )""",
    ),
    (
        # Long runs (issue 12). When a repo first failed transiently since it last
        # landed (NULL: it has not): the retry policy's time budget counts from here.
        "ALTER TABLE repos ADD COLUMN first_failed_at TIMESTAMPTZ",
        # The stage of a failed repo's dead letter, so --retry-failed can un-count it.
        "ALTER TABLE repos ADD COLUMN error_stage TEXT",
        # `status` lists failed repos by code; --retry-failed pages them by code.
        "CREATE INDEX repos_failed ON repos(error_code, did) WHERE state = 'failed'",
        # Failures put back by --retry-failed: history, no longer counted.
        """CREATE TABLE superseded (
            did TEXT NOT NULL,
            stage TEXT NOT NULL,
            code TEXT NOT NULL,
            superseded_at TIMESTAMPTZ NOT NULL
        )""",
        "CREATE INDEX superseded_did ON superseded(did)",
        # Hosts whose circuit breaker holds them back, for `status`.
        """CREATE TABLE host_pauses (
            host TEXT PRIMARY KEY,
            until TIMESTAMPTZ,
            reason TEXT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
    ),
    (
        # Compaction (issue 16): files a compaction took out of `files` in the same
        # transaction that recorded their replacements; listed until their deletion
        # from storage is confirmed, so recovery can finish it after a crash.
        """CREATE TABLE retired_files (
            path TEXT PRIMARY KEY,
            collection TEXT NOT NULL,
            retired_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
    ),
    (
        # Refresh (issue 14): each landed repo's key index (every MST key and its
        # record CID at the landed rev, repo.diff.pack_index), written by the
        # commit that lands the repo; `run --refresh` diffs against it.
        """CREATE TABLE repo_keys (
            did TEXT PRIMARY KEY,
            keys BYTEA NOT NULL
        )""",
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
        "ALTER TABLE repos ADD COLUMN handle_verified BOOLEAN NOT NULL DEFAULT false",
    ),
    (
        # Big repos first (issue 18): the size of each landed repo's whole CAR in
        # bytes (NULL: unknown), and the partial index claim() walks to start a
        # host's known-size repos biggest first. Partial, so repos never landed (a
        # first run) cost it nothing; repos_claim keeps serving the others.
        "ALTER TABLE repos ADD COLUMN car_bytes BIGINT",
        """CREATE INDEX repos_claim_sized ON repos(host, car_bytes DESC, next_attempt_at)
            WHERE state = 'pending' AND car_bytes IS NOT NULL""",
    ),
    (
        # Host leases (issue 18): which process of a `--workers` team (one run on
        # one machine) works a host now, until when (that machine's clock). A few
        # rows per live host, so no index beyond the key.
        """CREATE TABLE host_leases (
            host TEXT NOT NULL,
            team TEXT NOT NULL,
            owner TEXT NOT NULL,
            until TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (host, team)
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
