//! Batches and schedules: where their state lives, the scripts' workflow context, and the
//! driver's batch and schedule calls (see "Batches and schedules" in the README).
//!
//! A batch child's end is counted in the script that ends the job, so that script must name the
//! batch's keys and, when the end finishes the batch or is its first failure, the keys of the
//! queues its callbacks go to and its other children wait in. The client knows neither which
//! jobs are batch children nor what their batches hold before the script reads them, so a
//! script that meets a child whose end needs queues it was not given changes nothing of that
//! job and answers which (`NEED`); the client calls again with them ([`RedisDriver::widen`]).
//! Every key stays in `KEYS`, and a batch's callbacks cost that extra round trip once, at its
//! end, only when they go to another queue than its children's.

use std::collections::BTreeMap;

use orcs_core::{
    BatchCallback, BatchInfo, CallbackState, Error, Fire, Millis, NewBatch, NewJob, PushOutcome,
    Result, ScheduleRecord,
};
use redis::Value;

use crate::conn::{DRIVER, lock};
use crate::keys::{
    HomeKeys, QueueKeys, decode, decode_schedule, encode_schedule, pack, prefix_tag, queue_tag,
    schedule_index, unpack,
};
use crate::reply::{int, protocol, text};
use crate::scripts::{self, Context};
use crate::{PUSH_CHUNK, RedisDriver};

/// How many times one call widens its context before giving up (each widening adds at least one
/// queue, and a batch's end touches its callbacks' and children's queues only).
pub(crate) const MAX_WIDENINGS: usize = 8;

/// The error for a script that keeps asking for queues it was given.
pub(crate) fn endless(script: &str) -> Error {
    protocol(script, "an answer once it was given the queues it asked for")
}

/// The answer of a script run in a workflow context: its own result, the queues it needs
/// (see [`RedisDriver::widen`]), and the queues a dispatched callback created (to list again).
pub(crate) struct Reply {
    main: Value,
    pub(crate) need: Vec<String>,
    pub(crate) fresh: Vec<String>,
}

impl Reply {
    pub(crate) fn parse(script: &str, value: Value) -> Result<Self> {
        let Value::Array(parts) = value else {
            return Err(protocol(script, "an array of 3 parts"));
        };
        let [main, need, fresh]: [Value; 3] =
            parts.try_into().map_err(|_| protocol(script, "an array of 3 parts"))?;
        let names = |v: Value| -> Result<Vec<String>> {
            match v {
                Value::Array(items) => Ok(items.iter().filter_map(text).collect()),
                Value::Nil => Ok(Vec::new()),
                _ => Err(protocol(script, "a list of queue names")),
            }
        };
        Ok(Self { main, need: names(need)?, fresh: names(fresh)? })
    }

    pub(crate) fn int(&self, script: &str) -> Result<i64> {
        int(&self.main).ok_or_else(|| protocol(script, "a number"))
    }

    pub(crate) fn ints(&self, script: &str) -> Result<Vec<i64>> {
        match &self.main {
            Value::Array(items) => items
                .iter()
                .map(|v| int(v).ok_or_else(|| protocol(script, "a list of numbers")))
                .collect(),
            Value::Nil => Ok(Vec::new()),
            _ => Err(protocol(script, "a list of numbers")),
        }
    }
}

fn unsupported_span(what: &str, a: &str, b: &str) -> Error {
    Error::unsupported(
        DRIVER,
        format!(
            "{what} spans queues {a:?} and {b:?}, which live in different hash slots of the Redis \
             Cluster, and one atomic step cannot span slots: keep the batch's children and \
             callbacks (or the schedule's jobs) on one queue, or use a standalone Redis"
        ),
    )
}

impl RedisDriver {
    /// The workflow keys of a batch or schedule whose jobs are on `queue`: the prefix's own on a
    /// single server (any queue), the queue's on a cluster (its slot); the prefix's own for a
    /// cluster batch without any job.
    pub(crate) fn home(&self, queue: Option<&str>) -> HomeKeys {
        let prefix = self.inner.config.prefix();
        match queue {
            Some(queue) if self.inner.backend.is_cluster() => {
                HomeKeys::new(&queue_tag(prefix, queue))
            }
            _ => HomeKeys::new(&prefix_tag(prefix)),
        }
    }

    pub(crate) fn is_batched(&self, queue: &str) -> bool {
        lock(&self.inner.batched).contains(queue)
    }

    pub(crate) fn mark_batched(&self, queue: &str) {
        let mut batched = lock(&self.inner.batched);
        if !batched.contains(queue) {
            batched.insert(queue.to_owned());
        }
    }

    /// Adds the queues a script asked for to `groups` (`''` stands for `anchor`, the queue the
    /// script ran for); answers whether it added any (if not, the script would ask again
    /// forever). On a cluster a queue in another slot than `anchor` cannot be given.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a queue in another slot.
    pub(crate) fn widen(
        &self,
        anchor: Option<&str>,
        groups: &mut Vec<String>,
        need: &[String],
    ) -> Result<bool> {
        let mut added = false;
        for name in need {
            let name = match (name.as_str(), anchor) {
                ("", Some(anchor)) => anchor,
                ("", None) => continue,
                (name, _) => name,
            };
            if groups.iter().any(|g| g == name) {
                continue;
            }
            if let Some(anchor) = anchor
                && self.apart(anchor, name)
            {
                return Err(unsupported_span("a batch", anchor, name));
            }
            groups.push(name.to_owned());
            added = true;
        }
        Ok(added)
    }

    /// [`RedisDriver::widen`], where adding nothing is an error.
    pub(crate) fn must_widen(
        &self,
        anchor: Option<&str>,
        groups: &mut Vec<String>,
        need: &[String],
        script: &str,
    ) -> Result<()> {
        if self.widen(anchor, groups, need)? { Ok(()) } else { Err(endless(script)) }
    }

    /// Runs a workflow-aware script for `anchor`'s home (the queue it runs for, or the batch's
    /// queue on a cluster) with the queue groups `groups`, and lists again the queues a callback
    /// it dispatched re-created.
    pub(crate) async fn in_context(
        &self,
        anchor: Option<&str>,
        groups: &[String],
        build: impl FnOnce(&Context<'_>) -> redis::ScriptInvocation<'static>,
    ) -> Result<Reply> {
        let home = self.home(anchor);
        let keyed: Vec<(String, std::sync::Arc<QueueKeys>)> =
            groups.iter().map(|q| (q.clone(), self.keys(q))).collect();
        let call = build(&Context { home: &home, groups: &keyed });
        let reply = Reply::parse("workflow", self.invoke::<Value>(&call).await?)?;
        self.relist_fresh(&reply.fresh).await;
        Ok(reply)
    }

    /// Lists again queues a callback re-created; a failure is logged (the queue is listed again
    /// at this process's next push to it).
    async fn relist_fresh(&self, fresh: &[String]) {
        if fresh.is_empty() {
            return;
        }
        let mut names: Vec<&str> = fresh.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        if let Err(e) = self.relist(&names).await {
            tracing::warn!(queues = ?names, error = %e, "could not list the queues a batch callback created again");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Batches

    pub(crate) async fn push_batch_impl(
        &self,
        batch: NewBatch,
        mut children: Vec<NewJob>,
    ) -> Result<Vec<PushOutcome>> {
        if batch.id.is_empty() {
            return Err(Error::invalid(
                "batch id",
                "it is empty: give the batch an id (orcs-core makes a ULID)",
            ));
        }
        for child in &mut children {
            match &child.batch {
                Some(other) if *other != batch.id => {
                    return Err(Error::invalid(
                        "batch child",
                        format!(
                            "job {:?} names batch {other:?}, not {:?}: a job belongs to one \
                             batch, so push it with its own batch or without one",
                            child.id, batch.id
                        ),
                    ));
                }
                _ => child.batch = Some(batch.id.clone()),
            }
        }
        let callbacks: Vec<&NewJob> =
            [&batch.then, &batch.catch, &batch.finally].into_iter().flatten().collect();
        // On a cluster the batch lives in its queue's slot, with every child and callback.
        let home_queue = if self.inner.backend.is_cluster() {
            children.first().or(callbacks.first().copied()).map(|j| j.queue.clone())
        } else {
            None
        };
        if let Some(home) = &home_queue {
            if let Some(other) = children.iter().find(|c| c.queue != *home) {
                return Err(unsupported_span("a batch", home, &other.queue));
            }
            if let Some(other) = callbacks.iter().find(|c| self.apart(&c.queue, home)) {
                return Err(unsupported_span("a batch", home, &other.queue));
            }
        }

        let mut outcomes: Vec<Option<PushOutcome>> = vec![None; children.len()];
        let fresh = crate::fresh_jobs(&children, &mut outcomes);

        let push = self.plan_batch(&batch, &children, home_queue);
        let names: Vec<&str> = push.groups.iter().map(String::as_str).collect();
        self.register(&names).await?;
        let indexed: Vec<(usize, usize, &NewJob)> = fresh
            .iter()
            .map(|&(index, job)| {
                let group = push.groups.iter().position(|q| *q == job.queue).unwrap_or(0);
                (index, group, job)
            })
            .collect();
        let chunks: Vec<&[(usize, usize, &NewJob)]> =
            if indexed.is_empty() { vec![&[]] } else { indexed.chunks(PUSH_CHUNK).collect() };
        let last = chunks.len() - 1;
        let mut fresh_queues: Vec<String> = Vec::new();
        for (step, chunk) in chunks.into_iter().enumerate() {
            let mode = match (step == 0, step == last) {
                (true, true) => "cs",
                (true, false) => "c",
                (false, true) => "s",
                (false, false) => "",
            };
            let args: Vec<(usize, &NewJob)> = chunk.iter().map(|&(_, g, job)| (g, job)).collect();
            let step_outcomes = match self.push_step(&push, mode, &args).await {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    // Nothing of this batch may run half-pushed: undo what the steps before
                    // stored (best effort). A refusal (the id exists, the batch was cancelled
                    // meanwhile) is left as it is: the batch is someone else's, or sealed.
                    if !matches!(e, Error::Invalid { .. }) {
                        self.abort_batch(&push).await;
                    }
                    return Err(e);
                }
            };
            for (&(index, _, job), outcome) in chunk.iter().zip(step_outcomes) {
                outcomes[index] = Some(match outcome {
                    Step::Stored { fresh } => {
                        if fresh && !fresh_queues.contains(&job.queue) {
                            fresh_queues.push(job.queue.clone());
                        }
                        PushOutcome::Stored
                    }
                    Step::Duplicate(None) => PushOutcome::Duplicate { id: job.id.clone() },
                    Step::Duplicate(Some(holder)) => PushOutcome::Duplicate { id: holder },
                    Step::Replaced(holder) => {
                        PushOutcome::Replaced { id: holder.unwrap_or_else(|| job.id.clone()) }
                    }
                });
            }
        }
        if !fresh_queues.is_empty() {
            let names: Vec<&str> = fresh_queues.iter().map(String::as_str).collect();
            self.relist(&names).await?;
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| protocol("push batch", "an outcome for every child")))
            .collect()
    }

    /// What every step of a batch's push names: the batch's record and initial state, its home
    /// queue on a cluster, and the queue groups (every child's queue, then every callback's,
    /// each once).
    fn plan_batch(
        &self,
        batch: &NewBatch,
        children: &[NewJob],
        home_queue: Option<String>,
    ) -> BatchPush {
        let callbacks = [&batch.then, &batch.catch, &batch.finally];
        let mut groups: Vec<String> = Vec::new();
        for job in children.iter().chain(callbacks.into_iter().flatten()) {
            if !groups.contains(&job.queue) {
                groups.push(job.queue.clone());
            }
        }
        let layout = self.storage_layout();
        let callback = |job: &Option<NewJob>| {
            job.as_ref().map(|j| pack(&scripts::callback_fields(j, layout))).unwrap_or_default()
        };
        let record = pack(&[
            "b1".to_owned(),
            batch.created_at.to_string(),
            callback(&batch.then),
            callback(&batch.catch),
            callback(&batch.finally),
        ]);
        let waiting = |job: &Option<NewJob>| if job.is_some() { 'w' } else { '-' };
        let state: String = [
            waiting(&batch.then),
            waiting(&batch.catch),
            waiting(&batch.finally),
            if batch.allow_failures { '1' } else { '0' },
            'o',
        ]
        .into_iter()
        .collect();
        BatchPush {
            id: batch.id.clone(),
            created_at: batch.created_at,
            record,
            state,
            home_queue,
            groups,
            layout,
        }
    }

    /// One step of a batch's push: `mode` has `c` to create the batch (the first step) and `s`
    /// to seal it (the last); `children` are at most [`PUSH_CHUNK`], each with its group.
    async fn push_step(
        &self,
        push: &BatchPush,
        mode: &str,
        children: &[(usize, &NewJob)],
    ) -> Result<Vec<Step>> {
        let (record, state) =
            if mode.contains('c') { (push.record.as_str(), push.state.as_str()) } else { ("", "") };
        let reply = self
            .in_context(push.home_queue.as_deref(), &push.groups, |context| {
                scripts::push_batch(
                    context,
                    mode,
                    &push.id,
                    push.created_at,
                    record,
                    state,
                    children,
                    push.layout,
                )
            })
            .await?;
        batch_step(&push.id, reply, children.len())
    }

    /// Undoes a batch push cut short (see the ABORT_BATCH script); best effort: a failure is
    /// logged, and the batch is then left open (it never finishes; `cancel_batch` ends it).
    async fn abort_batch(&self, push: &BatchPush) {
        let (id, home_queue) = (push.id.as_str(), push.home_queue.as_deref());
        let mut groups = push.groups.clone();
        for _ in 0..=MAX_WIDENINGS {
            let reply = self
                .in_context(home_queue, &groups, |context| scripts::abort_batch(context, id))
                .await;
            match reply {
                Ok(reply) if reply.need.is_empty() => {
                    if reply.int("abort batch").ok() == Some(0) {
                        tracing::warn!(
                            batch = id,
                            "a batch push failed after its last step went through: the batch is stored in full"
                        );
                    }
                    return;
                }
                Ok(reply) => {
                    if let Err(e) =
                        self.must_widen(home_queue, &mut groups, &reply.need, "abort batch")
                    {
                        tracing::warn!(batch = id, error = %e, "could not undo a failed batch push");
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(batch = id, error = %e, "could not undo a failed batch push: the batch stays open (cancel_batch ends it)");
                    return;
                }
            }
        }
    }

    /// Where batch `id` is: its home queue (`None` for the prefix's own keys) and its fields.
    async fn find_batch(&self, id: &str) -> Result<Option<(Option<String>, Vec<Value>)>> {
        let mut homes: Vec<Option<String>> = vec![None];
        if self.inner.backend.is_cluster() {
            homes.extend(self.registered_queues().await?.into_iter().map(Some));
        }
        for home in homes {
            let keys = self.home(home.as_deref());
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&keys.batches);
            for field in ["k", "r", "n", "p", "d", "f", "c", "x", "e"] {
                cmd.arg(format!("{field}{id}"));
            }
            let fields: Vec<Value> = self.query(&cmd).await?;
            if fields.first().is_some_and(|k| !matches!(k, Value::Nil)) {
                return Ok(Some((home, fields)));
            }
        }
        Ok(None)
    }

    pub(crate) async fn batch_impl(&self, id: &str) -> Result<Option<BatchInfo>> {
        match self.find_batch(id).await? {
            Some((_, fields)) => batch_info(id, &fields).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) async fn cancel_batch_impl(&self, id: &str, now: Millis) -> Result<BatchInfo> {
        let Some((home, _)) = self.find_batch(id).await? else {
            return Err(Error::NotFound { id: id.to_owned() });
        };
        // The groups the cancel touches: its children's queues, its callbacks'.
        let mut groups: Vec<String> = Vec::new();
        if let Some(queue) = &home {
            groups.push(queue.clone());
        }
        for _ in 0..=MAX_WIDENINGS {
            let reply = self
                .in_context(home.as_deref(), &groups, |context| {
                    scripts::cancel_batch(context, id, now)
                })
                .await?;
            if reply.int("cancel batch")? == 0 {
                return Err(Error::NotFound { id: id.to_owned() });
            }
            if reply.need.is_empty() {
                return match self.find_batch(id).await? {
                    Some((_, fields)) => batch_info(id, &fields),
                    None => Err(Error::NotFound { id: id.to_owned() }),
                };
            }
            self.must_widen(home.as_deref(), &mut groups, &reply.need, "cancel batch")?;
        }
        Err(endless("cancel batch"))
    }

    // -----------------------------------------------------------------------------------------
    // Schedules

    /// The queue whose slot holds schedule `name` on a cluster (from the index), `None` when it
    /// is not registered.
    async fn schedule_queue(&self, name: &str) -> Result<Option<String>> {
        let index = schedule_index(self.inner.config.prefix());
        self.query(redis::cmd("HGET").arg(&index).arg(name)).await
    }

    pub(crate) async fn register_schedule_impl(
        &self,
        record: &ScheduleRecord,
    ) -> Result<ScheduleRecord> {
        if record.name.is_empty() {
            return Err(Error::invalid("schedule name", "it is empty: name the schedule"));
        }
        let encoded = encode_schedule(record);
        let mut carried = String::new();
        let cluster = self.inner.backend.is_cluster();
        let index = schedule_index(self.inner.config.prefix());
        let old_queue = if cluster { self.schedule_queue(&record.name).await? } else { None };
        if let Some(old) = old_queue.as_deref().filter(|old| *old != record.queue) {
            // Moving to another queue's slot: the new record starts from the old cursor.
            let old_home = self.home(Some(old));
            carried = self
                .query::<Option<String>>(
                    redis::cmd("HGET").arg(&old_home.schedules).arg(&record.name),
                )
                .await?
                .unwrap_or_default();
        }
        let home = self.home(Some(&record.queue));
        let stored: String = self
            .invoke(&scripts::register_schedule(&home.schedules, &record.name, &encoded, &carried))
            .await?;
        if cluster && old_queue.as_deref() != Some(record.queue.as_str()) {
            let _: i64 = self
                .query(redis::cmd("HSET").arg(&index).arg(&record.name).arg(&record.queue))
                .await?;
            if let Some(old) = old_queue {
                let _: i64 = self
                    .query(
                        redis::cmd("HDEL").arg(&self.home(Some(&old)).schedules).arg(&record.name),
                    )
                    .await?;
            }
        }
        decode_schedule(&record.name, &stored).map_err(|e| Error::backend_permanent(DRIVER, e))
    }

    pub(crate) async fn schedules_impl(&self) -> Result<Vec<ScheduleRecord>> {
        let mut stored: Vec<(String, String)> = Vec::new();
        if self.inner.backend.is_cluster() {
            let index = schedule_index(self.inner.config.prefix());
            let queues: Vec<(String, String)> =
                self.query(redis::cmd("HGETALL").arg(&index)).await?;
            let mut by_queue: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, queue) in queues {
                by_queue.entry(queue).or_default().push(name);
            }
            for (queue, names) in by_queue {
                let home = self.home(Some(&queue));
                let records: Vec<Option<String>> =
                    self.query(redis::cmd("HMGET").arg(&home.schedules).arg(&names)).await?;
                stored.extend(
                    names.into_iter().zip(records).filter_map(|(name, r)| Some((name, r?))),
                );
            }
        } else {
            let home = self.home(None);
            stored = self.query(redis::cmd("HGETALL").arg(&home.schedules)).await?;
        }
        let mut records = stored
            .iter()
            .map(|(name, record)| {
                decode_schedule(name, record).map_err(|e| Error::backend_permanent(DRIVER, e))
            })
            .collect::<Result<Vec<_>>>()?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    pub(crate) async fn forget_schedule_impl(&self, name: &str) -> Result<bool> {
        if !self.inner.backend.is_cluster() {
            let home = self.home(None);
            let removed: i64 =
                self.query(redis::cmd("HDEL").arg(&home.schedules).arg(name)).await?;
            return Ok(removed == 1);
        }
        let Some(queue) = self.schedule_queue(name).await? else { return Ok(false) };
        let home = self.home(Some(&queue));
        let removed: i64 = self.query(redis::cmd("HDEL").arg(&home.schedules).arg(name)).await?;
        let index = schedule_index(self.inner.config.prefix());
        let listed: i64 = self.query(redis::cmd("HDEL").arg(&index).arg(name)).await?;
        Ok(removed == 1 || listed == 1)
    }

    pub(crate) async fn fire_schedule_impl(&self, fire: &Fire) -> Result<bool> {
        let queue = if self.inner.backend.is_cluster() {
            let Some(queue) = self.schedule_queue(&fire.name).await? else {
                return Err(Error::NotFound { id: fire.name.clone() });
            };
            if let Some(job) = fire.jobs.iter().find(|j| self.apart(&j.queue, &queue)) {
                return Err(unsupported_span("a schedule's fire", &queue, &job.queue));
            }
            Some(queue)
        } else {
            None
        };
        let mut groups: Vec<&str> = Vec::new();
        let jobs: Vec<(usize, &NewJob)> = fire
            .jobs
            .iter()
            .map(|job| {
                let group = groups.iter().position(|q| *q == job.queue).unwrap_or_else(|| {
                    groups.push(&job.queue);
                    groups.len() - 1
                });
                (group, job)
            })
            .collect();
        self.register(&groups).await?;
        let group_keys: Vec<std::sync::Arc<QueueKeys>> =
            groups.iter().map(|q| self.keys(q)).collect();
        let home = self.home(queue.as_deref());
        let call = scripts::fire(&home.schedules, fire, &group_keys, &jobs, self.storage_layout());
        let reply: Vec<Value> = self.invoke(&call).await?;
        match reply.first().and_then(int) {
            Some(-1) => Err(Error::NotFound { id: fire.name.clone() }),
            Some(-2) => Err(Error::backend_permanent(
                DRIVER,
                format!(
                    "unreadable schedule record of {:?} (written by a newer orcs?); upgrade this \
                     orcs, or forget the schedule and register it again",
                    fire.name
                ),
            )),
            Some(0) => Ok(false),
            Some(1) => {
                let mut fresh: Vec<&str> = Vec::new();
                for ((_, job), flag) in jobs.iter().zip(&reply[1..]) {
                    if matches!(flag, Value::Int(2)) && !fresh.contains(&job.queue.as_str()) {
                        fresh.push(&job.queue);
                    }
                }
                self.relist(&fresh).await?;
                Ok(true)
            }
            _ => Err(protocol("fire", "a status")),
        }
    }
}

/// A batch's push, as every step of it names it ([`RedisDriver::plan_batch`]).
struct BatchPush {
    id: String,
    created_at: Millis,
    record: String,
    state: String,
    home_queue: Option<String>,
    groups: Vec<String>,
    layout: u32,
}

/// What one push-batch step did with one child.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Stored {
        fresh: bool,
    },
    Duplicate(Option<String>),
    /// A debounced child gave its data to the waiting holder of its key.
    Replaced(Option<String>),
}

/// Reads a push-batch step's answer for `count` children.
fn batch_step(id: &str, reply: Reply, count: usize) -> Result<Vec<Step>> {
    let Value::Array(parts) = &reply.main else {
        return Err(protocol("push batch", "a status and outcomes"));
    };
    let [status, outcomes] = &parts[..] else {
        return Err(protocol("push batch", "a status and outcomes"));
    };
    match text(status).as_deref() {
        Some("ok") => {}
        Some("exists") => {
            return Err(Error::invalid(
                "batch id",
                format!("a batch with id {id:?} exists: give each batch a new id"),
            ));
        }
        Some("cancelled") => {
            return Err(Error::invalid(
                "batch",
                format!(
                    "batch {id:?} was cancelled (by cancel_batch, or by a child that failed) \
                     while its children were being pushed: the rest were not stored; see \
                     batch_info for what it holds"
                ),
            ));
        }
        Some("gone") => {
            return Err(Error::invalid(
                "batch",
                format!("batch {id:?} was removed while its children were being pushed"),
            ));
        }
        _ => return Err(protocol("push batch", "a status")),
    }
    let Value::Array(flags) = outcomes else {
        return Err(protocol("push batch", "a list of outcomes"));
    };
    if flags.len() != count {
        return Err(protocol(
            "push batch",
            &format!("{} outcomes for {count} children", flags.len()),
        ));
    }
    Ok(flags
        .iter()
        .map(|flag| match flag {
            Value::Int(n @ (1 | 2)) => Step::Stored { fresh: *n == 2 },
            Value::Int(_) => Step::Duplicate(None),
            Value::Array(holder) => Step::Replaced(holder.first().and_then(text)),
            holder => Step::Duplicate(text(holder)),
        })
        .collect())
}

/// A batch's info from its fields (k, r, n, p, d, f, c, x, e).
fn batch_info(id: &str, fields: &[Value]) -> Result<BatchInfo> {
    let bad = || {
        Error::backend_permanent(
            DRIVER,
            format!(
                "unreadable record of batch {id:?} (written by a newer orcs?): upgrade this orcs"
            ),
        )
    };
    let [k, r, n, p, d, f, c, x, e] = fields else { return Err(bad()) };
    let state: Vec<char> = text(k).ok_or_else(bad)?.chars().collect();
    if state.len() != 5 {
        return Err(bad());
    }
    let record = text(r).ok_or_else(bad)?;
    let parts = unpack(&record).ok_or_else(bad)?;
    let [tag, created_at, then, catch, finally] = parts[..] else { return Err(bad()) };
    if tag != "b1" {
        return Err(bad());
    }
    let count = |v: &Value| u64::try_from(int(v).unwrap_or(0)).unwrap_or(0);
    let callback = |packed: &str, state: char| -> Result<Option<BatchCallback>> {
        if packed.is_empty() {
            return Ok(None);
        }
        let fields = unpack(packed).ok_or_else(bad)?;
        let [queue, id, _, _, record, ..] = fields[..] else { return Err(bad()) };
        let job = decode(record.as_bytes()).map_err(|_| bad())?.into_job(id.to_owned(), queue);
        let state = match state {
            'd' => CallbackState::Dispatched,
            's' => CallbackState::Skipped,
            _ => CallbackState::Waiting,
        };
        Ok(Some(BatchCallback::new(&job, state)))
    };
    let mut info = BatchInfo::new(id);
    info.total = count(n);
    info.pending = count(p);
    info.processed = count(d);
    info.failed = count(f);
    info.cancelled = count(c);
    info.allow_failures = state[3] == '1';
    info.created_at = created_at.parse().map_err(|_| bad())?;
    info.cancelled_at = int(x);
    info.finished_at = int(e);
    info.then = callback(then, state[0])?;
    info.catch = callback(catch, state[1])?;
    info.finally = callback(finally, state[2])?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    //! The steps of a batch's push, one by one, against a Redis server of the tests': what a
    //! dispatcher that dies between them leaves, and what undoing a failed push does.

    use orcs_core::{Admin, ClaimRequest, Clock, Driver, Settle, SystemClock};
    use orcs_tests::services::{self, unique_name};

    use super::*;
    use crate::RedisConfig;

    async fn driver() -> Option<RedisDriver> {
        let url = services::redis::redis_url_or_skip()?;
        let config =
            RedisConfig::from_url(&url).expect("url").with_prefix(unique_name("orcs-test"));
        Some(RedisDriver::connect(config).await.expect("connect"))
    }

    fn job(queue: &str) -> NewJob {
        let mut job =
            NewJob::new(orcs_core::new_job_id(), "PlainJob", queue, "{}", SystemClock.now());
        job.batch = None;
        job
    }

    /// A batch with `finally` and two children on `queue`, planned but not pushed.
    fn planned(driver: &RedisDriver, queue: &str) -> (BatchPush, Vec<NewJob>) {
        let mut batch = NewBatch::new(orcs_core::new_job_id(), SystemClock.now());
        batch.finally = Some(job("done"));
        let children: Vec<NewJob> = (0..2)
            .map(|_| {
                let mut child = job(queue);
                child.batch = Some(batch.id.clone());
                child
            })
            .collect();
        (driver.plan_batch(&batch, &children, None), children)
    }

    async fn complete_all(driver: &RedisDriver, queue: &str) -> usize {
        let queues = vec![queue.to_owned()];
        let claim =
            driver.claim(&ClaimRequest::new(&queues, 100, SystemClock.now())).await.expect("claim");
        let settles: Vec<Settle> =
            claim.jobs.into_iter().map(|r| Settle::complete(r.lease)).collect();
        for result in driver.settle(&settles, SystemClock.now()).await {
            result.expect("complete");
        }
        settles.len()
    }

    /// An open batch (its last step not pushed yet) does not finish when every child stored so
    /// far has ended: its callbacks wait for the seal, which finishes it at once.
    #[test]
    fn an_open_batch_finishes_only_when_sealed() {
        orcs_tests::run(async {
            let Some(driver) = driver().await else { return };
            let (push, children) = planned(&driver, "open");
            let args: Vec<(usize, &NewJob)> = children.iter().map(|c| (0, c)).collect();
            let steps = driver.push_step(&push, "c", &args).await.expect("first step");
            assert_eq!(steps, [Step::Stored { fresh: true }, Step::Stored { fresh: false }]);
            assert_eq!(complete_all(&driver, "open").await, 2);
            let info = driver.batch(&push.id).await.expect("batch").expect("exists");
            assert_eq!((info.processed, info.pending, info.finished_at), (2, 0, None));
            assert_eq!(info.finally.map(|c| c.state), Some(CallbackState::Waiting));
            assert_eq!(complete_all(&driver, "done").await, 0, "finally waits for the seal");

            driver.push_step(&push, "s", &[]).await.expect("last step");
            let info = driver.batch(&push.id).await.expect("batch").expect("exists");
            assert_eq!((info.total, info.finished_at), (2, Some(push.created_at)));
            assert_eq!(info.finally.map(|c| c.state), Some(CallbackState::Dispatched));
            assert_eq!(complete_all(&driver, "done").await, 1);
        });
    }

    /// A dispatcher that died between two steps leaves an open batch whose children run;
    /// `cancel_batch` seals it and finishes it, and a late step of that push is refused.
    #[test]
    fn cancel_batch_ends_a_push_whose_dispatcher_died() {
        orcs_tests::run(async {
            let Some(driver) = driver().await else { return };
            let (push, children) = planned(&driver, "died");
            driver.push_step(&push, "c", &[(0, &children[0])]).await.expect("first step");
            let at = SystemClock.now() + 1;
            let info = driver.cancel_batch(&push.id, at).await.expect("cancel");
            assert_eq!((info.total, info.pending, info.cancelled), (1, 0, 1));
            assert_eq!((info.cancelled_at, info.finished_at), (Some(at), Some(at)));
            assert_eq!(info.finally.map(|c| c.state), Some(CallbackState::Dispatched));
            let late = driver.push_step(&push, "s", &[(0, &children[1])]).await;
            assert!(
                matches!(&late, Err(Error::Invalid { message, .. }) if message.contains("cancelled")),
                "{late:?}"
            );
            assert_eq!(complete_all(&driver, "died").await, 0, "the late child was not stored");
        });
    }

    /// Undoing a failed push deletes the untouched children and the batch; a child already
    /// claimed stays, as a job of no batch (its running attempt loses its lease, and it runs
    /// again), and its end counts nowhere. The same id can be pushed again.
    #[test]
    fn abort_undoes_a_half_pushed_batch() {
        orcs_tests::run(async {
            let Some(driver) = driver().await else { return };
            let (push, children) = planned(&driver, "abort");
            driver.register(&["abort", "done"]).await.expect("register");
            let args: Vec<(usize, &NewJob)> = children.iter().map(|c| (0, c)).collect();
            driver.push_step(&push, "c", &args).await.expect("first step");
            let queues = vec!["abort".to_owned()];
            let claimed = driver
                .claim(&ClaimRequest::new(&queues, 1, SystemClock.now()))
                .await
                .expect("claim")
                .jobs
                .pop()
                .expect("a child");
            assert_eq!(claimed.record.batch.as_deref(), Some(push.id.as_str()));
            driver.abort_batch(&push).await;
            assert!(driver.batch(&push.id).await.expect("batch").is_none(), "the batch is gone");
            let now = SystemClock.now();
            let stats = driver.stats("abort", now).await.expect("stats");
            assert_eq!((stats.pending, stats.reserved), (0, 1), "the untouched child is gone");
            let kept = driver.get(&claimed.record.id, now).await.expect("get").expect("kept");
            assert_eq!(kept.job.batch, None, "the claimed child left the batch");
            // Its stored token was changed to one no lease carries: its lease is lost, and the
            // job runs again once the lease runs out, as a job of no batch.
            let lost = driver.settle_one(Settle::complete(claimed.lease.clone()), now).await;
            assert!(matches!(lost, Err(Error::LeaseLost { .. })), "{lost:?}");
            let later = claimed.lease.expires_at;
            assert_eq!(driver.recover(&queues, later).await.expect("recover"), 1);
            let again = driver
                .claim(&ClaimRequest::new(&queues, 1, later))
                .await
                .expect("claim")
                .jobs
                .pop()
                .expect("the job again");
            assert_eq!(
                (again.record.id.as_str(), again.record.batch.as_ref()),
                (claimed.record.id.as_str(), None)
            );
            driver.settle_one(Settle::complete(again.lease), later).await.expect("complete");

            let (again, _) = planned(&driver, "abort");
            let again = BatchPush { id: push.id.clone(), ..again };
            driver.push_step(&again, "cs", &[]).await.expect("pushed again");
            let info = driver.batch(&push.id).await.expect("batch").expect("exists");
            assert_eq!((info.total, info.processed), (0, 0), "the old child counted nowhere");
        });
    }
}
