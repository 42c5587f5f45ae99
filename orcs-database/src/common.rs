//! What the two backends share: helpers, error classification, row decoding, and the operations
//! whose code is the same for both, written once over the [`Backend`] trait that each backend
//! module implements with its own sqlx types and the few steps that differ.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::ops::DerefMut;
use std::sync::Arc;

use orcs_core::{
    CancelOutcome, Claim, ClaimRequest, Error, FailedJob, FailedQuery, JobInfo, JobRecord,
    JobState, Lease, ListRequest, Millis, NewJob, PushOutcome, QueueLimits, QueueStats, RateLimit,
    Reserved, Settle, Settling, Transition, Unique, UniqueUntil,
};
use sqlx::{
    ColumnIndex, Connection, Database, Decode, Encode, Executor, IntoArguments, Pool, Row,
    Transaction, Type,
};
use tokio::sync::Notify;

use crate::sql::{
    COUNTERS_V1_COLUMNS, DELAYED, Dialect, FAILED_V1_COLUMNS, JOBS_V1_COLUMNS, LATEST_VERSION,
    READY, RESERVED, Sql, UNIQUE_FINISHED, UNIQUE_PERIOD, UNIQUE_STARTED,
};
use crate::workflow::{Ended, merge};

/// The driver name in errors.
pub(crate) const DRIVER: &str = "database";

/// Jobs per `INSERT` statement: 16 parameters each at most stays far below both backends'
/// limits.
pub(crate) const INSERT_CHUNK: usize = 500;

/// How many times a push runs again for jobs whose unique keys were freed between its insert
/// and its look at their holders (PostgreSQL), before it gives up with an error.
const KEY_ROUNDS: usize = 8;

/// Durations are stored as signed milliseconds; anything longer than a century is a century, so
/// that `now + timeout + grace` can never overflow a 64-bit integer in SQL.
const MAX_DURATION_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Wake-up state shared by the clones of one driver.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Wakes this process's idle workers when a job may have become ready.
    pub(crate) wake: Notify,
}

/// How a write to a read-only SQLite file is reported (`SQLITE_READONLY`).
pub(crate) const SQLITE_READ_ONLY: &str = "the SQLite file is read-only";

/// A backend error, classified: transient when trying again later may succeed.
pub(crate) fn backend(error: sqlx::Error) -> Error {
    if let sqlx::Error::Database(db) = &error
        && db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
        && db.code().and_then(|c| c.parse::<u32>().ok()).is_some_and(|c| c & 0xff == 8)
    {
        return Error::backend_permanent(
            DRIVER,
            format!(
                "{SQLITE_READ_ONLY} ({}): make the file and its directory writable for the \
                 worker's user",
                db.message()
            ),
        );
    }
    if is_transient(&error) {
        Error::backend(DRIVER, error)
    } else {
        Error::backend_permanent(DRIVER, error)
    }
}

/// Connection trouble, pool exhaustion, server shutdown or overload, serialization failures,
/// deadlocks and busy locks pass; schema, permission, syntax, constraint and decoding errors
/// repeat until someone acts.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or(Cow::Borrowed(""));
            if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
                transient_sqlstate(&code)
            } else {
                // SQLite: the primary result code is the low byte of an extended one.
                code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
            }
        }
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs that pass: class 08 (connection), 40001/40P01 (serialization,
/// deadlock), 57P01-57P03 (shutdown, cannot connect now), class 53 (resources), 55P03 (lock not
/// available).
pub(crate) fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03")
}

/// Statements slower than this are logged at debug level, not sqlx's default warning: workers
/// contending for one queue wait on each other's locks by design, and a warning per wait (with
/// the whole SQL) is noise on a worker's stderr.
pub(crate) const SLOW_STATEMENT: std::time::Duration = std::time::Duration::from_secs(1);

/// The settle writers of `batch`'s marked settles, each once, with its highest number there:
/// a step that settles any of them records these (see
/// [`Sql::mark_settled`](crate::sql::Sql::mark_settled)). A writer's batch is one writer's.
pub(crate) fn marks_of(batch: &[Settle]) -> (Vec<String>, Vec<i64>) {
    let mut marks: Vec<(String, i64)> = Vec::new();
    for mark in batch.iter().filter_map(|settle| settle.mark.as_ref()) {
        match marks.iter_mut().find(|(writer, _)| **writer == *mark.writer) {
            Some((_, highest)) => *highest = (*highest).max(mark.seq),
            None => marks.push((mark.writer.to_string(), mark.seq)),
        }
    }
    marks.into_iter().unzip()
}

pub(crate) fn duration_ms(ms: u64) -> i64 {
    i64::try_from(ms.min(MAX_DURATION_MS)).expect("a century of milliseconds fits in i64")
}

pub(crate) fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A column that must hold a non-negative integer of the given type.
pub(crate) fn unsigned<T: TryFrom<i64>>(column: &str, value: i64) -> Result<T, String> {
    T::try_from(value).map_err(|_| format!("column {column} holds {value}, out of range"))
}

/// The `state` a new job is stored in: delayed when dispatched with a delay (a claim promotes
/// it once due), else ready. A push has no `now`; the job's own dispatch time stands in.
pub(crate) fn initial_state(job: &NewJob) -> i32 {
    if job.available_at > job.dispatched_at { DELAYED } else { READY }
}

/// A queue's limits as stored: concurrency, and (starts, period in ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) concurrency: Option<i64>,
    pub(crate) rate: Option<(i64, i64)>,
}

impl Limits {
    /// The limits in the metadata columns; `None` when the queue has none (the claim's fast
    /// path).
    pub(crate) fn from_columns(
        concurrency: Option<i64>,
        rate_limit: Option<i64>,
        rate_period_ms: Option<i64>,
    ) -> Option<Self> {
        let rate = rate_limit.zip(rate_period_ms);
        (concurrency.is_some() || rate.is_some()).then_some(Self { concurrency, rate })
    }

    /// How many jobs a claim asking for `want` may take with `reserved` jobs running and
    /// `started` starts in the rate window.
    pub(crate) fn room(&self, want: usize, reserved: i64, started: i64) -> i64 {
        let mut room = i64::try_from(want).unwrap_or(i64::MAX);
        if let Some(concurrency) = self.concurrency {
            room = room.min(concurrency - reserved);
        }
        if let Some((limit, _)) = self.rate {
            room = room.min(limit - started);
        }
        room.max(0)
    }
}

/// What a promotion read besides promoting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Promotion {
    /// The queue's limits; `None` when it has none.
    pub(crate) limits: Option<Limits>,
    /// When the queue's next delayed job is due (`None`: none waits, or the queue is paused),
    /// if the promotion read it: PostgreSQL does, in the same statement, which spares a short
    /// claim its own round trip for it (on the path from a dispatch to the job's start).
    pub(crate) next_due: Option<Option<Millis>>,
}

/// A job's unique key as columns: (key, mode, period in ms).
pub(crate) type UniqueColumns = (Option<String>, Option<i32>, Option<i64>);

/// Whether two jobs of `jobs` have the same unique key in the same queue.
fn shares_a_key(jobs: &[NewJob]) -> bool {
    let mut keys: HashSet<(&str, &str)> = HashSet::new();
    jobs.iter()
        .filter_map(|job| job.unique.as_ref().map(|u| (job.queue.as_str(), u.key.as_str())))
        .any(|key| !keys.insert(key))
}

/// The columns that store `job.unique`.
pub(crate) fn unique_columns(job: &NewJob) -> Result<UniqueColumns, Error> {
    let Some(unique) = &job.unique else {
        return Ok((None, None, None));
    };
    let (mode, ms) = match unique.until {
        UniqueUntil::Started => (UNIQUE_STARTED, None),
        UniqueUntil::Finished => (UNIQUE_FINISHED, None),
        UniqueUntil::Period(ms) => (UNIQUE_PERIOD, Some(duration_ms(ms))),
        other => {
            return Err(Error::unsupported(
                DRIVER,
                format!("the unique key lifetime {other:?}; upgrade orcs-database"),
            ));
        }
    };
    Ok((Some(unique.key.clone()), Some(mode), ms))
}

/// Reads the unique key stored in columns `i`, `i + 1`, `i + 2` (key, mode, period).
fn decode_unique<R: DbRow>(row: &R, i: usize) -> Result<Option<Unique>, String> {
    let Some(key) = row.get_opt_text(i)? else {
        return Ok(None);
    };
    let until = match row.get_opt_i32(i + 1)? {
        Some(UNIQUE_STARTED) => UniqueUntil::Started,
        Some(UNIQUE_FINISHED) => UniqueUntil::Finished,
        Some(UNIQUE_PERIOD) => {
            UniqueUntil::Period(unsigned("unique_ms", row.get_opt_int(i + 2)?.unwrap_or(0))?)
        }
        other => return Err(format!("column unique_mode holds {other:?}, not 0, 1 or 2")),
    };
    Ok(Some(Unique::new(key, until)))
}

/// A page size within [`orcs_core::MAX_PAGE`] and an offset, as SQL integers.
pub(crate) fn page(limit: usize, offset: u64) -> (i64, i64) {
    let limit = limit.min(orcs_core::MAX_PAGE);
    (i64::try_from(limit).unwrap_or(0), i64::try_from(offset).unwrap_or(i64::MAX))
}

/// A column or parameter type both backends read and bind: the sqlx bounds the shared code needs
/// of each, in one place.
pub(crate) trait Value<DB: Database>:
    for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

impl<DB: Database, T> Value<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

/// Reads the column types the decoders need, by position; an error says what is wrong.
pub(crate) trait DbRow {
    fn get_text(&self, i: usize) -> Result<String, String>;
    fn get_opt_text(&self, i: usize) -> Result<Option<String>, String>;
    fn get_int(&self, i: usize) -> Result<i64, String>;
    fn get_opt_int(&self, i: usize) -> Result<Option<i64>, String>;
    fn get_i32(&self, i: usize) -> Result<i32, String>;
    fn get_opt_i32(&self, i: usize) -> Result<Option<i32>, String>;
    fn get_bool(&self, i: usize) -> Result<bool, String>;
}

impl<R: Row> DbRow for R
where
    usize: ColumnIndex<R>,
    String: Value<R::Database>,
    i64: Value<R::Database>,
    i32: Value<R::Database>,
    bool: Value<R::Database>,
{
    fn get_text(&self, i: usize) -> Result<String, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }
    fn get_opt_text(&self, i: usize) -> Result<Option<String>, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }
    fn get_int(&self, i: usize) -> Result<i64, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }
    fn get_opt_int(&self, i: usize) -> Result<Option<i64>, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }
    fn get_i32(&self, i: usize) -> Result<i32, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }
    fn get_opt_i32(&self, i: usize) -> Result<Option<i32>, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }
    fn get_bool(&self, i: usize) -> Result<bool, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }
}

/// The first column of each of `rows`, as text (names, ids).
pub(crate) fn first_texts<R: Row>(rows: &[R]) -> orcs_core::Result<Vec<String>>
where
    usize: ColumnIndex<R>,
    String: Value<R::Database>,
{
    rows.iter().map(|row| row.try_get::<String, _>(0)).collect::<Result<_, _>>().map_err(backend)
}

/// Reads a claimed row (the claim's `RETURNING` columns); an error names what is wrong with it.
pub(crate) fn decode_claimed<R: DbRow>(row: &R) -> Result<Reserved, String> {
    let id = row.get_text(0)?;
    let queue = row.get_text(2)?;
    let mut record = JobRecord::default();
    record.id.clone_from(&id);
    record.name = row.get_text(1)?;
    record.queue.clone_from(&queue);
    record.payload = row.get_text(3)?;
    record.priority = row.get_i32(4)?;
    record.attempt = unsigned("attempts", row.get_int(5)?)?;
    record.max_retries = unsigned("max_retries", row.get_int(6)?)?;
    record.retry_delay_ms = unsigned("retry_delay_ms", row.get_int(7)?)?;
    record.timeout_ms = row.get_opt_int(8)?.map(|t| unsigned("timeout_ms", t)).transpose()?;
    record.dispatched_at = row.get_int(9)?;
    record.last_error = row.get_opt_text(10)?;
    record.batch = row.get_opt_text(15)?;
    record.meta = row.get_opt_text(16)?;
    let lease = Lease::new(id, queue, row.get_text(12)?, row.get_int(11)?);
    Ok(Reserved::new(record, lease))
}

/// The stored job of a row whose first ten columns are id, queue, name, payload, priority,
/// attempts, max_retries, retry_delay_ms, timeout_ms, dispatched_at; with its attempt count.
fn decode_job<R: DbRow>(row: &R) -> Result<(NewJob, u32), String> {
    let dispatched_at = row.get_int(9)?;
    let mut job = NewJob::new(
        row.get_text(0)?,
        row.get_text(2)?,
        row.get_text(1)?,
        row.get_text(3)?,
        dispatched_at,
    );
    job.priority = row.get_i32(4)?;
    job.max_retries = unsigned("max_retries", row.get_int(6)?)?;
    job.retry_delay_ms = unsigned("retry_delay_ms", row.get_int(7)?)?;
    job.timeout_ms = row.get_opt_int(8)?.map(|t| unsigned("timeout_ms", t)).transpose()?;
    // The count is shown, not acted on: a damaged one (the reason a claim moved the job to the
    // failed set) must not hide the job from the admin surface.
    let attempts = u32::try_from(row.get_int(5)?.max(0)).unwrap_or(u32::MAX);
    Ok((job, attempts))
}

/// Reads a row of [`crate::sql::INFO_COLUMNS`] at `now`.
pub(crate) fn decode_info<R: DbRow>(row: &R, now: Millis) -> Result<JobInfo, String> {
    let (mut job, attempts) = decode_job(row)?;
    job.available_at = row.get_int(10)?;
    let reserved_until = row.get_opt_int(11)?;
    let state = match row.get_i32(12)? {
        READY => JobState::Pending,
        DELAYED if job.available_at <= now => JobState::Pending,
        DELAYED => JobState::Delayed,
        RESERVED => JobState::Reserved,
        other => return Err(format!("column state holds {other}, not 0, 1 or 2")),
    };
    job.unique = decode_unique(row, 14)?;
    job.batch = row.get_opt_text(19)?;
    job.meta = row.get_opt_text(20)?;
    let mut info = JobInfo::new(job, state, attempts);
    info.last_error = row.get_opt_text(13)?;
    if state == JobState::Reserved {
        info.lease_expires_at = reserved_until;
    }
    info.progress = row.get_opt_text(17)?;
    info.cancel_requested = row.get_bool(18)?;
    info.errors = decode_errors(row, 21)?;
    Ok(info)
}

/// Reads a row of [`crate::sql::FAILED_COLUMNS`]: the failed-set entry and its job.
pub(crate) fn decode_failed<R: DbRow>(row: &R) -> Result<(FailedJob, JobInfo), String> {
    let (mut job, attempts) = decode_job(row)?;
    job.unique = decode_unique(row, 12)?;
    job.batch = row.get_opt_text(15)?;
    job.meta = row.get_opt_text(16)?;
    let error = row.get_text(10)?;
    let failed_at = row.get_int(11)?;
    let failed = FailedJob::new(&job, attempts, error.clone(), failed_at);
    let mut info = JobInfo::new(job, JobState::Failed, attempts);
    info.last_error = Some(error);
    info.failed_at = Some(failed_at);
    info.errors = decode_errors(row, 17)?;
    Ok((failed, info))
}

/// The error history in column `i` (a JSON array of texts; NULL when no attempt failed).
fn decode_errors<R: DbRow>(row: &R, i: usize) -> Result<Vec<String>, String> {
    match row.get_opt_text(i)? {
        None => Ok(Vec::new()),
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| format!("column errors is not a JSON array of texts ({e}): {json}")),
    }
}

/// A row that does not decode is a permanent backend error naming what is wrong.
pub(crate) fn unreadable(reason: String) -> Error {
    Error::backend_permanent(DRIVER, format!("unreadable row: {reason}"))
}

/// A statement with its parameters bound so far.
pub(crate) type Query<DB> = sqlx::query::Query<'static, DB, <DB as Database>::Arguments>;

/// A statement of [`Sql`] (built once per driver, shared by reference count).
pub(crate) fn q<DB: Database>(sql: &Arc<str>) -> Query<DB> {
    sqlx::query(sqlx::AssertSqlSafe(Arc::clone(sql)))
}

/// A statement whose text depends on the input (a batch size).
pub(crate) fn dynamic<DB: Database>(sql: String) -> Query<DB> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
}

/// What ended jobs add to their queues' counters in one transaction: (processed, failed,
/// cancelled) per queue. Written when the transaction's work is done, one statement per queue in
/// queue order: counter rows are the last rows a transaction locks (see `workflow.rs`), and a
/// settle call ending many jobs of a queue writes its counters once.
#[derive(Debug, Default)]
pub(crate) struct Counts(BTreeMap<String, [i64; 3]>);

impl Counts {
    pub(crate) fn processed(&mut self, queue: &str, n: i64) {
        self.add(queue, 0, n);
    }

    pub(crate) fn failed(&mut self, queue: &str, n: i64) {
        self.add(queue, 1, n);
    }

    pub(crate) fn cancelled(&mut self, queue: &str, n: i64) {
        self.add(queue, 2, n);
    }

    fn add(&mut self, queue: &str, i: usize, n: i64) {
        match self.0.get_mut(queue) {
            Some(counts) => counts[i] += n,
            None => {
                let mut counts = [0; 3];
                counts[i] = n;
                self.0.insert(queue.to_owned(), counts);
            }
        }
    }
}

/// What one settle did, when its token matched: the queues that gained a ready job.
type Settled = Result<Vec<String>, Error>;

/// What differs between SQLite and PostgreSQL beyond the SQL text (which [`Sql`] holds per
/// dialect): the sqlx types, the connections writes go through, how a write transaction begins,
/// the catalog, how other processes hear of new jobs, and the claim's per-queue steps.
pub(crate) trait Backend: Send + Sync + Sized + 'static {
    type Db: Database<Connection = Self::Conn>;
    type Conn: Connection<Database = Self::Db>;
    /// The connection writes go through, held for one operation.
    type Writer<'a>: DerefMut<Target = Self::Conn> + Send
    where
        Self: 'a;

    /// The database's clock in milliseconds, as SQL (for the migrations table).
    const NOW_MS: &'static str;

    fn writer(&self) -> impl Future<Output = orcs_core::Result<Self::Writer<'_>>> + Send;

    /// Where reads go.
    fn reader(&self) -> &Pool<Self::Db>;

    /// Begins a write transaction on `conn`.
    fn begin(
        conn: &mut Self::Conn,
    ) -> impl Future<Output = orcs_core::Result<Transaction<'_, Self::Db>>> + Send;

    /// Begins a group commit's transaction on `conn` (see [`crate::group`]): as
    /// [`Backend::begin`], or with a bound on how long its statements wait for a lock.
    fn begin_group(
        conn: &mut Self::Conn,
    ) -> impl Future<Output = orcs_core::Result<Transaction<'_, Self::Db>>> + Send {
        Self::begin(conn)
    }

    /// Takes over a push of a group commit that gave up waiting for a lock
    /// ([`Backend::begin_group`]; `error` says so), answering `reply` once it is written. A
    /// backend whose groups never give up answers the error.
    fn push_aside(
        _store: &Store<Self>,
        _jobs: Vec<NewJob>,
        reply: tokio::sync::oneshot::Sender<orcs_core::Result<Vec<PushOutcome>>>,
        error: Error,
    ) {
        let _ = reply.send(Err(error));
    }

    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    /// Whether table `name` (as [`Sql::catalog`] spells it) exists.
    fn table_exists(
        conn: &mut Self::Conn,
        name: &str,
    ) -> impl Future<Output = orcs_core::Result<bool>> + Send;

    /// The column names of table `name`; empty if there is no such table.
    fn table_columns(
        conn: &mut Self::Conn,
        name: &str,
    ) -> impl Future<Output = orcs_core::Result<Vec<String>>> + Send;

    /// Announces `queues` to other processes' waiters, inside the caller's transaction on
    /// `conn`, so that nothing is announced for a write that rolls back.
    fn notify_in(
        store: &Store<Self>,
        conn: &mut Self::Conn,
        queues: &[String],
    ) -> impl Future<Output = orcs_core::Result<()>> + Send;

    /// Records the marks of `items`' settles ([`marks_of`]) inside the caller's transaction
    /// that settles them, where the backend's limited claims count settling jobs by marks.
    fn mark_settled(
        store: &Store<Self>,
        conn: &mut Self::Conn,
        items: &[Settle],
        now: Millis,
    ) -> impl Future<Output = orcs_core::Result<()>> + Send;

    /// Promotes `queue`'s due delayed jobs and reads its limits, and where the backend reads
    /// it in the same round trip, when its next delayed job is due.
    fn promote_due(
        store: &Store<Self>,
        conn: &mut Self::Conn,
        queue: &str,
        now: Millis,
    ) -> impl Future<Output = orcs_core::Result<Promotion>> + Send;

    /// Claims up to `want` jobs of `queue` in the statement that promotes its due delayed
    /// jobs and reads its limits: one round trip where [`Backend::promote_due`] and the claim
    /// take two. It claims only if it promoted nothing and found no limits; otherwise the rows
    /// are `None` and the caller claims as after [`Backend::promote_due`], whose answer comes
    /// with them. `None` when the backend has no such statement.
    fn claim_promoting(
        _store: &Store<Self>,
        _conn: &mut Self::Conn,
        _queue: &str,
        _req: &ClaimRequest<'_>,
        _want: usize,
        _batch: &str,
    ) -> impl Future<Output = orcs_core::Result<Option<PromotingClaim<Self>>>> + Send {
        std::future::ready(Ok(None))
    }

    /// Completes the leases `items` on `conn` in one statement, inside the caller's
    /// transaction, which locked their batch rows first (see [`Store::settle_children`]): any
    /// job whose id and token match is deleted and its key freed. `None` when the backend has
    /// no such statement (the caller settles them one by one).
    fn complete_leases(
        store: &Store<Self>,
        conn: &mut Self::Conn,
        items: &[&Settle],
    ) -> impl Future<Output = orcs_core::Result<Option<Vec<Completed>>>> + Send;

    /// Takes over a push (`jobs` not empty) for the backend's own way of writing it (SQLite
    /// groups concurrent pushes in one commit), or hands it back to be written in a transaction
    /// of its own.
    fn push_grouped(
        _store: &Store<Self>,
        jobs: Vec<NewJob>,
    ) -> Result<impl Future<Output = orcs_core::Result<Vec<PushOutcome>>> + Send, Vec<NewJob>> {
        Err::<std::future::Ready<_>, _>(jobs)
    }

    /// Most jobs one insert statement stores ([`Backend::insert_rows`]).
    const INSERT_ROWS: usize;

    /// Inserts the jobs of `jobs` at `rows` (in that order, at most [`Backend::INSERT_ROWS`])
    /// in one statement, leaving out those whose id or held key is taken; answers the ids it
    /// stored. `keys` are every job's unique columns, by index; `workflow` says whether the
    /// statement writes `batch` and `meta`.
    fn insert_rows(
        store: &Store<Self>,
        conn: &mut Self::Conn,
        jobs: &[NewJob],
        keys: &[UniqueColumns],
        rows: &[usize],
        workflow: bool,
    ) -> impl Future<Output = orcs_core::Result<Vec<String>>> + Send;

    /// Called after a group commit (see [`crate::group`]) stored jobs in `queues` (or made a
    /// debounced holder ready there): wakes this process's waiters and announces them to
    /// other processes as the backend does.
    fn pushed(store: &Store<Self>, queues: &[String]);

    /// Claims up to `want` jobs of a queue this store found limited a moment ago, promotion
    /// included, in one round trip; `None` when the backend has no such path, the queue is not
    /// known to be limited, or more jobs may be due than one step promotes (the caller then
    /// promotes and claims as for any queue).
    fn claim_known_limited(
        _store: &Store<Self>,
        _conn: &mut Self::Conn,
        _queue: &str,
        _req: &ClaimRequest<'_>,
        _want: usize,
        _batch: &str,
    ) -> impl Future<Output = orcs_core::Result<Option<Claimed<Self>>>> + Send {
        std::future::ready(Ok(None))
    }

    /// Claims up to `want` jobs of a queue with `limits`, within them; returns the claimed rows
    /// and, when its rate window is full, when it reopens.
    #[allow(clippy::too_many_arguments)]
    fn claim_limited(
        store: &Store<Self>,
        conn: &mut Self::Conn,
        queue: &str,
        req: &ClaimRequest<'_>,
        want: usize,
        batch: &str,
        limits: Limits,
    ) -> impl Future<Output = orcs_core::Result<Claimed<Self>>> + Send;
}

/// What [`Backend::claim_promoting`] did: the rows it claimed (`None`: it claimed nothing,
/// the caller claims), and what its promotion read.
pub(crate) type PromotingClaim<B> = (Option<Vec<RowOf<B>>>, Promotion);

/// A limited claim's rows and, when its rate window is full, when it reopens.
pub(crate) type Claimed<B> = (Vec<RowOf<B>>, Option<Millis>);

/// A job that [`Backend::complete_leases`] completed.
#[derive(Debug)]
pub(crate) struct Completed {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) queue: String,
    pub(crate) batch: Option<String>,
    /// Its queue has a concurrency limit: a slot freed, its waiters are woken.
    pub(crate) limited: bool,
}

/// A row of backend `B`'s results.
pub(crate) type RowOf<B> = <<B as Backend>::Db as Database>::Row;

/// A driver's tables on one backend: the shared operations are in the generic `impl` below,
/// the backend's own (connect, claim, settle, touch, wait) in its module.
#[derive(Clone)]
pub(crate) struct Store<B> {
    pub(crate) sql: Arc<Sql>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) backend: B,
}

/// The operations both backends run the same way. The `where` clause is every sqlx bound they
/// need: connections that execute statements, and the column types they bind and read.
impl<B: Backend> Store<B>
where
    for<'c> &'c mut B::Conn: Executor<'c, Database = B::Db>,
    <B::Db as Database>::Arguments: IntoArguments<B::Db>,
    usize: ColumnIndex<RowOf<B>>,
    String: Value<B::Db>,
    i64: Value<B::Db>,
    i32: Value<B::Db>,
    bool: Value<B::Db>,
    Option<String>: Value<B::Db>,
    Option<i64>: Value<B::Db>,
    Option<i32>: Value<B::Db>,
{
    /// Brings the tables up to [`crate::sql::LATEST_VERSION`] on `conn`, inside the caller's
    /// transaction, which holds the setup lock: each migration runs once, however many
    /// drivers start together.
    pub(crate) async fn migrate(conn: &mut B::Conn, sql: &Sql) -> orcs_core::Result<()> {
        let migrations_name = format!("{}_migrations", sql.jobs_name);
        let had_jobs = B::table_exists(conn, &sql.catalog(&sql.jobs_name)).await?;
        let had_migrations = B::table_exists(conn, &sql.catalog(&migrations_name)).await?;
        dynamic(sql.create_migrations.clone()).execute(&mut *conn).await.map_err(backend)?;
        let current: i64 =
            dynamic(format!("SELECT COALESCE(MAX(version), 0) FROM {}", sql.migrations_table))
                .fetch_one(&mut *conn)
                .await
                .and_then(|row| row.try_get::<i64, _>(0))
                .map_err(backend)?;
        if current > LATEST_VERSION {
            return Err(Error::Version {
                driver: DRIVER,
                message: format!(
                    "the tables of {} are at storage version {current}, written by a newer \
                     orcs; this build knows versions up to {LATEST_VERSION}: upgrade the \
                     workers, or use other tables (DatabaseConfig::with_jobs_table)",
                    sql.jobs
                ),
            });
        }
        if current == 0 && !had_migrations {
            // Tables made by the previous release (no migrations table) are version 1 if they
            // have that release's columns, and are upgraded in place. A table of the same
            // name with other columns belongs to another application (Laravel has `jobs`
            // and `failed_jobs` tables too): refuse it, changing nothing.
            let tables: [(&str, &[&str], &str); 3] = [
                (
                    &sql.jobs_name,
                    &JOBS_V1_COLUMNS,
                    "choose another table name (DatabaseConfig::with_jobs_table; the orcs \
                     command: [database] table in config/queue.toml)",
                ),
                (
                    &sql.failed_name,
                    &FAILED_V1_COLUMNS,
                    "choose another name for the failed-jobs table \
                     (DatabaseConfig::with_failed_table)",
                ),
                (
                    &sql.counters_name,
                    &COUNTERS_V1_COLUMNS,
                    "choose another name for the counters table \
                     (DatabaseConfig::with_counters_table)",
                ),
            ];
            for (table, needed, fix) in tables {
                if table != sql.jobs_name.as_str() || had_jobs {
                    let columns = B::table_columns(conn, &sql.catalog(table)).await?;
                    if columns.is_empty() {
                        continue;
                    }
                    let missing: Vec<&str> = needed
                        .iter()
                        .copied()
                        .filter(|c| !columns.iter().any(|have| have.eq_ignore_ascii_case(c)))
                        .collect();
                    if !missing.is_empty() {
                        return Err(Error::Version {
                            driver: DRIVER,
                            message: format!(
                                "the table \"{table}\" already exists with another shape \
                                 (columns {}; orcs needs {} as well), so it probably belongs \
                                 to another application; nothing was changed: {fix}",
                                columns.join(", "),
                                missing.join(", "),
                            ),
                        });
                    }
                }
            }
        }
        // Several jobs tables may share the failed-jobs and counters tables (their default
        // names): a column an earlier jobs table's migration already added to one of them is
        // not added twice.
        let shared = [
            (format!("ALTER TABLE {} ADD COLUMN ", sql.failed), &sql.failed_name),
            (
                format!("ALTER TABLE {}\"{}\" ADD COLUMN ", sql.schema_prefix, sql.counters_name),
                &sql.counters_name,
            ),
        ];
        for migration in sql.migrations.iter().filter(|m| m.version > current) {
            'statements: for statement in &migration.statements {
                for (prefix, table) in &shared {
                    if let Some(rest) = statement.strip_prefix(prefix.as_str()) {
                        let column = rest.split_whitespace().next().unwrap_or_default();
                        let have = B::table_columns(conn, &sql.catalog(table)).await?;
                        if have.iter().any(|c| c.eq_ignore_ascii_case(column)) {
                            continue 'statements;
                        }
                    }
                }
                dynamic(statement.clone()).execute(&mut *conn).await.map_err(backend)?;
            }
            dynamic(format!(
                "INSERT INTO {} (version, applied_at) VALUES ($1, {})",
                sql.migrations_table,
                B::NOW_MS
            ))
            .bind(migration.version)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
            tracing::info!(version = migration.version, tables = %sql.jobs, "applied a storage migration");
        }
        Ok(())
    }

    /// Stores `jobs` on `conn` (inside the caller's transaction): one outcome per job. An
    /// id in the failed set, already stored, or earlier in `jobs` is a duplicate; so is a
    /// job whose unique key another job of its queue holds (the answer names the holder).
    pub(crate) async fn insert_jobs(
        &self,
        conn: &mut B::Conn,
        jobs: &[NewJob],
    ) -> orcs_core::Result<(Vec<PushOutcome>, Vec<String>)> {
        self.insert_jobs_again(conn, jobs, 0).await
    }

    /// [`Store::insert_jobs`], the `round`th time for these jobs (see `lost` below).
    async fn insert_jobs_again(
        &self,
        conn: &mut B::Conn,
        jobs: &[NewJob],
        round: usize,
    ) -> orcs_core::Result<(Vec<PushOutcome>, Vec<String>)> {
        let mut keys = Vec::with_capacity(jobs.len());
        for job in jobs {
            keys.push(unique_columns(job)?);
        }
        let sqlite = self.sql.dialect == Dialect::Sqlite;
        // The first of several jobs with one id is the one stored.
        let mut seen: HashSet<&str> = HashSet::new();
        let fresh: Vec<usize> =
            (0..jobs.len()).filter(|&i| seen.insert(jobs[i].id.as_str())).collect();
        if jobs.len() > 1 && shares_a_key(jobs) {
            // A job's row takes its key in the insert (migrations 9 and 11), in the order of
            // the rows, which need not be the push's: so each job alone, in order, answered as
            // if pushed after the previous ones, as the first of several with one key leads
            // elsewhere.
            let mut outcomes = Vec::with_capacity(jobs.len());
            let mut queues: Vec<String> = Vec::new();
            for job in jobs {
                let (outcome, queue) =
                    Box::pin(self.insert_jobs_again(conn, std::slice::from_ref(job), round))
                        .await?;
                outcomes.extend(outcome);
                for queue in queue {
                    if !queues.contains(&queue) {
                        queues.push(queue);
                    }
                }
            }
            return Ok((outcomes, queues));
        }
        // PostgreSQL: keyed rows in key order, so that concurrent pushes wait for each other's
        // keys in one order (a deadlock otherwise); the jobs without a key first.
        let mut order = fresh.clone();
        if !sqlite {
            order.sort_by_key(|&i| jobs[i].unique.as_ref().map(|u| (&jobs[i].queue, &u.key)));
        }
        let mut stored: HashSet<String> = HashSet::new();
        for chunk in order.chunks(B::INSERT_ROWS) {
            let workflow = chunk.iter().any(|&i| jobs[i].batch.is_some() || jobs[i].meta.is_some());
            stored.extend(B::insert_rows(self, conn, jobs, &keys, chunk, workflow).await?);
        }
        // Job id -> the id of the job holding its key, for the jobs refused for it.
        let mut refused: HashMap<&str, String> = HashMap::new();
        // The failed set is looked at after the insert, so that a `fail` of the same id
        // racing this push is seen: the insert either met the live row (a duplicate) or
        // waited for the fail's delete to commit, and this later statement then sees
        // the row it moved to the failed set. (SQLite's insert already skipped the failed
        // ids: its writes take turns.)
        let mut unstore: Vec<String> = Vec::new();
        if !sqlite && !stored.is_empty() {
            // PostgreSQL's insert does not look at the keys table, and cannot see a `Period`
            // key that a push committed while this one's insert ran: a push with a `Period` key
            // holds it in its job's row until it commits (see below), so this insert waited for
            // that one's commit, and this later statement sees the key it took.
            let keyed = fresh.iter().any(|&i| jobs[i].unique.is_some());
            // (The ids are one JSON parameter: one statement whatever their number.)
            let ids = serde_json::to_string(&stored).map_err(Error::Serialization)?;
            let query = dynamic(if keyed {
                self.sql.failed_ids_and_period_holders()
            } else {
                self.sql.failed_ids()
            })
            .bind(ids);
            for row in query.fetch_all(&mut *conn).await.map_err(backend)? {
                let id = row.try_get::<String, _>(0).map_err(backend)?;
                let holder = if keyed {
                    row.try_get::<Option<String>, _>(1).map_err(backend)?
                } else {
                    None
                };
                if let Some(holder) = holder
                    && let Some(job) = jobs.iter().find(|job| job.id == id)
                {
                    refused.insert(job.id.as_str(), holder);
                }
                if stored.remove(&id) {
                    unstore.push(id);
                }
            }
        }
        let known =
            self.settle_keys(conn, jobs, &fresh, &mut stored, &mut unstore, &mut refused).await?;
        // PostgreSQL: a keyed job the insert left out for a key whose holder ended before
        // `settle_keys` looked is neither stored nor refused: it is pushed again (in this
        // transaction; a new statement sees the key freed), a few times at most.
        let lost: Vec<NewJob> = fresh
            .iter()
            .filter(|&&i| {
                let id = jobs[i].id.as_str();
                !sqlite
                    && jobs[i].unique.is_some()
                    && !stored.contains(id)
                    && !refused.contains_key(id)
                    && !known.contains(id)
            })
            .map(|&i| jobs[i].clone())
            .collect();
        // Answers for the jobs pushed again, by id.
        let mut again: HashMap<String, PushOutcome> = HashMap::new();
        let mut queues = Vec::new();
        if !lost.is_empty() {
            if round >= KEY_ROUNDS {
                return Err(Error::backend(
                    DRIVER,
                    format!(
                        "the unique keys of {} jobs changed hands {KEY_ROUNDS} times while they \
                         were pushed; nothing of this push was stored: push it again",
                        lost.len()
                    ),
                ));
            }
            let (outcomes, stored_in) =
                Box::pin(self.insert_jobs_again(conn, &lost, round + 1)).await?;
            for (job, outcome) in lost.iter().zip(outcomes) {
                again.insert(job.id.clone(), outcome);
            }
            queues = stored_in;
        }
        // The jobs finally stored with a `Period` key, which the keys table holds (the others
        // are held by their rows; no two jobs here share a key), in key order, so that
        // concurrent pushes lock keys in one order.
        let mut takers: Vec<((&str, &str), usize)> = fresh
            .iter()
            .filter_map(|&i| {
                let job = &jobs[i];
                let unique = job.unique.as_ref()?;
                (matches!(unique.until, UniqueUntil::Period(_)) && stored.contains(&job.id))
                    .then_some(((job.queue.as_str(), unique.key.as_str()), i))
            })
            .collect();
        takers.sort_unstable();
        let bind_key = |query: Query<B::Db>, (queue, key): (&str, &str), i: usize| {
            let job = &jobs[i];
            let expires = job.unique.as_ref().and_then(|u| u.expires_at(job.dispatched_at));
            query
                .bind(queue.to_owned())
                .bind(key.to_owned())
                .bind(job.id.clone())
                .bind(job.dispatched_at)
                .bind(expires)
        };
        // (queue, key) -> the id of the job holding it.
        let mut holders: HashMap<(String, String), String> = HashMap::new();
        for chunk in takers.chunks(INSERT_CHUNK) {
            if sqlite {
                let mut query = dynamic(self.sql.take_free_keys(chunk.len()));
                for &(key, i) in chunk {
                    query = bind_key(query, key, i);
                }
                let done = query.execute(&mut *conn).await.map_err(backend)?;
                if B::rows_affected(&done) == chunk.len() as u64 {
                    continue;
                }
            }
            let mut query = dynamic(self.sql.take_keys(chunk.len()));
            for &(key, i) in chunk {
                query = bind_key(query, key, i);
            }
            for row in query.fetch_all(&mut *conn).await.map_err(backend)? {
                let queue: String = row.try_get(0).map_err(backend)?;
                let key: String = row.try_get(1).map_err(backend)?;
                holders.insert((queue, key), row.try_get(2).map_err(backend)?);
            }
            if !sqlite {
                // The keys table holds them now: their rows let go, so that the key frees when
                // its period ends, whatever the job does.
                let mut query = dynamic(self.sql.release_keys(chunk.len()));
                for &(_, i) in chunk {
                    query = query.bind(jobs[i].id.clone());
                }
                query.execute(&mut *conn).await.map_err(backend)?;
            }
        }
        // A taker whose key someone else holds is refused.
        for &((queue, key), i) in &takers {
            let job = &jobs[i];
            if let Some(holder) = holders.get(&(queue.to_owned(), key.to_owned()))
                && *holder != job.id
            {
                stored.remove(&job.id);
                unstore.push(job.id.clone());
                refused.insert(job.id.as_str(), holder.clone());
            }
        }
        // Debounce: a refused job whose key's holder still waits gives it its payload and due
        // time, in push order (a later job of the push replaces an earlier one's data). The
        // update re-checks the holder's state under its row lock, so a claim racing it either
        // takes the new data or makes this a plain duplicate.
        let mut replaced: HashSet<&str> = HashSet::new();
        for &i in &fresh {
            let job = &jobs[i];
            let Some(holder) =
                job.unique.as_ref().filter(|u| u.debounce).and(refused.get(job.id.as_str()))
            else {
                continue;
            };
            let row = q(&self.sql.debounce)
                .bind(job.payload.clone())
                .bind(job.available_at)
                .bind(job.dispatched_at)
                .bind(holder.clone())
                .fetch_optional(&mut *conn)
                .await
                .map_err(backend)?;
            if let Some(row) = row {
                replaced.insert(job.id.as_str());
                let state: i32 = row.try_get(0).map_err(backend)?;
                if state == READY && !queues.contains(&job.queue) {
                    queues.push(job.queue.clone());
                }
            }
        }
        // Rows this push inserted and then found to be duplicates; nobody saw them.
        for chunk in unstore.chunks(INSERT_CHUNK) {
            let mut query = dynamic(self.sql.delete_ids(chunk.len()));
            for id in chunk {
                query = query.bind(id.clone());
            }
            query.execute(&mut *conn).await.map_err(backend)?;
        }
        let outcomes = jobs
            .iter()
            .map(|job| {
                // `remove`: a later job with the same id is a duplicate of this one.
                if let Some(outcome) = again.remove(&job.id) {
                    outcome
                } else if stored.remove(&job.id) {
                    if !queues.contains(&job.queue) {
                        queues.push(job.queue.clone());
                    }
                    PushOutcome::Stored
                } else if let Some(holder) = refused.remove(job.id.as_str()) {
                    if replaced.remove(job.id.as_str()) {
                        PushOutcome::Replaced { id: holder }
                    } else {
                        PushOutcome::Duplicate { id: holder }
                    }
                } else {
                    PushOutcome::Duplicate { id: job.id.clone() }
                }
            })
            .collect();
        Ok((outcomes, queues))
    }

    /// After a push's insert: answers for the keyed jobs the insert left out (an id stored
    /// before, or a key held), and on SQLite refuses the stored jobs with a `Period` key that a
    /// job holds (the insert only looked for `Period` holders; on PostgreSQL such a job's row
    /// took the key in the insert). No two jobs of `fresh` share a key here (see
    /// [`Store::insert_jobs`]). Returns the ids of the jobs left out that are stored (live or
    /// failed): duplicates of themselves.
    async fn settle_keys<'a>(
        &self,
        conn: &mut B::Conn,
        jobs: &'a [NewJob],
        fresh: &[usize],
        stored: &mut HashSet<String>,
        unstore: &mut Vec<String>,
        refused: &mut HashMap<&'a str, String>,
    ) -> orcs_core::Result<HashSet<String>> {
        let sqlite = self.sql.dialect == Dialect::Sqlite;
        let missing: Vec<usize> = fresh
            .iter()
            .copied()
            .filter(|&i| jobs[i].unique.is_some() && !stored.contains(&jobs[i].id))
            .collect();
        let periods: Vec<usize> = fresh
            .iter()
            .copied()
            .filter(|&i| {
                sqlite
                    && stored.contains(&jobs[i].id)
                    && jobs[i]
                        .unique
                        .as_ref()
                        .is_some_and(|u| matches!(u.until, UniqueUntil::Period(_)))
            })
            .collect();
        // Left out for its id: a duplicate of itself, whoever holds its key.
        let mut known: HashSet<String> = HashSet::new();
        for chunk in missing.chunks(INSERT_CHUNK) {
            let mut query = dynamic(self.sql.stored_ids(chunk.len()));
            for &i in chunk.iter().chain(chunk) {
                query = query.bind(jobs[i].id.clone());
            }
            for row in query.fetch_all(&mut *conn).await.map_err(backend)? {
                known.insert(row.try_get(0).map_err(backend)?);
            }
        }
        let asked: Vec<usize> =
            missing.into_iter().filter(|&i| !known.contains(&jobs[i].id)).chain(periods).collect();
        for chunk in asked.chunks(INSERT_CHUNK) {
            let mut query = dynamic(self.sql.key_holders(chunk.len()));
            let mut asking: HashMap<(&str, &str), usize> = HashMap::new();
            for &i in chunk {
                let job = &jobs[i];
                let key = job.unique.as_ref().map_or("", |u| u.key.as_str());
                asking.insert((job.queue.as_str(), key), i);
                query = query.bind(job.queue.clone()).bind(key.to_owned()).bind(job.dispatched_at);
            }
            for row in query.fetch_all(&mut *conn).await.map_err(backend)? {
                let queue: String = row.try_get(0).map_err(backend)?;
                let key: String = row.try_get(1).map_err(backend)?;
                let holder: String = row.try_get(2).map_err(backend)?;
                let Some(&i) = asking.get(&(queue.as_str(), key.as_str())) else { continue };
                let id = jobs[i].id.as_str();
                if holder != id {
                    if stored.remove(id) {
                        unstore.push(id.to_owned());
                    }
                    refused.insert(id, holder);
                }
            }
        }
        Ok(known)
    }

    pub(crate) async fn push(&self, jobs: Vec<NewJob>) -> orcs_core::Result<Vec<PushOutcome>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let jobs = match B::push_grouped(self, jobs) {
            Ok(grouped) => return grouped.await,
            Err(jobs) => jobs,
        };
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        let (outcomes, queues) = self.insert_jobs(&mut tx, &jobs).await?;
        B::notify_in(self, &mut tx, &queues).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        if !queues.is_empty() {
            self.shared.wake.notify_waiters();
        }
        Ok(outcomes)
    }

    /// Stores `jobs` in the application's open transaction on `conn`, announcing them
    /// with `NOTIFY` in it (delivered on commit, never on rollback). This process's
    /// waiters are not woken here: the jobs are invisible until the application commits,
    /// and then the notification (PostgreSQL) or the poll (SQLite) finds them.
    pub(crate) async fn push_in(
        &self,
        conn: &mut B::Conn,
        jobs: &[NewJob],
    ) -> orcs_core::Result<Vec<PushOutcome>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let (outcomes, queues) = self.insert_jobs(conn, jobs).await?;
        B::notify_in(self, conn, &queues).await?;
        Ok(outcomes)
    }

    /// A claim statement (`sql`: the plain claim, or a backend's limited one, which take the
    /// same parameters) with them bound: the queue, now, the default timeout, the grace, the
    /// token prefix of this claim, and how many jobs at most.
    pub(crate) fn claim_query(
        &self,
        sql: &Arc<str>,
        queue: &str,
        req: &ClaimRequest<'_>,
        batch: &str,
        want: usize,
    ) -> Query<B::Db> {
        q(sql)
            .bind(queue.to_owned())
            .bind(req.now)
            .bind(duration_ms(req.default_timeout_ms))
            .bind(duration_ms(req.grace_ms))
            .bind(batch.to_owned())
            .bind(i64::try_from(want).unwrap_or(i64::MAX))
    }

    /// Claims on `conn` from each queue in turn: promotes the queue's due delayed jobs,
    /// then takes the best ready ones (within the queue's limits, if it has any).
    /// Returns the claim and the rows that could not be read (id, token, reason).
    pub(crate) async fn claim_on(
        &self,
        conn: &mut B::Conn,
        req: &ClaimRequest<'_>,
    ) -> orcs_core::Result<(Claim, Vec<(Option<String>, Option<String>, String)>)> {
        let mut claim = Claim::default();
        // One token prefix per call; each job's token adds its id, so tokens are unique
        // per job and per claim.
        let batch = format!("{}:", orcs_core::new_job_id());
        let mut unreadable = Vec::new();
        // When a rate-limited queue's window reopens, if one is blocked.
        let mut reopens: Option<Millis> = None;
        // The earliest next due time the promotions read, while every queue's was read.
        let mut promoted_next: Option<Option<Millis>> = Some(None);
        for queue in req.queues {
            let want = req.max.saturating_sub(claim.jobs.len());
            if want == 0 {
                break;
            }
            // Every due job is promoted before the claim picks, so a due job of higher
            // priority is never passed over; each job is promoted once.
            let known = B::claim_known_limited(self, conn, queue, req, want, &batch).await?;
            // Rows a promoting claim took, promotion and claim in one statement.
            let mut taken = None;
            let promotion = if known.is_some() {
                Promotion::default()
            } else if let Some((rows, promotion)) =
                B::claim_promoting(self, conn, queue, req, want, &batch).await?
            {
                taken = rows;
                promotion
            } else {
                B::promote_due(self, conn, queue, req.now).await?
            };
            promoted_next =
                promoted_next.zip(promotion.next_due).map(|(a, b)| a.into_iter().chain(b).min());
            let (rows, next) = if let Some(claimed) = known {
                claimed
            } else if let Some(rows) = taken {
                (rows, None)
            } else if let Some(limits) = promotion.limits {
                B::claim_limited(self, conn, queue, req, want, &batch, limits).await?
            } else {
                let rows = self
                    .claim_query(&self.sql.claim, queue, req, &batch, want)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(backend)?;
                (rows, None)
            };
            if let Some(next) = next {
                reopens = Some(reopens.map_or(next, |r| r.min(next)));
            }
            let mut got = Vec::with_capacity(rows.len());
            // PostgreSQL frees `Started` keys inside the claim statement; SQLite here, in the
            // claim's transaction.
            let mut started: Vec<String> = Vec::new();
            for row in &rows {
                if self.sql.dialect == Dialect::Sqlite
                    && row.try_get::<Option<i32>, _>(14).ok().flatten() == Some(UNIQUE_STARTED)
                    && let Ok(id) = row.try_get::<String, _>(0)
                {
                    started.push(id);
                }
                match decode_claimed(row) {
                    Ok(reserved) => got.push(reserved),
                    Err(reason) => unreadable.push((
                        row.try_get::<String, _>(0).ok(),
                        row.try_get::<String, _>(12).ok(),
                        reason,
                    )),
                }
            }
            if !started.is_empty() {
                let mut query = dynamic(self.sql.release_keys(started.len()));
                for id in started {
                    query = query.bind(id);
                }
                query.execute(&mut *conn).await.map_err(backend)?;
            }
            // RETURNING has no order of its own.
            got.sort_by(|a, b| {
                b.record
                    .priority
                    .cmp(&a.record.priority)
                    .then_with(|| a.record.id.cmp(&b.record.id))
            });
            claim.jobs.extend(got);
        }
        // A full claim brings the worker straight back, so only a short one needs to know
        // when the next delayed job is due.
        if (claim.jobs.len() < req.max || req.max == 0) && !req.queues.is_empty() {
            // A short claim visited every queue: if each promotion read its next due time,
            // their earliest is the answer, without a statement of its own.
            claim.next_due = match promoted_next {
                Some(next) if req.max > 0 => next,
                _ => {
                    let mut query = dynamic(self.sql.next_due(req.queues.len())).bind(req.now);
                    for queue in req.queues {
                        query = query.bind(queue.clone());
                    }
                    let row = query.fetch_one(&mut *conn).await.map_err(backend)?;
                    row.try_get::<Option<i64>, _>(0).map_err(backend)?
                }
            };
            if let Some(at) = reopens {
                claim.next_due = Some(claim.next_due.map_or(at, |due| due.min(at)));
            }
        }
        Ok((claim, unreadable))
    }

    /// When a rate-limited queue may start a job again: the oldest start of its window
    /// plus the period, if the window is full at `now`.
    pub(crate) async fn rate_reopens(
        &self,
        conn: &mut B::Conn,
        queue: &str,
        now: Millis,
        rate: (i64, i64),
    ) -> orcs_core::Result<Option<Millis>> {
        let (limit, period) = rate;
        let row = q(&self.sql.rate_window)
            .bind(queue.to_owned())
            .bind(now.saturating_sub(period))
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        let oldest: Option<i64> = row.try_get(0).map_err(backend)?;
        let started: i64 = row.try_get(1).map_err(backend)?;
        Ok(oldest.filter(|_| started >= limit).map(|at| at.saturating_add(period)))
    }

    /// Claimed rows that cannot be read go to the failed set with the reason instead of
    /// stopping the worker or coming back forever.
    pub(crate) async fn fail_unreadable(
        &self,
        unreadable: Vec<(Option<String>, Option<String>, String)>,
        now: Millis,
    ) -> orcs_core::Result<()> {
        for (id, token, reason) in unreadable {
            let (Some(id), Some(token)) = (id, token) else {
                tracing::error!(%reason, "a claimed job row is unreadable, even its id");
                continue;
            };
            tracing::error!(job = %id, %reason, "a claimed job row is unreadable; moving it to the failed set");
            let lease = Lease::new(id, String::new(), token, now);
            let error = format!("unreadable job record: {reason}");
            match self.settle_each(&[Settle::fail(lease, error)], now).await {
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Applies one settle on `conn` (inside the caller's transaction). The outer error is
    /// a backend failure (the transaction must be abandoned); the inner one a lost lease,
    /// which changed nothing. On success: the queues whose waiters to wake (a job became
    /// ready, a concurrency-limited queue got a free slot, a batch callback was stored).
    ///
    /// The end of a batch child is counted in its batch here. On PostgreSQL only with
    /// `children` (the caller locked the batch rows first, see [`Store::settle_children`]):
    /// otherwise a child's end finds no row and answers a lost lease, which the caller takes
    /// as "maybe a child".
    async fn settle_on(
        &self,
        conn: &mut B::Conn,
        item: &Settle,
        now: Millis,
        children: bool,
        counts: &mut Counts,
    ) -> orcs_core::Result<Settled> {
        let lease = &item.lease;
        let lost = || Ok(Err(Error::LeaseLost { id: lease.id.clone() }));
        let mut ready = Vec::new();
        match &item.transition {
            Transition::Complete | Transition::Cancel => {
                let delete =
                    if children { &self.sql.delete_leased_any } else { &self.sql.delete_leased };
                let Some(row) = q(delete)
                    .bind(lease.id.clone())
                    .bind(lease.token.clone())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(backend)?
                else {
                    return lost();
                };
                let queue: String = row.try_get(0).map_err(backend)?;
                let cancelled = matches!(item.transition, Transition::Cancel);
                if cancelled {
                    counts.cancelled(&queue, 1);
                } else {
                    counts.processed(&queue, 1);
                }
                if row.try_get::<bool, _>(2).map_err(backend)? {
                    ready.push(queue);
                }
                if let Some(batch) = row.try_get::<Option<String>, _>(3).map_err(backend)? {
                    let ended = if cancelled { Ended::CANCELLED } else { Ended::PROCESSED };
                    ready.extend(self.count_in_batch(conn, &batch, ended, now, counts).await?);
                }
            }
            Transition::Retry { run_at, error } => {
                let Some(row) = q(&self.sql.retry)
                    .bind(lease.id.clone())
                    .bind(lease.token.clone())
                    .bind(*run_at)
                    .bind(error.clone())
                    .bind(now)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(backend)?
                else {
                    return lost();
                };
                if *run_at <= now || row.try_get::<bool, _>(1).map_err(backend)? {
                    ready.push(row.try_get::<String, _>(0).map_err(backend)?);
                }
            }
            Transition::Release { run_at } => {
                let Some(row) = q(&self.sql.release)
                    .bind(lease.id.clone())
                    .bind(lease.token.clone())
                    .bind(*run_at)
                    .bind(now)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(backend)?
                else {
                    return lost();
                };
                if *run_at <= now || row.try_get::<bool, _>(1).map_err(backend)? {
                    ready.push(row.try_get::<String, _>(0).map_err(backend)?);
                }
            }
            Transition::Fail { error } => {
                let copy =
                    if children { &self.sql.copy_to_failed_any } else { &self.sql.copy_to_failed };
                let Some(row) = q(copy)
                    .bind(lease.id.clone())
                    .bind(lease.token.clone())
                    .bind(error.clone())
                    .bind(now)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(backend)?
                else {
                    return lost();
                };
                let queue: String = row.try_get(0).map_err(backend)?;
                q(&self.sql.delete_job)
                    .bind(lease.id.clone())
                    .execute(&mut *conn)
                    .await
                    .map_err(backend)?;
                counts.failed(&queue, 1);
                if row.try_get::<bool, _>(1).map_err(backend)? {
                    ready.push(queue);
                }
                if let Some(batch) = row.try_get::<Option<String>, _>(2).map_err(backend)? {
                    let ended = Ended::FAILED;
                    ready.extend(self.count_in_batch(conn, &batch, ended, now, counts).await?);
                }
            }
            other => {
                return Ok(Err(Error::unsupported(
                    DRIVER,
                    format!("the transition {other:?}; upgrade orcs-database"),
                )));
            }
        }
        if !item.effects.enqueue.is_empty() {
            let (_, queues) = self.insert_jobs(conn, &item.effects.enqueue).await?;
            ready.extend(queues);
        }
        Ok(Ok(ready))
    }

    /// Adds `counts` to the counters table on `conn`, one statement per queue in queue order.
    pub(crate) async fn write_counts(
        &self,
        conn: &mut B::Conn,
        counts: Counts,
    ) -> orcs_core::Result<()> {
        for (queue, [processed, failed, cancelled]) in counts.0 {
            q(&self.sql.count_ended)
                .bind(queue)
                .bind(processed)
                .bind(failed)
                .bind(cancelled)
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    /// Settles a batch in one transaction, each item token-checked on its own. A backend
    /// failure rolls the whole batch back and is every item's answer.
    ///
    /// On PostgreSQL the ends of batch children are settled after it, in a transaction of
    /// their own that locks their batch rows first ([`Store::settle_children`]): this one
    /// takes no batch row, so it never waits for one while holding rows a batch cancel needs.
    pub(crate) async fn settle_each(
        &self,
        batch: &[Settle],
        now: Millis,
    ) -> orcs_core::Result<Vec<orcs_core::Result<()>>> {
        let locks = self.sql.dialect == Dialect::Postgres;
        let ends = |item: &Settle| {
            matches!(
                item.transition,
                Transition::Complete | Transition::Cancel | Transition::Fail { .. }
            )
        };
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        let mut results: Vec<Option<orcs_core::Result<()>>> =
            (0..batch.len()).map(|_| None).collect();
        let mut ready: Vec<String> = Vec::new();
        let mut counts = Counts::default();
        // Ends that found no job outside a batch: children, or lost leases.
        let mut maybe_children: Vec<usize> = Vec::new();
        for (i, item) in batch.iter().enumerate() {
            match self.settle_on(&mut tx, item, now, !locks, &mut counts).await? {
                Ok(queues) => {
                    merge(&mut ready, queues);
                    results[i] = Some(Ok(()));
                }
                Err(_) if locks && ends(item) => maybe_children.push(i),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        self.write_counts(&mut tx, counts).await?;
        B::mark_settled(self, &mut tx, batch, now).await?;
        B::notify_in(self, &mut tx, &ready).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        if !ready.is_empty() {
            self.shared.wake.notify_waiters();
        }
        if !maybe_children.is_empty() {
            let items: Vec<Settle> = maybe_children.iter().map(|&i| batch[i].clone()).collect();
            for (i, result) in
                maybe_children.into_iter().zip(self.settle_children(&items, now).await?)
            {
                results[i] = Some(result);
            }
        }
        Ok(results.into_iter().map(|r| r.expect("every item was settled")).collect())
    }

    /// Settles the ends of batch children in one transaction that first locks their batch
    /// rows, in id order: every transaction that ends a child takes its batch row before any
    /// other row (and its counters last), so that two children of one batch ending at once take
    /// turns on it (no lost count, one `then`), and a batch cancel, which locks the batch row
    /// and then the children's, never waits in a cycle. An item that is no child is settled
    /// all the same (a lost lease answers as such). SQLite settles every batch here, locking
    /// nothing first (its writes take turns), for the plain completions in one statement.
    pub(crate) async fn settle_children(
        &self,
        items: &[Settle],
        now: Millis,
    ) -> orcs_core::Result<Vec<orcs_core::Result<()>>> {
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        if self.sql.dialect == Dialect::Postgres {
            for chunk in items.chunks(INSERT_CHUNK) {
                let mut query = dynamic(self.sql.lock_batches_of_jobs(chunk.len()));
                for item in chunk {
                    query = query.bind(item.lease.id.clone());
                }
                query.fetch_all(&mut *tx).await.map_err(backend)?;
            }
        }
        let mut results: Vec<Option<orcs_core::Result<()>>> =
            (0..items.len()).map(|_| None).collect();
        let mut ready: Vec<String> = Vec::new();
        let mut counts = Counts::default();
        // Plain completions (a drain of children) in one statement, then one count per batch
        // (`processed + k` in one update of its row, which decides its callbacks once), instead
        // of a delete and a batch-row update per child.
        let plain: Vec<usize> = (0..items.len())
            .filter(|&i| {
                matches!(items[i].transition, Transition::Complete)
                    && items[i].effects.enqueue.is_empty()
            })
            .collect();
        if plain.len() > 1 {
            let leases: Vec<&Settle> = plain.iter().map(|&i| &items[i]).collect();
            if let Some(completed) = B::complete_leases(self, &mut tx, &leases).await? {
                let mut done: HashSet<(String, String)> = HashSet::with_capacity(completed.len());
                let mut batches: BTreeMap<String, i64> = BTreeMap::new();
                for job in completed {
                    counts.processed(&job.queue, 1);
                    if job.limited && !ready.contains(&job.queue) {
                        ready.push(job.queue);
                    }
                    if let Some(batch) = job.batch {
                        *batches.entry(batch).or_default() += 1;
                    }
                    done.insert((job.id, job.token));
                }
                for (batch, n) in batches {
                    let ended = Ended::processed(n);
                    let queues =
                        self.count_in_batch(&mut tx, &batch, ended, now, &mut counts).await?;
                    merge(&mut ready, queues);
                }
                for i in plain {
                    let lease = &items[i].lease;
                    results[i] = Some(if done.contains(&(lease.id.clone(), lease.token.clone())) {
                        Ok(())
                    } else {
                        Err(Error::LeaseLost { id: lease.id.clone() })
                    });
                }
            }
        }
        for (i, item) in items.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            results[i] =
                Some(match self.settle_on(&mut tx, item, now, true, &mut counts).await? {
                    Ok(queues) => {
                        merge(&mut ready, queues);
                        Ok(())
                    }
                    Err(e) => Err(e),
                });
        }
        let results: Vec<orcs_core::Result<()>> =
            results.into_iter().map(|r| r.expect("every item was settled")).collect();
        self.write_counts(&mut tx, counts).await?;
        B::mark_settled(self, &mut tx, items, now).await?;
        B::notify_in(self, &mut tx, &ready).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        if !ready.is_empty() {
            self.shared.wake.notify_waiters();
        }
        Ok(results)
    }

    pub(crate) async fn extend(&self, lease: &Lease, until: Millis) -> orcs_core::Result<Lease> {
        let done = q(&self.sql.extend)
            .bind(lease.id.clone())
            .bind(lease.token.clone())
            .bind(until)
            .execute(&mut *self.backend.writer().await?)
            .await
            .map_err(backend)?;
        if B::rows_affected(&done) == 0 {
            return Err(Error::LeaseLost { id: lease.id.clone() });
        }
        let mut extended = lease.clone();
        extended.expires_at = until;
        Ok(extended)
    }

    pub(crate) async fn recover(&self, queues: &[String], now: Millis) -> orcs_core::Result<u64> {
        if queues.is_empty() {
            return Ok(0);
        }
        let mut query = dynamic(self.sql.recover(queues.len())).bind(now);
        let mut ended = dynamic(self.sql.recover_cancelled(queues.len())).bind(now);
        let mut sweep = dynamic(self.sql.sweep_keys(queues.len())).bind(now);
        for queue in queues {
            query = query.bind(queue.clone());
            ended = ended.bind(queue.clone());
            sweep = sweep.bind(queue.clone());
        }
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        if self.sql.dialect == Dialect::Postgres {
            // The batch rows of the children it may end, first (see `settle_children`).
            let mut lock = dynamic(self.sql.lock_batches_of_recovery(queues.len())).bind(now);
            for queue in queues {
                lock = lock.bind(queue.clone());
            }
            lock.fetch_all(&mut *tx).await.map_err(backend)?;
        }
        // A job whose cancel was asked for ends as cancelled instead of running again.
        let cancelled = ended.fetch_all(&mut *tx).await.map_err(backend)?;
        let mut ready: Vec<String> = Vec::new();
        let mut counts = Counts::default();
        let mut children: BTreeMap<String, i64> = BTreeMap::new();
        for row in &cancelled {
            let queue: String = row.try_get(0).map_err(backend)?;
            if let Some(batch) = row.try_get::<Option<String>, _>(3).map_err(backend)? {
                *children.entry(batch).or_default() += 1;
            }
            counts.cancelled(&queue, 1);
            if !ready.contains(&queue) {
                ready.push(queue);
            }
        }
        let rows = query.fetch_all(&mut *tx).await.map_err(backend)?;
        for row in &rows {
            let queue: String = row.try_get(0).map_err(backend)?;
            if !ready.contains(&queue) {
                ready.push(queue);
            }
        }
        for (batch, n) in children {
            let ended = Ended::cancelled(n);
            let queues = self.count_in_batch(&mut tx, &batch, ended, now, &mut counts).await?;
            merge(&mut ready, queues);
        }
        self.write_counts(&mut tx, counts).await?;
        // Expired `Period` keys leave the keys table (an index probe per queue, migration 12).
        sweep.execute(&mut *tx).await.map_err(backend)?;
        B::notify_in(self, &mut tx, &ready).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        if !ready.is_empty() {
            self.shared.wake.notify_waiters();
        }
        Ok((rows.len() + cancelled.len()) as u64)
    }

    /// Whether one of `queues` has a claimable job at `now`.
    pub(crate) async fn any_ready(
        &self,
        queues: &[String],
        now: Millis,
    ) -> orcs_core::Result<bool> {
        if queues.is_empty() {
            return Ok(false);
        }
        let row = self
            .any_ready_query(queues, now)
            .fetch_one(self.backend.reader())
            .await
            .map_err(backend)?;
        Ok(row.try_get::<i32, _>(0).map_err(backend)? != 0)
    }

    /// Whether any of `queues` has a ready job at `now` (one row, an integer that is 0 or not).
    pub(crate) fn any_ready_query(&self, queues: &[String], now: Millis) -> Query<B::Db> {
        let mut query = dynamic(self.sql.any_ready(queues.len())).bind(now);
        for queue in queues {
            query = query.bind(queue.clone());
        }
        query
    }

    pub(crate) async fn stats(&self, queue: &str, now: Millis) -> orcs_core::Result<QueueStats> {
        let row = q(&self.sql.stats)
            .bind(queue.to_owned())
            .bind(now)
            .fetch_one(self.backend.reader())
            .await
            .map_err(backend)?;
        let get = |i: usize| row.try_get::<i64, _>(i).map(count).map_err(backend);
        let mut stats = QueueStats::new(queue);
        stats.pending = get(0)?;
        stats.delayed = get(1)?;
        stats.reserved = get(2)?;
        stats.failed = get(3)?;
        stats.processed = get(4)?;
        stats.failed_total = get(5)?;
        stats.paused = row.try_get::<bool, _>(6).map_err(backend)?;
        stats.cancelled = get(7)?;
        let opt = |i: usize| row.try_get::<Option<i64>, _>(i).map_err(backend);
        let as_u32 = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        let mut limits = QueueLimits::none();
        if let Some(n) = opt(8)? {
            limits = limits.concurrency(as_u32(n));
        }
        if let (Some(n), Some(period)) = (opt(9)?, opt(10)?) {
            limits = limits.rate(RateLimit::new(as_u32(n), count(period)));
        }
        stats.limits = limits;
        // The oldest due time among ready jobs and due delayed ones (one index probe each).
        let oldest = match (opt(11)?, opt(12)?) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        stats.latency_ms = oldest.map(|at| count(now.saturating_sub(at)));
        Ok(stats)
    }

    pub(crate) async fn queues(&self) -> orcs_core::Result<Vec<String>> {
        let rows = q(&self.sql.queues).fetch_all(self.backend.reader()).await.map_err(backend)?;
        let mut names = first_texts(&rows)?;
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    pub(crate) async fn get(&self, id: &str, now: Millis) -> orcs_core::Result<Option<JobInfo>> {
        if let Some(row) = q(&self.sql.get_job)
            .bind(id.to_owned())
            .fetch_optional(self.backend.reader())
            .await
            .map_err(backend)?
        {
            return decode_info(&row, now).map(Some).map_err(unreadable);
        }
        // Not live: it may have failed (a job moves from one table to the other in one
        // transaction, so it is in one of them unless it completed in between).
        let row = q(&self.sql.get_failed)
            .bind(id.to_owned())
            .fetch_optional(self.backend.reader())
            .await
            .map_err(backend)?;
        row.map(|row| decode_failed(&row).map(|(_, info)| info)).transpose().map_err(unreadable)
    }

    pub(crate) async fn list(
        &self,
        req: &ListRequest,
        now: Millis,
    ) -> orcs_core::Result<Vec<JobInfo>> {
        let sql = match req.state {
            JobState::Pending => &self.sql.list_pending,
            JobState::Delayed => &self.sql.list_delayed,
            JobState::Reserved => &self.sql.list_reserved,
            _ => {
                return Err(Error::invalid(
                    "job state",
                    "failed jobs are listed by `failed` (orcs queue:failed), not `list`",
                ));
            }
        };
        let (limit, offset) = page(req.limit, req.offset);
        let rows = q(sql)
            .bind(req.queue.clone())
            .bind(limit)
            .bind(offset)
            .fetch_all(self.backend.reader())
            .await
            .map_err(backend)?;
        rows.iter().map(|row| decode_info(row, now).map_err(unreadable)).collect()
    }

    /// Removes a queue's pending and delayed jobs; the batch children among them count as
    /// cancelled in their batches, in the same transaction.
    pub(crate) async fn clear(&self, queue: &str, now: Millis) -> orcs_core::Result<u64> {
        let pg = self.sql.dialect == Dialect::Postgres;
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        if pg {
            // The children's batch rows first (see `settle_children`).
            q(&self.sql.lock_batches_of_queue)
                .bind(queue.to_owned())
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
        }
        // (batch, children removed); the jobs outside batches under NULL on PostgreSQL.
        let per_batch = |rows: Vec<RowOf<B>>| {
            rows.iter()
                .map(|row| Ok((row.try_get::<Option<String>, _>(0)?, row.try_get::<i64, _>(1)?)))
                .collect::<Result<Vec<(Option<String>, i64)>, sqlx::Error>>()
                .map_err(backend)
        };
        let (removed, per_batch) = if pg {
            // One statement: the delete and the count of its children per batch.
            let rows = q(&self.sql.clear_counted_pg)
                .bind(queue.to_owned())
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
            let counted = per_batch(rows)?;
            (counted.iter().map(|(_, n)| count(*n)).sum(), counted)
        } else {
            // One writer at a time: nothing changes between the look and the delete.
            let rows = q(&self.sql.clear_batches)
                .bind(queue.to_owned())
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
            let counted = per_batch(rows)?;
            let done = q(&self.sql.clear)
                .bind(queue.to_owned())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            (B::rows_affected(&done), counted)
        };
        let mut ready = Vec::new();
        let mut counts = Counts::default();
        for (batch, n) in per_batch {
            if let Some(batch) = batch {
                let ended = Ended::cancelled(n);
                let queues = self.count_in_batch(&mut tx, &batch, ended, now, &mut counts).await?;
                merge(&mut ready, queues);
            }
        }
        // Remember the queue, so that it is still listed once it is empty (counter rows last).
        q(&self.sql.ensure_counter)
            .bind(queue.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        self.write_counts(&mut tx, counts).await?;
        B::notify_in(self, &mut tx, &ready).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        if !ready.is_empty() {
            self.shared.wake.notify_waiters();
        }
        Ok(removed)
    }

    pub(crate) async fn failed(&self, query: &FailedQuery) -> orcs_core::Result<Vec<FailedJob>> {
        let (limit, offset) = page(query.limit, query.offset);
        let statement = match &query.queue {
            Some(queue) => {
                q(&self.sql.failed_page_of_queue).bind(limit).bind(offset).bind(queue.clone())
            }
            None => q(&self.sql.failed_page).bind(limit).bind(offset),
        };
        let rows = statement.fetch_all(self.backend.reader()).await.map_err(backend)?;
        rows.iter()
            .map(|row| decode_failed(row).map(|(failed, _)| failed).map_err(unreadable))
            .collect()
    }

    pub(crate) async fn retry_failed(&self, id: &str, now: Millis) -> orcs_core::Result<()> {
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        let Some(row) = q(&self.sql.unfail)
            .bind(id.to_owned())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
        else {
            return Err(Error::NotFound { id: id.to_owned() });
        };
        let queue: String = row.try_get(1).map_err(backend)?;
        q(&self.sql.requeue)
            .bind(row.try_get::<String, _>(0).map_err(backend)?)
            .bind(queue.clone())
            .bind(row.try_get::<String, _>(2).map_err(backend)?)
            .bind(row.try_get::<String, _>(3).map_err(backend)?)
            .bind(row.try_get::<i32, _>(4).map_err(backend)?)
            .bind(row.try_get::<i64, _>(6).map_err(backend)?)
            .bind(row.try_get::<i64, _>(7).map_err(backend)?)
            .bind(row.try_get::<Option<i64>, _>(8).map_err(backend)?)
            .bind(row.try_get::<i64, _>(9).map_err(backend)?)
            .bind(row.try_get::<Option<String>, _>(10).map_err(backend)?)
            .bind(row.try_get::<Option<i32>, _>(11).map_err(backend)?)
            .bind(row.try_get::<Option<i64>, _>(12).map_err(backend)?)
            // Column 13, the batch, stays behind: the job leaves its batch.
            .bind(row.try_get::<Option<String>, _>(14).map_err(backend)?)
            .bind(now)
            // Its error history stays with it: the next failures add to it.
            .bind(row.try_get::<Option<String>, _>(15).map_err(backend)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        B::notify_in(self, &mut tx, std::slice::from_ref(&queue)).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        self.shared.wake.notify_waiters();
        Ok(())
    }

    pub(crate) async fn forget_failed(&self, id: &str) -> orcs_core::Result<()> {
        let done = q(&self.sql.forget)
            .bind(id.to_owned())
            .execute(&mut *self.backend.writer().await?)
            .await
            .map_err(backend)?;
        if B::rows_affected(&done) == 0 {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        Ok(())
    }

    pub(crate) async fn flush_failed(&self) -> orcs_core::Result<u64> {
        let done = q(&self.sql.flush)
            .execute(&mut *self.backend.writer().await?)
            .await
            .map_err(backend)?;
        Ok(B::rows_affected(&done))
    }

    pub(crate) async fn set_paused(&self, queue: &str, paused: bool) -> orcs_core::Result<()> {
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        q(&self.sql.set_paused)
            .bind(queue.to_owned())
            .bind(paused)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if !paused {
            B::notify_in(self, &mut tx, &[queue.to_owned()]).await?;
        }
        tx.commit().await.map_err(backend)?;
        drop(conn);
        if !paused {
            self.shared.wake.notify_waiters();
        }
        Ok(())
    }

    pub(crate) async fn set_limits(
        &self,
        queue: &str,
        limits: &QueueLimits,
    ) -> orcs_core::Result<()> {
        let rate = match limits.rate {
            Some(rate) if rate.period_ms == 0 => {
                return Err(Error::invalid("rate limit", "the period must be at least 1 ms"));
            }
            Some(rate) => Some((i64::from(rate.limit), duration_ms(rate.period_ms))),
            None => None,
        };
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        q(&self.sql.set_limits)
            .bind(queue.to_owned())
            .bind(limits.concurrency.map(i64::from))
            .bind(rate.map(|r| r.0))
            .bind(rate.map(|r| r.1))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        // Looser limits may let idle workers start jobs.
        B::notify_in(self, &mut tx, &[queue.to_owned()]).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        self.shared.wake.notify_waiters();
        Ok(())
    }

    /// Forgets an empty, idle queue in one transaction: deletes its rows in the counters,
    /// metadata, unique-key and start-log tables, then looks for its jobs (live or failed) and
    /// rolls back if there is one. Looking after the deletes, each statement with a fresh
    /// snapshot on PostgreSQL, means a push that commits before the look is seen, and one that
    /// commits after it serializes after the forget (a key it upserted meanwhile waits for the
    /// forget's delete, or makes it wait and is seen). SQLite's `BEGIN IMMEDIATE` serializes
    /// the whole step anyway. A busy queue answers before any delete.
    pub(crate) async fn forget_queue(&self, queue: &str) -> orcs_core::Result<bool> {
        let busy = |row: RowOf<B>| row.try_get::<i32, _>(0).map(|n| n != 0).map_err(backend);
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        let look = q(&self.sql.queue_busy).bind(queue.to_owned());
        if busy(look.fetch_one(&mut *tx).await.map_err(backend)?)? {
            tx.rollback().await.map_err(backend)?;
            return Ok(false);
        }
        for sql in &self.sql.forget_queue {
            q(sql).bind(queue.to_owned()).execute(&mut *tx).await.map_err(backend)?;
        }
        let look = q(&self.sql.queue_busy).bind(queue.to_owned());
        if busy(look.fetch_one(&mut *tx).await.map_err(backend)?)? {
            tx.rollback().await.map_err(backend)?;
            return Ok(false);
        }
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    /// A pending or delayed job is deleted and counted as cancelled (its key freed, and in
    /// its batch if it is a child); a running one is flagged, and its worker learns of it
    /// through `touch`.
    pub(crate) async fn cancel(&self, id: &str, now: Millis) -> orcs_core::Result<CancelOutcome> {
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        if self.sql.dialect == Dialect::Postgres {
            // A child's batch row first (see `settle_children`).
            q(&self.sql.lock_batch_of_job)
                .bind(id.to_owned())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        }
        if let Some(row) = q(&self.sql.cancel_waiting)
            .bind(id.to_owned())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
        {
            let queue: String = row.try_get(0).map_err(backend)?;
            let mut counts = Counts::default();
            counts.cancelled(&queue, 1);
            let mut ready = Vec::new();
            if let Some(batch) = row.try_get::<Option<String>, _>(2).map_err(backend)? {
                let ended = Ended::CANCELLED;
                ready = self.count_in_batch(&mut tx, &batch, ended, now, &mut counts).await?;
            }
            self.write_counts(&mut tx, counts).await?;
            B::notify_in(self, &mut tx, &ready).await?;
            tx.commit().await.map_err(backend)?;
            drop(conn);
            if !ready.is_empty() {
                self.shared.wake.notify_waiters();
            }
            return Ok(CancelOutcome::Removed);
        }
        let flagged = q(&self.sql.cancel_running)
            .bind(id.to_owned())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        match flagged {
            Some(_) => Ok(CancelOutcome::Requested),
            None => Err(Error::NotFound { id: id.to_owned() }),
        }
    }
}

/// The tokens of a claim's settling jobs, each once: the statements count the rows they match,
/// so a repeated token would free its job's slot twice.
pub(crate) fn settling_tokens(settling: &dyn Settling) -> Vec<String> {
    let mut tokens = settling.tokens();
    tokens.sort_unstable();
    tokens.dedup();
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_contention_errors_are_transient_schema_errors_are_not() {
        for code in ["08006", "08001", "40001", "40P01", "57P01", "57P03", "53300", "55P03"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["42P01", "42703", "42501", "42601", "23505", "22P02", "3F000"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::other("reset"))));
        assert!(!is_transient(&sqlx::Error::PoolClosed));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!backend(sqlx::Error::ColumnNotFound("state".into())).is_transient());
    }
}
