//! Operations (issue #13) over the generic [`Store`]: worker heartbeats (`<jobs>_workers`), the
//! per-minute throughput history (`<jobs>_throughput`) and pruning the failed set. The queue
//! latency and the error history are in the statements of `stats`, `retry` and the move to the
//! failed set (see `sql.rs`).

use std::collections::BTreeMap;

use orcs_core::{Error, Millis, Prune, THROUGHPUT_HORIZON_MS, Throughput, WorkerInfo};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments, Row};

use crate::common::{Backend, RowOf, Store, Value, backend, count, duration_ms, q, unreadable};

/// The length of a throughput bucket.
const MINUTE: Millis = 60_000;

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
    /// One transaction: the worker's entry (upserted, listed until `now + ttl_ms`), the ended
    /// counts added to the bucket of `now`'s minute (one upsert per queue, in queue order, so
    /// that concurrent beats take the bucket rows in one order), and the buckets past the
    /// horizon dropped (an index range, empty but once a minute).
    pub(crate) async fn heartbeat(
        &self,
        worker: &WorkerInfo,
        ended: &[Throughput],
        ttl_ms: u64,
        now: Millis,
    ) -> orcs_core::Result<()> {
        let mut entry = worker.clone();
        entry.last_heartbeat = now;
        let info = serde_json::to_string(&entry).map_err(|e| {
            Error::invalid("worker", format!("the worker entry does not serialize: {e}"))
        })?;
        let mut sums: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for t in ended.iter().filter(|t| t.processed > 0 || t.failed > 0) {
            let sum = sums.entry(t.queue.as_str()).or_default();
            sum.0 = sum.0.saturating_add(i64::try_from(t.processed).unwrap_or(i64::MAX));
            sum.1 = sum.1.saturating_add(i64::try_from(t.failed).unwrap_or(i64::MAX));
        }
        let minute = now - now.rem_euclid(MINUTE);
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        q(&self.sql.worker_beat)
            .bind(entry.id.clone())
            .bind(entry.started_at)
            .bind(now.saturating_add(duration_ms(ttl_ms)))
            .bind(info)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        for (queue, (processed, failed)) in sums {
            q(&self.sql.throughput_add)
                .bind(queue.to_owned())
                .bind(minute)
                .bind(processed)
                .bind(failed)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        q(&self.sql.throughput_prune)
            .bind(now.saturating_sub(THROUGHPUT_HORIZON_MS))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    /// Deletes the expired entries, then lists the live ones by start time.
    pub(crate) async fn workers(&self, now: Millis) -> orcs_core::Result<Vec<WorkerInfo>> {
        q(&self.sql.workers_expire)
            .bind(now)
            .execute(&mut *self.backend.writer().await?)
            .await
            .map_err(backend)?;
        let rows = q(&self.sql.workers_list)
            .bind(now)
            .fetch_all(self.backend.reader())
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let json: String = row.try_get(0).map_err(backend)?;
                serde_json::from_str::<WorkerInfo>(&json).map_err(|e| {
                    unreadable(format!("a worker entry is not a WorkerInfo JSON ({e}): {json}"))
                })
            })
            .collect()
    }

    pub(crate) async fn forget_worker(&self, id: &str) -> orcs_core::Result<bool> {
        let done = q(&self.sql.worker_forget)
            .bind(id.to_owned())
            .execute(&mut *self.backend.writer().await?)
            .await
            .map_err(backend)?;
        Ok(B::rows_affected(&done) > 0)
    }

    /// The buckets since `since` of `queue`, or summed per minute over every queue.
    pub(crate) async fn throughput(
        &self,
        queue: Option<&str>,
        since: Millis,
    ) -> orcs_core::Result<Vec<Throughput>> {
        let query = match queue {
            Some(queue) => q(&self.sql.throughput_of_queue).bind(queue.to_owned()).bind(since),
            None => q(&self.sql.throughput_all).bind(since),
        };
        let rows = query.fetch_all(self.backend.reader()).await.map_err(backend)?;
        rows.iter()
            .map(|row| {
                let get = |i: usize| row.try_get::<i64, _>(i).map_err(backend);
                let mut bucket =
                    Throughput::new(queue.unwrap_or_default(), count(get(1)?), count(get(2)?));
                bucket.minute = get(0)?;
                Ok(bucket)
            })
            .collect()
    }

    /// The age rule, then the count rule, in one transaction; a job either names goes. Each
    /// delete walks an index from where its rule starts, so the cost is what it deletes (and
    /// `keep` index entries for the count rule).
    pub(crate) async fn prune_failed(&self, prune: &Prune) -> orcs_core::Result<u64> {
        if prune.failed_before.is_none() && prune.keep.is_none() {
            return Ok(0);
        }
        let of_queue = usize::from(prune.queue.is_some());
        let mut conn = self.backend.writer().await?;
        let mut tx = B::begin(&mut conn).await?;
        let mut pruned = 0;
        if let Some(before) = prune.failed_before {
            let mut query = q(&self.sql.prune_before[of_queue]).bind(before);
            if let Some(queue) = &prune.queue {
                query = query.bind(queue.clone());
            }
            pruned += B::rows_affected(&query.execute(&mut *tx).await.map_err(backend)?);
        }
        if let Some(keep) = prune.keep {
            let mut query =
                q(&self.sql.prune_keep[of_queue]).bind(i64::try_from(keep).unwrap_or(i64::MAX));
            if let Some(queue) = &prune.queue {
                query = query.bind(queue.clone());
            }
            pruned += B::rows_affected(&query.execute(&mut *tx).await.map_err(backend)?);
        }
        tx.commit().await.map_err(backend)?;
        Ok(pruned)
    }
}
