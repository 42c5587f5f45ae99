//! Waiting for work: blocking pops on the queues' wake-up markers, over dedicated connections,
//! ended on time by the client itself.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use orcs_core::Result;
use redis::RedisResult;

use crate::RedisDriver;
use crate::conn::{self, BLOCKING_SLACK, Conn, MAX_WAIT, lock};

/// A dedicated connection for blocking waits, with the id of its private wake-up lists.
pub(crate) struct Waiter {
    conn: Conn,
    id: String,
    generation: u64,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").field("id", &self.id).finish_non_exhaustive()
    }
}

impl RedisDriver {
    /// Takes an idle blocking connection or opens a new one.
    async fn take_waiter(&self) -> Result<Waiter> {
        let generation = self.inner.backend.generation();
        while let Some(waiter) = lock(&self.inner.waiters).pop() {
            // One from before a connection broke is likely broken too.
            if waiter.generation == generation {
                return Ok(waiter);
            }
        }
        let conn = self.inner.backend.blocking(self.inner.config.connect_timeout()).await?;
        Ok(Waiter { conn, id: orcs_core::new_job_id().to_ascii_lowercase(), generation })
    }

    fn put_waiter(&self, waiter: Waiter) {
        lock(&self.inner.waiters).push(waiter);
    }

    /// Blocks until a marker of `queues` is pushed or `timeout` passed (see [`orcs_core::Driver::wait`]).
    pub(crate) async fn wait_for_markers(
        &self,
        queues: &[String],
        timeout: Duration,
    ) -> Result<()> {
        if queues.is_empty() || timeout.is_zero() {
            return Ok(());
        }
        let timeout = timeout.min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + timeout;
        // Redis ends a blocking call up to ~100 ms late (its timer runs at `hz`), too late for
        // delayed jobs: the client keeps the deadline and wakes its own BLPOP through a private
        // list. The server-side timeout is only a backstop.
        let server_timeout = (timeout + BLOCKING_SLACK).as_secs_f64();
        // One BLPOP over every queue's marker on a single server; on a cluster the markers live
        // in different slots, so one dedicated connection per queue.
        let groups: Vec<&[String]> =
            if self.inner.backend.is_cluster() { queues.chunks(1).collect() } else { vec![queues] };
        let mut waiters = Vec::with_capacity(groups.len());
        for _ in &groups {
            match self.take_waiter().await {
                Ok(waiter) => waiters.push(waiter),
                Err(e) => {
                    waiters.into_iter().for_each(|w| self.put_waiter(w));
                    return Err(e);
                }
            }
        }
        let mut wakes = Vec::with_capacity(groups.len());
        let mut pending = FuturesUnordered::new();
        for (index, (mut waiter, group)) in waiters.into_iter().zip(&groups).enumerate() {
            let mut keys: Vec<String> = group.iter().map(|q| self.keys(q).marker.clone()).collect();
            let wake = self.keys(&group[0]).wake(&waiter.id);
            keys.push(wake.clone());
            wakes.push(wake);
            pending.push(async move {
                let popped: RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
                    .arg(&keys)
                    .arg(server_timeout)
                    .query_async(&mut waiter.conn)
                    .await;
                (index, waiter, popped)
            });
        }
        let mut done = Vec::with_capacity(groups.len());
        tokio::select! {
            Some(first) = pending.next() => done.push(first),
            () = tokio::time::sleep_until(deadline) => {}
        }
        let mut woken = HashSet::new();
        let mut failure = None;
        if !pending.is_empty() {
            let mut pipe = redis::pipe();
            for (index, wake) in wakes.iter().enumerate() {
                if done.iter().all(|(i, _, _)| *i != index) {
                    woken.insert(index);
                    pipe.rpush(wake, 1).ignore().pexpire(wake, 60_000).ignore();
                }
            }
            let pushed =
                self.inner.backend.run(async |conn| pipe.query_async::<()>(conn).await).await;
            if let Err(e) = pushed {
                // Without the wake-up the blocked calls end only at the server timeout: drop
                // their connections instead (closing them unblocks the server side).
                drop(pending);
                return Err(e);
            }
            let drained = tokio::time::timeout(BLOCKING_SLACK, async {
                while let Some(next) = pending.next().await {
                    done.push(next);
                }
            })
            .await;
            if drained.is_err() {
                failure =
                    Some(conn::backend_transient("a blocking wait did not end after its wake-up"));
            }
        }
        let mut stale = Vec::new();
        for (index, waiter, popped) in done {
            match popped {
                Ok(popped) => {
                    let woke_itself = popped.is_some_and(|(key, _)| key == wakes[index]);
                    if woken.contains(&index) && !woke_itself {
                        // A marker won the race with our wake-up, which is still queued.
                        stale.push(wakes[index].clone());
                    }
                    self.put_waiter(waiter);
                }
                Err(e) => {
                    if conn::broken(&e) {
                        self.inner.backend.reset();
                    }
                    failure = Some(conn::backend(e));
                }
            }
        }
        for key in stale {
            let _: Result<i64> = self.query(redis::cmd("DEL").arg(&key)).await;
        }
        failure.map_or(Ok(()), Err)
    }
}
