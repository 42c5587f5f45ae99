//! The SQL text of every statement, built once per driver from the configured table names.
//!
//! Both backends accept `$N` placeholders (sqlx maps them to SQLite's numbered parameters), so most
//! statements are shared; the differences are the column types, `FOR UPDATE SKIP LOCKED`, the
//! materialized claim selection and the bytewise collation PostgreSQL needs for the claim order.
//!
//! A job row's `state` says where it is: [`READY`] (claimable now, in the `_ready` index),
//! [`DELAYED`] (waiting for `available_at`, in the `_delayed` index) or [`RESERVED`] (held under a
//! lease, in the `_reserved` index). Keeping ready and delayed rows in different indexes means a
//! claim never walks past delayed jobs, however many there are.

use std::sync::Arc;

/// Which SQL dialect a statement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// `state` of a claimable job.
pub(crate) const READY: i32 = 0;
/// `state` of a job waiting for its delay or backoff (it may be due already: a claim promotes it).
pub(crate) const DELAYED: i32 = 1;
/// `state` of a job held by a worker.
pub(crate) const RESERVED: i32 = 2;

/// Due delayed jobs promoted per statement; a claim repeats it until fewer were due.
pub(crate) const PROMOTE_CHUNK: u64 = 500;

/// Parameters per job of [`Sql::insert`].
pub(crate) const INSERT_PARAMS: usize = 14;

/// The columns the previous release's jobs table had (migration 1): a table named like the jobs
/// table without them belongs to someone else.
pub(crate) const JOBS_V1_COLUMNS: [&str; 14] = [
    "id",
    "queue",
    "name",
    "payload",
    "priority",
    "attempts",
    "max_retries",
    "retry_delay_ms",
    "timeout_ms",
    "dispatched_at",
    "available_at",
    "reserved_until",
    "token",
    "last_error",
];

/// The failed set's columns of migration 1.
pub(crate) const FAILED_V1_COLUMNS: [&str; 13] = [
    "seq",
    "id",
    "queue",
    "name",
    "payload",
    "priority",
    "attempts",
    "max_retries",
    "retry_delay_ms",
    "timeout_ms",
    "dispatched_at",
    "error",
    "failed_at",
];

/// The counters table's columns of migration 1.
pub(crate) const COUNTERS_V1_COLUMNS: [&str; 3] = ["queue", "processed", "failed_total"];

/// The storage version this build writes: the number of the last migration.
pub(crate) const LATEST_VERSION: i64 = 3;

/// `unique_mode` of a key that frees when the job is claimed.
pub(crate) const UNIQUE_STARTED: i32 = 0;
/// `unique_mode` of a key that frees when the job ends for good.
pub(crate) const UNIQUE_FINISHED: i32 = 1;
/// `unique_mode` of a key held for `unique_ms` after the dispatch.
pub(crate) const UNIQUE_PERIOD: i32 = 2;

/// The columns a claim returns, in this order (the decoder reads them by position).
const CLAIM_COLUMNS: [&str; 15] = [
    "id",
    "name",
    "queue",
    "payload",
    "priority",
    "attempts",
    "max_retries",
    "retry_delay_ms",
    "timeout_ms",
    "dispatched_at",
    "last_error",
    "reserved_until",
    "token",
    "unique_key",
    "unique_mode",
];

/// The columns `get` and `list` read, in this order (see `decode_info`).
pub(crate) const INFO_COLUMNS: &str = "id, queue, name, payload, priority, attempts, max_retries, \
     retry_delay_ms, timeout_ms, dispatched_at, available_at, reserved_until, state, last_error, \
     unique_key, unique_mode, unique_ms, progress, cancel_requested";

/// The columns of a failed job, in this order (see `decode_failed`).
pub(crate) const FAILED_COLUMNS: &str = "id, queue, name, payload, priority, attempts, \
     max_retries, retry_delay_ms, timeout_ms, dispatched_at, error, failed_at, unique_key, \
     unique_mode, unique_ms";

/// One numbered schema change: its statements run in one transaction, recorded in the
/// migrations table.
#[derive(Debug)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) statements: Vec<String>,
}

/// Every fixed statement of the driver. Statements whose shape depends on the input (a batch
/// insert, a list of queues) are built by the methods below.
#[derive(Debug)]
pub(crate) struct Sql {
    /// The quoted table names.
    pub(crate) jobs: String,
    pub(crate) failed: String,
    pub(crate) meta: String,
    pub(crate) uniq: String,
    pub(crate) starts: String,
    pub(crate) migrations_table: String,
    pub(crate) dialect: Dialect,
    /// `"schema".` when the tables are in a configured schema, else empty.
    pub(crate) schema_prefix: String,
    /// The table names unquoted, as catalogs know them.
    pub(crate) jobs_name: String,
    pub(crate) failed_name: String,
    pub(crate) counters_name: String,
    pub(crate) migrations: Vec<Migration>,
    /// Creates the migrations table.
    pub(crate) create_migrations: String,
    /// PostgreSQL: promotes due jobs and answers (promoted, concurrency, rate limit, rate period).
    /// SQLite: promotes due jobs (the limits are read by [`Sql::limits`]).
    pub(crate) promote: Arc<str>,
    pub(crate) claim: Arc<str>,
    /// PostgreSQL: the claim of a queue with limits (a function of migration 3 that takes the
    /// queue's advisory lock, then claims within the limits and logs the starts).
    pub(crate) claim_limited_pg: Arc<str>,
    /// SQLite: a queue's limits.
    pub(crate) limits: Arc<str>,
    /// SQLite: reserved jobs (up to `$2`) and starts since `$3` of a queue.
    pub(crate) room: Arc<str>,
    pub(crate) record_start: Arc<str>,
    pub(crate) prune_starts: Arc<str>,
    /// The oldest start and the number of starts of a queue since `$2`.
    pub(crate) rate_window: Arc<str>,
    pub(crate) retry: Arc<str>,
    pub(crate) release: Arc<str>,
    pub(crate) extend: Arc<str>,
    pub(crate) stats: Arc<str>,
    pub(crate) queues: Arc<str>,
    pub(crate) ensure_counter: Arc<str>,
    pub(crate) clear: Arc<str>,
    pub(crate) free_orphan_keys: Arc<str>,
    pub(crate) set_paused: Arc<str>,
    pub(crate) set_limits: Arc<str>,
    /// 1 when a queue holds a job (live or failed), else 0.
    pub(crate) queue_busy: Arc<str>,
    /// What `forget_queue` deletes of a queue: its counters, metadata, keys and start log.
    pub(crate) forget_queue: [Arc<str>; 4],
    pub(crate) get_job: Arc<str>,
    pub(crate) get_failed: Arc<str>,
    pub(crate) list_pending: Arc<str>,
    pub(crate) list_delayed: Arc<str>,
    pub(crate) list_reserved: Arc<str>,
    pub(crate) failed_page: Arc<str>,
    pub(crate) failed_page_of_queue: Arc<str>,
    /// Takes a job out of the failed set, returning what is needed to queue it again.
    pub(crate) unfail: Arc<str>,
    pub(crate) requeue: Arc<str>,
    pub(crate) forget: Arc<str>,
    pub(crate) flush: Arc<str>,
    pub(crate) delete_leased: Arc<str>,
    pub(crate) count_processed: Arc<str>,
    pub(crate) copy_to_failed: Arc<str>,
    pub(crate) delete_job: Arc<str>,
    pub(crate) count_failed: Arc<str>,
    pub(crate) count_cancelled: Arc<str>,
    pub(crate) free_key: Arc<str>,
    pub(crate) cancel_waiting: Arc<str>,
    pub(crate) cancel_running: Arc<str>,
    pub(crate) set_progress: Arc<str>,
    /// PostgreSQL: a touch batch as one statement over arrays of ids, tokens and progress.
    pub(crate) touch_pg: Arc<str>,
    /// PostgreSQL: a batch of completions as one statement over arrays of ids and tokens;
    /// returns the (id, token) pairs it completed.
    pub(crate) complete_many_pg: Arc<str>,
    /// PostgreSQL: `NOTIFY` for each queue of the text array `$2` on channel `$1`, inside the
    /// caller's transaction so listeners hear of a write only once it is committed.
    pub(crate) notify_pg: Arc<str>,
}

fn s(text: String) -> Arc<str> {
    Arc::from(text)
}

/// The previous release's tables: migration 1, verbatim, so a database it created is at version 1.
fn version_1(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    let Names { j, f, c, jobs, failed, .. } = names;
    let pg = dialect == Dialect::Postgres;
    let text_c = if pg { "TEXT COLLATE \"C\"" } else { "TEXT" };
    let int = if pg { "BIGINT" } else { "INTEGER" };
    let seq = if pg {
        "seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    } else {
        // A rowid alias: always larger than every existing row's, so it orders by failure time.
        "seq INTEGER PRIMARY KEY"
    };
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {j} (\
             id {text_c} NOT NULL PRIMARY KEY, \
             queue {text_c} NOT NULL, \
             name TEXT NOT NULL, \
             payload TEXT NOT NULL, \
             priority INTEGER NOT NULL, \
             attempts {int} NOT NULL DEFAULT 0, \
             max_retries {int} NOT NULL, \
             retry_delay_ms {int} NOT NULL, \
             timeout_ms {int}, \
             dispatched_at {int} NOT NULL, \
             available_at {int} NOT NULL, \
             reserved_until {int}, \
             token TEXT, \
             last_error TEXT)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS \"{jobs}_ready\" ON {j} (queue, priority DESC, id) \
             WHERE token IS NULL"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS \"{jobs}_due\" ON {j} (queue, available_at) \
             WHERE reserved_until IS NULL"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS \"{jobs}_leased\" ON {j} (queue, reserved_until) \
             WHERE reserved_until IS NOT NULL"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {f} (\
             {seq}, \
             id {text_c} NOT NULL UNIQUE, \
             queue {text_c} NOT NULL, \
             name TEXT NOT NULL, \
             payload TEXT NOT NULL, \
             priority INTEGER NOT NULL, \
             attempts {int} NOT NULL, \
             max_retries {int} NOT NULL, \
             retry_delay_ms {int} NOT NULL, \
             timeout_ms {int}, \
             dispatched_at {int} NOT NULL, \
             error TEXT NOT NULL, \
             failed_at {int} NOT NULL)"
        ),
        format!("CREATE INDEX IF NOT EXISTS \"{failed}_queue\" ON {f} (queue, seq)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {c} (\
             queue {text_c} NOT NULL PRIMARY KEY, \
             processed {int} NOT NULL DEFAULT 0, \
             failed_total {int} NOT NULL DEFAULT 0)"
        ),
    ]
}

/// Migration 2: ready and delayed jobs in separate indexes (a `state` column), and the per-queue
/// metadata table (the pause flag).
fn version_2(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    let Names { j, m, jobs, prefix, .. } = names;
    let text_c = if dialect == Dialect::Postgres { "TEXT COLLATE \"C\"" } else { "TEXT" };
    vec![
        format!("ALTER TABLE {j} ADD COLUMN state INTEGER NOT NULL DEFAULT {READY}"),
        // A job dispatched with a delay, or waiting for a retry, is delayed until a claim finds
        // it due and promotes it.
        format!(
            "UPDATE {j} SET state = CASE WHEN token IS NOT NULL THEN {RESERVED} \
             WHEN available_at > dispatched_at THEN {DELAYED} ELSE {READY} END"
        ),
        format!("DROP INDEX IF EXISTS {prefix}\"{jobs}_ready\""),
        format!("DROP INDEX IF EXISTS {prefix}\"{jobs}_due\""),
        format!("DROP INDEX IF EXISTS {prefix}\"{jobs}_leased\""),
        // The claim order, over ready jobs only.
        format!(
            "CREATE INDEX \"{jobs}_ready\" ON {j} (queue, priority DESC, id) WHERE state = {READY}"
        ),
        // Promotion, the next due time and the delayed list, over delayed jobs only.
        format!(
            "CREATE INDEX \"{jobs}_delayed\" ON {j} (queue, available_at, id) \
             WHERE state = {DELAYED}"
        ),
        // Recovery of expired leases and the reserved list.
        format!(
            "CREATE INDEX \"{jobs}_reserved\" ON {j} (queue, reserved_until, id) \
             WHERE state = {RESERVED}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {m} (\
             queue {text_c} NOT NULL PRIMARY KEY, \
             paused BOOLEAN NOT NULL DEFAULT FALSE)"
        ),
    ]
}

/// Migration 3 (flow control): unique keys, progress and cancel requests on jobs (the failed set
/// keeps the key, so `get` shows it), the cancelled counter, queue limits in the metadata, the
/// unique-keys table and the log of starts that rate limits count.
fn version_3(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    let Names { j, f, c, m, u, s, .. } = names;
    let pg = dialect == Dialect::Postgres;
    let text_c = if pg { "TEXT COLLATE \"C\"" } else { "TEXT" };
    let int = if pg { "BIGINT" } else { "INTEGER" };
    // SQLite: the rows live in the primary key's b-tree, not in a second one beside it.
    let without_rowid = if pg { "" } else { " WITHOUT ROWID" };
    vec![
        format!("ALTER TABLE {j} ADD COLUMN unique_key TEXT"),
        format!("ALTER TABLE {j} ADD COLUMN unique_mode INTEGER"),
        format!("ALTER TABLE {j} ADD COLUMN unique_ms {int}"),
        format!("ALTER TABLE {j} ADD COLUMN progress TEXT"),
        format!("ALTER TABLE {j} ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE"),
        format!("ALTER TABLE {f} ADD COLUMN unique_key TEXT"),
        format!("ALTER TABLE {f} ADD COLUMN unique_mode INTEGER"),
        format!("ALTER TABLE {f} ADD COLUMN unique_ms {int}"),
        format!("ALTER TABLE {c} ADD COLUMN cancelled {int} NOT NULL DEFAULT 0"),
        format!("ALTER TABLE {m} ADD COLUMN concurrency {int}"),
        format!("ALTER TABLE {m} ADD COLUMN rate_limit {int}"),
        format!("ALTER TABLE {m} ADD COLUMN rate_period_ms {int}"),
        // One row per held key; `expires_at` is set for `Period` keys only, `taken_at` is the
        // holder's dispatch time.
        format!(
            "CREATE TABLE IF NOT EXISTS {u} (\
             queue {text_c} NOT NULL, \
             unique_key TEXT NOT NULL, \
             holder {text_c} NOT NULL, \
             taken_at {int} NOT NULL, \
             expires_at {int}, \
             PRIMARY KEY (queue, unique_key)){without_rowid}"
        ),
        // `n` jobs of `queue` started at `started_at`: one row per claim time, pruned as the window moves.
        format!(
            "CREATE TABLE IF NOT EXISTS {s} (\
             queue {text_c} NOT NULL, \
             started_at {int} NOT NULL, \
             n {int} NOT NULL, \
             PRIMARY KEY (queue, started_at)){without_rowid}"
        ),
    ]
}

/// Quoted (`j`, `f`, `c`, `m`, `u`, `s`, schema-qualified if there is one) and plain table
/// names, and the schema prefix of other objects (`"schema".` or empty).
struct Names<'a> {
    prefix: &'a str,
    j: &'a str,
    f: &'a str,
    c: &'a str,
    m: &'a str,
    u: &'a str,
    s: &'a str,
    jobs: &'a str,
    failed: &'a str,
}

impl Sql {
    /// The statements for these tables, in `schema` if given (PostgreSQL only: the caller
    /// checked the names are plain identifiers).
    pub(crate) fn new(
        dialect: Dialect,
        schema: Option<&str>,
        jobs: &str,
        failed: &str,
        counters: &str,
    ) -> Self {
        let prefix = schema.map(|schema| format!("\"{schema}\".")).unwrap_or_default();
        let quoted = |name: &str| format!("{prefix}\"{name}\"");
        let (j, f, c) = (quoted(jobs), quoted(failed), quoted(counters));
        let m = quoted(&format!("{jobs}_queues"));
        let u = quoted(&format!("{jobs}_unique"));
        let st = quoted(&format!("{jobs}_starts"));
        let migrations_table = quoted(&format!("{jobs}_migrations"));
        let pg = dialect == Dialect::Postgres;
        let names =
            Names { prefix: &prefix, j: &j, f: &f, c: &c, m: &m, u: &u, s: &st, jobs, failed };
        let migrations = vec![
            Migration { version: 1, statements: version_1(dialect, &names) },
            Migration { version: 2, statements: version_2(dialect, &names) },
            Migration { version: 3, statements: version_3(dialect, &names) },
        ];
        let int = if pg { "BIGINT" } else { "INTEGER" };
        let create_migrations = format!(
            "CREATE TABLE IF NOT EXISTS {migrations_table} (\
             version {int} NOT NULL PRIMARY KEY, applied_at {int} NOT NULL)"
        );
        let not_paused = format!("NOT EXISTS (SELECT 1 FROM {m} WHERE {m}.queue = $1 AND paused)");
        // A claimed job's `Started` key frees in the claim's own step.
        let free_started = format!(
            "freed AS (DELETE FROM {u} USING claimed WHERE claimed.unique_mode = {UNIQUE_STARTED} \
             AND {u}.queue = claimed.queue AND {u}.unique_key = claimed.unique_key \
             AND {u}.holder = claimed.id)"
        );
        let claim_update = |picked_limit: &str| {
            let returning =
                CLAIM_COLUMNS.iter().map(|col| format!("{j}.{col}")).collect::<Vec<_>>().join(", ");
            format!(
                "picked AS MATERIALIZED (SELECT id FROM {j} \
                 WHERE queue = $1 AND state = {READY} AND {not_paused} \
                 ORDER BY priority DESC, id LIMIT {picked_limit} FOR UPDATE SKIP LOCKED), \
                 claimed AS (UPDATE {j} SET state = {RESERVED}, attempts = {j}.attempts + 1, \
                 reserved_until = $2 + COALESCE({j}.timeout_ms, $3) + $4, \
                 token = $5 || {j}.id \
                 FROM picked WHERE {j}.id = picked.id RETURNING {returning}), {free_started}"
            )
        };
        let (promote, claim, claim_limited_pg) = if pg {
            // MATERIALIZED: the selection runs once, so the update touches at most `$6` rows
            // whatever plan the outer statement gets (an `IN (subquery)` may be re-evaluated).
            // The promotion also reads the queue's limits, saving a round trip per claim.
            (
                format!(
                    "WITH due AS MATERIALIZED (SELECT id FROM {j} \
                     WHERE queue = $1 AND state = {DELAYED} AND available_at <= $2 AND {not_paused} \
                     ORDER BY available_at LIMIT {PROMOTE_CHUNK} FOR UPDATE SKIP LOCKED), \
                     promoted AS (UPDATE {j} SET state = {READY} FROM due WHERE {j}.id = due.id \
                     RETURNING 1) \
                     SELECT (SELECT COUNT(*) FROM promoted), lim.concurrency, lim.rate_limit, \
                     lim.rate_period_ms FROM (SELECT 1) AS one LEFT JOIN {m} AS lim ON lim.queue = $1"
                ),
                format!("WITH {} SELECT * FROM claimed", claim_update("$6")),
                // Under the queue's metadata row lock (taken by the statement before, so this
                // one's snapshot sees every committed claim): room = min(asked, concurrency -
                // reserved, rate - starts in the window); records the starts and prunes the log.
                format!(
                    "WITH room AS MATERIALIZED (SELECT GREATEST(0, LEAST($6::BIGINT, \
                     COALESCE($7::BIGINT - (SELECT COUNT(*) FROM (SELECT 1 FROM {j} \
                     WHERE queue = $1 AND state = {RESERVED} LIMIT COALESCE($7::BIGINT, 0)) AS r), \
                     $6::BIGINT), \
                     COALESCE($8::BIGINT - (SELECT COALESCE(SUM(n), 0)::BIGINT FROM {st} \
                     WHERE queue = $1 AND started_at > $2 - $9::BIGINT), $6::BIGINT))) AS n), \
                     {}, \
                     started AS (INSERT INTO {st} AS st (queue, started_at, n) \
                     SELECT $1, $2, COUNT(*) FROM claimed WHERE $8::BIGINT IS NOT NULL \
                     HAVING COUNT(*) > 0 \
                     ON CONFLICT (queue, started_at) DO UPDATE SET n = st.n + excluded.n), \
                     pruned AS (DELETE FROM {st} WHERE queue = $1 AND $9::BIGINT > 0 \
                     AND started_at <= $2 - $9::BIGINT) \
                     SELECT * FROM claimed",
                    claim_update("(SELECT n FROM room)")
                ),
            )
        } else {
            // One writer at a time on SQLite: the subquery cannot race with another claim.
            (
                format!(
                    "UPDATE {j} SET state = {READY} WHERE id IN (SELECT id FROM {j} \
                     WHERE queue = $1 AND state = {DELAYED} AND available_at <= $2 AND {not_paused} \
                     ORDER BY available_at LIMIT {PROMOTE_CHUNK})"
                ),
                format!(
                    "UPDATE {j} SET state = {RESERVED}, attempts = attempts + 1, \
                     reserved_until = $2 + COALESCE(timeout_ms, $3) + $4, token = $5 || id \
                     WHERE id IN (SELECT id FROM {j} \
                     WHERE queue = $1 AND state = {READY} AND {not_paused} \
                     ORDER BY priority DESC, id LIMIT $6) \
                     RETURNING {}",
                    CLAIM_COLUMNS.join(", ")
                ),
                String::new(),
            )
        };
        let moved = "id, queue, name, payload, priority, attempts, max_retries, retry_delay_ms, \
                     timeout_ms, dispatched_at, unique_key, unique_mode, unique_ms";
        // `$3` run_at against now: the job is ready at once or waits in the delayed index.
        let state_at = |now: &str| format!("CASE WHEN $3 <= {now} THEN {READY} ELSE {DELAYED} END");
        // Whether the job's queue has a concurrency limit: then a settle frees a slot and wakes
        // the queue's waiters.
        let limited = |table: &str| {
            format!(
                "EXISTS (SELECT 1 FROM {m} WHERE {m}.queue = {table}.queue \
                 AND {m}.concurrency IS NOT NULL)"
            )
        };
        let lj = limited(&j);
        let lf = limited(&f);
        let mut migrations = migrations;
        let claim_function = format!("{prefix}\"{jobs}_claim\"");
        if pg {
            // The claim of a limited queue as a server-side function: a lock per queue (an
            // advisory one, which writes nothing) and the claim are two statements (the claim's snapshot, taken after
            // the lock, sees every claim committed before), yet one round trip.
            let body = claim_limited_pg
                .replace("$7::BIGINT", "v_concurrency")
                .replace("$8::BIGINT", "v_rate")
                .replace("$9::BIGINT", "v_period");
            migrations[2].statements.push(format!(
                "CREATE OR REPLACE FUNCTION {claim_function}(TEXT, BIGINT, BIGINT, BIGINT, TEXT, \
                 BIGINT) RETURNS TABLE (o_id TEXT, o_name TEXT, o_queue TEXT, o_payload TEXT, \
                 o_priority INTEGER, o_attempts BIGINT, o_max_retries BIGINT, \
                 o_retry_delay_ms BIGINT, o_timeout_ms BIGINT, o_dispatched_at BIGINT, \
                 o_last_error TEXT, o_reserved_until BIGINT, o_token TEXT, o_unique_key TEXT, \
                 o_unique_mode INTEGER) LANGUAGE plpgsql VOLATILE AS $fn$ \
                 DECLARE v_concurrency BIGINT; v_rate BIGINT; v_period BIGINT; \
                 BEGIN \
                 PERFORM pg_advisory_xact_lock(hashtextextended('{jobs}:' || $1, 0)); \
                 SELECT concurrency, rate_limit, rate_period_ms \
                 INTO v_concurrency, v_rate, v_period FROM {m} WHERE queue = $1; \
                 RETURN QUERY {body}; \
                 END $fn$"
            ));
        }
        Self {
            migrations,
            create_migrations,
            promote: s(promote),
            claim: s(claim),
            claim_limited_pg: s(format!("SELECT * FROM {claim_function}($1, $2, $3, $4, $5, $6)")),
            limits: s(format!(
                "SELECT concurrency, rate_limit, rate_period_ms FROM {m} WHERE queue = $1"
            )),
            room: s(format!(
                "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM {j} WHERE queue = $1 \
                 AND state = {RESERVED} LIMIT COALESCE($2, 0)) AS r), \
                 (SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM {st} \
                 WHERE queue = $1 AND started_at > $3)"
            )),
            record_start: s(format!(
                "INSERT INTO {st} AS st (queue, started_at, n) VALUES ($1, $2, $3) \
                 ON CONFLICT (queue, started_at) DO UPDATE SET n = st.n + excluded.n"
            )),
            prune_starts: s(format!("DELETE FROM {st} WHERE queue = $1 AND started_at <= $2")),
            rate_window: s(format!(
                "SELECT MIN(started_at), CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM {st} \
                 WHERE queue = $1 AND started_at > $2"
            )),
            retry: s(format!(
                "UPDATE {j} SET state = {}, available_at = $3, reserved_until = NULL, \
                 token = NULL, last_error = $4 WHERE id = $1 AND token = $2 \
                 RETURNING queue, {lj}",
                state_at("$5")
            )),
            release: s(format!(
                "UPDATE {j} SET state = {}, available_at = $3, reserved_until = NULL, \
                 token = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
                 WHERE id = $1 AND token = $2 RETURNING queue, {lj}",
                state_at("$4")
            )),
            extend: s(format!("UPDATE {j} SET reserved_until = $3 WHERE id = $1 AND token = $2")),
            // A due delayed job counts as pending, as in every driver.
            stats: s(format!(
                "SELECT \
                 (SELECT COUNT(*) FROM {j} WHERE queue = $1 AND state = {READY}) + \
                 (SELECT COUNT(*) FROM {j} WHERE queue = $1 AND state = {DELAYED} \
                  AND available_at <= $2), \
                 (SELECT COUNT(*) FROM {j} WHERE queue = $1 AND state = {DELAYED} \
                  AND available_at > $2), \
                 (SELECT COUNT(*) FROM {j} WHERE queue = $1 AND state = {RESERVED}), \
                 (SELECT COUNT(*) FROM {f} WHERE queue = $1), \
                 COALESCE((SELECT processed FROM {c} WHERE queue = $1), 0), \
                 COALESCE((SELECT failed_total FROM {c} WHERE queue = $1), 0), \
                 COALESCE((SELECT paused FROM {m} WHERE queue = $1), FALSE), \
                 COALESCE((SELECT cancelled FROM {c} WHERE queue = $1), 0), \
                 (SELECT concurrency FROM {m} WHERE queue = $1), \
                 (SELECT rate_limit FROM {m} WHERE queue = $1), \
                 (SELECT rate_period_ms FROM {m} WHERE queue = $1)"
            )),
            queues: s(format!(
                "SELECT DISTINCT queue FROM {j} UNION SELECT queue FROM {f} \
                 UNION SELECT queue FROM {c} UNION SELECT queue FROM {m}"
            )),
            ensure_counter: s(format!(
                "INSERT INTO {c} (queue, processed, failed_total) VALUES ($1, 0, 0) \
                 ON CONFLICT (queue) DO NOTHING"
            )),
            clear: s(format!("DELETE FROM {j} WHERE queue = $1 AND state IN ({READY}, {DELAYED})")),
            // After a clear: the keys (other than `Period` ones) whose holder is gone.
            free_orphan_keys: s(format!(
                "DELETE FROM {u} WHERE queue = $1 AND expires_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM {j} WHERE {j}.id = {u}.holder)"
            )),
            set_paused: s(format!(
                "INSERT INTO {m} (queue, paused) VALUES ($1, $2) \
                 ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused"
            )),
            set_limits: s(format!(
                "INSERT INTO {m} (queue, paused, concurrency, rate_limit, rate_period_ms) \
                 VALUES ($1, FALSE, $2, $3, $4) ON CONFLICT (queue) DO UPDATE SET \
                 concurrency = excluded.concurrency, rate_limit = excluded.rate_limit, \
                 rate_period_ms = excluded.rate_period_ms"
            )),
            queue_busy: s(format!(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM {j} WHERE queue = $1) \
                 OR EXISTS (SELECT 1 FROM {f} WHERE queue = $1) THEN 1 ELSE 0 END"
            )),
            forget_queue: [c.as_str(), m.as_str(), u.as_str(), st.as_str()]
                .map(|table| s(format!("DELETE FROM {table} WHERE queue = $1"))),
            get_job: s(format!("SELECT {INFO_COLUMNS} FROM {j} WHERE id = $1")),
            get_failed: s(format!("SELECT {FAILED_COLUMNS} FROM {f} WHERE id = $1")),
            list_pending: s(format!(
                "SELECT {INFO_COLUMNS} FROM {j} WHERE queue = $1 AND state = {READY} \
                 ORDER BY priority DESC, id LIMIT $2 OFFSET $3"
            )),
            list_delayed: s(format!(
                "SELECT {INFO_COLUMNS} FROM {j} WHERE queue = $1 AND state = {DELAYED} \
                 ORDER BY available_at, id LIMIT $2 OFFSET $3"
            )),
            list_reserved: s(format!(
                "SELECT {INFO_COLUMNS} FROM {j} WHERE queue = $1 AND state = {RESERVED} \
                 ORDER BY reserved_until, id LIMIT $2 OFFSET $3"
            )),
            failed_page: s(format!(
                "SELECT {FAILED_COLUMNS} FROM {f} ORDER BY seq LIMIT $1 OFFSET $2"
            )),
            failed_page_of_queue: s(format!(
                "SELECT {FAILED_COLUMNS} FROM {f} WHERE queue = $3 ORDER BY seq \
                 LIMIT $1 OFFSET $2"
            )),
            // Deleting first makes concurrent retries of one id take turns on its row: the
            // first deletes it, the others then find nothing.
            unfail: s(format!("DELETE FROM {f} WHERE id = $1 RETURNING {moved}")),
            requeue: s(format!(
                "INSERT INTO {j} ({moved}, available_at, state) \
                 VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, $11, $12, $13, {READY}) \
                 ON CONFLICT (id) DO NOTHING"
            )),
            forget: s(format!("DELETE FROM {f} WHERE id = $1")),
            flush: s(format!("DELETE FROM {f}")),
            delete_leased: s(format!(
                "DELETE FROM {j} WHERE id = $1 AND token = $2 RETURNING queue, unique_key, {lj}"
            )),
            count_processed: s(format!(
                "INSERT INTO {c} AS c (queue, processed, failed_total) VALUES ($1, 1, 0) \
                 ON CONFLICT (queue) DO UPDATE SET processed = c.processed + 1"
            )),
            count_cancelled: s(format!(
                "INSERT INTO {c} AS c (queue, processed, failed_total, cancelled) \
                 VALUES ($1, 0, 0, $2) \
                 ON CONFLICT (queue) DO UPDATE SET cancelled = c.cancelled + excluded.cancelled"
            )),
            copy_to_failed: s(format!(
                "INSERT INTO {f} ({moved}, error, failed_at) \
                 SELECT {moved}, $3, $4 FROM {j} WHERE id = $1 AND token = $2 \
                 RETURNING queue, {lf}"
            )),
            delete_job: s(format!("DELETE FROM {j} WHERE id = $1 RETURNING unique_key")),
            count_failed: s(format!(
                "INSERT INTO {c} AS c (queue, processed, failed_total) VALUES ($1, 0, 1) \
                 ON CONFLICT (queue) DO UPDATE SET failed_total = c.failed_total + 1"
            )),
            // Only a key held by this very job, and not a `Period` one (those run their time).
            free_key: s(format!(
                "DELETE FROM {u} WHERE queue = $1 AND unique_key = $2 AND holder = $3 \
                 AND expires_at IS NULL"
            )),
            cancel_waiting: s(format!(
                "DELETE FROM {j} WHERE id = $1 AND state IN ({READY}, {DELAYED}) \
                 RETURNING queue, unique_key"
            )),
            cancel_running: s(format!(
                "UPDATE {j} SET cancel_requested = TRUE WHERE id = $1 AND state = {RESERVED} \
                 RETURNING queue"
            )),
            set_progress: s(format!("UPDATE {j} SET progress = $3 WHERE id = $1 AND token = $2")),
            complete_many_pg: s(format!(
                "WITH done AS (DELETE FROM {j} WHERE (id, token) IN \
                 (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) \
                 RETURNING id, token, queue, unique_key), \
                 counted AS (INSERT INTO {c} AS c (queue, processed, failed_total) \
                 SELECT queue, COUNT(*), 0 FROM done GROUP BY queue \
                 ON CONFLICT (queue) DO UPDATE SET processed = c.processed + excluded.processed), \
                 freed AS (DELETE FROM {u} USING done WHERE done.unique_key IS NOT NULL \
                 AND {u}.queue = done.queue AND {u}.unique_key = done.unique_key \
                 AND {u}.holder = done.id AND {u}.expires_at IS NULL), \
                 woke AS (SELECT pg_notify($3, left(lim.queue, 1000)) FROM {m} AS lim \
                 WHERE lim.concurrency IS NOT NULL AND lim.queue IN (SELECT queue FROM done)) \
                 SELECT id, token, (SELECT COUNT(*) FROM woke) FROM done"
            )),
            // Progress of the touches that carry some, and the cancel requests among them, in
            // one round trip; a stale token matches no row.
            touch_pg: s(format!(
                "WITH t AS (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]) \
                 AS t(id, token, progress)), \
                 upd AS (UPDATE {j} SET progress = t.progress FROM t \
                 WHERE t.progress IS NOT NULL AND {j}.id = t.id AND {j}.token = t.token) \
                 SELECT {j}.id FROM {j} JOIN t ON {j}.id = t.id AND {j}.token = t.token \
                 WHERE {j}.cancel_requested"
            )),
            notify_pg: s("SELECT pg_notify($1, q) FROM UNNEST($2::TEXT[]) AS q".to_owned()),
            dialect,
            schema_prefix: prefix,
            jobs_name: jobs.to_owned(),
            failed_name: failed.to_owned(),
            counters_name: counters.to_owned(),
            jobs: j,
            failed: f,
            meta: m,
            uniq: u,
            starts: st,
            migrations_table,
        }
    }

    /// How the backend's catalog lookups name table `name`: PostgreSQL's `to_regclass` takes
    /// the quoted, schema-qualified name; SQLite's `sqlite_master` the plain one.
    pub(crate) fn catalog(&self, name: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("{}\"{name}\"", self.schema_prefix),
            Dialect::Sqlite => name.to_owned(),
        }
    }

    /// Inserts `rows` new jobs (14 parameters each), skipping ids already in the table; returns
    /// the ids it stored. On SQLite it also skips ids in the failed set: the statement runs
    /// under the single write lock, so nothing can move a job there meanwhile, and the push
    /// saves the separate look (a round trip to SQLite's worker thread).
    pub(crate) fn insert(&self, rows: usize) -> String {
        let sqlite = self.dialect == Dialect::Sqlite;
        let mut sql = format!(
            "INSERT INTO {} (id, queue, name, payload, priority, max_retries, retry_delay_ms, \
             timeout_ms, dispatched_at, available_at, state, unique_key, unique_mode, unique_ms) \
             {}",
            self.jobs,
            if sqlite { "SELECT * FROM (VALUES " } else { "VALUES " }
        );
        for row in 0..rows {
            let b = row * INSERT_PARAMS;
            if row > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for col in 1..=INSERT_PARAMS {
                if col > 1 {
                    sql.push_str(", ");
                }
                sql.push('$');
                sql.push_str(&(b + col).to_string());
            }
            sql.push(')');
        }
        if sqlite {
            // A `WHERE` also keeps SQLite from reading `ON CONFLICT` as a join constraint.
            sql.push_str(&format!(") WHERE column1 NOT IN (SELECT id FROM {})", self.failed));
        }
        sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id");
        sql
    }

    /// Takes the unique keys of `rows` jobs (5 parameters each: queue, key, holder, taken_at,
    /// expires_at), or finds who holds them: a key is taken over only when its `Period` ended
    /// by the new holder's dispatch time. Returns (queue, key, holder) for every row.
    pub(crate) fn take_keys(&self, rows: usize) -> String {
        let values = (0..rows)
            .map(|row| format!("({})", params(row * 5 + 1, 5)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {} AS u (queue, unique_key, holder, taken_at, expires_at) VALUES {values} \
             {}",
            self.uniq,
            Self::KEY_CONFLICT
        )
    }

    /// What [`Sql::take_keys`] does when a key is held: the holder keeps it unless its `Period`
    /// ended by the new job's dispatch time.
    const KEY_CONFLICT: &str = "ON CONFLICT (queue, unique_key) DO UPDATE SET \
         holder = CASE WHEN u.expires_at <= excluded.taken_at THEN excluded.holder \
         ELSE u.holder END, \
         taken_at = CASE WHEN u.expires_at <= excluded.taken_at THEN excluded.taken_at \
         ELSE u.taken_at END, \
         expires_at = CASE WHEN u.expires_at <= excluded.taken_at THEN excluded.expires_at \
         ELSE u.expires_at END \
         RETURNING queue, unique_key, holder";

    /// PostgreSQL: [`Sql::failed_ids`] of `ids` ids (`$1`...) and [`Sql::take_keys`] of `keys`
    /// keys (5 parameters each, after the ids) in one statement, saving a push a round trip.
    /// A key whose would-be holder is in the failed set is not taken (its job is not stored).
    /// Rows: (queue, key, holder, NULL) per key taken or held, (NULL, NULL, NULL, id) per
    /// failed id. Both parts read one snapshot, taken after the push's insert, as the separate
    /// statements would.
    pub(crate) fn failed_ids_and_take_keys(&self, ids: usize, keys: usize) -> String {
        // `n` keeps the keys in the caller's order, the order concurrent pushes lock them in.
        let values = (0..keys)
            .map(|row| format!("({row}, {})", params(ids + row * 5 + 1, 5)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "WITH failed AS MATERIALIZED (SELECT id FROM {f} WHERE id IN ({ids})), \
             taken AS (INSERT INTO {u} AS u (queue, unique_key, holder, taken_at, expires_at) \
             SELECT v.queue, v.unique_key, v.holder, v.taken_at, v.expires_at FROM (VALUES \
             {values}) AS v (n, queue, unique_key, holder, taken_at, expires_at) \
             WHERE v.holder NOT IN (SELECT id FROM failed) ORDER BY v.n {conflict}) \
             SELECT queue, unique_key, holder, NULL FROM taken \
             UNION ALL SELECT NULL, NULL, NULL, id FROM failed",
            f = self.failed,
            u = self.uniq,
            ids = params(1, ids),
            conflict = Self::KEY_CONFLICT,
        )
    }

    /// Deletes `count` jobs by id (rows a push stored and then found to be duplicates).
    pub(crate) fn delete_ids(&self, count: usize) -> String {
        format!("DELETE FROM {} WHERE id IN ({})", self.jobs, params(1, count))
    }

    /// SQLite: which of `count` jobs have a cancel request, with their tokens.
    pub(crate) fn cancel_flags(&self, count: usize) -> String {
        format!(
            "SELECT id, token FROM {} WHERE cancel_requested AND id IN ({})",
            self.jobs,
            params(1, count)
        )
    }

    /// Deletes the expired leases of `count` queues whose cancel was requested (`$1` is now):
    /// recovery ends them as cancelled. Returns (queue, id, key).
    pub(crate) fn recover_cancelled(&self, count: usize) -> String {
        format!(
            "DELETE FROM {} WHERE queue IN ({}) AND state = {RESERVED} AND reserved_until <= $1 \
             AND cancel_requested RETURNING queue, id, unique_key",
            self.jobs,
            params(2, count)
        )
    }

    /// Finds which of `count` ids are in the failed set.
    pub(crate) fn failed_ids(&self, count: usize) -> String {
        format!("SELECT id FROM {} WHERE id IN ({})", self.failed, params(1, count))
    }

    /// When the next delayed job of `count` unpaused queues is due (`$1` is now): one index probe
    /// per queue.
    pub(crate) fn next_due(&self, count: usize) -> String {
        let (j, m) = (&self.jobs, &self.meta);
        let probes = (2..2 + count)
            .map(|n| {
                format!(
                    "SELECT (SELECT available_at FROM {j} WHERE queue = ${n} \
                     AND state = {DELAYED} AND available_at > $1 \
                     AND NOT EXISTS (SELECT 1 FROM {m} WHERE {m}.queue = ${n} AND paused) \
                     ORDER BY available_at LIMIT 1) AS due"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        format!("SELECT MIN(due) FROM ({probes}) AS probes")
    }

    /// Whether one of `count` unpaused queues has a claimable job at `$1` (ready, or delayed
    /// and due) and room for it under its limits.
    pub(crate) fn any_ready(&self, count: usize) -> String {
        let (j, m, st) = (&self.jobs, &self.meta, &self.starts);
        let probes = (2..2 + count)
            .map(|n| {
                format!(
                    "(NOT EXISTS (SELECT 1 FROM {m} WHERE {m}.queue = ${n} AND (paused \
                     OR ({m}.concurrency IS NOT NULL AND {m}.concurrency <= \
                     (SELECT COUNT(*) FROM {j} WHERE queue = ${n} AND state = {RESERVED})) \
                     OR ({m}.rate_limit IS NOT NULL AND {m}.rate_limit <= \
                     (SELECT COALESCE(SUM(n), 0) FROM {st} WHERE {st}.queue = ${n} \
                     AND started_at > $1 - {m}.rate_period_ms)))) AND \
                     (EXISTS (SELECT 1 FROM {j} WHERE queue = ${n} AND state = {READY}) OR \
                     EXISTS (SELECT 1 FROM {j} WHERE queue = ${n} AND state = {DELAYED} \
                     AND available_at <= $1)))"
                )
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        format!("SELECT CASE WHEN {probes} THEN 1 ELSE 0 END")
    }

    /// Recovers expired leases of `count` queues in one statement (`$1` is now); returns their
    /// queues. The message matches the memory driver's.
    pub(crate) fn recover(&self, count: usize) -> String {
        format!(
            "UPDATE {} SET state = {READY}, reserved_until = NULL, token = NULL, \
             last_error = 'lease expired at ' || reserved_until || \
             ': the worker running attempt ' || attempts || ' stopped responding' \
             WHERE queue IN ({}) AND state = {RESERVED} AND reserved_until <= $1 \
             RETURNING queue",
            self.jobs,
            params(2, count)
        )
    }
}

/// `$first, $first+1, ...` for `count` parameters.
fn params(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}
