#![doc = include_str!("../README.md")]

mod config;
mod conn;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod scripts;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use orcs_core::{
    Claim, ClaimRequest, Driver, Error, FailedJob, Lease, Millis, NewJob, QueueStats, Reserved,
    Result, async_trait,
};
use redis::{FromRedisValue, RedisResult, Value};

pub use crate::config::RedisConfig;
use crate::conn::{BLOCKING_SLACK, Backend, Blocking, MAX_WAIT, backend, lock};
use crate::keys::{QueueKeys, decode, encode, registry};
use crate::scripts::SCRIPTS;

/// Due delayed jobs promoted per claim call; the rest follow on the next calls.
const PROMOTE_LIMIT: usize = 1000;
/// Expired leases recovered per script call.
const RECOVER_LIMIT: usize = 500;
/// Most jobs completed by one script call (bounds the time Redis is blocked).
const COMPLETE_MANY_CHUNK: usize = 500;
/// Jobs removed per `clear` or `flush` script call, so no call blocks Redis for long.
const DELETE_LIMIT: usize = 1000;
/// Failed jobs read per page.
const FAILED_PAGE: usize = 500;

/// Queues in Redis, shared by any number of worker processes. Clones share one pool.
#[derive(Debug, Clone)]
pub struct RedisDriver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: RedisConfig,
    backend: Backend,
    /// Idle blocking connections, reused by the next `wait`.
    waiters: Mutex<Vec<Waiter>>,
    /// Queues this process already added to the registry set (saves a command per push).
    registered: Mutex<HashSet<String>>,
}

/// A dedicated connection for blocking waits, with the id of its private wake-up lists.
struct Waiter {
    conn: Blocking,
    id: String,
    generation: u64,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").field("id", &self.id).finish_non_exhaustive()
    }
}

impl RedisDriver {
    /// Connects to Redis (or a Redis Cluster) and checks that it answers.
    ///
    /// # Errors
    /// [`Error::Config`] for an unusable configuration; [`Error::Backend`] when Redis does not
    /// answer.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let commands = Backend::new(&config)?;
        let driver = Self {
            inner: Arc::new(Inner {
                config,
                backend: commands,
                waiters: Mutex::new(Vec::new()),
                registered: Mutex::new(HashSet::new()),
            }),
        };
        let _: String = driver
            .inner
            .backend
            .run(async |conn| redis::cmd("PING").query_async(conn).await)
            .await?;
        Ok(driver)
    }

    /// The configuration the driver was made with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    fn keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(self.inner.config.prefix(), queue)
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.inner.backend.run(async |conn| cmd.query_async(conn).await).await
    }

    async fn invoke<T: FromRedisValue>(&self, call: &redis::ScriptInvocation<'_>) -> Result<T> {
        self.inner.backend.run(async |conn| call.invoke_async(conn).await).await
    }

    /// Adds queues to the registry set once per process.
    async fn register(&self, queues: &[&str]) -> Result<()> {
        let new: Vec<&str> = {
            let known = lock(&self.inner.registered);
            queues.iter().copied().filter(|q| !known.contains(*q)).collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .query(redis::cmd("SADD").arg(registry(self.inner.config.prefix())).arg(&new))
            .await?;
        lock(&self.inner.registered).extend(new.iter().map(|q| (*q).to_owned()));
        Ok(())
    }

    async fn registered_queues(&self) -> Result<Vec<String>> {
        let mut queues: Vec<String> =
            self.query(redis::cmd("SMEMBERS").arg(registry(self.inner.config.prefix()))).await?;
        queues.sort();
        Ok(queues)
    }

    /// Stores the jobs of `groups` (one per queue) in one script call: atomic across queues.
    async fn push_groups(&self, groups: &[(&str, Vec<&NewJob>)]) -> Result<()> {
        let mut call = SCRIPTS.push.prepare_invoke();
        for (index, (queue, jobs)) in groups.iter().enumerate() {
            let keys = self.keys(queue);
            call.key(&keys.ready).key(&keys.delayed).key(&keys.jobs).key(&keys.marker);
            for job in jobs {
                let ready = job.available_at <= job.dispatched_at;
                call.arg(index).arg(&job.id);
                if ready {
                    call.arg("r").arg(-i64::from(job.priority));
                } else {
                    call.arg("d").arg(job.available_at);
                }
                call.arg(encode(job));
            }
        }
        let duplicate: Option<String> = self.invoke(&call).await?;
        match duplicate {
            None => Ok(()),
            Some(id) => {
                Err(Error::invalid("job id", format!("{id} is already in use; let orcs make ids")))
            }
        }
    }

    async fn claim_queue(
        &self,
        queue: &str,
        req: &ClaimRequest<'_>,
        want: usize,
        claim: &mut Claim,
        unreadable: &mut Vec<(Lease, String)>,
    ) -> Result<()> {
        let keys = self.keys(queue);
        let mut call = SCRIPTS.claim.prepare_invoke();
        call.key(&keys.ready)
            .key(&keys.delayed)
            .key(&keys.reserved)
            .key(&keys.jobs)
            .key(&keys.attempts)
            .key(&keys.tokens)
            .key(&keys.errors)
            .key(&keys.stats)
            .key(&keys.marker)
            .key(&keys.failed)
            .key(&keys.failed_at)
            .arg(req.now)
            .arg(want)
            .arg(req.default_timeout_ms.min(1 << 50))
            .arg(req.grace_ms.min(1 << 50))
            .arg(PROMOTE_LIMIT);
        let reply: Vec<Value> = self.invoke(&call).await?;
        let mut reply = reply.into_iter();
        if let Some(due) = reply.next().and_then(|v| int(&v)) {
            claim.next_due = Some(claim.next_due.map_or(due, |d: Millis| d.min(due)));
        }
        let rest: Vec<Value> = reply.collect();
        for job in rest.chunks(6) {
            let [id, blob, attempt, token, deadline, error] = job else {
                return Err(protocol("claim", "a job entry of 6 fields"));
            };
            let id = text(id).ok_or_else(|| protocol("claim", "a job id"))?;
            let lease = Lease {
                id: id.clone(),
                queue: queue.to_owned(),
                token: int(token).ok_or_else(|| protocol("claim", "a token"))?.to_string(),
                expires_at: int(deadline).ok_or_else(|| protocol("claim", "a lease deadline"))?,
            };
            let attempt = int(attempt).and_then(|a| u32::try_from(a).ok()).unwrap_or(u32::MAX);
            let decoded = match blob {
                Value::BulkString(bytes) => decode(bytes),
                _ => Err("unreadable job record: not a string".to_owned()),
            };
            match decoded {
                Ok(stored) => {
                    let record = stored.into_record(id, queue, attempt, text(error));
                    claim.jobs.push(Reserved { record, lease });
                }
                Err(reason) => unreadable.push((lease, reason)),
            }
        }
        Ok(())
    }

    /// Runs a token-checked transition script; 0 means the lease is stale.
    async fn transition(&self, lease: &Lease, call: &redis::ScriptInvocation<'_>) -> Result<()> {
        let applied: i64 = self.invoke(call).await?;
        if applied == 1 { Ok(()) } else { Err(Error::LeaseLost { id: lease.id.clone() }) }
    }

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

    /// Runs `f(queue)` for each queue, each a bounded script call repeated until it returns
    /// fewer than `limit`; returns the sum.
    async fn drain_in_steps(
        &self,
        queue: &str,
        limit: usize,
        script: &redis::Script,
        keys: impl Fn(&QueueKeys) -> Vec<String>,
    ) -> Result<u64> {
        let keys = keys(&self.keys(queue));
        let mut total = 0;
        loop {
            let mut call = script.prepare_invoke();
            for key in &keys {
                call.key(key);
            }
            let step: u64 = self.invoke(call.arg(limit)).await?;
            total += step;
            if step < limit as u64 {
                return Ok(total);
            }
        }
    }

    fn failed_keys(keys: &QueueKeys) -> Vec<String> {
        vec![
            keys.failed.clone(),
            keys.failed_at.clone(),
            keys.jobs.clone(),
            keys.attempts.clone(),
            keys.errors.clone(),
        ]
    }

    async fn failed_of(&self, queue: &str) -> Result<Vec<FailedJob>> {
        let keys = self.keys(queue);
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let mut call = SCRIPTS.failed_page.prepare_invoke();
            for key in Self::failed_keys(&keys) {
                call.key(key);
            }
            let page: Vec<Value> =
                self.invoke(call.arg(start).arg(start + FAILED_PAGE - 1)).await?;
            let count = page.len() / 5;
            for entry in page.chunks(5) {
                let [id, blob, attempts, error, failed_at] = entry else {
                    return Err(protocol("failed", "an entry of 5 fields"));
                };
                let (name, payload) = match blob {
                    Value::BulkString(bytes) => match decode(bytes) {
                        Ok(stored) => (stored.name, stored.payload),
                        Err(_) => (String::new(), String::from_utf8_lossy(bytes).into_owned()),
                    },
                    _ => (String::new(), String::new()),
                };
                out.push(FailedJob {
                    id: text(id).unwrap_or_default(),
                    queue: queue.to_owned(),
                    name,
                    payload,
                    attempts: int(attempts).and_then(|a| u32::try_from(a).ok()).unwrap_or(0),
                    error: text(error).unwrap_or_default(),
                    failed_at: int(failed_at).unwrap_or(0),
                });
            }
            if count < FAILED_PAGE {
                return Ok(out);
            }
            start += FAILED_PAGE;
        }
    }

    /// Runs a per-queue failed-set script on every queue until one applies it: a failed job's
    /// queue is not known from its id, and no key may span queues (cluster slots).
    async fn on_failed(
        &self,
        id: &str,
        script: &redis::Script,
        extra: impl Fn(&QueueKeys) -> Vec<String> + Send + Sync,
    ) -> Result<()> {
        for queue in self.registered_queues().await? {
            let keys = self.keys(&queue);
            let mut call = script.prepare_invoke();
            for key in Self::failed_keys(&keys).into_iter().chain(extra(&keys)) {
                call.key(key);
            }
            let applied: i64 = self.invoke(call.arg(id)).await?;
            if applied == 1 {
                return Ok(());
            }
        }
        Err(Error::NotFound { id: id.to_owned() })
    }
}

#[async_trait]
impl Driver for RedisDriver {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn push(&self, jobs: Vec<NewJob>) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut by_queue: BTreeMap<&str, Vec<&NewJob>> = BTreeMap::new();
        for job in &jobs {
            by_queue.entry(job.queue.as_str()).or_default().push(job);
        }
        let groups: Vec<(&str, Vec<&NewJob>)> = by_queue.into_iter().collect();
        let names: Vec<&str> = groups.iter().map(|(q, _)| *q).collect();
        self.register(&names).await?;
        if self.inner.backend.is_cluster() && groups.len() > 1 {
            // Keys of different queues live in different slots: one script call per queue, so
            // a batch spanning queues is atomic per queue only on a cluster.
            for group in groups {
                self.push_groups(std::slice::from_ref(&group)).await?;
            }
            Ok(())
        } else {
            self.push_groups(&groups).await
        }
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim> {
        let mut claim = Claim::default();
        let mut unreadable = Vec::new();
        for queue in req.queues {
            let want = req.max.saturating_sub(claim.jobs.len());
            if want == 0 {
                break;
            }
            self.claim_queue(queue, req, want, &mut claim, &mut unreadable).await?;
        }
        // A record that does not decode cannot be handed to a worker: it goes to the failed set
        // with the reason, and the jobs behind it flow on.
        for (lease, reason) in unreadable {
            tracing::warn!(id = %lease.id, queue = %lease.queue, %reason, "moving an unreadable job to the failed set");
            match self.fail(&lease, &reason, req.now).await {
                Ok(()) | Err(Error::LeaseLost { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(claim)
    }

    async fn complete(&self, lease: &Lease, _now: Millis) -> Result<()> {
        let keys = self.keys(&lease.queue);
        let mut call = SCRIPTS.complete.prepare_invoke();
        call.key(&keys.reserved)
            .key(&keys.jobs)
            .key(&keys.attempts)
            .key(&keys.tokens)
            .key(&keys.errors)
            .key(&keys.stats)
            .arg(&lease.id)
            .arg(&lease.token);
        self.transition(lease, &call).await
    }

    async fn complete_many(&self, leases: &[Lease], _now: Millis) -> Vec<Result<()>> {
        let mut results: Vec<Option<Result<()>>> = leases.iter().map(|_| None).collect();
        // One script call per queue: a script may only touch one queue's hash-tagged keys.
        let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, lease) in leases.iter().enumerate() {
            by_queue.entry(lease.queue.as_str()).or_default().push(i);
        }
        for (queue, members) in by_queue {
            for chunk in members.chunks(COMPLETE_MANY_CHUNK) {
                let keys = self.keys(queue);
                let mut call = SCRIPTS.complete_many.prepare_invoke();
                call.key(&keys.reserved)
                    .key(&keys.jobs)
                    .key(&keys.attempts)
                    .key(&keys.tokens)
                    .key(&keys.errors)
                    .key(&keys.stats);
                for &i in chunk {
                    call.arg(&leases[i].id).arg(&leases[i].token);
                }
                match self.invoke::<Vec<i64>>(&call).await {
                    Ok(applied) if applied.len() == chunk.len() => {
                        for (&i, applied) in chunk.iter().zip(applied) {
                            results[i] = Some(if applied == 1 {
                                Ok(())
                            } else {
                                Err(Error::LeaseLost { id: leases[i].id.clone() })
                            });
                        }
                    }
                    Ok(applied) => {
                        let message = format!(
                            "the complete script answered {} results for {} jobs",
                            applied.len(),
                            chunk.len()
                        );
                        for &i in chunk {
                            results[i] = Some(Err(backend(message.clone())));
                        }
                    }
                    Err(e) => {
                        for &i in chunk {
                            results[i] = Some(Err(e.for_batch_item(conn::DRIVER)));
                        }
                    }
                }
            }
        }
        results.into_iter().map(|r| r.expect("every lease belongs to one queue")).collect()
    }

    async fn retry(&self, lease: &Lease, run_at: Millis, error: &str, now: Millis) -> Result<()> {
        let keys = self.keys(&lease.queue);
        let mut call = SCRIPTS.retry.prepare_invoke();
        call.key(&keys.reserved)
            .key(&keys.ready)
            .key(&keys.delayed)
            .key(&keys.jobs)
            .key(&keys.tokens)
            .key(&keys.errors)
            .key(&keys.marker)
            .arg(&lease.id)
            .arg(&lease.token)
            .arg(run_at)
            .arg(error)
            .arg(now);
        self.transition(lease, &call).await
    }

    async fn fail(&self, lease: &Lease, error: &str, now: Millis) -> Result<()> {
        let keys = self.keys(&lease.queue);
        let mut call = SCRIPTS.fail.prepare_invoke();
        call.key(&keys.reserved)
            .key(&keys.tokens)
            .key(&keys.errors)
            .key(&keys.stats)
            .key(&keys.failed)
            .key(&keys.failed_at)
            .arg(&lease.id)
            .arg(&lease.token)
            .arg(error)
            .arg(now);
        self.transition(lease, &call).await
    }

    async fn release(&self, lease: &Lease, _now: Millis) -> Result<()> {
        let keys = self.keys(&lease.queue);
        let mut call = SCRIPTS.release.prepare_invoke();
        call.key(&keys.reserved)
            .key(&keys.ready)
            .key(&keys.jobs)
            .key(&keys.attempts)
            .key(&keys.tokens)
            .key(&keys.marker)
            .arg(&lease.id)
            .arg(&lease.token);
        self.transition(lease, &call).await
    }

    async fn extend(&self, lease: &Lease, until: Millis, _now: Millis) -> Result<Lease> {
        let keys = self.keys(&lease.queue);
        let mut call = SCRIPTS.extend.prepare_invoke();
        call.key(&keys.reserved).key(&keys.tokens).arg(&lease.id).arg(&lease.token).arg(until);
        self.transition(lease, &call).await?;
        Ok(Lease { expires_at: until, ..lease.clone() })
    }

    async fn recover(&self, queues: &[String], now: Millis) -> Result<u64> {
        let mut total = 0;
        for queue in queues {
            let keys = self.keys(queue);
            loop {
                let mut call = SCRIPTS.recover.prepare_invoke();
                call.key(&keys.reserved)
                    .key(&keys.ready)
                    .key(&keys.jobs)
                    .key(&keys.attempts)
                    .key(&keys.tokens)
                    .key(&keys.errors)
                    .key(&keys.marker)
                    .arg(now)
                    .arg(RECOVER_LIMIT);
                let step: u64 = self.invoke(&call).await?;
                total += step;
                if step < RECOVER_LIMIT as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
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
            let mut keys: Vec<String> = group.iter().map(|q| self.keys(q).marker).collect();
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
                failure = Some(backend("a blocking wait did not end after its wake-up"));
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
                    failure = Some(backend(e));
                }
            }
        }
        for key in stale {
            let _: Result<i64> = self.query(redis::cmd("DEL").arg(&key)).await;
        }
        failure.map_or(Ok(()), Err)
    }

    async fn stats(&self, queue: &str, now: Millis) -> Result<QueueStats> {
        let keys = self.keys(queue);
        let mut call = SCRIPTS.stats.prepare_invoke();
        call.key(&keys.ready)
            .key(&keys.delayed)
            .key(&keys.reserved)
            .key(&keys.failed)
            .key(&keys.stats)
            .arg(now);
        let counts: Vec<u64> = self.invoke(&call).await?;
        let [ready, due, delayed, reserved, failed, processed, failed_total] = counts[..] else {
            return Err(protocol("stats", "7 counters"));
        };
        Ok(QueueStats {
            queue: queue.to_owned(),
            pending: ready + due,
            delayed: delayed - due,
            reserved,
            failed,
            processed,
            failed_total,
        })
    }

    async fn queues(&self) -> Result<Vec<String>> {
        self.registered_queues().await
    }

    async fn clear(&self, queue: &str, _now: Millis) -> Result<u64> {
        self.drain_in_steps(queue, DELETE_LIMIT, &SCRIPTS.clear, |k| {
            vec![
                k.ready.clone(),
                k.delayed.clone(),
                k.jobs.clone(),
                k.attempts.clone(),
                k.errors.clone(),
            ]
        })
        .await
    }

    async fn failed(&self, queue: Option<&str>) -> Result<Vec<FailedJob>> {
        let queues = match queue {
            Some(queue) => vec![queue.to_owned()],
            None => self.registered_queues().await?,
        };
        let mut all = Vec::new();
        for queue in queues {
            all.extend(self.failed_of(&queue).await?);
        }
        // Each queue's list is in failure order; across queues, order by failure time (a
        // stable sort keeps each queue's own order for equal times).
        all.sort_by_key(|f| f.failed_at);
        Ok(all)
    }

    async fn retry_failed(&self, id: &str, _now: Millis) -> Result<()> {
        self.on_failed(id, &SCRIPTS.retry_failed, |k| vec![k.ready.clone(), k.marker.clone()]).await
    }

    async fn forget_failed(&self, id: &str) -> Result<()> {
        self.on_failed(id, &SCRIPTS.forget_failed, |_| Vec::new()).await
    }

    async fn flush_failed(&self) -> Result<u64> {
        let mut total = 0;
        for queue in self.registered_queues().await? {
            total += self
                .drain_in_steps(&queue, DELETE_LIMIT, &SCRIPTS.flush_failed, Self::failed_keys)
                .await?;
        }
        Ok(total)
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn protocol(script: &str, expected: &str) -> Error {
    backend(format!("unexpected reply from the {script} script: expected {expected}"))
}
