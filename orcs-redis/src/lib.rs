#![doc = include_str!("../README.md")]

mod config;
mod conn;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod reply;
mod scripts;
mod wait;
mod workflow;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orcs_core::{
    Admin, BatchInfo, CancelOutcome, Capabilities, Claim, ClaimRequest, Driver, Error, FailedJob,
    FailedQuery, Fire, JobInfo, JobState, Lease, ListRequest, MAX_PAGE, Millis, NewBatch, NewJob,
    Prune, PushOutcome, QueueLimits, QueueStats, RateLimit, Reserved, Result, ScheduleRecord,
    Settle, Throughput, Touch, WorkerInfo, async_trait,
};
use redis::cluster_routing::Slot;
use redis::{FromRedisValue, Value};

pub use crate::config::RedisConfig;
use crate::conn::{Backend, DRIVER, lock};
use crate::keys::{
    COMPAT_LAYOUT, LAYOUT_VERSION, OpsKeys, QueueKeys, decode, decode_unique, history_value,
    registry, version_key,
};
use crate::reply::{count, int, protocol, text};
use crate::scripts::{Context, DELETE_LIMIT, Forget, RECOVER_LIMIT, SettleItem};
use crate::wait::Waiter;
use crate::workflow::Reply;
/// The `redis` crate this driver is built on, for a `redis::Client` of the same version
/// ([`RedisConfig::from_client`]).
pub use redis;

/// Most jobs one push script call stores ([`Capabilities::atomic_push_limit`]): bounds the time
/// one call holds Redis.
const PUSH_CHUNK: usize = 1000;
/// Push script calls in flight at once for a large push.
const PUSH_WINDOW: usize = 4;
/// Most settles of one queue in one script call (bounds the time Redis is blocked).
const SETTLE_CHUNK: usize = 500;
/// How long a process trusts that a queue it added to the registry is still there; after that its
/// next push adds it again (one `SADD` per queue and process every few minutes).
const REGISTRY_REFRESH: Duration = Duration::from_secs(600);
/// How long a forgotten queue's entry is kept while none of its keys exist: well beyond
/// [`REGISTRY_REFRESH`] (and any clock skew between processes), after which no process stores
/// in the queue without adding it to the registry first.
const FORGOTTEN_KEEP_MS: Millis = 3_600_000;
/// Most queues whose keys a driver keeps made ([`RedisDriver::keys`]).
const KEYS_CACHE_LIMIT: usize = 10_000;
/// Most failed-set entries read per call when a prune over every queue picks the oldest.
const PRUNE_PAGE: u64 = 1000;

/// Milliseconds since the epoch by this machine's clock, for the calls that take no `now` (a
/// forgotten queue's time).
fn wall_clock() -> Millis {
    orcs_core::Clock::now(&orcs_core::SystemClock)
}

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
    /// Queues this process added to the registry set, and when (saves a command per push; an
    /// entry older than [`REGISTRY_REFRESH`] is added again, which bounds how long a forgotten
    /// queue must be remembered, see [`RedisDriver::registered_queues`]).
    registered: Mutex<HashMap<String, Instant>>,
    /// The storage layout the prefix is marked with, which decides how records are written:
    /// [`LAYOUT_VERSION`], or [`COMPAT_LAYOUT`] until the prefix is upgraded.
    layout: AtomicU32,
    /// Each queue's keys ([`RedisDriver::keys`]).
    keys: Mutex<HashMap<String, Arc<QueueKeys>>>,
    /// Queues this process saw batch children in (claimed, or asked for by a script): their
    /// settles come with the workflow context at once, instead of after a round trip that asks
    /// for it. Plain queues never enter it, so their settles stay as they were.
    batched: Mutex<HashSet<String>>,
}

impl RedisDriver {
    /// Connects to Redis (or a Redis Cluster), checks that it answers and that the key prefix
    /// holds a storage layout this build knows (a new prefix is marked with the current layout, 3);
    /// on a prefix still marked with layout 2 it writes layout-2 records until
    /// [`RedisDriver::upgrade_layout`].
    ///
    /// The configuration comes from a URL ([`RedisConfig::from_url`]) or from a `redis::Client`
    /// the application already has ([`RedisConfig::from_client`]).
    ///
    /// # Errors
    /// [`Error::Config`] for an unusable configuration; [`Error::Backend`] when Redis does not
    /// answer; [`Error::Version`] when the prefix holds another storage layout.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let commands = Backend::new(&config)?;
        let driver = Self {
            inner: Arc::new(Inner {
                config,
                backend: commands,
                waiters: Mutex::new(Vec::new()),
                registered: Mutex::new(HashMap::new()),
                layout: AtomicU32::new(LAYOUT_VERSION),
                batched: Mutex::new(HashSet::new()),
                keys: Mutex::new(HashMap::new()),
            }),
        };
        let _: String = driver.query(&redis::cmd("PING")).await?;
        let layout = driver.check_version().await?;
        driver.inner.layout.store(layout, Ordering::Relaxed);
        match driver.eviction_policy().await {
            Ok(Some(policy)) if policy != "noeviction" => {
                tracing::warn!(
                    policy = %policy,
                    "Redis's maxmemory-policy is {policy}: when Redis reaches maxmemory it may \
                     evict orcs's keys (job records, queued ids, unique keys), which loses jobs; \
                     set maxmemory-policy noeviction (a full Redis then refuses new jobs with an \
                     error instead)"
                );
            }
            Ok(_) => {}
            // A proxy or a managed service may refuse INFO: the check is advice only.
            Err(e) => tracing::debug!(error = %e, "could not read Redis's maxmemory-policy"),
        }
        Ok(driver)
    }

    /// Redis's `maxmemory-policy`, read from `INFO memory` (which managed services that rename or
    /// refuse `CONFIG` still answer); on a cluster the first policy other than `noeviction` any
    /// node reports. `None` when the server does not say. [`RedisDriver::connect`] logs a
    /// warning for any policy other than `noeviction`: an evicted key is a lost job (or a
    /// broken queue), where `noeviction` makes a full Redis refuse writes with an error.
    ///
    /// # Errors
    /// [`Error::Backend`] when Redis refuses `INFO` or fails.
    pub async fn eviction_policy(&self) -> Result<Option<String>> {
        let info: Value = self.query(redis::cmd("INFO").arg("memory")).await?;
        let mut policies = Vec::new();
        info_texts(&info, &mut |text| policies.extend(maxmemory_policy(text)));
        Ok(policies.iter().find(|p| *p != "noeviction").or(policies.first()).cloned())
    }

    /// The storage layout this driver writes: the one its prefix was marked with when it
    /// connected (3 for a new prefix, 2 for one not upgraded yet).
    pub fn storage_layout(&self) -> u32 {
        self.inner.layout.load(Ordering::Relaxed)
    }

    /// Upgrades the prefix from storage layout 2 to 3 (see "Versions" in the README): marks
    /// `{P}:version` with 3, after which this driver writes keyed jobs' records with their key in
    /// them, and an orcs that knows only layout 2 refuses to connect. Nothing is rewritten: this
    /// build reads every record and key layout 2 wrote. Stop every worker of an older orcs on the
    /// prefix first; other processes of this build keep writing layout-2 records, which are
    /// fine, until they reconnect. Upgrading a prefix already at 3 does nothing.
    ///
    /// # Errors
    /// [`Error::Version`] when the prefix holds a layout other than 2 or 3; [`Error::Backend`]
    /// when Redis fails.
    pub async fn upgrade_layout(&self) -> Result<()> {
        let key = version_key(self.inner.config.prefix());
        let found: String =
            self.invoke(&scripts::upgrade(&key, COMPAT_LAYOUT, LAYOUT_VERSION)).await?;
        if found != LAYOUT_VERSION.to_string() {
            return Err(version_error(&key, &found));
        }
        self.inner.layout.store(LAYOUT_VERSION, Ordering::Relaxed);
        Ok(())
    }

    /// The configuration the driver was made with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// Marks a new prefix with [`LAYOUT_VERSION`], or checks the mark of an existing one;
    /// answers the layout to write.
    async fn check_version(&self) -> Result<u32> {
        let key = version_key(self.inner.config.prefix());
        let set: Option<String> =
            self.query(redis::cmd("SET").arg(&key).arg(LAYOUT_VERSION).arg("NX")).await?;
        if set.is_some() {
            return Ok(LAYOUT_VERSION);
        }
        let found: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
        match found {
            // Deleted between the two commands: nothing to check against.
            None => Ok(LAYOUT_VERSION),
            Some(found) => match found.parse::<u32>() {
                Ok(v) if v == LAYOUT_VERSION || v == COMPAT_LAYOUT => Ok(v),
                _ => Err(version_error(&key, &found)),
            },
        }
    }

    /// The keys of `queue`, made once per process and queue (formatting its nineteen key names
    /// on every call cost a one-job push a seventh of its client time).
    fn keys(&self, queue: &str) -> Arc<QueueKeys> {
        let mut cache = lock(&self.inner.keys);
        if let Some(keys) = cache.get(queue) {
            return Arc::clone(keys);
        }
        // Queue names are few in practice; a process that meets endless new ones starts over.
        if cache.len() >= KEYS_CACHE_LIMIT {
            cache.clear();
        }
        let keys = Arc::new(QueueKeys::new(self.inner.config.prefix(), queue));
        cache.insert(queue.to_owned(), Arc::clone(&keys));
        keys
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.inner.backend.run(async |conn| cmd.query_async(conn).await).await
    }

    async fn invoke<T: FromRedisValue>(&self, call: &redis::ScriptInvocation<'_>) -> Result<T> {
        self.inner.backend.run(async |conn| call.invoke_async(conn).await).await
    }

    /// Adds queues to the registry set once per process (again after [`REGISTRY_REFRESH`]).
    async fn register(&self, queues: &[&str]) -> Result<()> {
        let new: Vec<&str> = {
            let known = lock(&self.inner.registered);
            let mut new: Vec<&str> = queues
                .iter()
                .copied()
                .filter(|q| known.get(*q).is_none_or(|at| at.elapsed() >= REGISTRY_REFRESH))
                .collect();
            new.sort_unstable();
            new.dedup();
            new
        };
        if new.is_empty() {
            return Ok(());
        }
        let at = Instant::now();
        let _: i64 = self
            .query(redis::cmd("SADD").arg(registry(self.inner.config.prefix())).arg(&new))
            .await?;
        lock(&self.inner.registered).extend(new.iter().map(|q| ((*q).to_owned(), at)));
        Ok(())
    }

    /// Adds queues to the registry set whatever this process remembers: a script answered that
    /// it set their `registered` mark, so they are new or were forgotten (by any process) since
    /// this one last added them.
    async fn relist(&self, queues: &[&str]) -> Result<()> {
        if queues.is_empty() {
            return Ok(());
        }
        let at = Instant::now();
        let added: Result<i64> = self
            .query(redis::cmd("SADD").arg(registry(self.inner.config.prefix())).arg(queues))
            .await;
        let mut known = lock(&self.inner.registered);
        match added {
            Ok(_) => {
                known.extend(queues.iter().map(|q| ((*q).to_owned(), at)));
                Ok(())
            }
            Err(e) => {
                // Their mark is set now: this process's next push adds them before its script.
                for queue in queues {
                    known.remove(*queue);
                }
                Err(e)
            }
        }
    }

    /// The registry's queues, and the forgotten queues something was stored in since.
    ///
    /// A push sets no mark a forget could clear (that would cost every push a command), and a
    /// process adds a queue to the registry once per [`REGISTRY_REFRESH`] only; so a process
    /// that listed a queue before another one forgot it stores jobs there without listing it
    /// again. `forget_queue` therefore moves the queue to the forgotten set, and this looks at
    /// each forgotten queue: if any of its keys exist it is listed again (and moves back to the
    /// registry); if none does and it was forgotten more than [`FORGOTTEN_KEEP_MS`] ago, every
    /// process has to add it to the registry before storing there, and its entry goes. One call
    /// when nothing was forgotten; one or two more per forgotten queue.
    async fn registered_queues(&self) -> Result<Vec<String>> {
        let ops = self.ops_keys();
        let registry = registry(self.inner.config.prefix());
        let (mut queues, forgotten): (Vec<String>, Vec<(String, f64)>) =
            self.invoke(&scripts::queues(&registry, &ops.forgotten)).await?;
        let stale_before = wall_clock().saturating_sub(FORGOTTEN_KEEP_MS);
        for (queue, _) in forgotten {
            let keys = self.keys(&queue);
            let found: i64 = self
                .query(
                    redis::cmd("EXISTS")
                        .arg(&keys.jobs)
                        .arg(&keys.stats)
                        .arg(&keys.meta)
                        .arg(&keys.ready)
                        .arg(&keys.delayed)
                        .arg(&keys.failed),
                )
                .await?;
            let call = scripts::revive(&registry, &ops.forgotten, &queue, found > 0, stale_before);
            let _: i64 = self.invoke(&call).await?;
            if found > 0 {
                queues.push(queue);
            }
        }
        queues.sort();
        queues.dedup();
        Ok(queues)
    }

    fn ops_keys(&self) -> OpsKeys {
        OpsKeys::new(self.inner.config.prefix())
    }

    /// True when two queues' keys live in different slots of a cluster (never on one server).
    fn apart(&self, a: &str, b: &str) -> bool {
        self.inner.backend.is_cluster()
            && a != b
            && Slot::for_key(&self.keys(a).ready) != Slot::for_key(&self.keys(b).ready)
    }

    /// The script calls of one push chunk: one call, or one per queue on a cluster (whose
    /// queues live in different slots). Each call comes with its jobs' indices in reply order.
    fn push_calls<'a>(
        &self,
        chunk: &[(usize, &'a NewJob)],
        layout: u32,
    ) -> Vec<(Vec<(usize, &'a NewJob)>, redis::ScriptInvocation<'static>)> {
        let mut by_queue: BTreeMap<&str, Vec<(usize, &'a NewJob)>> = BTreeMap::new();
        for &(index, job) in chunk {
            by_queue.entry(job.queue.as_str()).or_default().push((index, job));
        }
        let groups: Vec<Vec<(usize, &NewJob)>> = by_queue.into_values().collect();
        let calls: Vec<Vec<Vec<(usize, &NewJob)>>> = if self.inner.backend.is_cluster() {
            groups.into_iter().map(|g| vec![g]).collect()
        } else {
            vec![groups]
        };
        calls
            .into_iter()
            .map(|groups| {
                let script_groups: Vec<(Arc<QueueKeys>, Vec<&NewJob>)> = groups
                    .iter()
                    .map(|g| (self.keys(&g[0].1.queue), g.iter().map(|(_, j)| *j).collect()))
                    .collect();
                let order = groups.into_iter().flatten().collect();
                (order, scripts::push(&script_groups, layout))
            })
            .collect()
    }

    /// The call of [`scripts::push_general`] for the jobs of one of [`Self::push_calls`]'s calls
    /// (`order`), grouped by queue as that call grouped them, so its answers come in `order`.
    fn general_push_call(
        &self,
        order: &[(usize, &NewJob)],
        layout: u32,
    ) -> redis::ScriptInvocation<'static> {
        let mut by_queue: BTreeMap<&str, Vec<&NewJob>> = BTreeMap::new();
        for &(_, job) in order {
            by_queue.entry(job.queue.as_str()).or_default().push(job);
        }
        let groups: Vec<(Arc<QueueKeys>, Vec<&NewJob>)> =
            by_queue.into_iter().map(|(queue, jobs)| (self.keys(queue), jobs)).collect();
        scripts::push_general(&groups, layout)
    }

    /// Removes the jobs a failed push stored (their records written for `layout`), as far as
    /// they are untouched; best effort, as the connection may be what failed.
    async fn unstore(&self, stored: &[&NewJob], layout: u32) {
        let mut by_queue: BTreeMap<&str, Vec<&NewJob>> = BTreeMap::new();
        for job in stored {
            by_queue.entry(job.queue.as_str()).or_default().push(job);
        }
        for (queue, jobs) in by_queue {
            let keys = self.keys(queue);
            for chunk in jobs.chunks(PUSH_CHUNK) {
                if let Err(e) = self.invoke::<i64>(&scripts::unstore(&keys, chunk, layout)).await {
                    tracing::warn!(queue, error = %e, jobs = chunk.len(), "could not remove the stored part of a failed push");
                }
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
        // The time read as late as the client can: the script itself is atomic, but the worker
        // read `req.now` before it claimed from the queues before this one.
        let step = req.at_step();
        let call = scripts::claim(queue, &keys, &step, want);
        let default_deadline = scripts::default_deadline(&step);
        // Each call promotes a bounded chunk of due jobs; while more remain due it claims
        // nothing (see the claim script), so this loop ends once every due job was promoted.
        let reply = loop {
            let reply: Vec<Value> = self.invoke(&call).await?;
            if reply.get(1).and_then(int) != Some(1) {
                break reply;
            }
        };
        let mut reply = reply.into_iter();
        if let Some(due) = reply.next().and_then(|v| int(&v)) {
            claim.next_due = Some(claim.next_due.map_or(due, |d: Millis| d.min(due)));
        }
        // Whether the queue has batch children (their leases then name their batch), and a
        // concurrency limit that could bind soon (the next claims send the settling jobs).
        let flags = reply.nth(1).and_then(|v| int(&v)).unwrap_or(0);
        let batched = flags & 1 != 0;
        keys.limited.store(flags & 2 != 0, Ordering::Relaxed);
        let rest: Vec<Value> = reply.collect();
        for job in rest.chunks(6) {
            let [id, blob, attempt, token, deadline, error] = job else {
                return Err(protocol("claim", "a job entry of 6 fields"));
            };
            let id = text(id).ok_or_else(|| protocol("claim", "a job id"))?;
            let token = text(token).ok_or_else(|| protocol("claim", "a token"))?;
            let deadline = match deadline {
                Value::Nil => default_deadline,
                deadline => int(deadline).ok_or_else(|| protocol("claim", "a lease deadline"))?,
            };
            let attempt = int(attempt).and_then(|a| u32::try_from(a).ok()).unwrap_or(u32::MAX);
            let decoded = match blob {
                Value::BulkString(bytes) => decode(bytes),
                _ => Err("unreadable job record: not a string".to_owned()),
            };
            match decoded {
                Ok(stored) => {
                    if stored.batch.is_some() {
                        self.mark_batched(queue);
                    }
                    let batch = stored.batch.as_deref().filter(|_| batched && stored.child);
                    let token = scripts::lease_token(token, stored.unique.as_ref(), batch);
                    let lease = Lease::new(id.clone(), queue, token, deadline);
                    let record = stored.into_record(id, queue, attempt, text(error));
                    claim.jobs.push(Reserved::new(record, lease));
                }
                Err(reason) => unreadable.push((Lease::new(id, queue, token, deadline), reason)),
            }
        }
        Ok(())
    }

    /// Settles items of one queue (at most [`SETTLE_CHUNK`]) in one script call; again for the
    /// items left when a batch child's end asked for queues the call was not given (see
    /// [`workflow`]), with those queues.
    async fn settle_queue(
        &self,
        queue: &str,
        batch: &[Settle],
        members: &[usize],
        now: Millis,
        results: &mut [Option<Result<()>>],
    ) {
        let mut left = members;
        // A queue whose jobs count in batches gets the workflow context (its own group first).
        let mut context: Option<Vec<String>> =
            self.is_batched(queue).then(|| vec![queue.to_owned()]);
        while !left.is_empty() {
            match self.settle_call(queue, batch, left, context.as_deref(), now).await {
                Ok(reply) => {
                    let out = match reply.ints("settle") {
                        Ok(out) if out.len() <= left.len() => out,
                        Ok(out) => {
                            let message =
                                format!("{} results for {} settles", out.len(), left.len());
                            for &i in left {
                                results[i] = Some(Err(protocol("settle", &message)));
                            }
                            return;
                        }
                        Err(e) => {
                            for &i in left {
                                results[i] = Some(Err(e.for_batch_item(DRIVER)));
                            }
                            return;
                        }
                    };
                    let mut fresh: Vec<&str> = reply.fresh.iter().map(String::as_str).collect();
                    for (&i, applied) in left.iter().zip(&out) {
                        if *applied == 2 {
                            fresh.extend(batch[i].effects.enqueue.iter().map(|j| j.queue.as_str()));
                        }
                        results[i] = Some(if *applied >= 1 {
                            Ok(())
                        } else {
                            Err(Error::LeaseLost { id: batch[i].lease.id.clone() })
                        });
                    }
                    fresh.sort_unstable();
                    fresh.dedup();
                    // The settles are done: a registry that cannot be told now learns of the
                    // queues at this process's next push to them.
                    if let Err(e) = self.relist(&fresh).await {
                        tracing::warn!(queues = ?fresh, error = %e, "could not list the queues a settle's effects created again");
                    }
                    left = &left[out.len()..];
                    if reply.need.is_empty() {
                        if !left.is_empty() {
                            for &i in left {
                                results[i] =
                                    Some(Err(protocol("settle", "a result for every item")));
                            }
                        }
                        return;
                    }
                    self.mark_batched(queue);
                    let created = context.is_none();
                    let groups = context.get_or_insert_with(|| vec![queue.to_owned()]);
                    let widened = match self.widen(Some(queue), groups, &reply.need) {
                        Ok(added) if added || created => Ok(()),
                        Ok(_) => Err(workflow::endless("settle")),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = widened {
                        // That item cannot be settled in one step here; nothing of it changed.
                        results[left[0]] = Some(Err(e));
                        left = &left[1..];
                    }
                }
                Err(e) => {
                    for &i in left {
                        results[i] = Some(Err(e.for_batch_item(DRIVER)));
                    }
                    return;
                }
            }
        }
    }

    /// One settle script call for items `members` of `queue`, in workflow context `context`
    /// (queue names, the settled queue's first) if any.
    async fn settle_call(
        &self,
        queue: &str,
        batch: &[Settle],
        members: &[usize],
        context: Option<&[String]>,
        now: Millis,
    ) -> Result<Reply> {
        let mut groups: Vec<String> = Vec::new();
        let mut items = Vec::with_capacity(members.len());
        for &i in members {
            let settle = &batch[i];
            let effects = settle
                .effects
                .enqueue
                .iter()
                .map(|job| {
                    let group = groups.iter().position(|q| *q == job.queue).unwrap_or_else(|| {
                        groups.push(job.queue.clone());
                        groups.len() - 1
                    });
                    (group, job)
                })
                .collect();
            items.push(SettleItem {
                id: &settle.lease.id,
                token: &settle.lease.token,
                transition: &settle.transition,
                effects,
            });
        }
        let group_keys: Vec<Arc<QueueKeys>> = groups.iter().map(|q| self.keys(q)).collect();
        // The workflow keys only for a queue with batch children (a plain settle makes none).
        let home = context.map(|_| self.home(Some(queue)));
        let context_groups: Vec<(String, Arc<QueueKeys>)> =
            context.unwrap_or_default().iter().map(|q| (q.clone(), self.keys(q))).collect();
        let context = home.as_ref().map(|home| Context { home, groups: &context_groups });
        // The members share their writer (see `settle`).
        let marks = members.iter().filter_map(|&i| batch[i].mark.as_ref());
        let mark = marks.max_by_key(|mark| mark.seq).map(|mark| (&*mark.writer, mark.seq));
        let call = scripts::settle(
            &self.keys(queue),
            context.as_ref(),
            &group_keys,
            &items,
            mark,
            now,
            self.storage_layout(),
        );
        Reply::parse("settle", self.invoke::<Value>(&call).await?)
    }

    /// Runs a per-queue failed-set script on every queue until one applies it: a failed job's
    /// queue is not known from its id, and no key may span queues (cluster slots).
    async fn on_failed(
        &self,
        id: &str,
        call: impl Fn(&QueueKeys) -> redis::ScriptInvocation<'static>,
    ) -> Result<()> {
        for queue in self.registered_queues().await? {
            let applied: i64 = self.invoke(&call(&self.keys(&queue))).await?;
            if applied == 1 {
                return Ok(());
            }
        }
        Err(Error::NotFound { id: id.to_owned() })
    }

    /// Failed jobs of one queue, `first..=last` in failure order.
    async fn failed_of(&self, queue: &str, first: u64, last: u64) -> Result<Vec<FailedJob>> {
        let page: Vec<Value> =
            self.invoke(&scripts::failed_page(&self.keys(queue), first, last)).await?;
        let mut out = Vec::with_capacity(page.len() / 5);
        for entry in page.chunks(5) {
            let [id, blob, attempts, error, failed_at] = entry else {
                return Err(protocol("failed page", "an entry of 5 fields"));
            };
            let id = text(id).unwrap_or_default();
            let job = job_of(id, queue, blob);
            out.push(FailedJob::new(
                &job,
                count(attempts),
                text(error).unwrap_or_default(),
                int(failed_at).unwrap_or(0),
            ));
        }
        Ok(out)
    }

    /// Runs a bounded deleting script until it deletes fewer than [`DELETE_LIMIT`].
    async fn drain(&self, call: &redis::ScriptInvocation<'_>) -> Result<u64> {
        let mut total = 0;
        loop {
            let step: u64 = self.invoke(call).await?;
            total += step;
            if step < DELETE_LIMIT as u64 {
                return Ok(total);
            }
        }
    }
}

/// The jobs of a push that its scripts must see, with their indexes; the rest are answered in
/// `outcomes` here: a repeated id is a duplicate of its first occurrence, whatever the queue
/// (the scripts see each id once).
fn fresh_jobs<'a>(
    jobs: &'a [NewJob],
    outcomes: &mut [Option<PushOutcome>],
) -> Vec<(usize, &'a NewJob)> {
    let mut seen = HashSet::new();
    let mut fresh = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        if seen.insert(job.id.as_str()) {
            fresh.push((index, job));
        } else {
            outcomes[index] = Some(PushOutcome::Duplicate { id: job.id.clone() });
        }
    }
    fresh
}

/// [`fresh_jobs`] in waves that run one after another.
///
/// A push of one call is one wave: its script stores the jobs in order, so it finds a unique key
/// taken by an earlier job of the push. The calls of a larger push run concurrently, so there a
/// job whose key (in its queue) an earlier job of the push has waits for the next wave: its
/// script then meets the key as a push of the jobs one by one would, held by that earlier job,
/// by the holder that job met (replaced if debounced), or free if that job took none (its id
/// was in use). A push that repeats one key k times runs in k waves.
fn push_waves<'a>(
    jobs: &'a [NewJob],
    outcomes: &mut [Option<PushOutcome>],
) -> Vec<Vec<(usize, &'a NewJob)>> {
    let fresh = fresh_jobs(jobs, outcomes);
    if fresh.len() <= PUSH_CHUNK {
        return vec![fresh];
    }
    let mut earlier: HashMap<(&str, &str), usize> = HashMap::new();
    let mut waves: Vec<Vec<(usize, &NewJob)>> = vec![Vec::with_capacity(fresh.len())];
    for (index, job) in fresh {
        let wave = job.unique.as_ref().map_or(0, |unique| {
            let count = earlier.entry((job.queue.as_str(), unique.key.as_str())).or_default();
            *count += 1;
            *count - 1
        });
        if wave == waves.len() {
            waves.push(Vec::new());
        }
        waves[wave].push((index, job));
    }
    waves
}

/// Calls `each` with every text in an `INFO` reply: one server's text, or a cluster's reply
/// per node (a map or an array of them).
fn info_texts(info: &Value, each: &mut dyn FnMut(&str)) {
    match info {
        Value::Map(nodes) => nodes.iter().for_each(|(_, node)| info_texts(node, each)),
        Value::Array(nodes) => nodes.iter().for_each(|node| info_texts(node, each)),
        info => {
            if let Some(text) = text(info) {
                each(&text);
            }
        }
    }
}

/// The `maxmemory_policy` line of an `INFO` text.
fn maxmemory_policy(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix("maxmemory_policy:"))
        .map(|policy| policy.trim().to_owned())
}

/// The error for a prefix marked with a storage layout this build does not read.
fn version_error(key: &str, found: &str) -> Error {
    let what = match found.parse::<u32>() {
        Ok(v) if v > LAYOUT_VERSION => "a newer orcs wrote it: upgrade this orcs to that version",
        Ok(_) => "an older orcs wrote it: drain its queues with that version first",
        Err(_) => "it was not written by orcs",
    };
    Error::Version {
        driver: DRIVER,
        message: format!(
            "the key {key} holds storage layout {found:?}, but this build of orcs reads layouts \
             {COMPAT_LAYOUT} and {LAYOUT_VERSION} (and writes layout {LAYOUT_VERSION}); {what}, \
             or give this deployment a prefix of its own (RedisConfig::with_prefix)"
        ),
    }
}

/// The stored job behind a record; a record that does not decode shows as a nameless job whose
/// payload is the raw record, so an operator still sees it.
fn job_of(id: String, queue: &str, blob: &Value) -> NewJob {
    match blob {
        Value::BulkString(bytes) => match decode(bytes) {
            Ok(stored) => stored.into_job(id, queue),
            Err(_) => NewJob::new(id, "", queue, String::from_utf8_lossy(bytes), 0),
        },
        _ => NewJob::new(id, "", queue, "", 0),
    }
}

#[async_trait]
impl Driver for RedisDriver {
    fn name(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.durable = true;
        caps.shared = true;
        caps.cross_queue_atomic = !self.inner.backend.is_cluster();
        caps.atomic_push_limit = Some(PUSH_CHUNK);
        caps.server_clock = true;
        caps
    }

    async fn push(&self, jobs: Vec<NewJob>) -> Result<Vec<PushOutcome>> {
        let mut outcomes: Vec<Option<PushOutcome>> = vec![None; jobs.len()];
        let waves = push_waves(&jobs, &mut outcomes);
        let names: Vec<&str> = waves.iter().flatten().map(|(_, j)| j.queue.as_str()).collect();
        self.register(&names).await?;
        // One layout for the whole push, so a compensation rebuilds the very records stored.
        let layout = self.storage_layout();
        let mut stored: Vec<&NewJob> = Vec::new();
        let mut failure = None;
        // The waves one after another (see push_waves), each cut into calls of PUSH_CHUNK jobs.
        'waves: for wave in &waves {
            let calls: Vec<_> =
                wave.chunks(PUSH_CHUNK).flat_map(|c| self.push_calls(c, layout)).collect();
            // Several calls in flight at once (pipelined over the shared connections); every call
            // of a window is awaited, so a failure leaves no call whose effect is unknown.
            for window in calls.chunks(PUSH_WINDOW) {
                let replies = futures_util::future::join_all(
                    window.iter().map(|(_, call)| self.invoke::<Vec<Value>>(call)),
                )
                .await;
                for ((order, _), reply) in window.iter().zip(replies) {
                    let reply = match reply {
                        // The lean keyed script met a holder only the general one judges, and
                        // stored nothing (see scripts::PUSH_KEYED): the general one stores them.
                        Ok(flags) if flags.is_empty() && !order.is_empty() => {
                            self.invoke::<Vec<Value>>(&self.general_push_call(order, layout)).await
                        }
                        reply => reply,
                    };
                    match reply {
                        Ok(flags) if flags.len() == order.len() => {
                            for (&(index, job), flag) in order.iter().zip(flags) {
                                // 1: stored; 0: its id is in use; {holder}: a debounced job
                                // replaced the waiting holder's data; else the key's holder. (An
                                // id may be digits: only an integer reply is a flag.)
                                outcomes[index] = Some(match flag {
                                    Value::Int(1) => {
                                        stored.push(job);
                                        PushOutcome::Stored
                                    }
                                    Value::Int(_) => PushOutcome::Duplicate { id: job.id.clone() },
                                    Value::Array(holder) => PushOutcome::Replaced {
                                        id: holder
                                            .first()
                                            .and_then(text)
                                            .unwrap_or_else(|| job.id.clone()),
                                    },
                                    holder => PushOutcome::Duplicate {
                                        id: text(&holder).unwrap_or_else(|| job.id.clone()),
                                    },
                                });
                            }
                        }
                        Ok(flags) => {
                            // Which of them were stored is unknown: remove what matches.
                            stored.extend(order.iter().map(|(_, job)| *job));
                            let message =
                                format!("{} outcomes for {} jobs", flags.len(), order.len());
                            failure.get_or_insert(protocol("push", &message));
                        }
                        Err(e) => {
                            failure.get_or_insert(e);
                        }
                    }
                }
                if failure.is_some() {
                    break 'waves;
                }
            }
        }
        if let Some(e) = failure {
            self.unstore(&stored, layout).await;
            return Err(e);
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| protocol("push", "an outcome for every job")))
            .collect()
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
            match self.settle_one(Settle::fail(lease, reason), req.now).await {
                Ok(()) | Err(Error::LeaseLost { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(claim)
    }

    async fn settle(&self, batch: &[Settle], now: Millis) -> Vec<Result<()>> {
        let mut results: Vec<Option<Result<()>>> = batch.iter().map(|_| None).collect();
        // On a cluster a script reaches one slot only: an effect bound for another slot cannot
        // be stored atomically with the settle, so that item is refused and nothing changes.
        for (i, settle) in batch.iter().enumerate() {
            if let Some(job) =
                settle.effects.enqueue.iter().find(|j| self.apart(&j.queue, &settle.lease.queue))
            {
                results[i] = Some(Err(Error::unsupported(
                    DRIVER,
                    format!(
                        "settling a job of queue {:?} with an effect that enqueues on queue {:?} \
                         on a Redis Cluster, where the two queues live in different hash slots: \
                         enqueue effects on the settled job's own queue (or on a queue whose keys \
                         hash to the same slot), or use a standalone Redis for cross-queue effects",
                        settle.lease.queue, job.queue
                    ),
                )));
            }
        }
        let effect_queues: Vec<&str> = batch
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .flat_map(|(s, _)| s.effects.enqueue.iter().map(|j| j.queue.as_str()))
            .collect();
        if let Err(e) = self.register(&effect_queues).await {
            for (settle, result) in batch.iter().zip(results.iter_mut()) {
                if result.is_none() && !settle.effects.enqueue.is_empty() {
                    *result = Some(Err(e.for_batch_item(DRIVER)));
                }
            }
        }
        // One script call per queue (and per chunk): a script may only touch one queue's
        // hash-tagged keys on a cluster, and the calls stay short. And per settle writer: a
        // call records its items' highest settle number in their writer's mark key (a worker's
        // batch has one writer).
        let mut by_queue: BTreeMap<(&str, Option<&str>), Vec<usize>> = BTreeMap::new();
        for (i, settle) in batch.iter().enumerate() {
            if results[i].is_none() {
                let writer = settle.mark.as_ref().map(|mark| &*mark.writer);
                by_queue.entry((settle.lease.queue.as_str(), writer)).or_default().push(i);
            }
        }
        for ((queue, _), members) in by_queue {
            for chunk in members.chunks(SETTLE_CHUNK) {
                self.settle_queue(queue, batch, chunk, now, &mut results).await;
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(protocol("settle", "a result for every item"))))
            .collect()
    }

    async fn touch(&self, running: &[Touch], _now: Millis) -> Result<Vec<String>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_queue: BTreeMap<&str, Vec<&Touch>> = BTreeMap::new();
        for touch in running {
            by_queue.entry(touch.lease.queue.as_str()).or_default().push(touch);
        }
        let groups: Vec<(Arc<QueueKeys>, Vec<&Touch>)> =
            by_queue.into_iter().map(|(queue, touches)| (self.keys(queue), touches)).collect();
        if !self.inner.backend.is_cluster() {
            return self.invoke(&scripts::touch(&groups)).await;
        }
        // On a cluster each queue lives in its own slot: one call per queue, all in flight at
        // once, so the touch still costs one round trip.
        let calls: Vec<_> =
            groups.iter().map(|group| scripts::touch(std::slice::from_ref(group))).collect();
        let replies = futures_util::future::join_all(
            calls.iter().map(|call| self.invoke::<Vec<String>>(call)),
        )
        .await;
        let mut cancelled = Vec::new();
        for reply in replies {
            cancelled.extend(reply?);
        }
        Ok(cancelled)
    }

    async fn extend(&self, lease: &Lease, until: Millis, _now: Millis) -> Result<Lease> {
        let call = scripts::extend(&self.keys(&lease.queue), &lease.id, &lease.token, until);
        let applied: i64 = self.invoke(&call).await?;
        if applied != 1 {
            return Err(Error::LeaseLost { id: lease.id.clone() });
        }
        let mut extended = lease.clone();
        extended.expires_at = until;
        Ok(extended)
    }

    async fn recover(&self, queues: &[String], now: Millis) -> Result<u64> {
        let mut total = 0;
        for queue in queues {
            let keys = self.keys(queue);
            let mut groups = vec![queue.clone()];
            loop {
                let reply = self
                    .in_context(Some(queue), &groups, |context| {
                        scripts::recover(&keys, context, now)
                    })
                    .await?;
                let step = u64::try_from(reply.int("recover")?).unwrap_or(0);
                total += step;
                if !reply.need.is_empty() {
                    self.must_widen(Some(queue), &mut groups, &reply.need, "recover")?;
                } else if step < RECOVER_LIMIT as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    async fn wait(&self, queues: &[String], _now: Millis, timeout: Duration) -> Result<()> {
        self.wait_for_markers(queues, timeout).await
    }

    async fn server_time(&self) -> Result<Option<Millis>> {
        let (secs, micros): (i64, i64) = self.query(&redis::cmd("TIME")).await?;
        Ok(Some(secs.saturating_mul(1000).saturating_add(micros / 1000)))
    }

    async fn push_batch(&self, batch: NewBatch, children: Vec<NewJob>) -> Result<Vec<PushOutcome>> {
        self.push_batch_impl(batch, children).await
    }

    async fn fire_schedule(&self, fire: &Fire, _now: Millis) -> Result<bool> {
        self.fire_schedule_impl(fire).await
    }
}

#[async_trait]
impl Admin for RedisDriver {
    async fn stats(&self, queue: &str, now: Millis) -> Result<QueueStats> {
        let mut reply: Vec<Value> = self.invoke(&scripts::stats(&self.keys(queue), now)).await?;
        // The last entry: the due time of the longest-waiting due job, nil when none is due.
        let oldest_due = reply.pop().as_ref().and_then(int);
        let counts: Vec<i64> = reply.iter().map(|v| int(v).unwrap_or(-1)).collect();
        let [
            ready,
            due,
            delayed,
            reserved,
            failed,
            processed,
            failed_total,
            paused,
            cancelled,
            concurrency,
            rate,
            period,
        ] = counts[..]
        else {
            return Err(protocol("stats", "12 counters and a due time"));
        };
        let [ready, due, delayed, reserved, failed, processed, failed_total, cancelled] =
            [ready, due, delayed, reserved, failed, processed, failed_total, cancelled]
                .map(|n| u64::try_from(n).unwrap_or(0));
        let mut stats = QueueStats::new(queue);
        stats.pending = ready + due;
        stats.delayed = delayed.saturating_sub(due);
        stats.reserved = reserved;
        stats.failed = failed;
        stats.processed = processed;
        stats.failed_total = failed_total;
        stats.paused = paused == 1;
        stats.cancelled = cancelled;
        let mut limits = QueueLimits::none();
        limits.concurrency = u32::try_from(concurrency).ok();
        if let (Ok(limit), Ok(period)) = (u32::try_from(rate), u64::try_from(period)) {
            limits.rate = Some(RateLimit::new(limit, period));
        }
        stats.limits = limits;
        stats.latency_ms =
            oldest_due.map(|due| u64::try_from(now.saturating_sub(due)).unwrap_or(0));
        Ok(stats)
    }

    async fn queues(&self) -> Result<Vec<String>> {
        self.registered_queues().await
    }

    async fn get(&self, id: &str, now: Millis) -> Result<Option<JobInfo>> {
        // The id does not tell the queue: ask each queue (one bounded script call each).
        for queue in self.registered_queues().await? {
            let reply: Value = self.invoke(&scripts::get(&self.keys(&queue), id)).await?;
            let Value::Array(fields) = reply else { continue };
            let [place, blob, score, attempts, error, failed_at, unique, progress, cancel, history] =
                &fields[..]
            else {
                return Err(protocol("get", "10 fields"));
            };
            let score = int(score).unwrap_or(0);
            let mut job = job_of(id.to_owned(), &queue, blob);
            // A job of layout 2 has its key in `unique_of`; one of layout 3 in its record.
            if let Some(spec) = text(unique).and_then(|spec| decode_unique(&spec)) {
                job.unique = Some(spec);
            }
            let (due, errors) = history_of(history);
            let state = match text(place).as_deref() {
                Some("ready") => {
                    // Queued again by a retry, release or recovery: due since then.
                    if let Some(due) = due {
                        job.available_at = due;
                    }
                    JobState::Pending
                }
                Some("delayed") => {
                    job.available_at = score;
                    if score <= now { JobState::Pending } else { JobState::Delayed }
                }
                Some("reserved") => JobState::Reserved,
                Some("failed") => JobState::Failed,
                _ => return Err(protocol("get", "the job's place")),
            };
            let mut info = JobInfo::new(job, state, count(attempts));
            info.last_error = text(error);
            info.progress = text(progress);
            info.cancel_requested = int(cancel) == Some(1);
            info.errors = errors;
            match state {
                JobState::Reserved => info.lease_expires_at = Some(score),
                JobState::Failed => info.failed_at = int(failed_at),
                _ => {}
            }
            return Ok(Some(info));
        }
        Ok(None)
    }

    async fn list(&self, req: &ListRequest, _now: Millis) -> Result<Vec<JobInfo>> {
        let keys = self.keys(&req.queue);
        let set = match req.state {
            JobState::Pending => &keys.ready,
            JobState::Delayed => &keys.delayed,
            JobState::Reserved => &keys.reserved,
            other => {
                return Err(Error::invalid(
                    "job state",
                    format!(
                        "list shows pending, delayed or reserved jobs, not {other}: use `failed` for the failed set"
                    ),
                ));
            }
        };
        let limit = req.limit.min(MAX_PAGE) as u64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let last = req.offset.saturating_add(limit - 1);
        let page: Vec<Value> = self.invoke(&scripts::list(&keys, set, req.offset, last)).await?;
        let mut out = Vec::with_capacity(page.len() / 9);
        for entry in page.chunks(9) {
            let [id, score, blob, attempts, error, unique, progress, cancel, history] = entry
            else {
                return Err(protocol("list", "an entry of 9 fields"));
            };
            let score = int(score).unwrap_or(0);
            let mut job = job_of(text(id).unwrap_or_default(), &req.queue, blob);
            // A job of layout 2 has its key in `unique_of`; one of layout 3 in its record.
            if let Some(spec) = text(unique).and_then(|spec| decode_unique(&spec)) {
                job.unique = Some(spec);
            }
            let (due, errors) = history_of(history);
            match (req.state, due) {
                (JobState::Delayed, _) => job.available_at = score,
                (JobState::Pending, Some(due)) => job.available_at = due,
                _ => {}
            }
            let mut info = JobInfo::new(job, req.state, count(attempts));
            info.last_error = text(error);
            info.progress = text(progress);
            info.cancel_requested = int(cancel) == Some(1);
            info.errors = errors;
            if req.state == JobState::Reserved {
                info.lease_expires_at = Some(score);
            }
            out.push(info);
        }
        Ok(out)
    }

    async fn clear(&self, queue: &str, now: Millis) -> Result<u64> {
        let keys = self.keys(queue);
        let mut groups = vec![queue.to_owned()];
        let mut total = 0;
        loop {
            let reply = self
                .in_context(Some(queue), &groups, |context| scripts::clear(&keys, context, now))
                .await?;
            let step = u64::try_from(reply.int("clear")?).unwrap_or(0);
            total += step;
            if !reply.need.is_empty() {
                self.must_widen(Some(queue), &mut groups, &reply.need, "clear")?;
            } else if step < DELETE_LIMIT as u64 {
                return Ok(total);
            }
        }
    }

    async fn failed(&self, query: &FailedQuery) -> Result<Vec<FailedJob>> {
        let limit = query.limit.min(MAX_PAGE) as u64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let last = query.offset.saturating_add(limit - 1);
        if let Some(queue) = &query.queue {
            return self.failed_of(queue, query.offset, last).await;
        }
        // Across queues: the first offset+limit of each queue hold the page; merge them by
        // failure time (a stable sort keeps each queue's own order for equal times).
        let mut all = Vec::new();
        for queue in self.registered_queues().await? {
            all.extend(self.failed_of(&queue, 0, last).await?);
        }
        all.sort_by_key(|f| f.failed_at);
        Ok(all
            .into_iter()
            .skip(usize::try_from(query.offset).unwrap_or(usize::MAX))
            .take(limit as usize)
            .collect())
    }

    async fn retry_failed(&self, id: &str, now: Millis) -> Result<()> {
        self.on_failed(id, |keys| scripts::retry_failed(keys, id, now)).await
    }

    async fn forget_failed(&self, id: &str) -> Result<()> {
        self.on_failed(id, |keys| scripts::forget_failed(keys, id)).await
    }

    async fn flush_failed(&self) -> Result<u64> {
        let mut total = 0;
        for queue in self.registered_queues().await? {
            total += self.drain(&scripts::flush_failed(&self.keys(&queue))).await?;
        }
        Ok(total)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.register(&[queue]).await?;
        let fresh: i64 = self.invoke(&scripts::set_paused(&self.keys(queue), paused)).await?;
        if fresh == 1 {
            self.relist(&[queue]).await?;
        }
        Ok(())
    }

    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()> {
        self.register(&[queue]).await?;
        let keys = self.keys(queue);
        let fresh: i64 = self.invoke(&scripts::set_limits(&keys, limits)).await?;
        keys.limited.store(limits.concurrency.is_some(), Ordering::Relaxed);
        if fresh == 1 {
            self.relist(&[queue]).await?;
        }
        Ok(())
    }

    async fn forget_queue(&self, queue: &str) -> Result<bool> {
        // Other processes that added the queue to the registry keep remembering it: whichever
        // of them stores a job in it next does not list it again, so the queue goes to the
        // forgotten set, where `registered_queues` finds it once something is stored in it.
        let keys = self.keys(queue);
        let registry = registry(self.inner.config.prefix());
        let ops = self.ops_keys();
        let now = wall_clock();
        // This process adds it to the registry again at its next push.
        lock(&self.inner.registered).remove(queue);
        if !self.inner.backend.is_cluster() {
            let call = scripts::forget_queue(
                &keys,
                queue,
                Forget::Standalone,
                &registry,
                &ops.forgotten,
                now,
            );
            let forgotten: i64 = self.invoke(&call).await?;
            return Ok(forgotten == 1);
        }
        // On a cluster the registry lives in another slot than the queue's keys: the atomic
        // check and delete first (a busy queue answers without touching the registry), then the
        // registry. Whatever is stored in the queue meanwhile finds it in the forgotten set.
        let call =
            scripts::forget_queue(&keys, queue, Forget::Cluster, &registry, &ops.forgotten, now);
        let forgotten: i64 = self.invoke(&call).await?;
        if forgotten == 0 {
            return Ok(false);
        }
        let _: i64 = self.invoke(&scripts::unlist(&registry, &ops.forgotten, queue, now)).await?;
        Ok(true)
    }

    async fn cancel(&self, id: &str, now: Millis) -> Result<CancelOutcome> {
        // The id does not tell the queue: ask each queue, as `get` does.
        'queues: for queue in self.registered_queues().await? {
            let keys = self.keys(&queue);
            let mut groups = vec![queue.clone()];
            loop {
                let reply = self
                    .in_context(Some(&queue), &groups, |context| {
                        scripts::cancel(&keys, context, id, now)
                    })
                    .await?;
                match reply.int("cancel")? {
                    1 => return Ok(CancelOutcome::Removed),
                    2 => return Ok(CancelOutcome::Requested),
                    // In this queue's failed set: nothing left to cancel.
                    -1 => break 'queues,
                    // Its batch needs more queues: again with them.
                    3 => self.must_widen(Some(&queue), &mut groups, &reply.need, "cancel")?,
                    _ => continue 'queues,
                }
            }
        }
        Err(Error::NotFound { id: id.to_owned() })
    }

    async fn batch(&self, id: &str) -> Result<Option<BatchInfo>> {
        self.batch_impl(id).await
    }

    async fn cancel_batch(&self, id: &str, now: Millis) -> Result<BatchInfo> {
        self.cancel_batch_impl(id, now).await
    }

    async fn register_schedule(&self, record: &ScheduleRecord) -> Result<ScheduleRecord> {
        self.register_schedule_impl(record).await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        self.schedules_impl().await
    }

    async fn forget_schedule(&self, name: &str) -> Result<bool> {
        self.forget_schedule_impl(name).await
    }

    async fn heartbeat(
        &self,
        worker: &WorkerInfo,
        ended: &[Throughput],
        ttl_ms: u64,
        now: Millis,
    ) -> Result<()> {
        let mut entry = worker.clone();
        entry.last_heartbeat = now;
        let json = serde_json::to_string(&entry).map_err(|e| {
            Error::invalid("worker", format!("the worker entry does not serialize: {e}"))
        })?;
        let expires = now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        // One bucket write per queue, whatever the caller repeated; empty counts write nothing.
        let mut by_queue: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for t in ended.iter().filter(|t| t.processed > 0 || t.failed > 0) {
            let counts = by_queue.entry(t.queue.as_str()).or_default();
            counts.0 = counts.0.saturating_add(t.processed);
            counts.1 = counts.1.saturating_add(t.failed);
        }
        let ops = self.ops_keys();
        let ended: Vec<(String, u64, u64)> =
            by_queue.into_iter().map(|(q, (p, f))| (ops.throughput_of(q), p, f)).collect();
        let call = scripts::heartbeat(&ops, &entry.id, &json, expires, now, &ended);
        let _: i64 = self.invoke(&call).await?;
        Ok(())
    }

    async fn workers(&self, now: Millis) -> Result<Vec<WorkerInfo>> {
        let entries: Vec<String> = self.invoke(&scripts::workers(&self.ops_keys(), now)).await?;
        let mut workers: Vec<WorkerInfo> = entries
            .iter()
            .filter_map(|json| match serde_json::from_str::<WorkerInfo>(json) {
                Ok(worker) => Some(worker),
                Err(e) => {
                    tracing::warn!(error = %e, entry = %json, "skipping a worker entry that does not parse");
                    None
                }
            })
            .collect();
        workers.sort_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.id.cmp(&b.id)));
        Ok(workers)
    }

    async fn forget_worker(&self, id: &str) -> Result<bool> {
        let removed: i64 = self.invoke(&scripts::forget_worker(&self.ops_keys(), id)).await?;
        Ok(removed == 1)
    }

    async fn throughput(&self, queue: Option<&str>, since: Millis) -> Result<Vec<Throughput>> {
        let ops = self.ops_keys();
        let key = queue.map_or_else(|| ops.throughput.clone(), |q| ops.throughput_of(q));
        let buckets: Vec<(String, String)> = self.query(redis::cmd("HGETALL").arg(&key)).await?;
        let mut history: Vec<Throughput> = buckets
            .iter()
            .filter_map(|(minute, counts)| {
                // Besides the minutes, the hash holds `from` (where its trim starts).
                let minute: Millis = minute.parse().ok()?;
                let (processed, failed) = counts.split_once('|')?;
                let mut bucket = Throughput::new(
                    queue.unwrap_or_default(),
                    processed.parse().ok()?,
                    failed.parse().ok()?,
                );
                bucket.minute = minute;
                (minute >= since).then_some(bucket)
            })
            .collect();
        history.sort_by_key(|t| t.minute);
        Ok(history)
    }

    async fn prune_failed(&self, prune: &Prune) -> Result<u64> {
        if prune.failed_before.is_none() && prune.keep.is_none() {
            return Ok(0);
        }
        let queues = match &prune.queue {
            Some(queue) => vec![queue.clone()],
            None => self.registered_queues().await?,
        };
        // Over every queue, the count rule keeps the newest `keep` of all queues together: the
        // oldest beyond them are picked here, as a cut in each queue's failure order.
        let (keep, cuts) = match (&prune.queue, prune.keep) {
            (None, Some(keep)) => (None, self.oldest_beyond(&queues, keep).await?),
            (_, keep) => (keep, HashMap::new()),
        };
        let mut total = 0;
        for queue in &queues {
            let upto = cuts.get(queue.as_str()).copied();
            if prune.failed_before.is_none() && keep.is_none() && upto.is_none() {
                continue;
            }
            let call = scripts::prune(&self.keys(queue), prune.failed_before, keep, upto);
            loop {
                let step: u64 = self.invoke(&call).await?;
                total += step;
                if step < scripts::PRUNE_LIMIT as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }
}

impl RedisDriver {
    /// For a prune over every queue that keeps the newest `keep` failed jobs: per queue, the
    /// failure sequence number of its newest job among the oldest of all queues beyond `keep`
    /// (a merge of the queues' failed sets by failure time, oldest first). Reads what it picks,
    /// page by page, plus at most one page per queue.
    async fn oldest_beyond<'q>(
        &self,
        queues: &'q [String],
        keep: u64,
    ) -> Result<HashMap<&'q str, i64>> {
        let mut total: u64 = 0;
        for queue in queues {
            let size: u64 = self.query(redis::cmd("ZCARD").arg(&self.keys(queue).failed)).await?;
            total = total.saturating_add(size);
        }
        let mut excess = total.saturating_sub(keep);
        let mut cuts = HashMap::new();
        if excess == 0 {
            return Ok(cuts);
        }
        let page = excess.min(PRUNE_PAGE);
        // Per queue: its next unread offset and the (sequence, time) entries read, in order.
        let mut read: Vec<(u64, std::collections::VecDeque<(i64, Millis)>)> =
            queues.iter().map(|_| (0, std::collections::VecDeque::new())).collect();
        let mut heads = std::collections::BinaryHeap::new();
        for (index, queue) in queues.iter().enumerate() {
            if self.refill(queue, &mut read[index], page).await? {
                let time = read[index].1.front().map_or(0, |e| e.1);
                heads.push(std::cmp::Reverse((time, index)));
            }
        }
        while excess > 0 {
            let Some(std::cmp::Reverse((_, index))) = heads.pop() else { break };
            let Some((seq, _)) = read[index].1.pop_front() else { continue };
            cuts.insert(queues[index].as_str(), seq);
            excess -= 1;
            if read[index].1.is_empty()
                && !self.refill(&queues[index], &mut read[index], page).await?
            {
                continue;
            }
            if let Some(&(_, time)) = read[index].1.front() {
                heads.push(std::cmp::Reverse((time, index)));
            }
        }
        Ok(cuts)
    }

    /// Reads the next `page` entries of `queue`'s failed set into `state` (offset, entries);
    /// answers whether it holds any.
    async fn refill(
        &self,
        queue: &str,
        state: &mut (u64, std::collections::VecDeque<(i64, Millis)>),
        page: u64,
    ) -> Result<bool> {
        if state.1.is_empty() {
            let call = scripts::failed_times(&self.keys(queue), state.0, state.0 + page - 1);
            let entries: Vec<Value> = self.invoke(&call).await?;
            state.0 += (entries.len() / 2) as u64;
            for pair in entries.chunks(2) {
                let [seq, time] = pair else { continue };
                if let Some(seq) = int(seq) {
                    state.1.push_back((seq, int(time).unwrap_or(0)));
                }
            }
        }
        Ok(!state.1.is_empty())
    }
}

/// A job's `history` entry as `get` and `list` read it: the due time it was queued again at, and
/// its attempt errors; nothing for no entry, or one that does not parse.
fn history_of(value: &Value) -> (Option<Millis>, Vec<String>) {
    text(value).and_then(|t| history_value(&t)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use orcs_core::{Admin, ClaimRequest, Clock, Driver, NewJob, QueueLimits, SystemClock};
    use orcs_tests::services::{self, unique_name};

    use super::*;

    #[test]
    fn the_policy_is_read_off_an_info_text() {
        let info = "# Memory\r\nused_memory:1\r\nmaxmemory_policy:allkeys-lru\r\nmem_fragmentation_ratio:1\r\n";
        assert_eq!(maxmemory_policy(info).as_deref(), Some("allkeys-lru"));
        assert_eq!(maxmemory_policy("# Memory\r\nused_memory:1\r\n"), None);
        // A cluster answers per node: a node that may evict is the one named.
        let nodes = Value::Map(vec![
            (
                Value::SimpleString("a".into()),
                Value::BulkString(b"maxmemory_policy:noeviction".to_vec()),
            ),
            (
                Value::SimpleString("b".into()),
                Value::BulkString(b"maxmemory_policy:volatile-lru".to_vec()),
            ),
        ]);
        let mut found = Vec::new();
        info_texts(&nodes, &mut |text| found.extend(maxmemory_policy(text)));
        assert_eq!(found, ["noeviction", "volatile-lru"]);
    }

    /// A claim's reply flags a concurrency limit (and the queue's next claims then send the
    /// worker's settling jobs) only when the limit leaves less room than twice the jobs asked,
    /// so a limit far above what runs costs the claims no arguments. The limit is set by
    /// another process, so only the claims' replies set this driver's flag.
    #[test]
    fn claims_flag_a_limit_only_when_it_could_bind_soon() {
        orcs_tests::run(async {
            let Some(url) = services::redis::redis_url_or_skip() else { return };
            let config =
                RedisConfig::from_url(&url).expect("url").with_prefix(unique_name("orcs-test"));
            let setter = RedisDriver::connect(config.clone()).await.expect("connect");
            let worker = RedisDriver::connect(config).await.expect("connect");
            let queue = "flagged";
            let now = SystemClock.now();
            let jobs = (0..40).map(|i| NewJob::new(format!("j{i}"), "J", queue, "{}", now));
            worker.push(jobs.collect()).await.expect("push");
            let queues = vec![queue.to_owned()];
            let claim = async || {
                let request = ClaimRequest::new(&queues, 10, SystemClock.now());
                let claimed = worker.claim(&request).await.expect("claim").jobs.len();
                (claimed, worker.keys(queue).limited.load(Ordering::Relaxed))
            };
            assert_eq!(claim().await, (10, false), "no limit");
            setter.set_limits(queue, &QueueLimits::none().concurrency(40)).await.expect("limit");
            assert_eq!(claim().await, (10, false), "room for 30 of 40, 10 asked");
            assert_eq!(claim().await, (10, false), "room for 20: not less than twice 10");
            assert_eq!(claim().await, (10, true), "room for 10: the limit could bind");
            setter.set_limits(queue, &QueueLimits::none()).await.expect("no limit");
            assert_eq!(claim().await, (0, false), "every job running, no limit");
        });
    }
}
