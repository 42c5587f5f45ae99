//! The SQL text of every statement, built once per driver from the configured table names.
//!
//! Both backends accept `$N` placeholders (sqlx maps them to SQLite's numbered parameters), so most
//! statements are shared; the differences are the column types, `FOR UPDATE SKIP LOCKED` and the
//! bytewise collation PostgreSQL needs for the claim order.

use std::sync::Arc;

/// Which SQL dialect a statement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// The columns a claim returns, in this order (the decoder reads them by position).
const CLAIM_COLUMNS: &str = "id, name, queue, payload, priority, attempts, max_retries, \
     retry_delay_ms, timeout_ms, dispatched_at, last_error, reserved_until, token";

/// Every fixed statement of the driver. Statements whose shape depends on the input (a batch
/// insert, a list of queues) are built by the functions below.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) jobs: String,
    pub(crate) failed: String,
    pub(crate) schema: Vec<String>,
    pub(crate) claim: Arc<str>,
    pub(crate) retry: Arc<str>,
    pub(crate) release: Arc<str>,
    pub(crate) extend: Arc<str>,
    pub(crate) stats: Arc<str>,
    pub(crate) queues: Arc<str>,
    pub(crate) ensure_counter: Arc<str>,
    pub(crate) clear: Arc<str>,
    pub(crate) failed_all: Arc<str>,
    pub(crate) failed_of_queue: Arc<str>,
    pub(crate) unfail: Arc<str>,
    pub(crate) forget: Arc<str>,
    pub(crate) flush: Arc<str>,
    /// SQLite: the steps of `complete` and `fail` inside one `BEGIN IMMEDIATE` transaction.
    pub(crate) delete_leased: Arc<str>,
    pub(crate) count_processed: Arc<str>,
    /// Adds `$2` to a queue's processed count (`complete_many`).
    pub(crate) count_processed_n: Arc<str>,
    pub(crate) copy_to_failed: Arc<str>,
    pub(crate) delete_job: Arc<str>,
    pub(crate) count_failed: Arc<str>,
    /// PostgreSQL: `complete` and `fail` as one statement each.
    pub(crate) complete_pg: Arc<str>,
    /// PostgreSQL: `complete_many` as one statement over arrays of ids and tokens; returns the
    /// (id, token) pairs it completed.
    pub(crate) complete_many_pg: Arc<str>,
    pub(crate) fail_pg: Arc<str>,
}

fn s(text: String) -> Arc<str> {
    Arc::from(text)
}

impl Sql {
    pub(crate) fn new(dialect: Dialect, jobs: &str, failed: &str, counters: &str) -> Self {
        let (j, f, c) = (format!("\"{jobs}\""), format!("\"{failed}\""), format!("\"{counters}\""));
        let pg = dialect == Dialect::Postgres;
        // PostgreSQL compares text by the database's locale unless told otherwise; ids and queue
        // names must sort bytewise, as they do in SQLite and the memory driver.
        let text_c = if pg { "TEXT COLLATE \"C\"" } else { "TEXT" };
        let int = if pg { "BIGINT" } else { "INTEGER" };
        let seq = if pg {
            "seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        } else {
            // A rowid alias: always larger than every existing row's, so it orders by failure time.
            "seq INTEGER PRIMARY KEY"
        };
        let schema = vec![
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
            // The claim order: an index scan from the front of a queue finds the best ready job.
            // `token` and `reserved_until` are NULL together; see the claim for why this index
            // names `token`.
            format!(
                "CREATE INDEX IF NOT EXISTS \"{jobs}_ready\" ON {j} (queue, priority DESC, id) \
                 WHERE token IS NULL"
            ),
            // When the next delayed job is due; pending and delayed counts.
            format!(
                "CREATE INDEX IF NOT EXISTS \"{jobs}_due\" ON {j} (queue, available_at) \
                 WHERE reserved_until IS NULL"
            ),
            // Expired leases, for recovery.
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
        ];

        let skip_locked = if pg { " FOR UPDATE SKIP LOCKED" } else { "" };
        // `token IS NULL` (not the equivalent `reserved_until IS NULL`) makes the `_ready` index
        // the only one whose predicate the claim implies: with stale statistics the planners
        // would otherwise pick `_due`, find every ready job and sort them all per claim.
        let claim = format!(
            "UPDATE {j} SET attempts = attempts + 1, \
             reserved_until = $2 + COALESCE(timeout_ms, $3) + $4, \
             token = $5 || id \
             WHERE id IN (SELECT id FROM {j} \
             WHERE queue = $1 AND token IS NULL AND available_at <= $2 \
             ORDER BY priority DESC, id LIMIT $6{skip_locked}) \
             RETURNING {CLAIM_COLUMNS}"
        );
        let moved = "id, queue, name, payload, priority, attempts, max_retries, retry_delay_ms, \
                     timeout_ms, dispatched_at";
        Self {
            schema,
            claim: s(claim),
            retry: s(format!(
                "UPDATE {j} SET available_at = $3, reserved_until = NULL, token = NULL, \
                 last_error = $4 WHERE id = $1 AND token = $2"
            )),
            release: s(format!(
                "UPDATE {j} SET available_at = $3, reserved_until = NULL, token = NULL, \
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
                 WHERE id = $1 AND token = $2"
            )),
            extend: s(format!("UPDATE {j} SET reserved_until = $3 WHERE id = $1 AND token = $2")),
            stats: s(format!(
                "SELECT \
                 (SELECT COUNT(*) FROM {j} WHERE queue = $1 AND reserved_until IS NULL \
                  AND available_at <= $2), \
                 (SELECT COUNT(*) FROM {j} WHERE queue = $1 AND reserved_until IS NULL \
                  AND available_at > $2), \
                 (SELECT COUNT(*) FROM {j} WHERE queue = $1 AND reserved_until IS NOT NULL), \
                 (SELECT COUNT(*) FROM {f} WHERE queue = $1), \
                 COALESCE((SELECT processed FROM {c} WHERE queue = $1), 0), \
                 COALESCE((SELECT failed_total FROM {c} WHERE queue = $1), 0)"
            )),
            queues: s(format!(
                "SELECT DISTINCT queue FROM {j} UNION SELECT queue FROM {f} \
                 UNION SELECT queue FROM {c}"
            )),
            ensure_counter: s(format!(
                "INSERT INTO {c} (queue, processed, failed_total) VALUES ($1, 0, 0) \
                 ON CONFLICT (queue) DO NOTHING"
            )),
            clear: s(format!("DELETE FROM {j} WHERE queue = $1 AND reserved_until IS NULL")),
            failed_all: s(format!(
                "SELECT id, queue, name, payload, attempts, error, failed_at FROM {f} ORDER BY seq"
            )),
            failed_of_queue: s(format!(
                "SELECT id, queue, name, payload, attempts, error, failed_at FROM {f} \
                 WHERE queue = $1 ORDER BY seq"
            )),
            unfail: s(format!(
                "INSERT INTO {j} ({moved}, available_at) \
                 SELECT id, queue, name, payload, priority, 0, max_retries, retry_delay_ms, \
                 timeout_ms, dispatched_at, $2 FROM {f} WHERE id = $1 RETURNING queue"
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
            count_processed_n: s(format!(
                "INSERT INTO {c} AS c (queue, processed, failed_total) VALUES ($1, $2, 0) \
                 ON CONFLICT (queue) DO UPDATE SET processed = c.processed + excluded.processed"
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
            complete_pg: s(format!(
                "WITH done AS (DELETE FROM {j} WHERE id = $1 AND token = $2 RETURNING queue) \
                 INSERT INTO {c} AS c (queue, processed, failed_total) \
                 SELECT queue, 1, 0 FROM done \
                 ON CONFLICT (queue) DO UPDATE SET processed = c.processed + 1"
            )),
            complete_many_pg: s(format!(
                "WITH done AS (DELETE FROM {j} WHERE (id, token) IN \
                 (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) RETURNING id, token, queue), \
                 counted AS (INSERT INTO {c} AS c (queue, processed, failed_total) \
                 SELECT queue, COUNT(*), 0 FROM done GROUP BY queue \
                 ON CONFLICT (queue) DO UPDATE SET processed = c.processed + excluded.processed) \
                 SELECT id, token FROM done"
            )),
            fail_pg: s(format!(
                "WITH moved AS (DELETE FROM {j} WHERE id = $1 AND token = $2 RETURNING {moved}), \
                 kept AS (INSERT INTO {f} ({moved}, error, failed_at) \
                 SELECT {moved}, $3, $4 FROM moved RETURNING queue) \
                 INSERT INTO {c} AS c (queue, processed, failed_total) \
                 SELECT queue, 0, 1 FROM kept \
                 ON CONFLICT (queue) DO UPDATE SET failed_total = c.failed_total + 1"
            )),
            jobs: j,
            failed: f,
        }
    }

    /// Inserts `rows` new jobs (10 parameters each).
    pub(crate) fn insert(&self, rows: usize) -> String {
        let mut sql = format!(
            "INSERT INTO {} (id, queue, name, payload, priority, max_retries, retry_delay_ms, \
             timeout_ms, dispatched_at, available_at) VALUES ",
            self.jobs
        );
        for row in 0..rows {
            let b = row * 10;
            if row > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for col in 1..=10 {
                if col > 1 {
                    sql.push_str(", ");
                }
                sql.push('$');
                sql.push_str(&(b + col).to_string());
            }
            sql.push(')');
        }
        sql
    }

    /// Finds which of `count` ids are in the failed set.
    pub(crate) fn failed_ids(&self, count: usize) -> String {
        format!("SELECT id FROM {} WHERE id IN ({}) LIMIT 1", self.failed, params(1, count))
    }

    /// When the next delayed job of `count` queues is due (`$1` is now).
    pub(crate) fn next_due(&self, count: usize) -> String {
        format!(
            "SELECT MIN(available_at) FROM {} WHERE queue IN ({}) AND reserved_until IS NULL \
             AND available_at > $1",
            self.jobs,
            params(2, count)
        )
    }

    /// Whether one of `count` queues has a ready job (`$1` is now).
    pub(crate) fn any_ready(&self, count: usize) -> String {
        format!(
            "SELECT id FROM {} WHERE queue IN ({}) AND reserved_until IS NULL \
             AND available_at <= $1 LIMIT 1",
            self.jobs,
            params(2, count)
        )
    }

    /// Recovers expired leases of `count` queues in one statement (`$1` is now). The message
    /// matches the memory driver's.
    pub(crate) fn recover(&self, count: usize) -> String {
        format!(
            "UPDATE {} SET reserved_until = NULL, token = NULL, \
             last_error = 'lease expired at ' || reserved_until || \
             ': the worker running attempt ' || attempts || ' stopped responding' \
             WHERE queue IN ({}) AND reserved_until IS NOT NULL AND reserved_until <= $1",
            self.jobs,
            params(2, count)
        )
    }
}

/// `$first, $first+1, ...` for `count` parameters.
fn params(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}
