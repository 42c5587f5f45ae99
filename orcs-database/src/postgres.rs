//! The PostgreSQL backend: claims with `FOR UPDATE SKIP LOCKED`, wakes idle workers with
//! `LISTEN`/`NOTIFY`.
//!
//! One waiter per process holds the listening connection at a time and passes each notification
//! on to the others through the in-process wake-up, so a process needs one extra connection
//! however many workers it runs.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, PoisonError};
use std::time::{Duration, Instant};

use orcs_core::{
    Error, Lease, Millis, NewJob, PushOutcome, Result, Settle, SettlingMarks, Touch, Transition,
};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgQueryResult, PgRow,
};
use sqlx::{ConnectOptions as _, Connection, Row, Transaction};
use tokio::sync::{Mutex, oneshot};

use crate::common::{
    self, Backend, Claimed, Limits, Shared, UniqueColumns, backend, first_texts, q,
};
use crate::config::{ACCEPTED, DatabaseConfig, URL_SETTING, redact};
use crate::group::{Pushes, gave_up_waiting};
use crate::sql::{CHILD_MARK, Dialect, PROMOTION_COLUMNS, Sql};

type Db = sqlx::Postgres;
type Conn = PgConnection;

/// The driver's tables in a PostgreSQL database.
pub(crate) type Store = common::Store<PgBackend>;

/// Serialises setup (migrations) among workers starting at once. The value spells "orcs" and
/// "jobs".
const SCHEMA_LOCK: i64 = 0x6f72_6373_6a6f_6273;

/// The database's clock in milliseconds, for the migrations table.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM now()) * 1000)::BIGINT";

/// A `NOTIFY` payload is limited to 8000 bytes; waiters only need to be woken, so a long queue
/// name is cut short rather than failing the write that announces it.
const MAX_PAYLOAD: usize = 1000;

/// A lease as the completion statements answer it: (id, token). The token matters: a stale and a
/// current lease on one job may share a batch.
fn pair(lease: &Lease) -> (String, String) {
    (lease.id.clone(), lease.token.clone())
}

/// PostgreSQL's longest identifier, which bounds channel names.
const MAX_CHANNEL_LEN: usize = 63;

/// What a PostgreSQL store has beside its statements.
#[derive(Clone)]
pub(crate) struct PgBackend {
    pool: PgPool,
    /// The channel the jobs table's dispatches are announced on.
    channel: String,
    /// A pool of one connection, used by the listener only (it reconnects through it).
    listen_pool: PgPool,
    listener: Arc<Mutex<Option<PgListener>>>,
    /// The pool is the application's: its connections lack `enable_bitmapscan=off`, so each
    /// claim sets it for its own transaction.
    borrowed: bool,
    /// Queues whose pushes committed and are still to be announced (see [`Announcer`]).
    announcer: Arc<Announcer>,
    /// Queues found limited, for the one-round-trip claim.
    limited: Arc<LimitedQueues>,
    /// Pushes waiting for the group writer (see [`PgBackend::push_grouped`]).
    pushes: Arc<std::sync::Mutex<Pushes>>,
}

/// Group writers a PostgreSQL store runs at once at most (each holds a pooled connection
/// while it writes a group; see [`crate::group::Pushes::join`]): two wrote one by one
/// dispatches as fast as one (27k jobs/s with 64 in flight), four at 22k (smaller groups).
const GROUP_WRITERS: usize = 2;

/// A group commit's `BEGIN`: its statements wait at most 100 ms for a lock (groups of other
/// processes that insert the same key commit within a few ms; an application's transaction
/// that took a key may stay open for as long as it likes). Before, a group waiting for such a
/// key held its writer and every other push of the group until the transaction ended, and two
/// of them stalled every dispatch of the process.
const GROUP_BEGIN: &str = "BEGIN; SET LOCAL lock_timeout = '100ms'";

/// The first pause of a push waiting aside for a lock ([`PgBackend::push_aside`]).
const ASIDE_PAUSE: Duration = Duration::from_millis(10);

/// The longest pause between a waiting push's tries.
const ASIDE_PAUSE_MAX: Duration = Duration::from_millis(500);

/// How many times [`Store::warm`] runs a job's path on each connection: PostgreSQL plans a
/// prepared statement afresh (a custom plan) on its first five runs on a connection, and
/// settles on a generic plan from the sixth if that costs no more.
const WARM_RUNS: usize = 6;

/// Pooled connections a worker's start opens and warms at once (see [`Store::warm`]): the two
/// group writers, the claim and the completions of a worker at 1,000 jobs/s.
const WARM_CONNECTIONS: usize = 8;

/// The queues this store's promotions found limited, with their limits and when they were
/// read: a claim of one claims through the claim function at once (see
/// [`PgBackend::claim_known_limited`]). Only a choice of path: the function reads the limits it
/// enforces under the queue's lock, so a stale entry costs a slower claim, never a wrong one.
#[derive(Default)]
struct LimitedQueues(std::sync::Mutex<HashMap<String, (Instant, Limits)>>);

/// How long a queue found limited takes the one-round-trip path before a promotion reads its
/// limits again.
const LIMITS_FRESH: Duration = Duration::from_secs(1);

impl LimitedQueues {
    fn note(&self, queue: &str, limits: Option<Limits>) {
        let mut queues = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match limits {
            Some(limits) => {
                queues.insert(queue.to_owned(), (Instant::now(), limits));
            }
            None => {
                queues.remove(queue);
            }
        }
    }

    fn get(&self, queue: &str) -> Option<Limits> {
        let queues = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        queues.get(queue).filter(|(at, _)| at.elapsed() < LIMITS_FRESH).map(|(_, limits)| *limits)
    }
}

/// Announces committed pushes to other processes: one `NOTIFY` statement after the commit,
/// outside the push's transaction, for every queue pushed to meanwhile.
///
/// A `NOTIFY` inside a writing transaction holds PostgreSQL's global notify lock from its commit
/// until the commit record is flushed, so every dispatch announced that way waited for the
/// previous one's WAL flush: concurrent dispatches could not share a flush (measured: one by one
/// with 64 in flight ran at the disk's flush rate). A transaction that only notifies writes no
/// WAL and holds the lock for microseconds.
struct Announcer {
    pool: PgPool,
    channel: String,
    /// The queues to announce, and whether a task is announcing.
    pending: std::sync::Mutex<(Vec<String>, bool)>,
}

impl Announcer {
    /// Adds `queues` to the next announcement; starts the task that sends it unless one runs.
    fn announce(self: &Arc<Self>, queues: &[String]) {
        let start = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for queue in queues {
                if !pending.0.contains(queue) {
                    pending.0.push(queue.clone());
                }
            }
            !std::mem::replace(&mut pending.1, true)
        };
        if start {
            let announcer = Arc::clone(self);
            tokio::spawn(async move { announcer.run().await });
        }
    }

    /// Sends what is pending until nothing is; a failure is logged (the push committed, and
    /// waiters elsewhere find its jobs at their next poll).
    async fn run(&self) {
        /// Lets the next push start a task if this one is dropped mid-send.
        struct Running<'a>(&'a Announcer);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.pending.lock().unwrap_or_else(PoisonError::into_inner).1 = false;
            }
        }
        let _running = Running(self);
        loop {
            let queues = {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                if pending.0.is_empty() {
                    pending.1 = false;
                    return;
                }
                std::mem::take(&mut pending.0)
            };
            let sent = sqlx::query(NOTIFY_ALONE)
                .bind(self.channel.clone())
                .bind(payloads(&queues))
                .execute(&self.pool)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "could not announce dispatched jobs with NOTIFY");
            }
        }
    }
}

/// `NOTIFY` for each queue of the text array `$2` on channel `$1`, in a statement of its own.
const NOTIFY_ALONE: &str = "SELECT pg_notify($1, q) FROM UNNEST($2::TEXT[]) AS q";

/// The queue names as `NOTIFY` payloads, each cut to [`MAX_PAYLOAD`] bytes.
fn payloads(queues: &[String]) -> Vec<String> {
    queues
        .iter()
        .map(|queue| {
            let mut end = queue.len().min(MAX_PAYLOAD);
            while !queue.is_char_boundary(end) {
                end -= 1;
            }
            queue[..end].to_owned()
        })
        .collect()
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("tables", &self.sql.jobs)
            .field("channel", &self.backend.channel)
            .finish_non_exhaustive()
    }
}

impl Backend for PgBackend {
    type Db = Db;
    type Conn = Conn;
    type Writer<'a> = PoolConnection<Db>;

    const NOW_MS: &'static str = NOW_MS;

    async fn writer(&self) -> Result<PoolConnection<Db>> {
        self.pool.acquire().await.map_err(backend)
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(conn: &mut Conn) -> Result<Transaction<'_, Db>> {
        conn.begin().await.map_err(backend)
    }

    /// With `lock_timeout` for this transaction only ([`GROUP_BEGIN`]): a group whose insert
    /// meets a unique key held by an open transaction gives up after a short wait, and the
    /// push that needs the key waits aside ([`PgBackend::push_aside`]).
    async fn begin_group(conn: &mut Conn) -> Result<Transaction<'_, Db>> {
        conn.begin_with(GROUP_BEGIN).await.map_err(backend)
    }

    /// Tries the push again alone, after a pause that doubles from [`ASIDE_PAUSE`] up to
    /// [`ASIDE_PAUSE_MAX`], each try waiting for its lock no longer than a group does, until
    /// it is written or fails otherwise. Between tries it holds no connection, so dispatches
    /// of keys that long transactions hold take neither group writers nor the pool; one is
    /// answered at most a pause after its key's holder ends. Stops, writing nothing more, once
    /// its caller is gone (nobody would learn of it).
    fn push_aside(
        store: &Store,
        jobs: Vec<NewJob>,
        reply: oneshot::Sender<Result<Vec<PushOutcome>>>,
        _error: Error,
    ) {
        let store = store.clone();
        tokio::spawn(async move {
            let mut pause = ASIDE_PAUSE;
            loop {
                tokio::time::sleep(pause).await;
                if reply.is_closed() {
                    return;
                }
                pause = (pause * 2).min(ASIDE_PAUSE_MAX);
                let written = async {
                    let mut conn = store.backend.writer().await?;
                    store.push_on(&mut conn, &jobs).await
                }
                .await;
                match written {
                    Err(e) if gave_up_waiting(&e) => {}
                    Ok((outcomes, queues)) => {
                        if !queues.is_empty() {
                            Self::pushed(&store, &queues);
                        }
                        let _ = reply.send(Ok(outcomes));
                        return;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
            }
        });
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    /// Whether table `name` (quoted, schema-qualified if need be: see `Sql::catalog`) exists.
    async fn table_exists(conn: &mut Conn, name: &str) -> Result<bool> {
        sqlx::query("SELECT to_regclass($1) IS NOT NULL")
            .bind(name.to_owned())
            .fetch_one(conn)
            .await
            .and_then(|row| row.try_get::<bool, _>(0))
            .map_err(backend)
    }

    /// The column names of table `name` (found as `table_exists` finds it); empty if there is none.
    async fn table_columns(conn: &mut Conn, name: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT attname::TEXT FROM pg_attribute WHERE attrelid = to_regclass($1) \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        )
        .bind(name.to_owned())
        .fetch_all(conn)
        .await
        .map_err(backend)?;
        first_texts(&rows)
    }

    /// Arrays: no limit of parameters. A batch of the bench's 1,000 jobs is one statement (two of
    /// 500 each with the `VALUES` insert); a bound still keeps one statement's memory modest.
    const INSERT_ROWS: usize = 5_000;

    /// One array parameter per column ([`Sql::insert_pg`]): one statement whatever the number
    /// of jobs, parsed and planned once per connection, where a `VALUES` list was a statement
    /// of its own for each size of a group commit.
    async fn insert_rows(
        store: &Store,
        conn: &mut Conn,
        jobs: &[NewJob],
        keys: &[UniqueColumns],
        rows: &[usize],
        workflow: bool,
    ) -> Result<Vec<String>> {
        /// One array per column: `f` of each job of the statement (and its unique columns), in
        /// the statement's order.
        fn each<T>(
            jobs: &[NewJob],
            keys: &[UniqueColumns],
            rows: &[usize],
            f: impl Fn(&NewJob, &UniqueColumns) -> T,
        ) -> Vec<T> {
            rows.iter().map(|&i| f(&jobs[i], &keys[i])).collect()
        }
        let mut query = q(store.sql.insert_pg(workflow))
            .bind(each(jobs, keys, rows, |job, _| job.id.clone()))
            .bind(each(jobs, keys, rows, |job, _| job.queue.clone()))
            .bind(each(jobs, keys, rows, |job, _| job.name.clone()))
            .bind(each(jobs, keys, rows, |job, _| job.payload.clone()))
            .bind(each(jobs, keys, rows, |job, _| job.priority))
            .bind(each(jobs, keys, rows, |job, _| i64::from(job.max_retries)))
            .bind(each(jobs, keys, rows, |job, _| common::duration_ms(job.retry_delay_ms)))
            .bind(each(jobs, keys, rows, |job, _| job.timeout_ms.map(common::duration_ms)))
            .bind(each(jobs, keys, rows, |job, _| job.dispatched_at))
            .bind(each(jobs, keys, rows, |job, _| job.available_at))
            .bind(each(jobs, keys, rows, |job, _| common::initial_state(job)))
            .bind(each(jobs, keys, rows, |_, key| key.0.clone()))
            .bind(each(jobs, keys, rows, |_, key| key.1))
            .bind(each(jobs, keys, rows, |_, key| key.2));
        if workflow {
            let batch = each(jobs, keys, rows, |job, _| job.batch.clone());
            let meta = each(jobs, keys, rows, |job, _| job.meta.clone());
            query = query.bind(batch).bind(meta);
        }
        first_texts(&query.fetch_all(conn).await.map_err(backend)?)
    }

    /// Announces `queues` to every other process's waiters with `NOTIFY`, inside the caller's
    /// transaction: PostgreSQL delivers it on commit, and a failure rolls the write back instead
    /// of reporting a committed write as failed.
    async fn notify_in(store: &Store, conn: &mut Conn, queues: &[String]) -> Result<()> {
        if queues.is_empty() {
            return Ok(());
        }
        q(&store.sql.notify_pg)
            .bind(store.backend.channel.clone())
            .bind(payloads(queues))
            .execute(conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Group commit (see [`crate::group`]): concurrent pushes of this process are written
    /// together, one transaction and one commit for as many as are waiting when the writer
    /// gets a connection, instead of a transaction each on connections of their own.
    fn push_grouped(
        store: &Store,
        jobs: Vec<NewJob>,
    ) -> std::result::Result<impl Future<Output = Result<Vec<PushOutcome>>> + Send, Vec<NewJob>>
    {
        let (writer, answer) = store.join_group(&store.backend.pushes, jobs, GROUP_WRITERS);
        if let Some((writer, pushes)) = writer {
            tokio::spawn(async move { writer.write_pushes(pushes).await });
        }
        Ok(answer)
    }

    /// Wakes this process's waiters, and announces the queues with one batched `NOTIFY` after
    /// the commit (see [`Announcer`]).
    fn pushed(store: &Store, queues: &[String]) {
        store.shared.wake.notify_waiters();
        store.backend.announcer.announce(queues);
    }

    /// One upsert of the writers' rows (see [`Sql::mark_settled`]).
    async fn mark_settled(
        store: &Store,
        conn: &mut Conn,
        items: &[Settle],
        now: Millis,
    ) -> Result<()> {
        let (writers, highest) = common::marks_of(items);
        if writers.is_empty() {
            return Ok(());
        }
        q(&store.sql.mark_settled)
            .bind(writers)
            .bind(highest)
            .bind(now)
            .execute(conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// One statement over arrays of ids and tokens (see [`Sql::complete_leases_pg`]).
    async fn complete_leases(
        store: &Store,
        conn: &mut Conn,
        items: &[&Settle],
    ) -> Result<Option<Vec<common::Completed>>> {
        let ids: Vec<String> = items.iter().map(|item| item.lease.id.clone()).collect();
        let tokens: Vec<String> = items.iter().map(|item| item.lease.token.clone()).collect();
        let rows = q(&store.sql.complete_leases_pg)
            .bind(ids)
            .bind(tokens)
            .fetch_all(conn)
            .await
            .map_err(backend)?;
        let completed = rows
            .iter()
            .map(|row| {
                Ok(common::Completed {
                    id: row.try_get(0)?,
                    token: row.try_get(1)?,
                    queue: row.try_get(2)?,
                    batch: row.try_get(3)?,
                    limited: row.try_get(4)?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(backend)?;
        Ok(Some(completed))
    }

    /// Promotes the queue's due delayed jobs, one autocommitted chunk per statement, and reads
    /// the queue's limits in the same round trip.
    async fn promote_due(
        store: &Store,
        conn: &mut Conn,
        queue: &str,
        now: Millis,
    ) -> Result<common::Promotion> {
        loop {
            let row = q(&store.sql.promote)
                .bind(queue.to_owned())
                .bind(now)
                .fetch_one(&mut *conn)
                .await
                .map_err(backend)?;
            let (promoted, promotion) = read_promotion(&row, [0, 1, 2, 3, 4])?;
            if promoted < crate::sql::PROMOTE_CHUNK {
                store.backend.limited.note(queue, promotion.limits);
                return Ok(promotion);
            }
        }
    }

    /// Promotes and claims in one statement (see [`crate::sql::Sql::claim_promoting`]); when it
    /// promoted a full chunk, promotes the rest as [`Self::promote_due`] does.
    async fn claim_promoting(
        store: &Store,
        conn: &mut Conn,
        queue: &str,
        req: &orcs_core::ClaimRequest<'_>,
        want: usize,
        batch: &str,
    ) -> Result<Option<common::PromotingClaim<Self>>> {
        let mut rows = store
            .claim_query(&store.sql.claim_promoting, queue, req, batch, want)
            .fetch_all(&mut *conn)
            .await
            .map_err(backend)?;
        let at = rows
            .iter()
            .position(|row| row.try_get::<Option<String>, _>(0).ok().flatten().is_none())
            .ok_or_else(|| {
                Error::backend_permanent(
                    crate::common::DRIVER,
                    "the promoting claim answered no row with its promotion: a defect of the \
                     driver, please report it with the server's version",
                )
            })?;
        let (promoted, promotion) = read_promotion(&rows.swap_remove(at), PROMOTION_COLUMNS)?;
        if promoted >= crate::sql::PROMOTE_CHUNK {
            // More may be due: the rest are promoted before any claim picks.
            let promotion = Self::promote_due(store, conn, queue, req.now).await?;
            return Ok(Some((None, promotion)));
        }
        store.backend.limited.note(queue, promotion.limits);
        // The statement claimed nothing if it promoted any job or found limits.
        let claimed = (promoted == 0 && promotion.limits.is_none()).then_some(rows);
        Ok(Some((claimed, promotion)))
    }

    /// A queue this store's last promotion found limited claims through the claim function
    /// at once, promotion included: one round trip instead of two.
    async fn claim_known_limited(
        store: &Store,
        conn: &mut Conn,
        queue: &str,
        req: &orcs_core::ClaimRequest<'_>,
        want: usize,
        batch: &str,
    ) -> Result<Option<Claimed<Self>>> {
        let Some(limits) = store.backend.limited.get(queue) else { return Ok(None) };
        PgBackend::call_claim(store, conn, queue, req, want, batch, limits).await
    }

    /// Claims from a queue with limits through the claim function (see `Sql::claim_limited_pg`):
    /// claims of the queue take turns on its advisory lock, and each counts every job the
    /// previous one reserved and every start it logged.
    async fn claim_limited(
        store: &Store,
        conn: &mut Conn,
        queue: &str,
        req: &orcs_core::ClaimRequest<'_>,
        want: usize,
        batch: &str,
        limits: Limits,
    ) -> Result<Claimed<Self>> {
        // Promoted just before: a full chunk due since then waits for the next claim.
        let claimed = Self::call_claim(store, conn, queue, req, want, batch, limits).await?;
        Ok(claimed.unwrap_or_default())
    }
}

impl PgBackend {
    /// Calls the claim function; `None` when it promoted a full chunk instead of claiming.
    #[allow(clippy::too_many_arguments)]
    async fn call_claim(
        store: &Store,
        conn: &mut Conn,
        queue: &str,
        req: &orcs_core::ClaimRequest<'_>,
        want: usize,
        batch: &str,
        limits: Limits,
    ) -> Result<Option<Claimed<Self>>> {
        // A worker lets a slot go when the job's code ends, before its settle is written, and
        // claims again at once: counted as running, its jobs whose settles were on the way cut
        // such claims short (a drain under a limit equal to the worker's slots ran at 0.73 of
        // the unlimited one). The claim leaves them out: by their settles' marks, which it
        // counts without reading a job row, or else by token (reading each job's row cost a
        // limited drain ~12 % against an unlimited one; BENCHMARKS.md, rounds 31 and 32).
        let settling = limits.concurrency.and(req.settling);
        // Each settle once (see `common::settling_tokens`).
        let marks = settling.and_then(|settling| settling.marks(queue)).map(SettlingMarks::sorted);
        let query = match marks {
            Some(marked) => {
                let (seqs, untils): (Vec<i64>, Vec<i64>) = marked.marks.into_iter().unzip();
                store
                    .claim_query(&store.sql.claim_marked_pg, queue, req, batch, want)
                    .bind(marked.writer.to_string())
                    .bind(seqs)
                    .bind(untils)
            }
            None => store
                .claim_query(&store.sql.claim_limited_pg, queue, req, batch, want)
                .bind(settling.map(common::settling_tokens).unwrap_or_default()),
        };
        let rows = query.fetch_all(&mut *conn).await.map_err(backend)?;
        if rows
            .first()
            .is_some_and(|row| row.try_get::<Option<String>, _>(0).ok().flatten().is_none())
        {
            // The function promoted a full chunk and claimed nothing: more may be due.
            return Ok(None);
        }
        // Only a hint for the idle worker's sleep: the limits last read will do.
        let mut reopens = None;
        if let Some(rate) = limits.rate
            && rows.len() < want
        {
            reopens = store.rate_reopens(conn, queue, req.now, rate).await?;
        }
        Ok(Some((rows, reopens)))
    }
}

/// What a promotion answered in `row`, its columns at `at`: the number of jobs promoted, the
/// queue's concurrency, rate limit and rate period, and its next delayed job's due time. Read
/// alike from the promotion statement and from the claim that promotes.
fn read_promotion(row: &PgRow, at: [usize; 5]) -> Result<(u64, common::Promotion)> {
    let [promoted, concurrency, rate, period, next_due] =
        at.map(|i| row.try_get::<Option<i64>, _>(i).map_err(backend));
    let promoted = u64::try_from(promoted?.unwrap_or(0)).unwrap_or(0);
    let limits = Limits::from_columns(concurrency?, rate?, period?);
    Ok((promoted, common::Promotion { limits, next_due: Some(next_due?) }))
}

/// The settings the driver's statements rely on (see [`connect_options`]): set on every
/// connection of its own pool, and for a claim's transaction on a borrowed pool's connection.
const SETTINGS: [(&str, &str); 3] =
    [("enable_bitmapscan", "off"), ("enable_seqscan", "off"), ("jit", "off")];

/// Starts a claim's transaction on a borrowed pool's connection: [`SETTINGS`] for this
/// transaction only.
static BEGIN_CLAIM: LazyLock<String> = LazyLock::new(|| {
    let set: Vec<String> =
        SETTINGS.iter().map(|(name, value)| format!("SET LOCAL {name} = {value}")).collect();
    format!("BEGIN; {}", set.join("; "))
});

/// Creates `schema` if it is missing. Looking first lets a role without the CREATE privilege
/// on the database use a schema made for it (`CREATE SCHEMA IF NOT EXISTS` checks the
/// privilege even when the schema exists).
async fn create_schema(conn: &mut Conn, schema: &str) -> Result<()> {
    let exists: bool = sqlx::query("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema.to_owned())
        .fetch_one(&mut *conn)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(backend)?;
    if exists {
        return Ok(());
    }
    let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    match sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut *conn).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
            Err(Error::backend_permanent(
                crate::common::DRIVER,
                format!(
                    "the schema \"{schema}\" does not exist and this role may not create it \
                     ({}): create it once as an owner (CREATE SCHEMA \"{schema}\" \
                     AUTHORIZATION <the role>), or grant CREATE on the database",
                    db.message()
                ),
            ))
        }
        Err(e) => Err(backend(e)),
    }
}

/// The driver's own connections: `url` with the planner settings its statements rely on.
///
/// A queue table goes from empty to large within seconds, faster than autovacuum refreshes
/// its statistics, and a connection keeps the generic plan it made of a prepared statement
/// (the claim, the completion, the claim functions' statements) until the next ANALYZE. Made
/// while the table was nearly empty, that plan reads the whole table: after a quiet spell, a
/// drain of 20,000 jobs ran at 1,000 jobs/s instead of 30,000 (a sequential scan and a sort
/// per claim). Without sequential and bitmap scans every such statement walks its index and
/// stops after the rows it needs, whatever the statistics say; a statement that has no index
/// to use still scans, costed at 10^10, which made the server compile it with LLVM (`jit`)
/// on every call (45-130 ms for the workers' listing under load): `jit` is off too, as it
/// would never pay for itself on the driver's short statements.
pub(crate) fn connect_options(url: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .map_err(|e| Error::config(URL_SETTING, format!("{ACCEPTED}: {}", redact(&e.to_string()))))?
        .options(SETTINGS)
        .log_slow_statements(log::LevelFilter::Debug, crate::common::SLOW_STATEMENT))
}

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Store {
    pub(crate) async fn connect(config: &DatabaseConfig, shared: Arc<Shared>) -> Result<Self> {
        let options = connect_options(&config.url)?;
        // One plain connection first: when the server is down or refuses the login, the pool
        // would only report that it timed out; this reports why, at once.
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Ok(Ok(probe)) => {
                let _ = probe.close().await;
            }
            Ok(Err(e)) => return Err(backend(e)),
            Err(_) => {
                return Err(Error::backend(
                    crate::common::DRIVER,
                    format!("PostgreSQL did not answer within {} s", CONNECT_TIMEOUT.as_secs()),
                ));
            }
        }
        let pool = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(16)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(backend)?;
        Self::open(pool, config, shared, false).await
    }

    /// On an application's pool, whose connections' settings stay as the application made
    /// them: claims set what they need with `SET LOCAL` in a transaction of their own.
    pub(crate) async fn on_pool(
        pool: PgPool,
        config: &DatabaseConfig,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        Self::open(pool, config, shared, true).await
    }

    /// Sets up (creates the schema if need be, migrates) and opens the store on `pool`.
    async fn open(
        pool: PgPool,
        config: &DatabaseConfig,
        shared: Arc<Shared>,
        borrowed: bool,
    ) -> Result<Self> {
        let sql = Arc::new(Sql::new(
            Dialect::Postgres,
            config.schema.as_deref(),
            &config.jobs_table,
            &config.failed_table,
            &config.counters_table,
        ));
        let mut tx = pool.begin().await.map_err(backend)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if let Some(schema) = &config.schema {
            create_schema(&mut tx, schema).await?;
        }
        Store::migrate(&mut tx, &sql).await?;
        let schema: Option<String> = match &config.schema {
            Some(schema) => Some(schema.clone()),
            None => sqlx::query("SELECT current_schema()")
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(backend)?,
        };
        tx.commit().await.map_err(backend)?;
        // Channels are global to the database, so the name includes the schema.
        let mut channel = format!("orcs:{}.{}", schema.unwrap_or_default(), config.jobs_table);
        while channel.len() > MAX_CHANNEL_LEN {
            channel.pop();
        }
        // The listener's own connection, made like the pool's (a borrowed pool's connections
        // must not be held by a LISTEN for the life of the driver).
        let listen_pool = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        let listener = Arc::new(Mutex::new(None));
        let announcer = Arc::new(Announcer {
            pool: pool.clone(),
            channel: channel.clone(),
            pending: std::sync::Mutex::new((Vec::new(), false)),
        });
        let backend = PgBackend {
            pool,
            channel,
            listen_pool,
            listener,
            borrowed,
            announcer,
            limited: Arc::default(),
            pushes: Arc::default(),
        };
        Ok(Self { sql, shared, backend })
    }

    pub(crate) async fn claim(
        &self,
        req: &orcs_core::ClaimRequest<'_>,
    ) -> Result<orcs_core::Claim> {
        // No transaction: each statement is atomic, the promotion is idempotent and commits
        // before the claim picks, and the drain saves two round trips per claim.
        let mut conn = self.backend.writer().await?;
        // Read once a connection is ours; the wait for the queue's lock inside the claim
        // function is added there (see `Sql::claim_limited_pg`).
        let req = &req.at_step();
        let (claim, unreadable) = if self.backend.borrowed {
            // The setting lasts until this transaction ends, so the application's connection
            // is handed back as it was; BEGIN and SET go in one round trip.
            let mut tx = conn.begin_with(BEGIN_CLAIM.as_str()).await.map_err(backend)?;
            let claimed = self.claim_on(&mut tx, req).await?;
            tx.commit().await.map_err(backend)?;
            claimed
        } else {
            self.claim_on(&mut conn, req).await?
        };
        drop(conn);
        self.fail_unreadable(unreadable, req.now).await?;
        Ok(claim)
    }

    /// A batch of plain completions (the drain's hot path) is one statement; anything else is
    /// one transaction with each item token-checked and its effects stored. Completions of
    /// batch children take a second statement ([`crate::sql::Sql::complete_children_pg`]),
    /// and the last children of a batch (and lost leases, which answer as such) one more
    /// transaction (see `Store::settle_children`).
    pub(crate) async fn settle(&self, batch: &[Settle], now: Millis) -> Result<Vec<Result<()>>> {
        let plain = batch.iter().all(|item| {
            matches!(item.transition, Transition::Complete) && item.effects.enqueue.is_empty()
        });
        if !plain {
            return self.settle_each(batch, now).await;
        }
        // Each step takes what the steps before left: plain completions in one statement, batch
        // children (their tokens marked by the claim) that are not their batch's last in
        // another, and the rest (last children, lost leases, which answer as such) in a
        // transaction that locks their batch rows first.
        let (mut children, plain): (Vec<usize>, Vec<usize>) =
            (0..batch.len()).partition(|&i| batch[i].lease.token.starts_with(CHILD_MARK));
        if !plain.is_empty() {
            let done = self.complete_in_one(&self.sql.complete_many_pg, batch, &plain, now).await?;
            children.extend(plain.into_iter().filter(|&i| !done.contains(&pair(&batch[i].lease))));
        }
        let mut left = Vec::new();
        if !children.is_empty() {
            let done =
                self.complete_in_one(&self.sql.complete_children_pg, batch, &children, now).await?;
            left.extend(children.into_iter().filter(|&i| !done.contains(&pair(&batch[i].lease))));
        }
        let mut results: Vec<Result<()>> = (0..batch.len()).map(|_| Ok(())).collect();
        if !left.is_empty() {
            let items: Vec<Settle> = left.iter().map(|&i| batch[i].clone()).collect();
            for (i, result) in left.into_iter().zip(self.settle_children(&items, now).await?) {
                results[i] = result;
            }
        }
        Ok(results)
    }

    /// One of the completion statements over the leases `ids` and `tokens`, recording the
    /// settle writers' `marks` at `now` (see [`common::marks_of`]).
    fn complete_query(
        &self,
        statement: &Arc<str>,
        ids: Vec<String>,
        tokens: Vec<String>,
        (writer, hi): (Vec<String>, Vec<i64>),
        now: Millis,
    ) -> common::Query<Db> {
        q(statement)
            .bind(ids)
            .bind(tokens)
            .bind(self.backend.channel.clone())
            .bind(writer)
            .bind(hi)
            .bind(now)
    }

    /// Runs one of the completion statements over the leases of `batch` at `indices`; answers
    /// the (id, token) pairs it completed, and wakes this process's waiters if a completed job's
    /// queue has a concurrency limit (the statement notified the other processes).
    async fn complete_in_one(
        &self,
        statement: &Arc<str>,
        batch: &[Settle],
        indices: &[usize],
        now: Millis,
    ) -> Result<HashSet<(String, String)>> {
        let ids: Vec<String> = indices.iter().map(|&i| batch[i].lease.id.clone()).collect();
        let tokens: Vec<String> = indices.iter().map(|&i| batch[i].lease.token.clone()).collect();
        let rows = self
            .complete_query(statement, ids, tokens, common::marks_of(batch), now)
            .fetch_all(&self.backend.pool)
            .await
            .map_err(backend)?;
        if rows.first().is_some_and(|row| row.try_get::<i64, _>(2).is_ok_and(|woke| woke > 0)) {
            self.shared.wake.notify_waiters();
        }
        rows.iter()
            .map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(backend)
    }

    /// One statement for the whole batch: stores the progress of the touches that carry some
    /// and answers the cancel requests among them.
    pub(crate) async fn touch(&self, running: &[Touch], _now: Millis) -> Result<Vec<String>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = running.iter().map(|t| t.lease.id.clone()).collect();
        let tokens: Vec<String> = running.iter().map(|t| t.lease.token.clone()).collect();
        let progress: Vec<Option<String>> = running.iter().map(|t| t.progress.clone()).collect();
        let rows = q(&self.sql.touch_pg)
            .bind(ids)
            .bind(tokens)
            .bind(progress)
            .fetch_all(&self.backend.pool)
            .await
            .map_err(backend)?;
        first_texts(&rows)
    }

    pub(crate) async fn server_time(&self) -> Result<Option<Millis>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {NOW_MS}")))
            .fetch_one(&self.backend.pool)
            .await
            .map_err(backend)?;
        Ok(Some(row.try_get::<i64, _>(0).map_err(backend)?))
    }

    /// Connects the listener held in `guard` if it is not connected; true if it was not.
    async fn listen(&self, guard: &mut Option<PgListener>) -> Result<bool> {
        if guard.is_some() {
            return Ok(false);
        }
        let mut listener =
            PgListener::connect_with(&self.backend.listen_pool).await.map_err(backend)?;
        listener.ignore_pool_close_event(true);
        listener.listen(&self.backend.channel).await.map_err(backend)?;
        *guard = Some(listener);
        Ok(true)
    }

    /// Readies the store for a worker: connects the listener and opens [`WARM_CONNECTIONS`]
    /// pooled connections at once (fewer on a small pool), running a job's path on each (see
    /// [`Store::warm_on`]). Without it the first jobs after a start waited for both: the pool
    /// grew to ten connections in the first 200 ms of a run at 1,000 jobs/s, each parsing its
    /// statements on the jobs' path, and the jobs of the first 500 ms were the whole run's
    /// p99 (BENCHMARKS.md, rounds 22 and 23).
    pub(crate) async fn warm(&self, queues: &[String]) -> Result<()> {
        // Held: a waiter of this process has the listener (connected or connecting), and
        // waiting for it would hold this start up until that wait ends.
        if let Ok(mut guard) = self.backend.listener.try_lock() {
            self.listen(&mut guard).await?;
        }
        let count = WARM_CONNECTIONS
            .min(
                usize::try_from(self.backend.pool.options().get_max_connections() / 2).unwrap_or(1),
            )
            .max(1);
        let mut warming = tokio::task::JoinSet::new();
        for i in 0..count {
            let store = self.clone();
            let queues = queues.to_vec();
            warming.spawn(async move {
                let mut conn = store.backend.writer().await?;
                for _ in 0..WARM_RUNS {
                    store.warm_on(&mut conn, &format!("orcs:warm-up:{i}"), &queues).await?;
                }
                Ok::<_, Error>(())
            });
        }
        while let Some(warmed) = warming.join_next().await {
            warmed.map_err(|e| Error::backend(common::DRIVER, e.to_string()))??;
        }
        Ok(())
    }

    /// Runs on `conn` the statements of a job's path, in a transaction that is rolled back,
    /// so nothing of it is seen or kept: a push to queue `warm` (which no worker claims from),
    /// the claim that takes it, its completion, the look for ready jobs on `queues` an idle
    /// worker makes, and the announcement of a push. PostgreSQL parses a statement on its first
    /// use on a connection and plans it afresh on its first runs, so this is what those first
    /// jobs would otherwise pay.
    async fn warm_on(&self, conn: &mut Conn, warm: &str, queues: &[String]) -> Result<()> {
        use orcs_core::Clock as _;
        let now = orcs_core::SystemClock.now();
        let mut tx = conn.begin().await.map_err(backend)?;
        let job = NewJob::new(orcs_core::new_job_id(), warm, warm, "null", now);
        self.insert_jobs(&mut tx, std::slice::from_ref(&job)).await?;
        let warm_queues = [warm.to_owned()];
        let (claim, _) =
            self.claim_on(&mut tx, &orcs_core::ClaimRequest::new(&warm_queues, 1, now)).await?;
        let (ids, tokens): (Vec<String>, Vec<String>) =
            claim.jobs.iter().map(|job| (job.lease.id.clone(), job.lease.token.clone())).unzip();
        self.complete_query(&self.sql.complete_many_pg, ids, tokens, Default::default(), now)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        if !queues.is_empty() {
            self.any_ready_query(queues, now).fetch_one(&mut *tx).await.map_err(backend)?;
        }
        sqlx::query(NOTIFY_ALONE)
            .bind(self.backend.channel.clone())
            .bind(payloads(&warm_queues))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.rollback().await.map_err(backend)
    }

    pub(crate) async fn wait(
        &self,
        queues: &[String],
        now: Millis,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let notified = self.shared.wake.notified();
        let mut notified = std::pin::pin!(notified);
        // Register before looking, so a dispatch between the look and the wait still wakes us.
        notified.as_mut().enable();
        let mut guard = self.backend.listener.try_lock().ok();
        if let Some(listener) = guard.as_mut() {
            drain(listener);
        }
        if self.any_ready(queues, now).await? {
            return Ok(());
        }
        let mut guard = match guard {
            Some(guard) => guard,
            // Another waiter listens and passes notifications on; take over when it is done.
            None => tokio::select! {
                () = notified.as_mut() => return Ok(()),
                () = tokio::time::sleep_until(deadline) => return Ok(()),
                mut guard = self.backend.listener.lock() => {
                    drain(&mut guard);
                    if self.any_ready(queues, now).await? {
                        return Ok(());
                    }
                    guard
                }
            },
        };
        // Anything dispatched while the listener was connecting was not heard: look again.
        if self.listen(&mut guard).await? && self.any_ready(queues, now).await? {
            return Ok(());
        }
        let listener = guard.as_mut().expect("set above");
        tokio::select! {
            () = notified.as_mut() => Ok(()),
            () = tokio::time::sleep_until(deadline) => Ok(()),
            received = listener.try_recv() => match received {
                Ok(Some(_)) => {
                    self.shared.wake.notify_waiters();
                    Ok(())
                }
                // The connection dropped and was re-established: notifications may have been
                // missed, so let the worker look for itself.
                Ok(None) => Ok(()),
                Err(e) => {
                    *guard = None;
                    Err(backend(e))
                }
            },
        }
    }
}

/// Drops notifications that arrived while nobody was waiting: the check for ready jobs that
/// follows covers them.
fn drain(listener: &mut Option<PgListener>) {
    if let Some(listener) = listener {
        while listener.next_buffered().is_some() {}
    }
}
