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

/// The storage version this build writes: the number of the last migration.
pub(crate) const LATEST_VERSION: i64 = 2;

/// The columns a claim returns, in this order (the decoder reads them by position).
const CLAIM_COLUMNS: [&str; 13] = [
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
];

/// The columns `get` and `list` read, in this order (see `decode_info`).
pub(crate) const INFO_COLUMNS: &str = "id, queue, name, payload, priority, attempts, max_retries, \
     retry_delay_ms, timeout_ms, dispatched_at, available_at, reserved_until, state, last_error";

/// The columns of a failed job, in this order (see `decode_failed`).
pub(crate) const FAILED_COLUMNS: &str = "id, queue, name, payload, priority, attempts, \
     max_retries, retry_delay_ms, timeout_ms, dispatched_at, error, failed_at";

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
    pub(crate) migrations_table: String,
    /// The jobs table's name unquoted, as catalogs know it.
    pub(crate) jobs_name: String,
    pub(crate) migrations: Vec<Migration>,
    /// Creates the migrations table.
    pub(crate) create_migrations: String,
    /// Reads every column the previous release's jobs table had: a table that fails it was not
    /// made by orcs.
    pub(crate) legacy_shape: String,
    pub(crate) promote: Arc<str>,
    pub(crate) claim: Arc<str>,
    pub(crate) retry: Arc<str>,
    pub(crate) release: Arc<str>,
    pub(crate) extend: Arc<str>,
    pub(crate) stats: Arc<str>,
    pub(crate) queues: Arc<str>,
    pub(crate) ensure_counter: Arc<str>,
    pub(crate) clear: Arc<str>,
    pub(crate) set_paused: Arc<str>,
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
    let Names { j, m, jobs, .. } = names;
    let text_c = if dialect == Dialect::Postgres { "TEXT COLLATE \"C\"" } else { "TEXT" };
    vec![
        format!("ALTER TABLE {j} ADD COLUMN state INTEGER NOT NULL DEFAULT {READY}"),
        // A job dispatched with a delay, or waiting for a retry, is delayed until a claim finds
        // it due and promotes it.
        format!(
            "UPDATE {j} SET state = CASE WHEN token IS NOT NULL THEN {RESERVED} \
             WHEN available_at > dispatched_at THEN {DELAYED} ELSE {READY} END"
        ),
        format!("DROP INDEX IF EXISTS \"{jobs}_ready\""),
        format!("DROP INDEX IF EXISTS \"{jobs}_due\""),
        format!("DROP INDEX IF EXISTS \"{jobs}_leased\""),
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

/// Quoted (`j`, `f`, `c`, `m`) and plain table names.
struct Names<'a> {
    j: &'a str,
    f: &'a str,
    c: &'a str,
    m: &'a str,
    jobs: &'a str,
    failed: &'a str,
}

impl Sql {
    pub(crate) fn new(dialect: Dialect, jobs: &str, failed: &str, counters: &str) -> Self {
        let (j, f, c) = (format!("\"{jobs}\""), format!("\"{failed}\""), format!("\"{counters}\""));
        let m = format!("\"{jobs}_queues\"");
        let migrations_table = format!("\"{jobs}_migrations\"");
        let pg = dialect == Dialect::Postgres;
        let names = Names { j: &j, f: &f, c: &c, m: &m, jobs, failed };
        let migrations = vec![
            Migration { version: 1, statements: version_1(dialect, &names) },
            Migration { version: 2, statements: version_2(dialect, &names) },
        ];
        let int = if pg { "BIGINT" } else { "INTEGER" };
        let create_migrations = format!(
            "CREATE TABLE IF NOT EXISTS {migrations_table} (\
             version {int} NOT NULL PRIMARY KEY, applied_at {int} NOT NULL)"
        );
        let legacy_shape = format!(
            "SELECT id, queue, name, payload, priority, attempts, max_retries, retry_delay_ms, \
             timeout_ms, dispatched_at, available_at, reserved_until, token, last_error \
             FROM {j} WHERE 1 = 0"
        );

        let not_paused = format!("NOT EXISTS (SELECT 1 FROM {m} WHERE {m}.queue = $1 AND paused)");
        let (promote, claim) = if pg {
            let returning =
                CLAIM_COLUMNS.iter().map(|col| format!("{j}.{col}")).collect::<Vec<_>>().join(", ");
            // MATERIALIZED: the selection runs once, so the update touches at most `$6` rows
            // whatever plan the outer statement gets (an `IN (subquery)` may be re-evaluated).
            (
                format!(
                    "WITH due AS MATERIALIZED (SELECT id FROM {j} \
                     WHERE queue = $1 AND state = {DELAYED} AND available_at <= $2 AND {not_paused} \
                     ORDER BY available_at LIMIT {PROMOTE_CHUNK} FOR UPDATE SKIP LOCKED) \
                     UPDATE {j} SET state = {READY} FROM due WHERE {j}.id = due.id"
                ),
                format!(
                    "WITH picked AS MATERIALIZED (SELECT id FROM {j} \
                     WHERE queue = $1 AND state = {READY} AND {not_paused} \
                     ORDER BY priority DESC, id LIMIT $6 FOR UPDATE SKIP LOCKED) \
                     UPDATE {j} SET state = {RESERVED}, attempts = {j}.attempts + 1, \
                     reserved_until = $2 + COALESCE({j}.timeout_ms, $3) + $4, \
                     token = $5 || {j}.id \
                     FROM picked WHERE {j}.id = picked.id RETURNING {returning}"
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
            )
        };
        let moved = "id, queue, name, payload, priority, attempts, max_retries, retry_delay_ms, \
                     timeout_ms, dispatched_at";
        // `$3` run_at against now: the job is ready at once or waits in the delayed index.
        let state_at = |now: &str| format!("CASE WHEN $3 <= {now} THEN {READY} ELSE {DELAYED} END");
        Self {
            migrations,
            create_migrations,
            legacy_shape,
            promote: s(promote),
            claim: s(claim),
            retry: s(format!(
                "UPDATE {j} SET state = {}, available_at = $3, reserved_until = NULL, \
                 token = NULL, last_error = $4 WHERE id = $1 AND token = $2 RETURNING queue",
                state_at("$5")
            )),
            release: s(format!(
                "UPDATE {j} SET state = {}, available_at = $3, reserved_until = NULL, \
                 token = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
                 WHERE id = $1 AND token = $2 RETURNING queue",
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
                 COALESCE((SELECT paused FROM {m} WHERE queue = $1), FALSE)"
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
            set_paused: s(format!(
                "INSERT INTO {m} (queue, paused) VALUES ($1, $2) \
                 ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused"
            )),
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
                 VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, {READY}) \
                 ON CONFLICT (id) DO NOTHING"
            )),
            forget: s(format!("DELETE FROM {f} WHERE id = $1")),
            flush: s(format!("DELETE FROM {f}")),
            delete_leased: s(format!(
                "DELETE FROM {j} WHERE id = $1 AND token = $2 RETURNING queue"
            )),
            count_processed: s(format!(
                "INSERT INTO {c} AS c (queue, processed, failed_total) VALUES ($1, 1, 0) \
                 ON CONFLICT (queue) DO UPDATE SET processed = c.processed + 1"
            )),
            copy_to_failed: s(format!(
                "INSERT INTO {f} ({moved}, error, failed_at) \
                 SELECT {moved}, $3, $4 FROM {j} WHERE id = $1 AND token = $2 RETURNING queue"
            )),
            delete_job: s(format!("DELETE FROM {j} WHERE id = $1")),
            count_failed: s(format!(
                "INSERT INTO {c} AS c (queue, processed, failed_total) VALUES ($1, 0, 1) \
                 ON CONFLICT (queue) DO UPDATE SET failed_total = c.failed_total + 1"
            )),
            complete_many_pg: s(format!(
                "WITH done AS (DELETE FROM {j} WHERE (id, token) IN \
                 (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) RETURNING id, token, queue), \
                 counted AS (INSERT INTO {c} AS c (queue, processed, failed_total) \
                 SELECT queue, COUNT(*), 0 FROM done GROUP BY queue \
                 ON CONFLICT (queue) DO UPDATE SET processed = c.processed + excluded.processed) \
                 SELECT id, token FROM done"
            )),
            notify_pg: s("SELECT pg_notify($1, q) FROM UNNEST($2::TEXT[]) AS q".to_owned()),
            jobs_name: jobs.to_owned(),
            jobs: j,
            failed: f,
            meta: m,
            migrations_table,
        }
    }

    /// Inserts `rows` new jobs (11 parameters each), skipping ids already in the table; returns
    /// the ids it stored.
    pub(crate) fn insert(&self, rows: usize) -> String {
        let mut sql = format!(
            "INSERT INTO {} (id, queue, name, payload, priority, max_retries, retry_delay_ms, \
             timeout_ms, dispatched_at, available_at, state) VALUES ",
            self.jobs
        );
        for row in 0..rows {
            let b = row * 11;
            if row > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for col in 1..=11 {
                if col > 1 {
                    sql.push_str(", ");
                }
                sql.push('$');
                sql.push_str(&(b + col).to_string());
            }
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id");
        sql
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
    /// and due).
    pub(crate) fn any_ready(&self, count: usize) -> String {
        let (j, m) = (&self.jobs, &self.meta);
        let probes = (2..2 + count)
            .map(|n| {
                format!(
                    "(NOT EXISTS (SELECT 1 FROM {m} WHERE {m}.queue = ${n} AND paused) AND \
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
