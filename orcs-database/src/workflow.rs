//! Batches and schedules (issue #12) over the generic [`Store`]: the batch rules run inside the
//! transaction of each child's end, on the batch's row; a schedule fires by a compare-and-set
//! of its cursor in the transaction that pushes its jobs.
//!
//! Lock order on PostgreSQL: a transaction that ends batch children (or cancels a batch) locks
//! the batch rows first, in id order, then job and key rows; every transaction writes its
//! counter rows last ([`crate::common::Counts`]). Transactions that end only jobs outside
//! batches take no batch row. So no two of them wait for each other in a cycle: the batch rows
//! order the ends of one batch, and nobody holds a counter row while waiting for a job row.

use orcs_core::{
    BatchCallback, BatchInfo, CallbackState, Error, Fire, Millis, NewBatch, NewJob, PushOutcome,
    ScheduleRecord,
};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments, Row};

use crate::common::{Backend, Counts, DbRow, RowOf, Store, Value, backend, q, unreadable};
use crate::sql::{CALLBACK_DISPATCHED, CALLBACK_SKIPPED, CALLBACK_WAITING};

/// Children of one batch that ended in one step, by how they ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ended {
    processed: i64,
    failed: i64,
    cancelled: i64,
}

impl Ended {
    /// One child completed.
    pub(crate) const PROCESSED: Self = Self { processed: 1, failed: 0, cancelled: 0 };
    /// One child failed for good.
    pub(crate) const FAILED: Self = Self { processed: 0, failed: 1, cancelled: 0 };
    /// One child cancelled.
    pub(crate) const CANCELLED: Self = Self { processed: 0, failed: 0, cancelled: 1 };

    /// `n` children cancelled.
    pub(crate) fn cancelled(n: i64) -> Self {
        Self { cancelled: n, ..Self::default() }
    }

    /// `n` children completed.
    pub(crate) fn processed(n: i64) -> Self {
        Self { processed: n, ..Self::default() }
    }
}

/// Adds `queues` to `ready`, each once.
pub(crate) fn merge(ready: &mut Vec<String>, queues: Vec<String>) {
    for queue in queues {
        if !ready.contains(&queue) {
            ready.push(queue);
        }
    }
}

/// What one count of a batch's row answered.
struct Counted {
    pending: i64,
    failed: i64,
    allow_failures: bool,
    /// The callbacks (JSON) the count dispatched.
    callbacks: Vec<String>,
}

/// A callback's job as stored in the batch row: the `NewJob` as orcs-core serializes it.
fn callback_json(job: Option<&NewJob>) -> orcs_core::Result<Option<String>> {
    job.map(serde_json::to_string).transpose().map_err(Error::Serialization)
}

/// The state column of a callback `job` (NULL when the batch has none).
fn callback_state(job: Option<&NewJob>, state: i32) -> Option<i32> {
    job.map(|_| state)
}

/// Reads a callback from its job and state columns.
fn decode_callback<R: DbRow>(row: &R, i: usize) -> Result<Option<BatchCallback>, String> {
    let Some(json) = row.get_opt_text(i)? else {
        return Ok(None);
    };
    let job: NewJob = serde_json::from_str(&json)
        .map_err(|e| format!("a batch callback is not a stored job ({e})"))?;
    let state = match row.get_opt_i32(i + 1)? {
        Some(CALLBACK_WAITING) => CallbackState::Waiting,
        Some(CALLBACK_DISPATCHED) => CallbackState::Dispatched,
        Some(CALLBACK_SKIPPED) => CallbackState::Skipped,
        other => return Err(format!("a batch callback's state is {other:?}, not 0, 1 or 2")),
    };
    Ok(Some(BatchCallback::new(&job, state)))
}

/// Reads a row of [`crate::sql::BATCH_COLUMNS`].
fn decode_batch<R: DbRow>(row: &R) -> Result<BatchInfo, String> {
    let counter = |i: usize, column: &str| -> Result<u64, String> {
        let value = row.get_int(i)?;
        u64::try_from(value).map_err(|_| format!("column {column} holds {value}, out of range"))
    };
    let mut info = BatchInfo::new(row.get_text(0)?);
    info.total = counter(1, "total")?;
    info.pending = counter(2, "pending")?;
    info.processed = counter(3, "processed")?;
    info.failed = counter(4, "failed")?;
    info.cancelled = counter(5, "cancelled")?;
    info.allow_failures = row.get_bool(6)?;
    info.created_at = row.get_int(7)?;
    info.cancelled_at = row.get_opt_int(8)?;
    info.finished_at = row.get_opt_int(9)?;
    info.then = decode_callback(row, 10)?;
    info.catch = decode_callback(row, 12)?;
    info.finally = decode_callback(row, 14)?;
    Ok(info)
}

/// Reads a row of [`crate::sql::SCHEDULE_COLUMNS`].
fn decode_schedule<R: DbRow>(row: &R) -> Result<ScheduleRecord, String> {
    let mut record =
        ScheduleRecord::new(row.get_text(0)?, row.get_text(1)?, row.get_text(2)?, row.get_int(3)?);
    record.last_run = row.get_opt_int(4)?;
    record.next_run = row.get_opt_int(5)?;
    record.updated_at = row.get_int(6)?;
    Ok(record)
}

/// Batches and schedules, for both backends (the bounds are those of the shared operations).
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
    /// Stores `batch` and its `children` on `conn`, inside the caller's transaction: the
    /// batch row first (an id that exists refuses the batch before anything is written), then
    /// the children as a push stores them. A child refused as a duplicate is not counted; a
    /// batch left without children is stored finished, its `then` and `finally` pushed. Returns
    /// the outcomes and the queues that got a job.
    pub(crate) async fn insert_batch(
        &self,
        conn: &mut B::Conn,
        batch: &NewBatch,
        mut children: Vec<NewJob>,
    ) -> orcs_core::Result<(Vec<PushOutcome>, Vec<String>)> {
        for child in &mut children {
            match &child.batch {
                Some(other) if *other != batch.id => {
                    return Err(Error::invalid(
                        "batch child",
                        format!(
                            "job {} names batch {other}, not {}: push a batch's children with \
                             their own batch (or none, and push_batch sets it)",
                            child.id, batch.id
                        ),
                    ));
                }
                _ => child.batch = Some(batch.id.clone()),
            }
        }
        let (then, catch, finally) =
            (batch.then.as_ref(), batch.catch.as_ref(), batch.finally.as_ref());
        let jsons = (callback_json(then)?, callback_json(catch)?, callback_json(finally)?);
        // The row as it is if every child is stored; corrected below otherwise.
        let given = i64::try_from(children.len()).unwrap_or(i64::MAX);
        let states = |empty: bool| {
            let (w, d, s) = (CALLBACK_WAITING, CALLBACK_DISPATCHED, CALLBACK_SKIPPED);
            (
                callback_state(then, if empty { d } else { w }),
                callback_state(catch, if empty { s } else { w }),
                callback_state(finally, if empty { d } else { w }),
            )
        };
        let (then_state, catch_state, finally_state) = states(given == 0);
        let inserted = q(&self.sql.batch_insert)
            .bind(batch.id.clone())
            .bind(given)
            .bind(batch.allow_failures)
            .bind(batch.created_at)
            .bind((given == 0).then_some(batch.created_at))
            .bind(jsons.0)
            .bind(then_state)
            .bind(jsons.1)
            .bind(catch_state)
            .bind(jsons.2)
            .bind(finally_state)
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?;
        if inserted.is_none() {
            return Err(Error::invalid(
                "batch",
                format!("a batch with id {} exists: give a new batch a new id", batch.id),
            ));
        }
        let (outcomes, mut queues) = self.insert_jobs(conn, &children).await?;
        let stored = outcomes.iter().filter(|o| matches!(o, PushOutcome::Stored)).count();
        let stored = i64::try_from(stored).unwrap_or(i64::MAX);
        if stored != given {
            let (then_state, catch_state, finally_state) = states(stored == 0);
            q(&self.sql.batch_fix)
                .bind(batch.id.clone())
                .bind(stored)
                .bind((stored == 0).then_some(batch.created_at))
                .bind(then_state)
                .bind(catch_state)
                .bind(finally_state)
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
        }
        if stored == 0 {
            // Finished in this very step.
            let callbacks: Vec<NewJob> = then.into_iter().chain(finally).cloned().collect();
            let (_, more) = self.insert_jobs(conn, &callbacks).await?;
            merge(&mut queues, more);
        }
        Ok((outcomes, queues))
    }

    /// [`Store::insert_batch`] in a transaction of its own.
    pub(crate) async fn push_batch(
        &self,
        batch: &NewBatch,
        children: Vec<NewJob>,
    ) -> orcs_core::Result<Vec<PushOutcome>> {
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        let (outcomes, queues) = self.insert_batch(&mut tx, batch, children).await?;
        B::notify_in(self, &mut tx, &queues).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        if !queues.is_empty() {
            self.shared.wake.notify_waiters();
        }
        Ok(outcomes)
    }

    /// [`Store::insert_batch`] in the application's open transaction on `conn`, announced with
    /// `NOTIFY` in it (as [`Store::push_in`]).
    pub(crate) async fn push_batch_in(
        &self,
        conn: &mut B::Conn,
        batch: &NewBatch,
        children: Vec<NewJob>,
    ) -> orcs_core::Result<Vec<PushOutcome>> {
        let (outcomes, queues) = self.insert_batch(conn, batch, children).await?;
        B::notify_in(self, conn, &queues).await?;
        Ok(outcomes)
    }

    /// Counts children of `batch` that ended at `now`, on `conn` inside the caller's
    /// transaction, and carries out what follows in it: the first failure dispatches `catch`
    /// and, unless failures are allowed, cancels the batch (its waiting children removed, its
    /// running ones asked to stop); the count that ends the last child finishes the batch and
    /// dispatches `then` and `finally` as the rules say. Each callback is decided once, by the
    /// one update of the batch row that changes its state. Returns the queues that got a
    /// callback job. A batch that is unknown or finished counts nothing.
    pub(crate) async fn count_in_batch(
        &self,
        conn: &mut B::Conn,
        batch: &str,
        ended: Ended,
        now: Millis,
        counts: &mut Counts,
    ) -> orcs_core::Result<Vec<String>> {
        let Some(counted) = self.count_once(conn, batch, ended, now).await? else {
            tracing::warn!(
                batch,
                "a job of a batch that is unknown or finished ended; no batch counter changed"
            );
            return Ok(Vec::new());
        };
        let mut callbacks = counted.callbacks;
        let first_failure = ended.failed > 0 && counted.failed == ended.failed;
        if first_failure && !counted.allow_failures && counted.pending > 0 {
            let removed = self.cancel_children(conn, batch, counts).await?;
            if removed > 0
                && let Some(after) =
                    self.count_once(conn, batch, Ended::cancelled(removed), now).await?
            {
                callbacks.extend(after.callbacks);
            }
        }
        self.dispatch_callbacks(conn, batch, &callbacks).await
    }

    /// One update of the batch row (the statement [`crate::sql::Sql::batch_count`]); `None` if
    /// no unfinished batch has the id.
    async fn count_once(
        &self,
        conn: &mut B::Conn,
        batch: &str,
        ended: Ended,
        now: Millis,
    ) -> orcs_core::Result<Option<Counted>> {
        let Some(row) = q(&self.sql.batch_count)
            .bind(batch.to_owned())
            .bind(ended.processed)
            .bind(ended.failed)
            .bind(ended.cancelled)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let mut callbacks = Vec::new();
        for i in 3..6 {
            if let Some(json) = row.try_get::<Option<String>, _>(i).map_err(backend)? {
                callbacks.push(json);
            }
        }
        Ok(Some(Counted {
            pending: row.try_get(0).map_err(backend)?,
            failed: row.try_get(1).map_err(backend)?,
            allow_failures: row.try_get(2).map_err(backend)?,
            callbacks,
        }))
    }

    /// Cancels `batch`'s unfinished children on `conn`: deletes the waiting ones (counted as
    /// cancelled in their queues' `counts`, their keys freed), then asks every remaining one to
    /// stop.
    /// Flagging after the delete leaves no child out: one a claim took meanwhile is flagged,
    /// and one a retry put back meanwhile is flagged too and stops as soon as it runs (its
    /// cancelled end is counted then). Returns how many were deleted (the caller counts them in
    /// the batch).
    async fn cancel_children(
        &self,
        conn: &mut B::Conn,
        batch: &str,
        counts: &mut Counts,
    ) -> orcs_core::Result<i64> {
        let rows = q(&self.sql.sweep_delete)
            .bind(batch.to_owned())
            .fetch_all(&mut *conn)
            .await
            .map_err(backend)?;
        q(&self.sql.sweep_flag)
            .bind(batch.to_owned())
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        for row in &rows {
            let queue: String = row.try_get(0).map_err(backend)?;
            counts.cancelled(&queue, 1);
        }
        Ok(i64::try_from(rows.len()).unwrap_or(i64::MAX))
    }

    /// Pushes the callbacks a count dispatched (JSON of their jobs) on `conn`, as
    /// `Effects::enqueue` would: a job whose id exists is left as it is. Returns the queues
    /// that got one. A callback that no longer reads as a job is reported and skipped, so that
    /// one damaged row cannot stop every end of the batch's children for good.
    async fn dispatch_callbacks(
        &self,
        conn: &mut B::Conn,
        batch: &str,
        callbacks: &[String],
    ) -> orcs_core::Result<Vec<String>> {
        if callbacks.is_empty() {
            return Ok(Vec::new());
        }
        let mut jobs = Vec::with_capacity(callbacks.len());
        for json in callbacks {
            match serde_json::from_str::<NewJob>(json) {
                Ok(job) => jobs.push(job),
                Err(e) => tracing::error!(
                    batch,
                    error = %e,
                    "a batch callback is not a readable job; it was not dispatched"
                ),
            }
        }
        let (_, queues) = self.insert_jobs(conn, &jobs).await?;
        Ok(queues)
    }

    /// A batch's counters and callbacks.
    pub(crate) async fn batch(&self, id: &str) -> orcs_core::Result<Option<BatchInfo>> {
        let row = q(&self.sql.batch_get)
            .bind(id.to_owned())
            .fetch_optional(self.backend.reader())
            .await
            .map_err(backend)?;
        row.map(|row| decode_batch(&row)).transpose().map_err(unreadable)
    }

    /// Cancels a batch in one transaction that locks its row first: `cancelled_at` set, its
    /// waiting children removed and counted, its running ones asked to stop; the batch
    /// finishes if no child is left. A cancelled or finished batch is answered as it is.
    pub(crate) async fn cancel_batch(&self, id: &str, now: Millis) -> orcs_core::Result<BatchInfo> {
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        let read = |row: Option<RowOf<B>>| match row {
            Some(row) => decode_batch(&row).map_err(unreadable),
            None => Err(Error::NotFound { id: id.to_owned() }),
        };
        let before = read(
            q(&self.sql.batch_get_locked)
                .bind(id.to_owned())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?,
        )?;
        if before.cancelled_at.is_some() || before.finished_at.is_some() {
            tx.rollback().await.map_err(backend)?;
            return Ok(before);
        }
        q(&self.sql.batch_cancel)
            .bind(id.to_owned())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let mut counts = Counts::default();
        let removed = self.cancel_children(&mut tx, id, &mut counts).await?;
        let mut ready = Vec::new();
        if removed > 0 {
            let ended = Ended::cancelled(removed);
            ready = self.count_in_batch(&mut tx, id, ended, now, &mut counts).await?;
        }
        self.write_counts(&mut tx, counts).await?;
        let after = read(
            q(&self.sql.batch_get)
                .bind(id.to_owned())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?,
        )?;
        B::notify_in(self, &mut tx, &ready).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        if !ready.is_empty() {
            self.shared.wake.notify_waiters();
        }
        Ok(after)
    }

    /// Creates a schedule, or replaces an existing one's queue, definition and `updated_at`,
    /// keeping its cursor and runs; one upsert.
    pub(crate) async fn register_schedule(
        &self,
        record: &ScheduleRecord,
    ) -> orcs_core::Result<ScheduleRecord> {
        let row = q(&self.sql.schedule_register)
            .bind(record.name.clone())
            .bind(record.queue.clone())
            .bind(record.definition.clone())
            .bind(record.cursor)
            .bind(record.last_run)
            .bind(record.next_run)
            .bind(record.updated_at)
            .fetch_one(&mut *self.backend.writer().await?)
            .await
            .map_err(backend)?;
        decode_schedule(&row).map_err(unreadable)
    }

    /// Every schedule, by name.
    pub(crate) async fn schedules(&self) -> orcs_core::Result<Vec<ScheduleRecord>> {
        let rows =
            q(&self.sql.schedule_list).fetch_all(self.backend.reader()).await.map_err(backend)?;
        rows.iter().map(|row| decode_schedule(row).map_err(unreadable)).collect()
    }

    /// Deletes a schedule; answers whether it existed.
    pub(crate) async fn forget_schedule(&self, name: &str) -> orcs_core::Result<bool> {
        let done = q(&self.sql.schedule_forget)
            .bind(name.to_owned())
            .execute(&mut *self.backend.writer().await?)
            .await
            .map_err(backend)?;
        Ok(B::rows_affected(&done) > 0)
    }

    /// Fires a schedule in one transaction: moves its cursor if it is still the expected one
    /// (the update's row lock makes concurrent schedulers take turns, and the one that comes
    /// second finds the cursor moved), then pushes the jobs. `false`, with nothing changed,
    /// when another scheduler fired first.
    pub(crate) async fn fire_schedule(&self, fire: &Fire, _now: Millis) -> orcs_core::Result<bool> {
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        let done = q(&self.sql.schedule_fire)
            .bind(fire.name.clone())
            .bind(fire.expected_cursor)
            .bind(fire.cursor)
            .bind(fire.last_run)
            .bind(fire.next_run)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if B::rows_affected(&done) == 0 {
            let exists = q(&self.sql.schedule_exists)
                .bind(fire.name.clone())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?
                .is_some();
            tx.rollback().await.map_err(backend)?;
            return if exists { Ok(false) } else { Err(Error::NotFound { id: fire.name.clone() }) };
        }
        let (_, queues) = self.insert_jobs(&mut tx, &fire.jobs).await?;
        B::notify_in(self, &mut tx, &queues).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        if !queues.is_empty() {
            self.shared.wake.notify_waiters();
        }
        Ok(true)
    }
}
