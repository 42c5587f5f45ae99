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

/// PostgreSQL: the first character of a batch child's lease token, before the claim's prefix
/// (a job id, which starts the prefix, is upper-case), so that a settle routes the child's
/// completion without asking the database which statement it needs.
pub(crate) const CHILD_MARK: char = 'b';

/// Due delayed jobs promoted per statement; a claim repeats it until fewer were due.
pub(crate) const PROMOTE_CHUNK: u64 = 500;

/// The mark a limited claim takes for a settle writer with none recorded (see
/// [`Sql::mark_settled`]): every settle counts as written, its job as running.
const NO_MARK: i64 = i64::MAX;

/// Parameters per job of [`Sql::insert`] without workflow columns.
pub(crate) const INSERT_PARAMS: usize = 14;

/// Parameters per job of [`Sql::insert`] with the workflow columns (`batch`, `meta`).
pub(crate) const INSERT_WORKFLOW_PARAMS: usize = 16;

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
pub(crate) const LATEST_VERSION: i64 = 17;

/// `unique_mode` of a key that frees when the job is claimed.
pub(crate) const UNIQUE_STARTED: i32 = 0;
/// `unique_mode` of a key that frees when the job ends for good.
pub(crate) const UNIQUE_FINISHED: i32 = 1;
/// `unique_mode` of a key held for `unique_ms` after the dispatch.
pub(crate) const UNIQUE_PERIOD: i32 = 2;

/// PostgreSQL: a condition, true for every row, that makes the statement's transaction commit
/// without waiting for its WAL flush (`synchronous_commit` off for that transaction only). The
/// claims use it: a claim lost in a server crash leaves its jobs ready, to be claimed again, as
/// when a worker dies (delivery is at least once anyway), and a job whose completion was written
/// meanwhile was flushed with it. A claim's flush was on the path from a dispatch to its
/// handler's start and between a drain's claims (1.2 ms each on the measuring machine's disk).
/// A statement that returns no row leaves the setting alone: it claimed nothing.
const ASYNC_COMMIT: &str = "set_config('synchronous_commit', 'off', TRUE) IS NOT NULL";

/// What one migration's version of PostgreSQL's claim function does (an applied migration's text
/// never changes, so each keeps its own shape).
#[derive(Debug, Clone, Copy, Default)]
struct Shape {
    /// The update finds the picked rows by primary key from an array (migration 6).
    by_array: bool,
    /// The signature with the worker's settling tokens, which also promotes (migration 8).
    settling: bool,
    /// The claim frees a `Started` key the row holds (migration 11).
    held: bool,
    /// A claim that waited for the queue's lock counts that wait (migration 13).
    waited: bool,
    /// The promotion runs only when a job is due, and the settling jobs are counted only when
    /// the concurrency limit could bind (migration 14).
    lazy: bool,
    /// The signature that also takes the claiming worker's settle marks (migration 16).
    marked: bool,
}

/// The columns a claim returns, in this order (the decoder reads them by position).
const CLAIM_COLUMNS: [&str; 17] = [
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
    "batch",
    "meta",
];

/// Where the row of [`Sql::claim_promoting`] whose id is NULL carries what its promotion read,
/// as positions in [`CLAIM_COLUMNS`]: the number of jobs promoted, the queue's concurrency, rate
/// limit and rate period, and when its next delayed job is due.
pub(crate) const PROMOTION_COLUMNS: [usize; 5] = [5, 6, 7, 8, 9];

/// The columns migration 3's claim function returned: [`CLAIM_COLUMNS`] before batches (an
/// applied migration is never edited, so a new database still creates this one first).
const CLAIM_COLUMNS_V3: usize = 15;

/// `state` of a batch callback whose condition is not decided yet.
pub(crate) const CALLBACK_WAITING: i32 = 0;
/// `state` of a batch callback that was dispatched.
pub(crate) const CALLBACK_DISPATCHED: i32 = 1;
/// `state` of a batch callback that will never be dispatched.
pub(crate) const CALLBACK_SKIPPED: i32 = 2;

/// The columns `get` and `list` read, in this order (see `decode_info`).
pub(crate) const INFO_COLUMNS: &str = "id, queue, name, payload, priority, attempts, max_retries, \
     retry_delay_ms, timeout_ms, dispatched_at, available_at, reserved_until, state, last_error, \
     unique_key, unique_mode, unique_ms, progress, cancel_requested, batch, meta, errors";

/// The columns of a failed job, in this order (see `decode_failed`).
pub(crate) const FAILED_COLUMNS: &str = "id, queue, name, payload, priority, attempts, \
     max_retries, retry_delay_ms, timeout_ms, dispatched_at, error, failed_at, unique_key, \
     unique_mode, unique_ms, batch, meta, errors";

/// The columns of a batch row, in this order (see `decode_batch`).
pub(crate) const BATCH_COLUMNS: &str = "id, total, pending, processed, failed, cancelled, \
     allow_failures, created_at, cancelled_at, finished_at, then_job, then_state, catch_job, \
     catch_state, finally_job, finally_state";

/// The columns of a schedule row, in this order (see `decode_schedule`).
pub(crate) const SCHEDULE_COLUMNS: &str =
    "name, queue, definition, \"cursor\", last_run, next_run, updated_at";

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
    pub(crate) batches: String,
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
    /// PostgreSQL: promotes due jobs and answers (promoted, concurrency, rate limit, rate period,
    /// the next delayed job's due time).
    /// SQLite: promotes due jobs (the limits are read by [`Sql::limits`]).
    pub(crate) promote: Arc<str>,
    pub(crate) claim: Arc<str>,
    /// PostgreSQL: [`Sql::promote`] and [`Sql::claim`] in one statement, for a queue not known
    /// to be limited: it claims only when it promoted nothing and found no limits, and answers
    /// the claimed rows and one more row whose id is NULL that carries what the promotion
    /// answers, in the claim's columns (see [`PROMOTION_COLUMNS`]). Empty on SQLite.
    pub(crate) claim_promoting: Arc<str>,
    /// PostgreSQL: the claim of a queue with limits (a function of migration 3 that takes the
    /// queue's advisory lock, then claims within the limits and logs the starts), `$7` the
    /// claiming worker's settling tokens.
    pub(crate) claim_limited_pg: Arc<str>,
    /// PostgreSQL: [`Sql::claim_limited_pg`] with the settling jobs as marks instead (migration
    /// 16): `$7` the settle writer, `$8` and `$9` its settles' numbers and lease ends (see
    /// [`Sql::mark_settled`]).
    pub(crate) claim_marked_pg: Arc<str>,
    /// SQLite: a queue's limits.
    pub(crate) limits: Arc<str>,
    /// SQLite: a queue's reserved jobs (its size, which the triggers keep exact in the writing
    /// transaction: one row read where counting read one index entry per running job), its
    /// starts since `$2`, and how many of the claiming worker's settling jobs (their tokens in
    /// the JSON array `$3`) are among the reserved ones, looked up only when the limit `$4` less
    /// the reserved jobs leaves less room than the `$5` jobs asked for (0 otherwise).
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
    /// Debounce: gives waiting job `$4` payload `$1` and due time `$2` (delayed if after `$3`,
    /// the push's now); answers a row only if the job was waiting (and, on PostgreSQL, not
    /// locked by another transaction).
    pub(crate) debounce: Arc<str>,
    pub(crate) set_paused: Arc<str>,
    pub(crate) set_limits: Arc<str>,
    /// 1 when a queue holds a job (live or failed), else 0.
    pub(crate) queue_busy: Arc<str>,
    /// What `forget_queue` deletes of a queue: its counters, metadata, keys, start log and
    /// the sizes rows that count nothing.
    pub(crate) forget_queue: [Arc<str>; 5],
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
    /// Deletes a leased job to complete or cancel it; returns (queue, key, limited, batch).
    /// On PostgreSQL only a job outside any batch (see [`Sql::delete_leased_any`]).
    pub(crate) delete_leased: Arc<str>,
    /// [`Sql::delete_leased`] of any job, batch children included.
    pub(crate) delete_leased_any: Arc<str>,
    /// Adds ended jobs to a queue's counters: `$2` processed, `$3` failed, `$4` cancelled.
    pub(crate) count_ended: Arc<str>,
    /// Copies a leased job to the failed set; returns (queue, limited, batch). On PostgreSQL
    /// only a job outside any batch (see [`Sql::copy_to_failed_any`]).
    pub(crate) copy_to_failed: Arc<str>,
    /// [`Sql::copy_to_failed`] of any job, batch children included.
    pub(crate) copy_to_failed_any: Arc<str>,
    pub(crate) delete_job: Arc<str>,
    pub(crate) cancel_waiting: Arc<str>,
    pub(crate) cancel_running: Arc<str>,
    pub(crate) set_progress: Arc<str>,
    /// PostgreSQL: a touch batch as one statement over arrays of ids, tokens and progress.
    pub(crate) touch_pg: Arc<str>,
    /// PostgreSQL: the push's insert, one array parameter per column, without and with the
    /// workflow columns (see [`Sql::insert_pg`]).
    insert_pg: [Arc<str>; 2],
    /// PostgreSQL: a batch of completions as one statement over arrays of ids and tokens;
    /// returns the (id, token) pairs it completed. Records the settle writers' marks (`$4`
    /// writers, `$5` the highest number of each in the batch, `$6` now; see
    /// [`Sql::mark_settled`]).
    pub(crate) complete_many_pg: Arc<str>,
    /// PostgreSQL: [`Sql::complete_many_pg`] for batch children (`$1` ids, `$2` tokens, `$3`
    /// channel, `$4`-`$6` the marks), none of which is its batch's last: locks their batch rows
    /// first, in id order, then deletes them and counts them as processed in their batches and
    /// queues. Leaves the children of a batch whose pending count they would use up, or that is
    /// finished or gone, for [`Store::settle_children`](crate::common::Store::settle_children).
    pub(crate) complete_children_pg: Arc<str>,
    /// PostgreSQL: completes the leases of the arrays `$1` (ids) and `$2` (tokens), batch
    /// children included, freeing their keys, inside a transaction that locked their batch rows
    /// first; returns (id, token, queue, batch, limited) per job completed.
    pub(crate) complete_leases_pg: Arc<str>,
    /// PostgreSQL: `NOTIFY` for each queue of the text array `$2` on channel `$1`, inside the
    /// caller's transaction so listeners hear of a write only once it is committed.
    pub(crate) notify_pg: Arc<str>,
    /// Stores a batch row; returns its id, or nothing if the id is taken.
    pub(crate) batch_insert: Arc<str>,
    /// Counts ended children (`$2` processed, `$3` failed, `$4` cancelled, at `$5`) and applies
    /// the rules that follow in the same row update (see the function `batch_count`).
    pub(crate) batch_count: Arc<str>,
    pub(crate) batch_get: Arc<str>,
    /// [`Sql::batch_get`] under the row's lock (PostgreSQL; SQLite's writes take turns anyway).
    pub(crate) batch_get_locked: Arc<str>,
    pub(crate) batch_cancel: Arc<str>,
    /// Corrects a new batch's row when some children were duplicates: total and pending, and
    /// when none was stored, finished at once with its callback states.
    pub(crate) batch_fix: Arc<str>,
    /// Removes a batch's waiting children; returns (queue, id, key).
    pub(crate) sweep_delete: Arc<str>,
    /// Asks a batch's remaining children to stop.
    pub(crate) sweep_flag: Arc<str>,
    /// PostgreSQL: locks the batch row of job `$1`, if it is a child.
    pub(crate) lock_batch_of_job: Arc<str>,
    /// PostgreSQL: locks the batch rows of queue `$1`'s waiting children, in id order.
    pub(crate) lock_batches_of_queue: Arc<str>,
    /// PostgreSQL: `clear` in one statement, answering (batch, removed) per batch (NULL for the
    /// jobs outside batches).
    pub(crate) clear_counted_pg: Arc<str>,
    /// SQLite: the waiting children of queue `$1` per batch, read before `clear` deletes them.
    pub(crate) clear_batches: Arc<str>,
    pub(crate) schedule_register: Arc<str>,
    pub(crate) schedule_list: Arc<str>,
    pub(crate) schedule_forget: Arc<str>,
    /// The schedule cursor's compare-and-set.
    pub(crate) schedule_fire: Arc<str>,
    pub(crate) schedule_exists: Arc<str>,
    /// Stores a worker's entry (`$1` id, `$2` started_at, `$3` expires_at, `$4` its JSON).
    pub(crate) worker_beat: Arc<str>,
    /// Adds `$3` processed and `$4` failed to the bucket of queue `$1`, minute `$2`.
    pub(crate) throughput_add: Arc<str>,
    /// Drops the buckets older than `$1` (and on PostgreSQL the settle writers' marks last
    /// recorded before it: a worker's whose row is gone counts its settling jobs as running).
    pub(crate) throughput_prune: Arc<str>,
    /// PostgreSQL: records that the settle writers of the array `$1` wrote their settles up to
    /// the numbers of `$2` (at `$3`), in the step that settles them: a limited queue's claim
    /// counts the claiming worker's settling jobs as those numbered above it, reading no job row
    /// (migration 16). Every PostgreSQL step that settles a marked job records its mark.
    pub(crate) mark_settled: Arc<str>,
    /// Deletes the workers whose entry expired before `$1`.
    pub(crate) workers_expire: Arc<str>,
    /// The JSON of the workers live at `$1`, by start time.
    pub(crate) workers_list: Arc<str>,
    pub(crate) worker_forget: Arc<str>,
    /// (minute, processed, failed) of queue `$1` since `$2`.
    pub(crate) throughput_of_queue: Arc<str>,
    /// (minute, processed, failed) summed over every queue since `$1`.
    pub(crate) throughput_all: Arc<str>,
    /// Deletes failed jobs that failed before `$1` (of queue `$2` in the second).
    pub(crate) prune_before: [Arc<str>; 2],
    /// Deletes failed jobs beyond the newest `$1` (of queue `$2` in the second).
    pub(crate) prune_keep: [Arc<str>; 2],
}

/// The text of [`Sql::insert_pg`] for the jobs table `jobs`. A `Started` or `Finished` key is
/// held by its job's row (`key_held`, see migrations 9 and 11), and so is a `Period` key while
/// the push's transaction runs (see `Store::insert_jobs`): a key held by another job's row is
/// a conflict like a stored id, skipped (no conflict target).
fn insert_pg(jobs: &str, workflow: bool) -> String {
    let (columns, types) =
        if workflow { (", batch, meta", ", $15::TEXT[], $16::TEXT[]") } else { ("", "") };
    format!(
        "INSERT INTO {jobs} (id, queue, name, payload, priority, max_retries, retry_delay_ms, \
         timeout_ms, dispatched_at, available_at, state, unique_key, unique_mode, unique_ms\
         {columns}, key_held) \
         SELECT r.*, CASE WHEN r.unique_mode IS NOT NULL THEN 1 END \
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::INTEGER[], \
         $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::INTEGER[], \
         $12::TEXT[], $13::INTEGER[], $14::BIGINT[]{types}) AS r (id, queue, name, payload, \
         priority, max_retries, retry_delay_ms, timeout_ms, dispatched_at, available_at, state, \
         unique_key, unique_mode, unique_ms{columns}) \
         ON CONFLICT DO NOTHING RETURNING id"
    )
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

/// Migration 4 (workflows and schedules): a job's `batch` and `meta` (kept in the failed set
/// too), the index of a batch's unfinished children, and the batches and schedules tables. On
/// PostgreSQL the claim function of migration 3 is replaced by one that returns the new columns
/// (in [`Sql::new`]).
fn version_4(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    let Names { j, f, b, sch, jobs, .. } = names;
    let pg = dialect == Dialect::Postgres;
    let text_c = if pg { "TEXT COLLATE \"C\"" } else { "TEXT" };
    let int = if pg { "BIGINT" } else { "INTEGER" };
    vec![
        // Nullable and without a default: added in place, and a job outside workflows stores
        // nothing more.
        format!("ALTER TABLE {j} ADD COLUMN batch {text_c}"),
        format!("ALTER TABLE {j} ADD COLUMN meta TEXT"),
        format!("ALTER TABLE {f} ADD COLUMN batch {text_c}"),
        format!("ALTER TABLE {f} ADD COLUMN meta TEXT"),
        // A batch's unfinished children, for its cancel; partial, so other jobs are not in it.
        format!(
            "CREATE INDEX IF NOT EXISTS \"{jobs}_batch\" ON {j} (batch, state) \
             WHERE batch IS NOT NULL"
        ),
        // Callbacks are the `NewJob`s as JSON (ids fixed at dispatch), each with its state:
        // 0 waiting, 1 dispatched, 2 skipped; NULL for a callback the batch does not have.
        format!(
            "CREATE TABLE IF NOT EXISTS {b} (\
             id {text_c} NOT NULL PRIMARY KEY, \
             total {int} NOT NULL, \
             pending {int} NOT NULL, \
             processed {int} NOT NULL DEFAULT 0, \
             failed {int} NOT NULL DEFAULT 0, \
             cancelled {int} NOT NULL DEFAULT 0, \
             allow_failures BOOLEAN NOT NULL DEFAULT FALSE, \
             created_at {int} NOT NULL, \
             cancelled_at {int}, \
             finished_at {int}, \
             then_job TEXT, \
             then_state INTEGER, \
             catch_job TEXT, \
             catch_state INTEGER, \
             finally_job TEXT, \
             finally_state INTEGER)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {sch} (\
             name {text_c} NOT NULL PRIMARY KEY, \
             queue {text_c} NOT NULL, \
             definition TEXT NOT NULL, \
             \"cursor\" {int} NOT NULL, \
             last_run {int}, \
             next_run {int}, \
             updated_at {int} NOT NULL)"
        ),
    ]
}

/// Migration 5 (operations): a job's error history (`errors`, a JSON array, NULL until an
/// attempt fails, kept in the failed set), the index of a queue's ready jobs by due time
/// (`latency_ms`), the failed set's indexes by failure time (pruning by age), and the workers
/// and per-minute throughput tables.
fn version_5(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    let Names { j, f, w, tp, jobs, failed, .. } = names;
    let pg = dialect == Dialect::Postgres;
    let text_c = if pg { "TEXT COLLATE \"C\"" } else { "TEXT" };
    let int = if pg { "BIGINT" } else { "INTEGER" };
    let without_rowid = if pg { "" } else { " WITHOUT ROWID" };
    vec![
        // Nullable without a default: added in place, and a job that never failed stores nothing.
        format!("ALTER TABLE {j} ADD COLUMN errors TEXT"),
        format!("ALTER TABLE {f} ADD COLUMN errors TEXT"),
        // The oldest due ready job of a queue, one index probe (the `_ready` index is in claim
        // order). Partial: a claim moves a row out of it and a completion never touches it.
        format!(
            "CREATE INDEX IF NOT EXISTS \"{jobs}_ready_since\" ON {j} (queue, available_at) \
             WHERE state = {READY}"
        ),
        // Pruning by age, of every queue or of one.
        format!("CREATE INDEX IF NOT EXISTS \"{failed}_failed_at\" ON {f} (failed_at)"),
        format!(
            "CREATE INDEX IF NOT EXISTS \"{failed}_queue_failed_at\" ON {f} (queue, failed_at)"
        ),
        // One row per live worker: `info` is orcs-core's `WorkerInfo` JSON.
        format!(
            "CREATE TABLE IF NOT EXISTS {w} (\
             id {text_c} NOT NULL PRIMARY KEY, \
             started_at {int} NOT NULL, \
             expires_at {int} NOT NULL, \
             info TEXT NOT NULL)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {tp} (\
             queue {text_c} NOT NULL, \
             minute {int} NOT NULL, \
             processed {int} NOT NULL, \
             failed {int} NOT NULL, \
             PRIMARY KEY (queue, minute)){without_rowid}"
        ),
        // The horizon's prune and the history over every queue.
        format!("CREATE INDEX IF NOT EXISTS \"{jobs}_throughput_minute\" ON {tp} (minute)"),
    ]
}

/// Migration 6 (PostgreSQL): `_ready_since` over a predicate that the claim does not imply.
///
/// Over `state = 0` alone it was a second index the claim could use: on statistics older than
/// the table's growth (a queue table goes from empty to large within seconds, and a fresh table
/// has none), the planner took it and sorted every ready job per claim (measured: 25 ms per
/// claim of 64 with 20,000 ready, against 0.1 ms on `_ready`). Every ready job has
/// `reserved_until` NULL, so the latency probe, which says so, finds the same rows. SQLite's
/// index stays as it is.
fn version_6(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    let Names { j, jobs, prefix, .. } = names;
    if dialect == Dialect::Sqlite {
        return Vec::new();
    }
    vec![
        format!("DROP INDEX IF EXISTS {prefix}\"{jobs}_ready_since\""),
        format!(
            "CREATE INDEX \"{jobs}_ready_since\" ON {j} (queue, available_at) \
             WHERE state = {READY} AND reserved_until IS NULL"
        ),
    ]
}

/// Rows per queue of `<jobs>_sizes` on PostgreSQL: a transaction adds its deltas to the row of
/// its connection's shard (`pg_backend_pid() % SIZE_SHARDS`), so concurrent writers of one queue
/// rarely wait for each other's commit on one row; `stats` sums the shards.
pub(crate) const SIZE_SHARDS: i32 = 64;

/// An insert into `<jobs>_sizes` (aliased `z`) adds to the row already there.
const SIZES_ADD: &str = "ON CONFLICT (queue, shard) DO UPDATE SET \
     ready = z.ready + excluded.ready, delayed = z.delayed + excluded.delayed, reserved = z.reserved + excluded.reserved, \
     failed = z.failed + excluded.failed";

/// Migration 7: exact per-queue sizes (`ready`, `delayed`, `reserved`, `failed`) kept by
/// triggers on the jobs and failed tables in the writing statement's transaction, so every path
/// that moves a job is counted without each statement knowing, and `stats` reads a few rows
/// instead of counting the backlog. Backfilled from the rows already there, under the tables'
/// write locks, so an upgraded database reports what it reported before.
///
/// PostgreSQL: statement-level triggers with transition tables, one grouped upsert per
/// statement (a claim of 64 jobs is one row update, not 64). The rows are sharded per
/// connection (see [`SIZE_SHARDS`]): one row per queue would make concurrent pushes and claims
/// of the queue wait for each other's commit. A transaction takes one shard row per queue, in
/// queue order within a statement. An `UPDATE` that leaves `state` and `queue` alone (extend,
/// progress, cancel flags) adds no row: PostgreSQL cannot skip the trigger itself (transition
/// tables exclude column lists), so its function stops at a guard (below).
///
/// SQLite (one writer, in-process): row-level triggers on one row per queue (shard 0); an
/// `UPDATE` fires only when `state` changed.
fn version_7(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    let Names { j, f, z, prefix, jobs, .. } = names;
    let pg = dialect == Dialect::Postgres;
    let text_c = if pg { "TEXT COLLATE \"C\"" } else { "TEXT" };
    let int = if pg { "BIGINT" } else { "INTEGER" };
    let without_rowid = if pg { "" } else { " WITHOUT ROWID" };
    let mut statements = vec![format!(
        "CREATE TABLE IF NOT EXISTS {z} (\
         queue {text_c} NOT NULL, \
         shard INTEGER NOT NULL, \
         ready {int} NOT NULL DEFAULT 0, \
         delayed {int} NOT NULL DEFAULT 0, \
         reserved {int} NOT NULL DEFAULT 0, \
         failed {int} NOT NULL DEFAULT 0, \
         PRIMARY KEY (queue, shard)){without_rowid}"
    )];
    let add = SIZES_ADD;
    let by_state = |sign: &str| {
        format!(
            "{sign}COUNT(*) FILTER (WHERE state = {READY}), \
             {sign}COUNT(*) FILTER (WHERE state = {DELAYED}), \
             {sign}COUNT(*) FILTER (WHERE state = {RESERVED})"
        )
    };
    if pg {
        let shard = format!("pg_backend_pid() % {SIZE_SHARDS}");
        // Trigger functions, each named after the jobs table (several jobs tables may share
        // the failed table; each keeps its own sizes).
        let function = |name: &str, body: String| {
            format!(
                "CREATE OR REPLACE FUNCTION {prefix}\"{jobs}_{name}\"() RETURNS trigger \
                 LANGUAGE plpgsql AS $fn$ BEGIN {body}; RETURN NULL; END $fn$"
            )
        };
        let upsert = |select: String| {
            format!(
                "INSERT INTO {z} AS z (queue, shard, ready, delayed, reserved, failed) \
                 {select} ORDER BY queue {add}"
            )
        };
        statements.push(function(
            "sizes_insert",
            upsert(format!(
                "SELECT queue, {shard}, {}, 0 FROM changed GROUP BY queue",
                by_state("")
            )),
        ));
        statements.push(function(
            "sizes_delete",
            upsert(format!(
                "SELECT queue, {shard}, {}, 0 FROM changed GROUP BY queue",
                by_state("-")
            )),
        ));
        // The guard: a statement that moved no job between states (extend, progress, a
        // promotion that found nothing due) stops at one join of the transition tables (about
        // 15 µs a statement measured, against 26 µs for the grouped upsert finding nothing).
        let moved = "IF NOT EXISTS (SELECT FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id \
                     WHERE n.state <> o.state OR n.queue <> o.queue) THEN RETURN NULL; END IF";
        statements.push(function(
            "sizes_update",
            format!(
                "{moved}; {}",
                upsert(format!(
                    "SELECT queue, {shard}, SUM(r), SUM(d), SUM(v), 0 FROM (\
                 SELECT queue, (state = {READY})::INT AS r, (state = {DELAYED})::INT AS d, \
                 (state = {RESERVED})::INT AS v FROM new_rows UNION ALL \
                 SELECT queue, -(state = {READY})::INT, -(state = {DELAYED})::INT, \
                 -(state = {RESERVED})::INT FROM old_rows) AS delta \
                 GROUP BY queue HAVING SUM(r) <> 0 OR SUM(d) <> 0 OR SUM(v) <> 0"
                ))
            ),
        ));
        statements.push(function(
            "sizes_failed",
            upsert(format!(
                "SELECT queue, {shard}, 0, 0, 0, \
                 CASE TG_OP WHEN 'INSERT' THEN COUNT(*) ELSE -COUNT(*) END \
                 FROM changed GROUP BY queue"
            )),
        ));
        // The write locks first: no row moves between the backfill and the triggers.
        statements.push(format!("LOCK TABLE {j}, {f} IN SHARE ROW EXCLUSIVE MODE"));
        let trigger = |name: &str, table: &str, event: &str, rows: &str, function: &str| {
            format!(
                "CREATE TRIGGER \"{jobs}_{name}\" AFTER {event} ON {table} REFERENCING {rows} \
                 FOR EACH STATEMENT EXECUTE FUNCTION {prefix}\"{jobs}_{function}\"()"
            )
        };
        statements.extend([
            trigger("sizes_insert", j, "INSERT", "NEW TABLE AS changed", "sizes_insert"),
            trigger("sizes_delete", j, "DELETE", "OLD TABLE AS changed", "sizes_delete"),
            trigger(
                "sizes_update",
                j,
                "UPDATE",
                "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                "sizes_update",
            ),
            trigger("sizes_failed_insert", f, "INSERT", "NEW TABLE AS changed", "sizes_failed"),
            trigger("sizes_failed_delete", f, "DELETE", "OLD TABLE AS changed", "sizes_failed"),
        ]);
    } else {
        statements.extend(sqlite_size_triggers(names).into_iter().map(|(_, create)| create));
    }
    // The backfill (SQLite: the migration's `BEGIN IMMEDIATE` holds the write lock).
    statements.push(format!(
        "INSERT INTO {z} AS z (queue, shard, ready, delayed, reserved, failed) \
         SELECT queue, 0, {}, 0 FROM {j} WHERE TRUE GROUP BY queue {add}",
        by_state("")
    ));
    statements.push(format!(
        "INSERT INTO {z} AS z (queue, shard, ready, delayed, reserved, failed) \
         SELECT queue, 0, 0, 0, 0, COUNT(*) FROM {f} WHERE TRUE GROUP BY queue {add}"
    ));
    statements
}

/// SQLite's triggers that keep `<jobs>_sizes` (see [`version_7`]; [`version_15`] drops them and
/// creates them again): each trigger's name and the statement that creates it.
fn sqlite_size_triggers(names: &Names<'_>) -> Vec<(String, String)> {
    let Names { j, f, z, jobs, .. } = names;
    let trigger = |name: &str, definition: String| {
        let name = format!("\"{jobs}_sizes_{name}\"");
        let create = format!("CREATE TRIGGER {name} {definition}");
        (name, create)
    };
    // `excluded` and the row, in an upsert inside a trigger body: SQLite names the target
    // by its table name, which cannot be aliased there.
    let add = SIZES_ADD.replace("z.", &format!("{z}."));
    let plus = |rows: &str, failed: &str| {
        format!(
            "INSERT INTO {z} (queue, shard, ready, delayed, reserved, failed) \
             VALUES ({rows}.queue, 0, {rows}.state = {READY}, {rows}.state = {DELAYED}, \
             {rows}.state = {RESERVED}, {failed}) {add}"
        )
    };
    let minus = |set: &str| format!("UPDATE {z} SET {set} WHERE queue = OLD.queue AND shard = 0");
    vec![
        trigger("insert", format!("AFTER INSERT ON {j} BEGIN {}; END", plus("NEW", "0"))),
        trigger(
            "delete",
            format!(
                "AFTER DELETE ON {j} BEGIN {}; END",
                minus(&format!(
                    "ready = ready - (OLD.state = {READY}), delayed = delayed - (OLD.state = {DELAYED}), \
                     reserved = reserved - (OLD.state = {RESERVED})"
                ))
            ),
        ),
        // The row exists: it counts the job being updated (only an all-zero row is ever
        // deleted, by `forget_queue`).
        trigger(
            "update",
            format!(
                "AFTER UPDATE OF state ON {j} \
                 WHEN OLD.state <> NEW.state AND OLD.queue = NEW.queue BEGIN {}; END",
                minus(&format!(
                    "ready = ready + (NEW.state = {READY}) - (OLD.state = {READY}), \
                     delayed = delayed + (NEW.state = {DELAYED}) - (OLD.state = {DELAYED}), \
                     reserved = reserved + (NEW.state = {RESERVED}) - (OLD.state = {RESERVED})"
                ))
            ),
        ),
        // No statement moves a job to another queue; if one did, it would still count.
        trigger(
            "requeue",
            format!(
                "AFTER UPDATE OF queue ON {j} \
                 WHEN OLD.queue <> NEW.queue BEGIN {}; {}; END",
                minus(&format!(
                    "ready = ready - (OLD.state = {READY}), delayed = delayed - (OLD.state = {DELAYED}), \
                     reserved = reserved - (OLD.state = {RESERVED})"
                )),
                plus("NEW", "0")
            ),
        ),
        trigger(
            "failed_insert",
            format!(
                "AFTER INSERT ON {f} BEGIN \
                 INSERT INTO {z} (queue, shard, failed) VALUES (NEW.queue, 0, 1) \
                 ON CONFLICT (queue, shard) DO UPDATE SET failed = {z}.failed + 1; END"
            ),
        ),
        trigger(
            "failed_delete",
            format!("AFTER DELETE ON {f} BEGIN {}; END", minus("failed = failed - 1")),
        ),
    ]
}

/// Migration 10 (PostgreSQL only): the keys table compares keys bytewise (`COLLATE "C"`, as
/// the queue column already does). Under the database's collation every comparison of a key in
/// its primary key went through the locale's `strcoll`: a keyed push's share of PostgreSQL's
/// time in text comparisons was about 5 %, and keyed / plain enqueue one by one went from
/// 0.795 to 0.829 (medians of nine runs each, on `C.UTF-8`; costlier locales gain more). Keys
/// compared with the jobs table's `unique_key` (the database's collation) take this one: an
/// implicit non-default collation wins over the default. Rebuilds the primary key of the keys
/// table, which holds only the keys held now.
fn version_10(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    let Names { u, .. } = names;
    if dialect == Dialect::Sqlite {
        // SQLite compares text bytewise already.
        return Vec::new();
    }
    vec![format!("ALTER TABLE {u} ALTER COLUMN unique_key TYPE TEXT COLLATE \"C\"")]
}

/// Migration 11 (PostgreSQL only): a job holds its `Started` or `Finished` key itself, as on
/// SQLite since migration 9 ([`keys_into_rows`]), `unique_key` in the `"C"` collation (as
/// `<jobs>_unique`'s took in migration 10). A keyed push then writes the statement a plain one
/// writes, with one index entry more, instead of a second insert into the keys table (keyed /
/// plain 0.80-0.84 -> 0.88 in alternating rounds). The claim functions are replaced (below) by
/// ones that clear a claimed `Started` job's `key_held`.
fn version_11(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    if dialect == Dialect::Sqlite {
        return Vec::new();
    }
    let mut statements = keys_into_rows(names);
    statements.insert(
        1,
        format!("ALTER TABLE {} ALTER COLUMN unique_key TYPE TEXT COLLATE \"C\"", names.j),
    );
    statements
}

/// Migration 12: an index of the keys table by queue and expiry, so that recovery deletes the
/// expired `Period` keys (see [`Sql::sweep_keys`]) with a probe per queue instead of reading every
/// key. Since migrations 9 and 11 the table holds `Period` keys only, and a PostgreSQL push looks
/// for `Period` holders only while the table holds any: an expired key left there made every
/// keyed push of the process pay that look.
fn version_12(names: &Names<'_>) -> Vec<String> {
    let Names { u, jobs, .. } = names;
    vec![format!("CREATE INDEX IF NOT EXISTS \"{jobs}_unique_expiry\" ON {u} (queue, expires_at)")]
}

/// Migration 15 (SQLite only): `<jobs>_sizes`'s counts lose their `NOT NULL` (never NULL: they
/// start at 0 and the triggers add numbers to them). SQLite keeps a statement journal, a copy of
/// every page the statement changes (past 64 KiB in a temporary file, created, written and
/// deleted), for a statement inside a transaction that changes several rows and may abort; a
/// `NOT NULL` column it sets, itself or in a trigger it fires, makes it one that may abort. The
/// sizes triggers' upsert made every push journal, and their updates every claim; with this
/// migration and `OR IGNORE` on the push's insert and on the claim (for their own `NOT NULL`
/// columns), the job path keeps no statement journal (BENCHMARKS.md round 30). SQLite cannot
/// drop a `NOT NULL`: the table is built again, and its triggers dropped and created again
/// around it (a rename checks that every trigger's tables exist).
fn version_15(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    if dialect == Dialect::Postgres {
        return Vec::new();
    }
    let Names { z, jobs, .. } = names;
    let rebuilt = format!("\"{jobs}_sizes_rebuilt\"");
    let columns = "queue, shard, ready, delayed, reserved, failed";
    let triggers = sqlite_size_triggers(names);
    let mut statements: Vec<String> =
        triggers.iter().map(|(name, _)| format!("DROP TRIGGER IF EXISTS {name}")).collect();
    statements.extend([
        format!(
            "CREATE TABLE {rebuilt} (queue TEXT NOT NULL, shard INTEGER NOT NULL, \
             ready INTEGER DEFAULT 0, delayed INTEGER DEFAULT 0, reserved INTEGER DEFAULT 0, \
             failed INTEGER DEFAULT 0, PRIMARY KEY (queue, shard)) WITHOUT ROWID"
        ),
        format!("INSERT INTO {rebuilt} ({columns}) SELECT {columns} FROM {z}"),
        format!("DROP TABLE {z}"),
        format!("ALTER TABLE {rebuilt} RENAME TO \"{jobs}_sizes\""),
    ]);
    statements.extend(triggers.into_iter().map(|(_, create)| create));
    statements
}

/// Migration 17 (PostgreSQL only): `<jobs>_held_key` is built again on `(unique_key, queue)`
/// instead of `(queue, unique_key)`. Every lookup of it names both columns, so either order
/// serves them; but a queue's keys all share the first column, so in the old order each
/// comparison of a keyed push's probe and insert (two descents of the index a keyed row) found
/// the queues equal and went on to the key, whose place in an index tuple PostgreSQL must work
/// out anew behind a text column. The key first decides almost every comparison by itself: the
/// keyed insert statement's rate went from about 0.79 to 0.87 of a plain one's, and keyed / plain
/// enqueue one by one gained two to three points (BENCHMARKS.md round 37). SQLite compares index
/// records otherwise and measured no change: its index stays. The rebuild holds the jobs table
/// for a scan of it, in the migration's transaction, so the keys stay held throughout.
fn version_17(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    if dialect == Dialect::Sqlite {
        return Vec::new();
    }
    let Names { prefix, j, jobs, .. } = names;
    vec![
        format!("DROP INDEX IF EXISTS {prefix}\"{jobs}_held_key\""),
        format!(
            "CREATE UNIQUE INDEX \"{jobs}_held_key\" ON {j} (unique_key, queue) \
             WHERE key_held IS NOT NULL"
        ),
    ]
}

/// Migration 9 (SQLite only): a job holds its `Started` or `Finished` key itself
/// ([`keys_into_rows`]): a keyed push went from about 0.75 to 0.84-0.90 of a plain one.
fn version_9(dialect: Dialect, names: &Names<'_>) -> Vec<String> {
    if dialect == Dialect::Postgres {
        return Vec::new();
    }
    keys_into_rows(names)
}

/// A job's row holds its `Started` or `Finished` key, through a partial unique index on the jobs
/// table (`key_held` is 1 while it holds it), instead of a row in the keys table: a keyed push
/// costs one index entry in its insert instead of a second statement and table, and a
/// completion frees the key by deleting its row. `Period` keys, which outlive their jobs, stay
/// in the keys table. Keys held now move to their jobs. (Migration 9 on SQLite, 11 on
/// PostgreSQL: the same statements.)
fn keys_into_rows(names: &Names<'_>) -> Vec<String> {
    let Names { j, u, jobs, .. } = names;
    vec![
        format!("ALTER TABLE {j} ADD COLUMN key_held INTEGER"),
        format!(
            "UPDATE {j} SET key_held = 1 WHERE unique_key IS NOT NULL AND EXISTS (SELECT 1 FROM {u} \
             WHERE {u}.queue = {j}.queue AND {u}.unique_key = {j}.unique_key \
             AND {u}.holder = {j}.id AND {u}.expires_at IS NULL)"
        ),
        format!("DELETE FROM {u} WHERE expires_at IS NULL"),
        format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS \"{jobs}_held_key\" ON {j} (queue, unique_key) \
             WHERE key_held IS NOT NULL"
        ),
    ]
}

/// `errors` (a JSON array of texts, or NULL) with the text parameter `error` appended, the
/// oldest dropped beyond [`orcs_core::MAX_ERROR_HISTORY`] (one append at a time, so at most
/// one is dropped).
fn append_error(dialect: Dialect, error: &str) -> String {
    let max = orcs_core::MAX_ERROR_HISTORY;
    match dialect {
        Dialect::Postgres => {
            let old = "COALESCE(errors, '[]')::jsonb";
            format!(
                "(CASE WHEN jsonb_array_length({old}) >= {max} THEN {old} - 0 ELSE {old} END \
                 || jsonb_build_array({error}::TEXT))::TEXT"
            )
        }
        Dialect::Sqlite => {
            let old = "COALESCE(errors, '[]')";
            format!(
                "json_insert(CASE WHEN json_array_length({old}) >= {max} \
                 THEN json_remove({old}, '$[0]') ELSE {old} END, '$[#]', {error})"
            )
        }
    }
}

/// The batch rules in one row update of batch `$1`: `$2` children completed, `$3` failed and
/// `$4` were cancelled at `$5`. The first failure (none before) cancels the batch unless
/// failures are allowed, and dispatches `catch`; the update that takes `pending` to 0 finishes
/// it: `then` is dispatched if no child failed or was cancelled and the batch was not
/// cancelled, `finally` always, and a callback still waiting is skipped. The row lock it takes
/// orders concurrent ends of one batch (PostgreSQL), and the `WHERE` makes a finished batch
/// count nothing more. Returns the new `pending`, `failed`, `allow_failures`, and the JSON of
/// each callback this update dispatched (else NULL), as `catch`, `then`, `finally`.
fn batch_count(b: &str) -> String {
    let (w, d, skipped) = (CALLBACK_WAITING, CALLBACK_DISPATCHED, CALLBACK_SKIPPED);
    // SET expressions read the row as it was before the update.
    let ended = "($2 + $3 + $4)";
    let last = format!("pending = {ended}");
    format!(
        "UPDATE {b} SET pending = pending - {ended}, processed = processed + $2, \
         failed = failed + $3, cancelled = cancelled + $4, \
         cancelled_at = CASE WHEN $3 > 0 AND failed = 0 AND NOT allow_failures \
         THEN COALESCE(cancelled_at, $5) ELSE cancelled_at END, \
         catch_state = CASE WHEN catch_state = {w} AND $3 > 0 THEN {d} \
         WHEN catch_state = {w} AND {last} THEN {skipped} ELSE catch_state END, \
         then_state = CASE WHEN then_state = {w} AND {last} THEN CASE WHEN failed + $3 = 0 \
         AND cancelled + $4 = 0 AND cancelled_at IS NULL THEN {d} ELSE {skipped} END \
         ELSE then_state END, \
         finally_state = CASE WHEN finally_state = {w} AND {last} THEN {d} \
         ELSE finally_state END, \
         finished_at = CASE WHEN {last} THEN $5 ELSE finished_at END \
         WHERE id = $1 AND finished_at IS NULL AND pending >= {ended} \
         RETURNING pending, failed, allow_failures, \
         CASE WHEN $3 > 0 AND failed = $3 AND catch_state = {d} THEN catch_job END, \
         CASE WHEN pending = 0 AND then_state = {d} THEN then_job END, \
         CASE WHEN pending = 0 AND finally_state = {d} THEN finally_job END"
    )
}

/// Quoted (`j`, `f`, `c`, `m`, `u`, `s`, `b`, `sch`, schema-qualified if there is one) and
/// plain table names, and the schema prefix of other objects (`"schema".` or empty).
struct Names<'a> {
    prefix: &'a str,
    j: &'a str,
    f: &'a str,
    c: &'a str,
    m: &'a str,
    u: &'a str,
    s: &'a str,
    b: &'a str,
    sch: &'a str,
    w: &'a str,
    tp: &'a str,
    z: &'a str,
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
        let b = quoted(&format!("{jobs}_batches"));
        let sch = quoted(&format!("{jobs}_schedules"));
        let w = quoted(&format!("{jobs}_workers"));
        let tp = quoted(&format!("{jobs}_throughput"));
        let z = quoted(&format!("{jobs}_sizes"));
        let sd = quoted(&format!("{jobs}_settled"));
        let migrations_table = quoted(&format!("{jobs}_migrations"));
        let pg = dialect == Dialect::Postgres;
        let names = Names {
            prefix: &prefix,
            j: &j,
            f: &f,
            c: &c,
            m: &m,
            u: &u,
            s: &st,
            b: &b,
            sch: &sch,
            w: &w,
            tp: &tp,
            z: &z,
            jobs,
            failed,
        };
        let migrations = vec![
            Migration { version: 1, statements: version_1(dialect, &names) },
            Migration { version: 2, statements: version_2(dialect, &names) },
            Migration { version: 3, statements: version_3(dialect, &names) },
            Migration { version: 4, statements: version_4(dialect, &names) },
            Migration { version: 5, statements: version_5(dialect, &names) },
            Migration { version: 6, statements: version_6(dialect, &names) },
            Migration { version: 7, statements: version_7(dialect, &names) },
            // PostgreSQL's claim function with the worker's settling jobs (below); nothing on
            // SQLite, whose claims and settles take turns on its one writer.
            Migration { version: 8, statements: Vec::new() },
            Migration { version: 9, statements: version_9(dialect, &names) },
            Migration { version: 10, statements: version_10(dialect, &names) },
            Migration { version: 11, statements: version_11(dialect, &names) },
            Migration { version: 12, statements: version_12(&names) },
            // PostgreSQL's claim function counts the wait for its queue's lock (below); nothing
            // on SQLite, whose claims read the time once they hold the write lock.
            Migration { version: 13, statements: Vec::new() },
            // PostgreSQL's claim function promotes only when a job is due and counts the settling
            // jobs only when the limit could bind (below); nothing on SQLite, which has no function.
            Migration { version: 14, statements: Vec::new() },
            Migration { version: 15, statements: version_15(dialect, &names) },
            // PostgreSQL: the settle writers' marks and the claim function that reads them
            // (below); nothing on SQLite, whose claims and settles take turns.
            Migration {
                version: 16,
                statements: if pg {
                    vec![format!(
                        "CREATE TABLE IF NOT EXISTS {sd} (writer TEXT NOT NULL PRIMARY KEY, \
                         hi BIGINT NOT NULL, at BIGINT NOT NULL)"
                    )]
                } else {
                    Vec::new()
                },
            },
            Migration { version: 17, statements: version_17(dialect, &names) },
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
        // `by_array`: the update finds the picked rows through an array of their ids, so
        // by the primary key whatever the planner guesses of the selection's size (a `FROM
        // picked` join, planned for a limit it cannot see, a parameter or a subquery, hashed
        // the whole table: 35 ms per claim of 64 among 20,000 jobs). Migrations 3 and 4
        // keep the join they were applied with.
        // `held` (migration 11): a claimed job's `Started` key is held by its row
        // (`key_held`), which the update clears; before, by a row of the keys table, which
        // `free_started` deleted.
        // `mark`: a batch child's token starts with [`CHILD_MARK`], so a settle sends it
        // straight to the statement for children (the claim functions of the migrations, whose
        // text stays as it was, mark nothing: a settle finds those children one step later).
        let claim_update =
            |picked_limit: &str, columns: &[&str], by_array: bool, held: bool, mark: bool| {
                let returning =
                    columns.iter().map(|col| format!("{j}.{col}")).collect::<Vec<_>>().join(", ");
                let find = if by_array {
                    format!("WHERE {j}.id = ANY (ARRAY (SELECT id FROM picked))")
                } else {
                    format!("FROM picked WHERE {j}.id = picked.id")
                };
                let (release, freed) = if held {
                    (
                        format!(
                            ", key_held = CASE WHEN {j}.unique_mode = {UNIQUE_STARTED} THEN NULL \
                         ELSE {j}.key_held END"
                        ),
                        String::new(),
                    )
                } else {
                    (String::new(), format!(", {free_started}"))
                };
                let marked = if mark {
                    format!("CASE WHEN {j}.batch IS NULL THEN '' ELSE '{CHILD_MARK}' END || ")
                } else {
                    String::new()
                };
                format!(
                    "picked AS MATERIALIZED (SELECT id FROM {j} \
                 WHERE queue = $1 AND state = {READY} AND {not_paused} \
                 ORDER BY priority DESC, id LIMIT {picked_limit} FOR UPDATE SKIP LOCKED), \
                 claimed AS (UPDATE {j} SET state = {RESERVED}, attempts = {j}.attempts + 1, \
                 reserved_until = $2 + COALESCE({j}.timeout_ms, $3) + $4, \
                 token = {marked}$5 || {j}.id{release} \
                 {find} RETURNING {returning}){freed}"
                )
            };
        // Under the queue's metadata row lock (taken by the statement before, so this one's
        // snapshot sees every committed claim): room = min(asked, concurrency - reserved, rate -
        // starts in the window); records the starts and prunes the log.
        // `settling`: the jobs counted leave out those whose tokens are in the array `$7` (the
        // claiming worker's jobs whose code ended, their settles on the way; see
        // `ClaimRequest::settling`).
        // `rate`: without it, the statement neither reads nor writes the starts log (a queue
        // with no rate limit).
        //
        // With `settling`, the jobs running are the queue's reserved jobs as its sizes rows count
        // them (migration 7: a few rows, where counting the reserved rows themselves walks every
        // index entry of the rows completed since the last vacuum: 40 ms after 160,000 jobs
        // with autovacuum off), less the settling jobs still reserved under those tokens, found
        // by primary key (a token is the claim's prefix, which holds no `:`, a `:` and the id;
        // a row holds a token only while reserved). A join from the tokens, with no condition
        // on `state`: given `id = ANY (...) AND state = 2`, the planner without statistics
        // walked the reserved index instead of the primary key, and took an empty array's
        // `= ANY ('{}')` (always false) to imply any partial index's condition (69 ms).
        // `lazy` (with `settling`; migration 14): the settling jobs are counted only when the
        // limit could bind, that is when the limit less the sizes rows' count leaves less room
        // than asked (they only add room); a non-binding limit's claim probed the primary key
        // once per settling token (up to the worker's slots) for nothing.
        // Reading the settling jobs' rows is all a binding limit's claim costs more than an
        // unlimited one (BENCHMARKS.md, round 31: ~250 us of a 2.3 ms claim in a drain, found by
        // primary key or by `ctid` alike, as the completions are deleting on those pages).
        // `marked` (migration 16): the settling jobs come as their settle writer's marks instead,
        // `$7` the writer, `$8` their numbers, `$9` their leases' ends. Those numbered above the
        // highest the writer's steps recorded ([`Sql::mark_settled`], read in this statement's
        // snapshot, as the sizes are) are unwritten, so still reserved under their tokens: a
        // count of an array, no row read. Whatever is unknown counts them as running, never the
        // other way: no row yet (or pruned) counts none; a step that settles recorded its whole
        // batch; a lease that may have run out (within the grace `$4`, which bounds the clock
        // skew leases tolerate) may have been recovered without its settle, so it counts.
        let claim_limited = |columns: &[&str],
                             by_array: bool,
                             settling: bool,
                             rate: bool,
                             held: bool,
                             lazy: bool,
                             marked: bool| {
            let tokens = format!(
                "(SELECT COUNT(*) FROM UNNEST($7::TEXT[]) AS t JOIN {j} \
                     ON {j}.id = substr(t, strpos(t, ':') + 1) AND {j}.token = t \
                     AND {j}.queue = $1)"
            );
            // Marks only, no join from tokens beside them: a join from an empty array of tokens
            // still cost the claim what the marks save (BENCHMARKS.md, round 32).
            let settled = if marked {
                format!(
                    "(SELECT COUNT(*) FROM UNNEST($8, $9) AS mk (seq, until) \
                     WHERE mk.until > $2 + $4 AND mk.seq > COALESCE((SELECT hi FROM {sd} \
                     WHERE writer = $7), {NO_MARK}))"
                )
            } else {
                tokens
            };
            let (rate_room, rate_log) = if rate {
                (
                    format!(
                        "COALESCE($8::BIGINT - (SELECT COALESCE(SUM(n), 0)::BIGINT FROM {st} \
                         WHERE queue = $1 AND started_at > $2 - $9::BIGINT), $6::BIGINT)"
                    ),
                    format!(
                        ", started AS (INSERT INTO {st} AS st (queue, started_at, n) \
                         SELECT $1, $2, COUNT(*) FROM claimed WHERE $8::BIGINT IS NOT NULL \
                         HAVING COUNT(*) > 0 \
                         ON CONFLICT (queue, started_at) DO UPDATE SET n = st.n + excluded.n), \
                         pruned AS (DELETE FROM {st} WHERE queue = $1 AND $9::BIGINT > 0 \
                         AND started_at <= $2 - $9::BIGINT)"
                    ),
                )
            } else {
                ("$6::BIGINT".to_owned(), String::new())
            };
            let room = if settling && lazy {
                format!(
                    "GREATEST(0, LEAST($6::BIGINT, CASE WHEN $7::BIGINT IS NULL \
                         OR $7::BIGINT - sized.running >= $6::BIGINT THEN $6::BIGINT \
                         ELSE $7::BIGINT - (sized.running - {settled}) END, {rate_room})) AS n \
                         FROM (SELECT COALESCE(SUM(reserved), 0) AS running FROM {z} \
                         WHERE queue = $1) AS sized"
                )
            } else {
                let reserved = if settling {
                    format!(
                        "((SELECT COALESCE(SUM(reserved), 0) FROM {z} WHERE queue = $1) \
                         - {settled})"
                    )
                } else {
                    format!(
                        "(SELECT COUNT(*) FROM (SELECT 1 FROM {j} WHERE queue = $1 \
                         AND state = {RESERVED} LIMIT COALESCE($7::BIGINT, 0)) AS r)"
                    )
                };
                format!(
                    "GREATEST(0, LEAST($6::BIGINT, \
                         COALESCE($7::BIGINT - {reserved}, $6::BIGINT), {rate_room})) AS n"
                )
            };
            format!(
                "WITH room AS MATERIALIZED (SELECT {room}), \
                 {}{rate_log} \
                 SELECT * FROM claimed",
                claim_update("(SELECT n FROM room)", columns, by_array, held, false)
            )
        };
        // PostgreSQL's chunk of a queue's due jobs to promote, for the promotion statement and
        // the claim function (migration 8).
        let due_pg = format!(
            "due AS MATERIALIZED (SELECT id FROM {j} \
             WHERE queue = $1 AND state = {DELAYED} AND available_at <= $2 AND {not_paused} \
             ORDER BY available_at LIMIT {PROMOTE_CHUNK} FOR UPDATE SKIP LOCKED)"
        );
        let (promote, claim, claim_promoting) = if pg {
            // The promotion, and its answer (`lim` being the queue's row of limits): the same
            // parts in the promotion statement and in the claim that promotes. The answer
            // includes the queue's next delayed job after now, read here so that a short claim
            // needs no statement of its own for it.
            let promotion = format!(
                "{due_pg}, \
                 promoted AS (UPDATE {j} SET state = {READY} FROM due WHERE {j}.id = due.id \
                 RETURNING 1)"
            );
            let answer = format!(
                "(SELECT COUNT(*) FROM promoted), lim.concurrency, lim.rate_limit, \
                 lim.rate_period_ms, (SELECT available_at FROM {j} WHERE queue = $1 \
                 AND state = {DELAYED} AND available_at > $2 AND {not_paused} \
                 ORDER BY available_at LIMIT 1)"
            );
            // MATERIALIZED: the selection runs once, so the update touches at most `$6` rows
            // whatever plan the outer statement gets (an `IN (subquery)` may be re-evaluated).
            // The promotion also reads the queue's limits, saving a round trip per claim.
            (
                format!(
                    "WITH {promotion} SELECT {answer} \
                     FROM (SELECT 1) AS one LEFT JOIN {m} AS lim ON lim.queue = $1"
                ),
                format!(
                    "WITH {} SELECT * FROM claimed WHERE {ASYNC_COMMIT}",
                    claim_update("$6", &CLAIM_COLUMNS, true, true, true)
                ),
                // A statement's parts share one snapshot, so the claim cannot see the jobs this
                // statement promotes: it takes nothing when any was due (the caller claims
                // again, as after the promotion statement), so that a due job of higher
                // priority is never passed over. Nor on a limited queue (limits as
                // `Limits::from_columns` reads them): the caller claims through the claim function. The promotion's answer is a row of the claim's
                // columns whose id is NULL (`PROMOTION_COLUMNS` says where each number is).
                format!(
                    "WITH {promotion}, \
                     lim AS MATERIALIZED (SELECT concurrency, rate_limit, rate_period_ms \
                     FROM {m} WHERE queue = $1), \
                     room AS MATERIALIZED (SELECT CASE WHEN EXISTS (SELECT 1 FROM due) \
                     OR EXISTS (SELECT 1 FROM lim WHERE concurrency IS NOT NULL \
                     OR (rate_limit IS NOT NULL AND rate_period_ms IS NOT NULL)) \
                     THEN 0 ELSE $6::BIGINT END AS n), \
                     {} \
                     SELECT * FROM claimed \
                     UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, {answer}, NULL, NULL, NULL, NULL, NULL, NULL, NULL \
                     FROM (SELECT 1) AS one LEFT JOIN lim ON TRUE WHERE {ASYNC_COMMIT}",
                    claim_update("(SELECT n FROM room)", &CLAIM_COLUMNS, true, true, true)
                ),
            )
        } else {
            // One writer at a time on SQLite: the subquery cannot race with another claim.
            // `OR IGNORE` changes nothing here (the values set are never NULL and no unique
            // index covers the columns set) but makes the statements ones that cannot abort, so
            // SQLite keeps no statement journal for them (see [`version_15`]).
            (
                format!(
                    "UPDATE OR IGNORE {j} SET state = {READY} WHERE id IN (SELECT id FROM {j} \
                     WHERE queue = $1 AND state = {DELAYED} AND available_at <= $2 AND {not_paused} \
                     ORDER BY available_at LIMIT {PROMOTE_CHUNK})"
                ),
                format!(
                    "UPDATE OR IGNORE {j} SET state = {RESERVED}, attempts = attempts + 1, \
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
                     timeout_ms, dispatched_at, unique_key, unique_mode, unique_ms, batch, meta";
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
        // A failure for good adds its error to the history the job takes into the failed set.
        let failed_errors = append_error(dialect, "$3");
        let lf = limited(&f);
        // PostgreSQL ends a batch child in a transaction that locked its batch row first (see
        // `Store::settle_children`), so its terminal statements that lock no batch row skip
        // children; SQLite's writes take turns, so its statements take any job.
        let plain = if pg { " AND batch IS NULL" } else { "" };
        // PostgreSQL: raises each settle writer's mark to its highest number of the step (see
        // `Sql::mark_settled`): the writers, their numbers and the time as parameters.
        let upsert_marks = |writers: &str, highest: &str, at: &str| {
            format!(
                "INSERT INTO {sd} AS sd (writer, hi, at) SELECT mk.w, mk.hi, {at} \
                 FROM UNNEST({writers}::TEXT[], {highest}::BIGINT[]) AS mk (w, hi) \
                 ON CONFLICT (writer) DO UPDATE SET hi = GREATEST(sd.hi, excluded.hi), \
                 at = excluded.at"
            )
        };
        let marked = upsert_marks("$4", "$5", "$6");
        let ready_since = if pg { " AND reserved_until IS NULL" } else { "" };
        let lock = if pg { " FOR UPDATE" } else { "" };
        let mut migrations = migrations;
        let claim_function = format!("{prefix}\"{jobs}_claim\"");
        if pg {
            // The claim of a limited queue as a server-side function: a lock per queue (an
            // advisory one, which writes nothing) and the claim are two statements (the claim's snapshot, taken after
            // the lock, sees every claim committed before), yet one round trip.
            // `waited` (migration 13): a claim that waited for the lock (behind another claim of
            // the queue) counts its starts, and dates its leases, that much later than the
            // worker's `now` ($2): with `now` as sent, a claim that waited logged its starts
            // early, and a later claim's window could let more than the limit start in real time.
            // Only a wait is added (`now` stays exact for a claim that met no other, as under
            // the conformance suite's manual clocks), measured by the server's clock.
            // `lazy` (migration 14): the promotion runs only when the queue has a due job (an
            // `UPDATE` fires the `_sizes` statement trigger even when it changes no row, and most
            // claims find nothing due: 40 us of a claim's 1.2 ms), and the settling jobs are
            // counted only when the limit could bind (see `claim_limited`).
            let function = |columns: &[&str], extra: &str, shape: Shape| {
                let Shape { by_array, settling, held, waited, lazy, marked } = shape;
                let limited = |rate: bool| {
                    let sql = claim_limited(columns, by_array, settling, rate, held, lazy, marked)
                        .replace("$7::BIGINT", "v_concurrency")
                        .replace("$8::BIGINT", "v_rate")
                        .replace("$9::BIGINT", "v_period");
                    if waited { replace_param(&sql, 2, "v_now") } else { sql }
                };
                let (settling_arg, promote, claim) = if settling {
                    // Migration 8: the function promotes one chunk of the queue's due jobs
                    // first, so a worker that knows the queue to be limited claims in one round
                    // trip; a full chunk (more may be due) answers one row of NULLs instead of
                    // claiming, and the caller promotes the rest and calls again. A queue
                    // without a rate limit skips the starts log.
                    let promote = format!(
                        "WITH {due_pg} \
                         UPDATE {j} SET state = {READY} FROM due WHERE {j}.id = due.id; \
                         GET DIAGNOSTICS v_promoted = ROW_COUNT; \
                         IF v_promoted >= {PROMOTE_CHUNK} THEN RETURN NEXT; RETURN; END IF; "
                    );
                    (
                        if marked { ", TEXT, BIGINT[], BIGINT[]" } else { ", TEXT[]" },
                        if lazy {
                            format!(
                                "IF EXISTS (SELECT 1 FROM {j} WHERE queue = $1 \
                                 AND state = {DELAYED} AND available_at <= $2) THEN \
                                 {promote}END IF; "
                            )
                        } else {
                            promote
                        },
                        format!(
                            "IF v_rate IS NULL THEN RETURN QUERY {}; \
                             ELSE RETURN QUERY {}; END IF;",
                            limited(false),
                            limited(true)
                        ),
                    )
                } else {
                    ("", String::new(), format!("RETURN QUERY {};", limited(true)))
                };
                let promoted = if settling { " v_promoted BIGINT;" } else { "" };
                let key = format!("hashtextextended('{jobs}:' || $1, 0)");
                let (lock, now) = if waited {
                    (
                        format!(
                            "IF NOT pg_try_advisory_xact_lock({key}) THEN \
                             v_asked := clock_timestamp(); \
                             PERFORM pg_advisory_xact_lock({key}); \
                             v_now := $2 + floor(extract(epoch FROM clock_timestamp() - v_asked) \
                             * 1000)::BIGINT; \
                             END IF; "
                        ),
                        " v_now BIGINT := $2; v_asked TIMESTAMPTZ;",
                    )
                } else {
                    (format!("PERFORM pg_advisory_xact_lock({key}); "), "")
                };
                format!(
                    "CREATE OR REPLACE FUNCTION {claim_function}(TEXT, BIGINT, BIGINT, BIGINT, \
                     TEXT, BIGINT{settling_arg}) RETURNS TABLE (o_id TEXT, o_name TEXT, o_queue TEXT, \
                     o_payload TEXT, o_priority INTEGER, o_attempts BIGINT, o_max_retries BIGINT, \
                     o_retry_delay_ms BIGINT, o_timeout_ms BIGINT, o_dispatched_at BIGINT, \
                     o_last_error TEXT, o_reserved_until BIGINT, o_token TEXT, o_unique_key TEXT, \
                     o_unique_mode INTEGER{extra}) LANGUAGE plpgsql VOLATILE AS $fn$ \
                     DECLARE v_concurrency BIGINT; v_rate BIGINT; v_period BIGINT;{promoted}{now} \
                     BEGIN \
                     {promote}\
                     {lock}\
                     SELECT concurrency, rate_limit, rate_period_ms \
                     INTO v_concurrency, v_rate, v_period FROM {m} WHERE queue = $1; \
                     {claim} \
                     END $fn$"
                )
            };
            let v3 = Shape::default();
            migrations[2].statements.push(function(&CLAIM_COLUMNS[..CLAIM_COLUMNS_V3], "", v3));
            // A function's result type cannot be replaced: drop it, then create the new one.
            migrations[3].statements.push(format!(
                "DROP FUNCTION IF EXISTS {claim_function}(TEXT, BIGINT, BIGINT, BIGINT, TEXT, \
                 BIGINT)"
            ));
            let v4 = ", o_batch TEXT, o_meta TEXT";
            migrations[3].statements.push(function(&CLAIM_COLUMNS, v4, v3));
            let v6 = Shape { by_array: true, ..v3 };
            let v11 = Shape { held: true, ..v6 };
            let v13 = Shape { waited: true, ..v11 };
            let settling = |shape: Shape| Shape { settling: true, ..shape };
            // Each later version, in the migration that creates it (index = version - 1), with
            // the result type of migration 4.
            for (index, shape) in [
                // Same result type: replaced in place, with the update by primary key.
                (5, v6),
                // A new signature beside the old one (which an older worker still calls).
                (7, settling(v6)),
                // Both again, clearing the `Started` key a claimed job's row holds.
                (10, v11),
                (10, settling(v11)),
                // Both again, adding the wait for the queue's lock to the claim's time.
                (12, v13),
                (12, settling(v13)),
                // Promoting only when a job is due and counting the settling jobs only when the
                // limit could bind (the other one does neither); this build calls it for a
                // claim that names its settling jobs by token.
                (13, Shape { lazy: true, ..settling(v13) }),
                // The signature a worker of this build calls: the settling jobs by their marks.
                (15, Shape { lazy: true, marked: true, ..settling(v13) }),
            ] {
                migrations[index].statements.push(function(&CLAIM_COLUMNS, v4, shape));
            }
        }
        Self {
            migrations,
            create_migrations,
            promote: s(promote),
            claim: s(claim),
            claim_promoting: s(claim_promoting),
            claim_limited_pg: s(format!(
                "SELECT * FROM {claim_function}($1, $2, $3, $4, $5, $6, $7::TEXT[]) \
                 WHERE {ASYNC_COMMIT}"
            )),
            claim_marked_pg: s(format!(
                "SELECT * FROM {claim_function}($1, $2, $3, $4, $5, $6, $7::TEXT, $8::BIGINT[], \
                 $9::BIGINT[]) WHERE {ASYNC_COMMIT}"
            )),
            limits: s(format!(
                "SELECT concurrency, rate_limit, rate_period_ms FROM {m} WHERE queue = $1"
            )),
            room: s(format!(
                "SELECT r.n, (SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM {st} \
                 WHERE queue = $1 AND started_at > $2), \
                 CASE WHEN $4 - r.n >= $5 THEN 0 ELSE \
                 (SELECT COUNT(*) FROM json_each($3) AS t CROSS JOIN {j} \
                 ON {j}.id = substr(t.value, instr(t.value, ':') + 1) AND {j}.token = t.value \
                 AND {j}.queue = $1 AND {j}.state = {RESERVED}) END \
                 FROM (SELECT COALESCE((SELECT reserved FROM {z} WHERE queue = $1 \
                 AND shard = 0), 0) AS n) AS r"
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
                 token = NULL, last_error = $4, errors = {} WHERE id = $1 AND token = $2 \
                 RETURNING queue, {lj}",
                state_at("$5"),
                append_error(dialect, "$4")
            )),
            release: s(format!(
                "UPDATE {j} SET state = {}, available_at = $3, reserved_until = NULL, \
                 token = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
                 WHERE id = $1 AND token = $2 RETURNING queue, {lj}",
                state_at("$4")
            )),
            extend: s(format!("UPDATE {j} SET reserved_until = $3 WHERE id = $1 AND token = $2")),
            // The sizes are the trigger-kept rows of `<jobs>_sizes` (migration 7), summed over
            // their shards: a few rows whatever the backlog. A due delayed job counts as
            // pending, as in every driver: its state changes only when a claim promotes it, so
            // the due ones are counted here, an index range over `_delayed` bounded by the
            // due jobs no worker promoted yet (workers promote them as they claim; a paused
            // queue, or one without workers, keeps them). Both read one snapshot, so the due
            // jobs are among the delayed ones counted. The latency probes are `ORDER BY ...
            // LIMIT 1`: PostgreSQL planned `MIN()` over a table without statistics (autovacuum
            // off, or a table grown since its last analyze) as an aggregate of every ready
            // job (241 ms at 1,000,000), where the limit can only be the first index entry.
            // `ready_since`: the condition of PostgreSQL's `_ready_since` index (migration 6).
            stats: s(format!(
                "WITH size AS (SELECT COALESCE(SUM(ready), 0) AS ready, \
                 COALESCE(SUM(delayed), 0) AS delayed, COALESCE(SUM(reserved), 0) AS reserved, \
                 COALESCE(SUM(failed), 0) AS failed FROM {z} WHERE queue = $1), \
                 due AS (SELECT COUNT(*) AS n FROM {j} WHERE queue = $1 AND state = {DELAYED} \
                 AND available_at <= $2) \
                 SELECT CAST(size.ready + due.n AS BIGINT), CAST(size.delayed - due.n AS BIGINT), \
                 CAST(size.reserved AS BIGINT), CAST(size.failed AS BIGINT), \
                 COALESCE((SELECT processed FROM {c} WHERE queue = $1), 0), \
                 COALESCE((SELECT failed_total FROM {c} WHERE queue = $1), 0), \
                 COALESCE((SELECT paused FROM {m} WHERE queue = $1), FALSE), \
                 COALESCE((SELECT cancelled FROM {c} WHERE queue = $1), 0), \
                 (SELECT concurrency FROM {m} WHERE queue = $1), \
                 (SELECT rate_limit FROM {m} WHERE queue = $1), \
                 (SELECT rate_period_ms FROM {m} WHERE queue = $1), \
                 (SELECT available_at FROM {j} WHERE queue = $1 AND state = {READY}\
                 {ready_since} ORDER BY available_at LIMIT 1), \
                 (SELECT available_at FROM {j} WHERE queue = $1 AND state = {DELAYED} \
                  AND available_at <= $2 ORDER BY available_at LIMIT 1) FROM size, due"
            )),
            // The queues holding a job (live or failed: their sizes), with counters or metadata.
            queues: s(format!(
                "SELECT queue FROM {z} GROUP BY queue \
                 HAVING SUM(ready) + SUM(delayed) + SUM(reserved) + SUM(failed) > 0 \
                 UNION SELECT queue FROM {c} UNION SELECT queue FROM {m}"
            )),
            ensure_counter: s(format!(
                "INSERT INTO {c} (queue, processed, failed_total) VALUES ($1, 0, 0) \
                 ON CONFLICT (queue) DO NOTHING"
            )),
            clear: s(format!("DELETE FROM {j} WHERE queue = $1 AND state IN ({READY}, {DELAYED})")),
            // PostgreSQL: a holder whose row another transaction has locked is being claimed,
            // promoted or removed at this moment, and is skipped (a duplicate) rather than
            // waited for: a claim that frees a `Started` key locks the job's row, then waits for
            // the key's row, which this push holds since it found the key taken (a deadlock).
            debounce: s(format!(
                "UPDATE {j} SET payload = $1, available_at = $2, \
                 state = CASE WHEN $2 > $3 THEN {DELAYED} ELSE {READY} END \
                 WHERE id = {holder} RETURNING state",
                holder = if pg {
                    format!(
                        "(SELECT id FROM {j} WHERE id = $4 AND state IN ({READY}, {DELAYED}) \
                         FOR UPDATE SKIP LOCKED)"
                    )
                } else {
                    format!("$4 AND state IN ({READY}, {DELAYED})")
                }
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
            forget_queue: [
                s(format!("DELETE FROM {c} WHERE queue = $1")),
                s(format!("DELETE FROM {m} WHERE queue = $1")),
                s(format!("DELETE FROM {u} WHERE queue = $1")),
                s(format!("DELETE FROM {st} WHERE queue = $1")),
                // Only rows that count nothing: a shard's row may count a job that another
                // shard's row counts out, and a concurrent write may have just added one.
                s(format!(
                    "DELETE FROM {z} WHERE queue = $1 AND ready = 0 AND delayed = 0 \
                     AND reserved = 0 AND failed = 0"
                )),
            ],
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
            unfail: s(format!("DELETE FROM {f} WHERE id = $1 RETURNING {moved}, errors")),
            // Out of its batch (`batch` NULL): it was counted there when it failed.
            requeue: s(format!(
                "INSERT INTO {j} ({moved}, available_at, state, errors) \
                 VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, $11, $12, NULL, $13, $14, \
                 {READY}, $15) ON CONFLICT (id) DO NOTHING"
            )),
            forget: s(format!("DELETE FROM {f} WHERE id = $1")),
            flush: s(format!("DELETE FROM {f}")),
            delete_leased: s(format!(
                "DELETE FROM {j} WHERE id = $1 AND token = $2{plain} \
                 RETURNING queue, unique_key, {lj}, batch"
            )),
            delete_leased_any: s(format!(
                "DELETE FROM {j} WHERE id = $1 AND token = $2 \
                 RETURNING queue, unique_key, {lj}, batch"
            )),
            count_ended: s(format!(
                "INSERT INTO {c} AS c (queue, processed, failed_total, cancelled) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (queue) DO UPDATE SET \
                 processed = c.processed + excluded.processed, \
                 failed_total = c.failed_total + excluded.failed_total, \
                 cancelled = c.cancelled + excluded.cancelled"
            )),
            copy_to_failed: s(format!(
                "INSERT INTO {f} ({moved}, error, failed_at, errors) \
                 SELECT {moved}, $3, $4, {failed_errors} FROM {j} WHERE id = $1 AND token = $2{plain} \
                 RETURNING queue, {lf}, batch"
            )),
            copy_to_failed_any: s(format!(
                "INSERT INTO {f} ({moved}, error, failed_at, errors) \
                 SELECT {moved}, $3, $4, {failed_errors} FROM {j} WHERE id = $1 AND token = $2 \
                 RETURNING queue, {lf}, batch"
            )),
            // (A job's row holds its key, if any, but a `Period` one, which runs its time.)
            delete_job: s(format!("DELETE FROM {j} WHERE id = $1")),
            cancel_waiting: s(format!(
                "DELETE FROM {j} WHERE id = $1 AND state IN ({READY}, {DELAYED}) \
                 RETURNING queue, unique_key, batch"
            )),
            cancel_running: s(format!(
                "UPDATE {j} SET cancel_requested = TRUE WHERE id = $1 AND state = {RESERVED} \
                 RETURNING queue"
            )),
            set_progress: s(format!("UPDATE {j} SET progress = $3 WHERE id = $1 AND token = $2")),
            insert_pg: [false, true].map(|workflow| s(insert_pg(&j, workflow))),
            complete_many_pg: s(format!(
                "WITH done AS (DELETE FROM {j} WHERE (id, token) IN \
                 (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) AND batch IS NULL \
                 RETURNING id, token, queue), \
                 counted AS (INSERT INTO {c} AS c (queue, processed, failed_total) \
                 SELECT queue, COUNT(*), 0 FROM done GROUP BY queue \
                 ON CONFLICT (queue) DO UPDATE SET processed = c.processed + excluded.processed), \
                 marked AS ({marked}), \
                 woke AS (SELECT pg_notify($3, left(lim.queue, 1000)) FROM {m} AS lim \
                 WHERE lim.concurrency IS NOT NULL AND lim.queue IN (SELECT queue FROM done)) \
                 SELECT id, token, (SELECT COUNT(*) FROM woke) FROM done"
            )),
            // `locked` is read whole (the one-time filter `COUNT(*) >= 0`) before the delete
            // touches a job: batch rows before job rows, the order every batch path takes.
            // `pending > n` under the lock (n counts the leases still stored, which bounds
            // what the delete removes) means the update is a plain count, no batch finishes.
            // The delete finds its rows by primary key, from an array: given `batch IN locked`,
            // the planner walked the batch's index, every child of the batch per call (22 ms
            // a call in a batch of 20,000). A job's batch never changes.
            complete_children_pg: s(format!(
                "WITH leases AS MATERIALIZED (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]) \
                 AS l (id, token)), \
                 mine AS MATERIALIZED (SELECT id, batch FROM {j} \
                 WHERE (id, token) IN (SELECT id, token FROM leases) AND batch IS NOT NULL), \
                 held AS MATERIALIZED (SELECT batch, COUNT(*) AS n FROM mine GROUP BY batch), \
                 locked AS MATERIALIZED (SELECT b.id FROM {b} AS b JOIN held ON held.batch = b.id \
                 WHERE b.finished_at IS NULL AND b.pending > held.n ORDER BY b.id FOR UPDATE OF b), \
                 done AS (DELETE FROM {j} \
                 WHERE id = ANY (ARRAY (SELECT mine.id FROM mine JOIN locked ON locked.id = mine.batch)) \
                 AND (id, token) IN (SELECT id, token FROM leases) AND (SELECT COUNT(*) FROM locked) >= 0 \
                 RETURNING id, token, queue, batch), \
                 counted AS (INSERT INTO {c} AS c (queue, processed, failed_total) \
                 SELECT queue, COUNT(*), 0 FROM done GROUP BY queue \
                 ON CONFLICT (queue) DO UPDATE SET processed = c.processed + excluded.processed), \
                 batched AS (UPDATE {b} AS b SET pending = b.pending - d.n, \
                 processed = b.processed + d.n \
                 FROM (SELECT batch, COUNT(*) AS n FROM done GROUP BY batch) AS d \
                 WHERE b.id = d.batch), \
                 marked AS ({marked}), \
                 woke AS (SELECT pg_notify($3, left(lim.queue, 1000)) FROM {m} AS lim \
                 WHERE lim.concurrency IS NOT NULL AND lim.queue IN (SELECT queue FROM done)) \
                 SELECT id, token, (SELECT COUNT(*) FROM woke) FROM done"
            )),
            complete_leases_pg: s(format!(
                "WITH done AS (DELETE FROM {j} WHERE (id, token) IN \
                 (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) \
                 RETURNING id, token, queue, batch) \
                 SELECT id, token, queue, batch, EXISTS (SELECT 1 FROM {m} AS lim \
                 WHERE lim.queue = done.queue AND lim.concurrency IS NOT NULL) FROM done"
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
            batch_insert: s(format!(
                "INSERT INTO {b} ({BATCH_COLUMNS}) VALUES ($1, $2, $2, 0, 0, 0, $3, $4, NULL, $5, \
                 $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING RETURNING id"
            )),
            batch_count: s(batch_count(&b)),
            batch_get: s(format!("SELECT {BATCH_COLUMNS} FROM {b} WHERE id = $1")),
            batch_get_locked: s(format!("SELECT {BATCH_COLUMNS} FROM {b} WHERE id = $1{lock}")),
            batch_cancel: s(format!(
                "UPDATE {b} SET cancelled_at = $2 WHERE id = $1 AND cancelled_at IS NULL \
                 AND finished_at IS NULL"
            )),
            batch_fix: s(format!(
                "UPDATE {b} SET total = $2, pending = $2, finished_at = $3, then_state = $4, \
                 catch_state = $5, finally_state = $6 WHERE id = $1"
            )),
            sweep_delete: s(format!(
                "DELETE FROM {j} WHERE batch = $1 AND state IN ({READY}, {DELAYED}) \
                 RETURNING queue, id, unique_key"
            )),
            sweep_flag: s(format!(
                "UPDATE {j} SET cancel_requested = TRUE WHERE batch = $1 AND NOT cancel_requested"
            )),
            lock_batch_of_job: s(format!(
                "SELECT id FROM {b} WHERE id = (SELECT batch FROM {j} WHERE id = $1){lock}"
            )),
            lock_batches_of_queue: s(format!(
                "SELECT id FROM {b} WHERE id IN (SELECT batch FROM {j} WHERE queue = $1 \
                 AND state IN ({READY}, {DELAYED}) AND batch IS NOT NULL) ORDER BY id{lock}"
            )),
            clear_counted_pg: s(format!(
                "WITH gone AS (DELETE FROM {j} WHERE queue = $1 AND state IN ({READY}, {DELAYED}) \
                 RETURNING batch) SELECT batch, COUNT(*) FROM gone GROUP BY batch ORDER BY batch"
            )),
            clear_batches: s(format!(
                "SELECT batch, COUNT(*) FROM {j} WHERE queue = $1 \
                 AND state IN ({READY}, {DELAYED}) AND batch IS NOT NULL \
                 GROUP BY batch ORDER BY batch"
            )),
            schedule_register: s(format!(
                "INSERT INTO {sch} ({SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (name) DO UPDATE SET queue = excluded.queue, \
                 definition = excluded.definition, updated_at = excluded.updated_at \
                 RETURNING {SCHEDULE_COLUMNS}"
            )),
            schedule_list: s(format!("SELECT {SCHEDULE_COLUMNS} FROM {sch} ORDER BY name")),
            schedule_forget: s(format!("DELETE FROM {sch} WHERE name = $1")),
            schedule_fire: s(format!(
                "UPDATE {sch} SET \"cursor\" = $3, last_run = COALESCE($4, last_run), \
                 next_run = $5 WHERE name = $1 AND \"cursor\" = $2"
            )),
            schedule_exists: s(format!("SELECT 1 FROM {sch} WHERE name = $1")),
            worker_beat: s(format!(
                "INSERT INTO {w} (id, started_at, expires_at, info) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, \
                 expires_at = excluded.expires_at, info = excluded.info"
            )),
            throughput_add: s(format!(
                "INSERT INTO {tp} AS t (queue, minute, processed, failed) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (queue, minute) DO UPDATE SET \
                 processed = t.processed + excluded.processed, failed = t.failed + excluded.failed"
            )),
            throughput_prune: s(if pg {
                format!(
                    "WITH settled AS (DELETE FROM {sd} WHERE at < $1) \
                     DELETE FROM {tp} WHERE minute < $1"
                )
            } else {
                format!("DELETE FROM {tp} WHERE minute < $1")
            }),
            mark_settled: s(upsert_marks("$1", "$2", "$3")),
            workers_expire: s(format!("DELETE FROM {w} WHERE expires_at < $1")),
            workers_list: s(format!(
                "SELECT info FROM {w} WHERE expires_at >= $1 ORDER BY started_at, id"
            )),
            worker_forget: s(format!("DELETE FROM {w} WHERE id = $1")),
            throughput_of_queue: s(format!(
                "SELECT minute, processed, failed FROM {tp} WHERE queue = $1 AND minute >= $2 \
                 ORDER BY minute"
            )),
            throughput_all: s(format!(
                "SELECT minute, CAST(SUM(processed) AS BIGINT), CAST(SUM(failed) AS BIGINT) \
                 FROM {tp} WHERE minute >= $1 GROUP BY minute ORDER BY minute"
            )),
            prune_before: [
                s(format!("DELETE FROM {f} WHERE failed_at < $1")),
                s(format!("DELETE FROM {f} WHERE queue = $2 AND failed_at < $1")),
            ],
            // The walk from the newest costs `keep` index entries, then the delete what it
            // deletes (the `seq` key, or the `(queue, seq)` index).
            prune_keep: [
                s(format!(
                    "DELETE FROM {f} WHERE seq <= (SELECT seq FROM {f} ORDER BY seq DESC \
                     LIMIT 1 OFFSET $1)"
                )),
                s(format!(
                    "DELETE FROM {f} WHERE queue = $2 AND seq <= (SELECT seq FROM {f} \
                     WHERE queue = $2 ORDER BY seq DESC LIMIT 1 OFFSET $1)"
                )),
            ],
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
            batches: b,
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

    /// SQLite: inserts `rows` new jobs (14 parameters each, 16 with the `workflow` columns: a
    /// push of jobs outside workflows sends the statement it sent before they existed),
    /// skipping ids already in the table; returns the ids it stored. It also skips ids in the
    /// failed set: the statement runs under the single write lock, so nothing can move a job
    /// there meanwhile, and the push saves the separate look (a round trip to SQLite's worker
    /// thread). PostgreSQL's is [`Sql::insert_pg`].
    pub(crate) fn insert(&self, rows: usize, workflow: bool) -> String {
        let (columns, per_row) =
            if workflow { (", batch, meta", INSERT_WORKFLOW_PARAMS) } else { ("", INSERT_PARAMS) };
        // A `Started` or `Finished` key is held by its job's row (`key_held`, see migrations 9
        // and 11), so a key held by another job is a conflict like a stored id. `OR IGNORE`
        // skips a conflicting row as `ON CONFLICT DO NOTHING` would, and makes the statement
        // one that cannot abort, so SQLite keeps no statement journal for it (see
        // [`version_15`]).
        let mut sql = format!(
            "INSERT OR IGNORE INTO {} (id, queue, name, payload, priority, max_retries, retry_delay_ms, \
             timeout_ms, dispatched_at, available_at, state, unique_key, unique_mode, unique_ms\
             {columns}, key_held) SELECT *, CASE WHEN column13 IN ({UNIQUE_STARTED}, \
             {UNIQUE_FINISHED}) THEN 1 END FROM (VALUES ",
            self.jobs,
        );
        // Anonymous: sqlx looks up each numbered parameter's name, which SQLite finds by a
        // linear scan, so a push of 1,000 jobs spent ~90% of its time there; `?` are bound by
        // position (they appear in order here).
        let values = format!("({})", vec!["?"; per_row].join(", "));
        for row in 0..rows {
            if row > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&values);
        }
        // Nor is a job whose id is in the failed set, or whose key someone holds for a `Period`
        // (the keys table).
        sql.push_str(&format!(
            ") WHERE column1 NOT IN (SELECT id FROM {f}) AND (column12 IS NULL OR NOT EXISTS \
             (SELECT 1 FROM {u} WHERE {u}.queue = column2 AND {u}.unique_key = column12 \
             AND {u}.expires_at > column9)) RETURNING id",
            f = self.failed,
            u = self.uniq,
        ));
        sql
    }

    /// PostgreSQL's insert of a push (`workflow`: with the `batch` and `meta` columns): the
    /// columns of [`Sql::insert`] as arrays, a job per index, inserted in the arrays' order.
    pub(crate) fn insert_pg(&self, workflow: bool) -> &Arc<str> {
        &self.insert_pg[usize::from(workflow)]
    }

    /// Takes the unique keys of `rows` jobs (5 parameters each: queue, key, holder, taken_at,
    /// expires_at), or finds who holds them: a key is taken over only when its `Period` ended
    /// by the new holder's dispatch time. Returns (queue, key, holder) for every row.
    pub(crate) fn take_keys(&self, rows: usize) -> String {
        let values = (0..rows)
            .map(|row| match self.dialect {
                // In order, so anonymous (see [`Sql::insert`]).
                Dialect::Sqlite => "(?, ?, ?, ?, ?)".to_owned(),
                Dialect::Postgres => format!("({})", params(row * 5 + 1, 5)),
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {} AS u (queue, unique_key, holder, taken_at, expires_at) VALUES {values} \
             {}",
            self.uniq,
            Self::KEY_CONFLICT
        )
    }

    /// SQLite: takes the keys of `rows` jobs that nobody holds (the parameters of
    /// [`Sql::take_keys`]), returning nothing: when it took them all, as a push of fresh keys
    /// does, the push needs no answer per key (each job holds its own), which saves reading back
    /// a row per key. Otherwise [`Sql::take_keys`] follows for the same keys (those this took
    /// are then held by their jobs and answered as such).
    pub(crate) fn take_free_keys(&self, rows: usize) -> String {
        format!(
            "INSERT INTO {} (queue, unique_key, holder, taken_at, expires_at) VALUES {} \
             ON CONFLICT (queue, unique_key) DO NOTHING",
            self.uniq,
            vec!["(?, ?, ?, ?, ?)"; rows].join(", ")
        )
    }

    /// Which of `rows` ids are stored, live or failed (the ids bound twice, once per table).
    pub(crate) fn stored_ids(&self, rows: usize) -> String {
        format!(
            "SELECT id FROM {} WHERE id IN ({}) UNION ALL SELECT id FROM {} WHERE id IN ({})",
            self.jobs,
            self.list(1, rows),
            self.failed,
            self.list(rows + 1, rows)
        )
    }

    /// Who holds the keys of `rows` (queue, key, at) triples (3 parameters each, `at` the time
    /// a `Period` must outlast to hold): (queue, key, holder) per held key, whether a job holds
    /// it (`Started`, `Finished`) or the keys table does (`Period`).
    pub(crate) fn key_holders(&self, rows: usize) -> String {
        let values = (0..rows)
            .map(|row| format!("({})", self.list(row * 3 + 1, 3)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "WITH k (queue, unique_key, at) AS (VALUES {}) \
             SELECT k.queue, k.unique_key, j.id FROM k JOIN {j} AS j ON j.queue = k.queue \
             AND j.unique_key = k.unique_key AND j.key_held IS NOT NULL \
             UNION ALL SELECT k.queue, k.unique_key, u.holder FROM k JOIN {u} AS u \
             ON u.queue = k.queue AND u.unique_key = k.unique_key AND u.expires_at > k.at",
            values,
            j = self.jobs,
            u = self.uniq,
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

    /// PostgreSQL: [`Sql::failed_ids`] of the ids in the JSON array `$1`, and which of those
    /// jobs, stored by this push with a key in their rows, find it held for a `Period` by
    /// another job (the insert does not look at the keys table; see `Store::insert_jobs`).
    /// Rows: (id, NULL) per failed id, (id, holder) per job refused for a `Period` key. One
    /// text whatever the number of ids, so that each connection plans it a few times, not each
    /// size of push a few times (planning this join took ten times as long as running it).
    pub(crate) fn failed_ids_and_period_holders(&self) -> String {
        let (j, u) = (&self.jobs, &self.uniq);
        format!(
            "WITH ids AS MATERIALIZED (SELECT json_array_elements_text($1::JSON) AS id) \
             SELECT id, NULL::TEXT FROM {f} WHERE id IN (SELECT id FROM ids) \
             UNION ALL SELECT {j}.id, {u}.holder FROM {j} JOIN {u} ON {u}.queue = {j}.queue \
             AND {u}.unique_key = {j}.unique_key WHERE EXISTS (SELECT 1 FROM {u}) \
             AND {j}.id IN (SELECT id FROM ids) \
             AND {j}.key_held IS NOT NULL AND {u}.expires_at > {j}.dispatched_at \
             AND {u}.holder <> {j}.id",
            f = self.failed,
        )
    }

    /// Clears `key_held` of `count` jobs (a parameter each). SQLite: the `Started` keys of jobs
    /// just claimed, in the claim's transaction (not in the claim statement: one that sets
    /// `key_held` makes SQLite rewrite the `<jobs>_held_key` entry of every `Finished` job it
    /// claims). PostgreSQL: the `Period` keys of jobs just pushed, which the keys table holds
    /// from then on.
    pub(crate) fn release_keys(&self, count: usize) -> String {
        format!("UPDATE {} SET key_held = NULL WHERE id IN ({})", self.jobs, self.list(1, count))
    }

    /// `count` parameters from the `first`th, in the dialect's form (SQLite's are anonymous,
    /// see [`Sql::insert`]).
    fn list(&self, first: usize, count: usize) -> String {
        match self.dialect {
            Dialect::Sqlite => vec!["?"; count].join(", "),
            Dialect::Postgres => params(first, count),
        }
    }

    /// Deletes `count` jobs by id (rows a push stored and then found to be duplicates).
    pub(crate) fn delete_ids(&self, count: usize) -> String {
        format!("DELETE FROM {} WHERE id IN ({})", self.jobs, self.list(1, count))
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
    /// recovery ends them as cancelled. Returns (queue, id, key, batch).
    pub(crate) fn recover_cancelled(&self, count: usize) -> String {
        format!(
            "DELETE FROM {} WHERE queue IN ({}) AND state = {RESERVED} AND reserved_until <= $1 \
             AND cancel_requested RETURNING queue, id, unique_key, batch",
            self.jobs,
            params(2, count)
        )
    }

    /// SQLite: completes `count` leases in one statement (ids `$1..$count`, their tokens
    /// `$count+1..$2count`), returning (id, token, queue, batch, limited) of each job deleted
    /// (its `Started` or `Finished` key goes with its row, see migration 9). The `id IN` list lets the primary key find the rows; the row-value test
    /// alone would scan the table.
    pub(crate) fn complete_leases_sqlite(&self, count: usize) -> String {
        let pairs: Vec<String> = (1..=count).map(|n| format!("(${n}, ${})", n + count)).collect();
        format!(
            "DELETE FROM {j} WHERE id IN ({}) AND (id, token) IN (VALUES {}) \
             RETURNING id, token, queue, batch, EXISTS (SELECT 1 FROM {m} \
             WHERE {m}.queue = {j}.queue AND {m}.concurrency IS NOT NULL)",
            params(1, count),
            pairs.join(", "),
            j = self.jobs,
            m = self.meta,
        )
    }

    /// PostgreSQL: locks the batch rows of the jobs among `count` ids that are batch children,
    /// in id order (so that concurrent ends of children take batch rows in one order).
    pub(crate) fn lock_batches_of_jobs(&self, count: usize) -> String {
        format!(
            "SELECT id FROM {} WHERE id IN (SELECT batch FROM {} WHERE id IN ({}) \
             AND batch IS NOT NULL) ORDER BY id FOR UPDATE",
            self.batches,
            self.jobs,
            params(1, count)
        )
    }

    /// PostgreSQL: locks the batch rows of the children that [`Sql::recover_cancelled`] would
    /// end (same parameters), in id order.
    pub(crate) fn lock_batches_of_recovery(&self, count: usize) -> String {
        format!(
            "SELECT id FROM {} WHERE id IN (SELECT batch FROM {} WHERE queue IN ({}) \
             AND state = {RESERVED} AND reserved_until <= $1 AND cancel_requested \
             AND batch IS NOT NULL) ORDER BY id FOR UPDATE",
            self.batches,
            self.jobs,
            params(2, count)
        )
    }

    /// PostgreSQL: which of the ids in the JSON array `$1` are in the failed set (one text
    /// whatever their number: see [`Sql::failed_ids_and_period_holders`]).
    pub(crate) fn failed_ids(&self) -> String {
        format!(
            "SELECT id FROM {} WHERE id IN (SELECT json_array_elements_text($1::JSON))",
            self.failed
        )
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

    /// Deletes the `Period` keys of `count` queues that expired by `$1` (the queues from `$2`):
    /// an expired key is free (a push takes it over), and an empty keys table lets PostgreSQL's
    /// pushes skip their look for `Period` holders (see [`Sql::failed_ids_and_period_holders`]).
    pub(crate) fn sweep_keys(&self, count: usize) -> String {
        format!(
            "DELETE FROM {} WHERE queue IN ({}) AND expires_at <= $1",
            self.uniq,
            params(2, count)
        )
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

/// `sql` with its parameter `$n` replaced by `with`, and not the parameters whose numbers start
/// with `n`'s digits (`$2` is not in `$20`).
fn replace_param(sql: &str, n: u32, with: &str) -> String {
    let param = format!("${n}");
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find(&param) {
        let after = &rest[at + param.len()..];
        out.push_str(&rest[..at]);
        let longer = after.starts_with(|c: char| c.is_ascii_digit());
        out.push_str(if longer { &param } else { with });
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_is_replaced_alone() {
        assert_eq!(
            replace_param("$2, $20, $2::BIGINT, $12, $2", 2, "v"),
            "v, $20, v::BIGINT, $12, v"
        );
        assert_eq!(replace_param("no parameters", 2, "v"), "no parameters");
    }

    fn sql(dialect: Dialect) -> Sql {
        Sql::new(dialect, None, "jobs", "failed_jobs", "job_counters")
    }

    /// The storage version a build writes is its last migration's, on both dialects: one
    /// behind, a second start refused the tables its first start had migrated.
    #[test]
    fn the_latest_version_is_the_last_migration() {
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            let migrations = sql(dialect).migrations;
            let versions: Vec<i64> = migrations.iter().map(|m| m.version).collect();
            let expected: Vec<i64> = (1..=LATEST_VERSION).collect();
            assert_eq!(versions, expected, "{dialect:?}: one migration per version, in order");
        }
    }

    /// Migration 16 adds the settle writers' marks and the claim function that counts the
    /// settling jobs by them; the completions and every settling transaction record them.
    #[test]
    fn migration_16_counts_settling_jobs_by_their_marks() {
        let pg = sql(Dialect::Postgres);
        let v16 = &pg.migrations[15].statements;
        assert!(v16[0].starts_with("CREATE TABLE IF NOT EXISTS \"jobs_settled\""), "{}", v16[0]);
        let function = v16.last().expect("the marked signature");
        assert!(function.contains("BIGINT, TEXT, BIGINT[], BIGINT[])"), "{function}");
        assert!(function.contains("UNNEST($8, $9)"), "{function}");
        assert!(function.contains("writer = $7)"), "{function}");
        assert!(!function.contains("UNNEST($7::TEXT[])"), "no tokens beside the marks");
        for statement in [&pg.complete_many_pg, &pg.complete_children_pg, &pg.mark_settled] {
            assert!(statement.contains("INSERT INTO \"jobs_settled\""), "{statement}");
        }
        assert!(pg.claim_marked_pg.contains("$9::BIGINT[])"), "{}", pg.claim_marked_pg);
        assert!(sql(Dialect::Sqlite).migrations[15].statements.is_empty());
    }

    /// A push of jobs outside workflows binds what it bound before migration 4; one with a
    /// batch or meta binds the two columns more.
    #[test]
    fn a_push_outside_workflows_sends_the_statement_of_before() {
        // SQLite: 14 anonymous parameters per job, 16 with the workflow columns.
        let lite = sql(Dialect::Sqlite);
        let plain = lite.insert(2, false);
        assert!(!plain.contains("batch") && !plain.contains("meta"), "{plain}");
        assert!(plain.matches('?').count() == 28 && !plain.contains('$'), "{plain}");
        let workflow = lite.insert(2, true);
        // Then whether the job holds its key (migrations 9 and 11).
        assert!(workflow.contains("unique_ms, batch, meta, key_held)"), "{workflow}");
        assert!(workflow.matches('?').count() == 32, "{workflow}");
        // PostgreSQL: one array per column, whatever the number of jobs.
        let pg = sql(Dialect::Postgres);
        let plain = pg.insert_pg(false);
        assert!(!plain.contains("batch") && !plain.contains("meta"), "{plain}");
        assert!(plain.contains("$14::BIGINT[])") && !plain.contains("$15"), "{plain}");
        let workflow = pg.insert_pg(true);
        assert!(workflow.contains("unique_ms, batch, meta, key_held)"), "{workflow}");
        assert!(workflow.contains("$16::TEXT[])") && !workflow.contains("$17"), "{workflow}");
    }

    /// Migration 3 still creates the claim function it created (applied migrations are never
    /// edited); migration 4 drops it and creates the one that returns the new columns.
    #[test]
    fn migration_4_replaces_the_claim_function_of_migration_3() {
        let sql = sql(Dialect::Postgres);
        let v3 = sql.migrations[2].statements.last().expect("the function");
        assert!(v3.contains("o_unique_mode INTEGER) LANGUAGE"), "{v3}");
        assert!(!v3.contains("batch"), "{v3}");
        let v4 = &sql.migrations[3].statements;
        let drop = v4.iter().position(|s| s.starts_with("DROP FUNCTION")).expect("the drop");
        let create = v4.iter().position(|s| s.contains("o_batch TEXT, o_meta TEXT")).expect("new");
        assert!(drop < create);
        assert!(v4[create].contains("jobs\".batch, \"jobs\".meta"), "{}", v4[create]);
    }

    /// Migration 14 replaces the claim function this build calls (the one with the settling
    /// tokens) by one whose promotion runs only when a job is due and that counts the settling
    /// jobs only when the limit could bind; the older signature and the earlier migrations'
    /// texts stay as they were.
    #[test]
    fn migration_14_promotes_and_counts_settling_jobs_only_when_needed() {
        let sql = sql(Dialect::Postgres);
        let guard = "IF EXISTS (SELECT 1 FROM \"jobs\" WHERE queue = $1 AND state = 1 \
                     AND available_at <= $2) THEN WITH due AS MATERIALIZED";
        let v14 = &sql.migrations[13].statements;
        assert_eq!(v14.len(), 1);
        assert!(v14[0].contains("BIGINT, TEXT[]) RETURNS TABLE"), "{}", v14[0]);
        assert!(v14[0].contains(guard), "{}", v14[0]);
        // The guard closes before the lock, so a claim that promoted nothing still claims.
        let closed = v14[0].find("RETURN; END IF; END IF; IF NOT pg_try_advisory_xact_lock");
        assert!(closed.is_some(), "{}", v14[0]);
        for earlier in sql.migrations[..13].iter().flat_map(|m| &m.statements) {
            assert!(!earlier.contains("IF EXISTS (SELECT 1 FROM"), "{earlier}");
        }
        // Both claims (with and without a rate limit) read the sizes rows once, and reach the
        // settling tokens only in the branch where the limit leaves less room than asked.
        let lazy = "CASE WHEN v_concurrency IS NULL OR v_concurrency - sized.running >= $6::BIGINT \
                    THEN $6::BIGINT ELSE v_concurrency - (sized.running - (SELECT COUNT(*) \
                    FROM UNNEST($7::TEXT[])";
        assert_eq!(v14[0].matches(lazy).count(), 2, "{}", v14[0]);
        assert_eq!(v14[0].matches("UNNEST($7::TEXT[])").count(), 2, "{}", v14[0]);
        let v13 = sql.migrations[12].statements.last().expect("the settling signature");
        assert!(!v13.contains("sized.running"), "{v13}");
    }

    /// On PostgreSQL the statements that end a job without locking its batch row first skip
    /// batch children; on SQLite (one writer at a time) they take any job.
    #[test]
    fn plain_ends_skip_children_on_postgres_only() {
        let (pg, lite) = (sql(Dialect::Postgres), sql(Dialect::Sqlite));
        for statement in [&pg.delete_leased, &pg.copy_to_failed, &pg.complete_many_pg] {
            assert!(statement.contains("batch IS NULL"), "{statement}");
        }
        for statement in [&lite.delete_leased, &lite.copy_to_failed, &pg.delete_leased_any] {
            assert!(!statement.contains("batch IS NULL"), "{statement}");
        }
    }

    /// Each id is paired with its own token, and the ids also stand alone in an `IN` list so
    /// that the primary key finds the rows.
    #[test]
    fn sqlite_completes_leases_by_id_and_token_pairs() {
        let statement = sql(Dialect::Sqlite).complete_leases_sqlite(3);
        assert!(statement.contains("id IN ($1, $2, $3)"), "{statement}");
        assert!(
            statement.contains("(id, token) IN (VALUES ($1, $4), ($2, $5), ($3, $6))"),
            "{statement}"
        );
        assert!(!statement.contains("batch IS NULL"), "{statement}");
    }
}
