//! What the two backends share: helpers, and the operations whose code is the same for both,
//! written once in [`common_ops!`] and expanded in each backend module against its own sqlx types.

use std::sync::atomic::{AtomicI64, Ordering};

use orcs_core::{Clock, Error, Millis, SystemClock};
use tokio::sync::Notify;

/// The driver name in errors.
pub(crate) const DRIVER: &str = "database";

/// Jobs per `INSERT` statement: 10 parameters each stays far below both backends' limits.
pub(crate) const INSERT_CHUNK: usize = 500;

/// Durations are stored as signed milliseconds; anything longer than a century is a century, so
/// that `now + timeout + grace` can never overflow a 64-bit integer in SQL.
const MAX_DURATION_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Wake-up state shared by the clones of one driver.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Wakes this process's idle workers when a job may have become ready.
    pub(crate) wake: Notify,
    /// The caller's clock minus the system clock at the last claim. `wait` has no `now` argument,
    /// so it checks for ready jobs at the time the workers' clock would show.
    clock_offset: AtomicI64,
}

impl Shared {
    pub(crate) fn observe_now(&self, now: Millis) {
        self.clock_offset.store(now.saturating_sub(SystemClock.now()), Ordering::Relaxed);
    }

    pub(crate) fn estimated_now(&self) -> Millis {
        SystemClock.now().saturating_add(self.clock_offset.load(Ordering::Relaxed))
    }
}

pub(crate) fn backend(error: sqlx::Error) -> Error {
    Error::backend(DRIVER, error)
}

/// Statements slower than this are logged at debug level, not sqlx's default warning: workers
/// contending for one queue wait on each other's locks by design, and a warning per wait (with
/// the whole SQL) is noise on a worker's stderr.
pub(crate) const SLOW_STATEMENT: std::time::Duration = std::time::Duration::from_secs(1);

/// A unique violation on insert means a job id is taken; anything else is a backend failure.
pub(crate) fn insert_error(error: sqlx::Error) -> Error {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::invalid("job id", "an id in the batch is already in use; let orcs make ids")
        }
        _ => backend(error),
    }
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

/// The statements and helpers both backends run the same way. Expanded inside a backend module
/// that defines `Db`, `DbRow`, `begin(conn)`, and a `Store` with `writer()` (the connection
/// writes go through), `reader()` (a pool for reads), `announce()` and `fail_leased()`.
macro_rules! common_ops {
    () => {
        fn q(sql: &::std::sync::Arc<str>) -> sqlx::query::Query<'static, Db, <Db as sqlx::Database>::Arguments> {
            sqlx::query(sqlx::AssertSqlSafe(::std::sync::Arc::clone(sql)))
        }

        fn dynamic(sql: String) -> sqlx::query::Query<'static, Db, <Db as sqlx::Database>::Arguments> {
            sqlx::query(sqlx::AssertSqlSafe(sql))
        }

        /// Reads a claimed row; an error names what is wrong with it.
        fn decode_claimed(row: &DbRow) -> ::std::result::Result<orcs_core::Reserved, String> {
            use sqlx::Row;
            use $crate::common::unsigned;
            let text = |i: usize| -> ::std::result::Result<String, String> {
                row.try_get::<String, _>(i).map_err(|e| e.to_string())
            };
            let int = |i: usize| -> ::std::result::Result<i64, String> {
                row.try_get::<i64, _>(i).map_err(|e| e.to_string())
            };
            let id = text(0)?;
            let queue = text(2)?;
            let timeout_ms = row.try_get::<Option<i64>, _>(8).map_err(|e| e.to_string())?;
            let record = orcs_core::JobRecord {
                id: id.clone(),
                name: text(1)?,
                queue: queue.clone(),
                payload: text(3)?,
                priority: row.try_get::<i32, _>(4).map_err(|e| e.to_string())?,
                attempt: unsigned("attempts", int(5)?)?,
                max_retries: unsigned("max_retries", int(6)?)?,
                retry_delay_ms: unsigned("retry_delay_ms", int(7)?)?,
                timeout_ms: timeout_ms.map(|t| unsigned("timeout_ms", t)).transpose()?,
                dispatched_at: int(9)?,
                last_error: row.try_get::<Option<String>, _>(10).map_err(|e| e.to_string())?,
            };
            let lease = orcs_core::Lease { id, queue, token: text(12)?, expires_at: int(11)? };
            Ok(orcs_core::Reserved { record, lease })
        }

        impl Store {
            pub(crate) async fn push(&self, jobs: Vec<orcs_core::NewJob>) -> orcs_core::Result<()> {
                use sqlx::Row;
                use $crate::common::{backend, duration_ms, insert_error, INSERT_CHUNK};
                if jobs.is_empty() {
                    return Ok(());
                }
                let mut conn = self.writer().await?;
                let mut tx = begin(&mut conn).await?;
                for chunk in jobs.chunks(INSERT_CHUNK) {
                    let mut query = dynamic(self.sql.failed_ids(chunk.len()));
                    for job in chunk {
                        query = query.bind(job.id.clone());
                    }
                    if let Some(row) = query.fetch_optional(&mut *tx).await.map_err(backend)? {
                        let id: String = row.try_get(0).map_err(backend)?;
                        return Err(orcs_core::Error::invalid(
                            "job id",
                            format!("{id} is already in use; let orcs make ids"),
                        ));
                    }
                }
                for chunk in jobs.chunks(INSERT_CHUNK) {
                    let mut query = dynamic(self.sql.insert(chunk.len()));
                    for job in chunk {
                        query = query
                            .bind(job.id.clone())
                            .bind(job.queue.clone())
                            .bind(job.name.clone())
                            .bind(job.payload.clone())
                            .bind(job.priority)
                            .bind(i64::from(job.max_retries))
                            .bind(duration_ms(job.retry_delay_ms))
                            .bind(job.timeout_ms.map(duration_ms))
                            .bind(job.dispatched_at)
                            .bind(job.available_at);
                    }
                    query.execute(&mut *tx).await.map_err(insert_error)?;
                }
                tx.commit().await.map_err(backend)?;
                // Hand the connection back before announcing, which may need one of its own.
                drop(conn);
                let mut queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
                queues.sort_unstable();
                queues.dedup();
                self.announce(&queues).await
            }

            pub(crate) async fn claim(
                &self,
                req: &orcs_core::ClaimRequest<'_>,
            ) -> orcs_core::Result<orcs_core::Claim> {
                use sqlx::Row;
                use $crate::common::{backend, duration_ms};
                self.shared.observe_now(req.now);
                let mut claim = orcs_core::Claim::default();
                // One token prefix per call; each job's token adds its id, so tokens are unique
                // per job and per claim.
                let batch = format!("{}:", orcs_core::new_job_id());
                let mut conn = self.writer().await?;
                let mut unreadable = Vec::new();
                for queue in req.queues {
                    let want = req.max.saturating_sub(claim.jobs.len());
                    if want == 0 {
                        break;
                    }
                    let rows = q(&self.sql.claim)
                        .bind(queue.clone())
                        .bind(req.now)
                        .bind(duration_ms(req.default_timeout_ms))
                        .bind(duration_ms(req.grace_ms))
                        .bind(batch.clone())
                        .bind(i64::try_from(want).unwrap_or(i64::MAX))
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(backend)?;
                    let mut got = Vec::with_capacity(rows.len());
                    for row in &rows {
                        match decode_claimed(row) {
                            Ok(reserved) => got.push(reserved),
                            Err(reason) => unreadable.push((
                                row.try_get::<String, _>(0).ok(),
                                row.try_get::<String, _>(12).ok(),
                                reason,
                            )),
                        }
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
                    let mut query = dynamic(self.sql.next_due(req.queues.len())).bind(req.now);
                    for queue in req.queues {
                        query = query.bind(queue.clone());
                    }
                    let row = query.fetch_one(&mut *conn).await.map_err(backend)?;
                    claim.next_due = row.try_get::<Option<i64>, _>(0).map_err(backend)?;
                }
                drop(conn);
                for (id, token, reason) in unreadable {
                    self.fail_unreadable(id, token, &reason, req.now).await?;
                }
                Ok(claim)
            }

            /// A claimed row that cannot be read goes to the failed set with the reason instead
            /// of stopping the worker or coming back forever.
            async fn fail_unreadable(
                &self,
                id: Option<String>,
                token: Option<String>,
                reason: &str,
                now: orcs_core::Millis,
            ) -> orcs_core::Result<()> {
                let (Some(id), Some(token)) = (id, token) else {
                    tracing::error!(%reason, "a claimed job row is unreadable, even its id");
                    return Ok(());
                };
                tracing::error!(job = %id, %reason, "a claimed job row is unreadable; moving it to the failed set");
                let lease = orcs_core::Lease { id, queue: String::new(), token, expires_at: now };
                let error = format!("unreadable job record: {reason}");
                match self.fail_leased(&lease, &error, now).await {
                    Ok(()) | Err(orcs_core::Error::LeaseLost { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }

            pub(crate) async fn retry(
                &self,
                lease: &orcs_core::Lease,
                run_at: orcs_core::Millis,
                error: &str,
            ) -> orcs_core::Result<()> {
                let done = q(&self.sql.retry)
                    .bind(lease.id.clone())
                    .bind(lease.token.clone())
                    .bind(run_at)
                    .bind(error.to_owned())
                    .execute(&mut *self.writer().await?)
                    .await
                    .map_err($crate::common::backend)?;
                if done.rows_affected() == 0 {
                    return Err(orcs_core::Error::LeaseLost { id: lease.id.clone() });
                }
                self.announce(&[lease.queue.as_str()]).await
            }

            pub(crate) async fn release(
                &self,
                lease: &orcs_core::Lease,
                now: orcs_core::Millis,
            ) -> orcs_core::Result<()> {
                let done = q(&self.sql.release)
                    .bind(lease.id.clone())
                    .bind(lease.token.clone())
                    .bind(now)
                    .execute(&mut *self.writer().await?)
                    .await
                    .map_err($crate::common::backend)?;
                if done.rows_affected() == 0 {
                    return Err(orcs_core::Error::LeaseLost { id: lease.id.clone() });
                }
                self.announce(&[lease.queue.as_str()]).await
            }

            pub(crate) async fn extend(
                &self,
                lease: &orcs_core::Lease,
                until: orcs_core::Millis,
            ) -> orcs_core::Result<orcs_core::Lease> {
                let done = q(&self.sql.extend)
                    .bind(lease.id.clone())
                    .bind(lease.token.clone())
                    .bind(until)
                    .execute(&mut *self.writer().await?)
                    .await
                    .map_err($crate::common::backend)?;
                if done.rows_affected() == 0 {
                    return Err(orcs_core::Error::LeaseLost { id: lease.id.clone() });
                }
                Ok(orcs_core::Lease { expires_at: until, ..lease.clone() })
            }

            pub(crate) async fn recover(
                &self,
                queues: &[String],
                now: orcs_core::Millis,
            ) -> orcs_core::Result<u64> {
                if queues.is_empty() {
                    return Ok(0);
                }
                let mut query = dynamic(self.sql.recover(queues.len())).bind(now);
                for queue in queues {
                    query = query.bind(queue.clone());
                }
                let done =
                    query.execute(&mut *self.writer().await?).await.map_err($crate::common::backend)?;
                let recovered = done.rows_affected();
                if recovered > 0 {
                    let names: Vec<&str> = queues.iter().map(String::as_str).collect();
                    self.announce(&names).await?;
                }
                Ok(recovered)
            }

            /// Whether one of `queues` has a ready job at the workers' estimated time.
            async fn any_ready(&self, queues: &[String]) -> orcs_core::Result<bool> {
                if queues.is_empty() {
                    return Ok(false);
                }
                let mut query =
                    dynamic(self.sql.any_ready(queues.len())).bind(self.shared.estimated_now());
                for queue in queues {
                    query = query.bind(queue.clone());
                }
                let row =
                    query.fetch_optional(self.reader()).await.map_err($crate::common::backend)?;
                Ok(row.is_some())
            }

            pub(crate) async fn stats(
                &self,
                queue: &str,
                now: orcs_core::Millis,
            ) -> orcs_core::Result<orcs_core::QueueStats> {
                use sqlx::Row;
                use $crate::common::{backend, count};
                let row = q(&self.sql.stats)
                    .bind(queue.to_owned())
                    .bind(now)
                    .fetch_one(self.reader())
                    .await
                    .map_err(backend)?;
                let get = |i: usize| row.try_get::<i64, _>(i).map(count).map_err(backend);
                Ok(orcs_core::QueueStats {
                    queue: queue.to_owned(),
                    pending: get(0)?,
                    delayed: get(1)?,
                    reserved: get(2)?,
                    failed: get(3)?,
                    processed: get(4)?,
                    failed_total: get(5)?,
                })
            }

            pub(crate) async fn queues(&self) -> orcs_core::Result<Vec<String>> {
                use sqlx::Row;
                let rows = q(&self.sql.queues)
                    .fetch_all(self.reader())
                    .await
                    .map_err($crate::common::backend)?;
                let mut names = rows
                    .iter()
                    .map(|row| row.try_get::<String, _>(0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err($crate::common::backend)?;
                names.sort_unstable();
                names.dedup();
                Ok(names)
            }

            pub(crate) async fn clear(&self, queue: &str) -> orcs_core::Result<u64> {
                use $crate::common::backend;
                let mut conn = self.writer().await?;
                let mut tx = begin(&mut conn).await?;
                // Remember the queue, so that it is still listed once it is empty.
                q(&self.sql.ensure_counter)
                    .bind(queue.to_owned())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                let done =
                    q(&self.sql.clear).bind(queue.to_owned()).execute(&mut *tx).await.map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                // Hand the connection back before announcing, which may need one of its own.
                drop(conn);
                Ok(done.rows_affected())
            }

            pub(crate) async fn failed(
                &self,
                queue: Option<&str>,
            ) -> orcs_core::Result<Vec<orcs_core::FailedJob>> {
                use sqlx::Row;
                use $crate::common::backend;
                let query = match queue {
                    Some(queue) => q(&self.sql.failed_of_queue).bind(queue.to_owned()),
                    None => q(&self.sql.failed_all),
                };
                let rows = query.fetch_all(self.reader()).await.map_err(backend)?;
                rows.iter()
                    .map(|row| {
                        Ok(orcs_core::FailedJob {
                            id: row.try_get(0)?,
                            queue: row.try_get(1)?,
                            name: row.try_get(2)?,
                            payload: row.try_get(3)?,
                            attempts: u32::try_from(row.try_get::<i64, _>(4)?)
                                .unwrap_or(u32::MAX),
                            error: row.try_get(5)?,
                            failed_at: row.try_get(6)?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(backend)
            }

            pub(crate) async fn retry_failed(
                &self,
                id: &str,
                now: orcs_core::Millis,
            ) -> orcs_core::Result<()> {
                use sqlx::Row;
                use $crate::common::backend;
                let mut conn = self.writer().await?;
                let mut tx = begin(&mut conn).await?;
                let Some(row) = q(&self.sql.unfail)
                    .bind(id.to_owned())
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?
                else {
                    return Err(orcs_core::Error::NotFound { id: id.to_owned() });
                };
                let queue: String = row.try_get(0).map_err(backend)?;
                q(&self.sql.forget).bind(id.to_owned()).execute(&mut *tx).await.map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                // Hand the connection back before announcing, which may need one of its own.
                drop(conn);
                self.announce(&[queue.as_str()]).await
            }

            pub(crate) async fn forget_failed(&self, id: &str) -> orcs_core::Result<()> {
                let done = q(&self.sql.forget)
                    .bind(id.to_owned())
                    .execute(&mut *self.writer().await?)
                    .await
                    .map_err($crate::common::backend)?;
                if done.rows_affected() == 0 {
                    return Err(orcs_core::Error::NotFound { id: id.to_owned() });
                }
                Ok(())
            }

            pub(crate) async fn flush_failed(&self) -> orcs_core::Result<u64> {
                let done = q(&self.sql.flush)
                    .execute(&mut *self.writer().await?)
                    .await
                    .map_err($crate::common::backend)?;
                Ok(done.rows_affected())
            }
        }
    };
}

pub(crate) use common_ops;
