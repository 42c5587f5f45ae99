#![doc = include_str!("../README.md")]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use hashbrown::hash_table::{Entry, HashTable};
use orcs_core::{
    Admin, CancelOutcome, Capabilities, Claim, ClaimRequest, Driver, Error, FailedJob, FailedQuery,
    JobInfo, JobRecord, JobState as State_, Lease, ListRequest, MAX_PAGE, Millis, NewJob,
    PushOutcome, QueueLimits, QueueStats, Reserved, Result, Settle, Settling, Touch, Transition,
    UniqueUntil, async_trait,
};
use orcs_core::{BatchCallback, BatchInfo, CallbackState, NewBatch};
use orcs_core::{Fire, ScheduleRecord};
use orcs_core::{MAX_ERROR_HISTORY, Prune, THROUGHPUT_HORIZON_MS, Throughput, WorkerInfo};
use tokio::sync::Notify;

/// A job's id as the driver's indexes hold it: shared, so that the job map and the ordered sets
/// of its queue point at one string instead of each holding a copy (a claim and a settle used to
/// clone it several times).
type Id = Arc<str>;

/// A job id in its queue's ready and delayed sets, which order jobs by id after priority or due
/// time: in the id's string order, but an id that is a ULID as orcs makes them (26 characters of
/// Crockford's base 32, upper case) also carries its 128 bits, and two such ids compare as
/// numbers. A string comparison reads both ids' strings, one pointer away each, at every step of
/// a set's search (most of a push's insert into the ready set); the numbers sit in the entry.
/// Their order is the strings' order (the alphabet is in ASCII order, the ids of equal length),
/// so the set's order is the one every driver uses.
#[derive(Debug, Clone)]
struct SortId {
    /// The bits, high half first: two words rather than a `u128`, whose 16-byte alignment would
    /// make each set entry a third larger.
    bits: Option<[u64; 2]>,
    id: Id,
}

impl SortId {
    fn new(id: Id) -> Self {
        let bits = ulid_bits(&id).map(|bits| [(bits >> 64) as u64, bits as u64]);
        Self { bits, id }
    }
}

impl PartialEq for SortId {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for SortId {}

impl PartialOrd for SortId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.bits, other.bits) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self.id.cmp(&other.id),
        }
    }
}

/// The 128 bits of `id` if it is a canonical ULID (see [`SortId`]); `None` for any other id,
/// lower-case ULIDs included, so that distinct strings never compare equal.
fn ulid_bits(id: &str) -> Option<u128> {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    const DIGITS: [u8; 256] = {
        let mut digits = [u8::MAX; 256];
        let mut i = 0;
        while i < ALPHABET.len() {
            digits[ALPHABET[i] as usize] = i as u8;
            i += 1;
        }
        digits
    };
    let bytes = id.as_bytes();
    // 26 digits of 5 bits hold 130; a ULID's first digit is at most 7, so it fits 128.
    if bytes.len() != 26 || bytes[0] > b'7' {
        return None;
    }
    bytes.iter().try_fold(0u128, |bits, &byte| match DIGITS[byte as usize] {
        u8::MAX => None,
        digit => Some(bits << 5 | u128::from(digit)),
    })
}

/// A hash map keyed by job ids, with rustc-hash's Fx hash: the ids come from the application in
/// this same process, so SipHash's resistance to chosen keys buys nothing here, and it cost more
/// than a tenth of a drain.
type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// Expired `Period` keys a `Period` push drops on its way (recovery drops all of them).
const PERIOD_SWEEP_PER_PUSH: usize = 4;

/// Tries of a contended lock before [`MemoryDriver::state_shared`] blocks on it, and how many
/// of them spin between two yields to the runtime.
const CONTENDED_TRIES: u32 = 256;
const CONTENDED_SPINS: u32 = 8;

/// A claim's fencing token: the driver's sequence number, handed out as its decimal string.
fn parse_token(token: &str) -> Option<u64> {
    // Only the exact form we hand out matches ("07" or "+7" is not token 7).
    if !token.starts_with(|c: char| c.is_ascii_digit() && c != '0') {
        return None;
    }
    token.parse().ok()
}

/// Jobs held in this process's memory. Clones share the same queues.
#[derive(Debug, Clone, Default)]
pub struct MemoryDriver {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// Wakes idle workers when a job becomes ready.
    ready: Notify,
}

#[derive(Debug, Default)]
struct State {
    jobs: FastMap<Id, Stored>,
    queues: BTreeMap<String, QueueState>,
    /// The failed set in the order jobs failed.
    failed: BTreeMap<u64, FailedEntry>,
    failed_index: FastMap<String, u64>,
    next_seq: u64,
    /// Live workers by id, with the time their entry expires.
    workers: HashMap<String, (WorkerInfo, Millis)>,
    /// The throughput history: (minute, queue) -> (processed, failed).
    throughput: BTreeMap<(Millis, String), (u64, u64)>,
    /// Schedules by name (sorted, as `schedules()` answers them).
    schedules: BTreeMap<String, ScheduleRecord>,
    /// Batches by id, kept after they finish.
    batches: HashMap<String, BatchState>,
    /// Set when a batch rule stored a callback job: the caller wakes idle workers.
    batch_woke: bool,
}

/// A batch: its counters and callbacks as shown, the callback jobs, and its unfinished children.
#[derive(Debug)]
struct BatchState {
    info: BatchInfo,
    then: Option<NewJob>,
    catch: Option<NewJob>,
    finally: Option<NewJob>,
    /// Children not ended yet: what a cancel walks, and the guard that counts each child once.
    unfinished: BTreeSet<String>,
}

/// How a batch child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Processed,
    Failed,
    Cancelled,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Ready jobs: highest priority first, then id (dispatch) order.
    ready: BTreeSet<(Reverse<i32>, SortId)>,
    /// How many ready jobs became due (`job.available_at`) at each time, for `latency_ms`: a
    /// count per time instead of an entry per job, so that a claim only decrements a counter.
    ready_since: BTreeMap<Millis, u64>,
    /// Not yet due: by due time, then id.
    delayed: BTreeSet<(Millis, SortId)>,
    /// Claimed: by lease deadline, then token (claim order). Integer keys: a claim and a settle
    /// never compare id strings here.
    reserved: BTreeMap<(Millis, u64), Id>,
    failed: u64,
    processed: u64,
    failed_total: u64,
    /// Per-queue metadata: claims skip a paused queue.
    paused: bool,
    /// Per-queue metadata: the limits every claim enforces.
    limits: QueueLimits,
    /// Start times inside the rate limit's window, oldest first.
    starts: VecDeque<Millis>,
    cancelled: u64,
    /// Held unique keys, with their holders.
    unique: KeyMap,
    /// The `Period` keys of `unique` by the time they free, so that expired ones leave the map:
    /// an expired key is free already, but without this its entry would stay for good.
    /// Entries of keys taken over since (by a later holder) are dropped as they come up.
    period_keys: BTreeSet<(Millis, Box<str>)>,
}

impl QueueState {
    /// Drops up to `max` `Period` keys whose time is up at `now` (recovery drops them all, a
    /// `Period` push a few, as the other drivers do).
    fn sweep_period_keys(&mut self, now: Millis, max: usize) {
        for _ in 0..max {
            if self.period_keys.first().is_none_or(|(frees, _)| *frees > now) {
                break;
            }
            let (_, key) = self.period_keys.pop_first().expect("looked above");
            // Taken over since by a later holder (a Period or another key): it stays.
            self.unique.free_expired(&key, now);
        }
    }

    /// Counts a job that became ready, due since `at`.
    fn ready_since_add(&mut self, at: Millis) {
        *self.ready_since.entry(at).or_default() += 1;
    }

    /// Uncounts a job that stopped being ready, due since `at`.
    fn ready_since_remove(&mut self, at: Millis) {
        if let Some(count) = self.ready_since.get_mut(&at) {
            *count -= 1;
            if *count == 0 {
                self.ready_since.remove(&at);
            }
        }
    }

    /// How many more jobs the queue's limits let a claim at `now` take, and when a rate-limited
    /// queue can start again if it cannot now. With `settling` (the claiming worker's jobs whose
    /// code has ended, and a claim's `want`), a concurrency limit that would let fewer than
    /// `want` start does not count those of its reserved jobs: they no longer run, their
    /// settles are on their way (see `ClaimRequest::settling`). Without that, a drain under a
    /// limit equal to the worker's slots waited for its settles' writes between claims.
    fn allowance(
        &mut self,
        now: Millis,
        settling: Option<(&dyn Settling, usize)>,
    ) -> (usize, Option<Millis>) {
        let mut allowed = usize::MAX;
        if let Some(n) = self.limits.concurrency {
            let mut running = self.reserved.len();
            if let Some((settling, want)) = settling
                && (n as usize).saturating_sub(running) < want
            {
                // Only the tokens of this queue's current leases count (a settle already
                // applied, or another queue's, is not among them).
                let tokens: rustc_hash::FxHashSet<u64> =
                    settling.tokens().iter().filter_map(|token| parse_token(token)).collect();
                running -= self.reserved.keys().filter(|(_, token)| tokens.contains(token)).count();
            }
            allowed = (n as usize).saturating_sub(running);
        }
        let mut reopens = None;
        if let Some(rate) = self.limits.rate {
            let window = i64::try_from(rate.period_ms).unwrap_or(i64::MAX);
            while self.starts.front().is_some_and(|at| *at <= now.saturating_sub(window)) {
                self.starts.pop_front();
            }
            let left = (rate.limit as usize).saturating_sub(self.starts.len());
            if left == 0 {
                reopens = self.starts.front().map(|at| at.saturating_add(window));
            }
            allowed = allowed.min(left);
        }
        (allowed, reopens)
    }

    /// Frees `job`'s unique key if `until` says this moment frees it and the job still holds it.
    fn free_key(&mut self, job: &NewJob, moment: UniqueUntil) {
        if let Some(unique) = &job.unique
            && unique.until == moment
        {
            self.unique.free_held(&unique.key, job);
        }
    }
}

/// The hasher of every queue's [`KeyMap`]: one per process, so that a push hashes its key before
/// it takes the driver's lock. Randomly seeded SipHash, as `HashMap`'s: an application's users
/// may choose the keys.
static KEY_HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);

fn key_hash(key: &str) -> u64 {
    KEY_HASHER.hash_one(key)
}

/// A queue's held unique keys. Each entry keeps its key's hash: a push computes it outside the
/// lock, and a probe or a resize compares and moves entries without reading their keys' strings
/// (BENCHMARKS.md round 15: the key map is most of what a keyed push costs more).
///
/// `Started` and `Finished` keys (leaving the map when their holder is claimed or ends) sit in
/// `held`, 16 bytes an entry: the hash and the holder's stored record, which has the key's text
/// and the holder's id, so that a push writes a small entry and the table of a large backlog's
/// keys stays under a third of what a general entry (56 bytes) made it (BENCHMARKS.md round
/// 35). `Period` keys outlive their holders and keep their own text and expiry in `periods`. A
/// key is in one of the two at most.
#[derive(Debug, Default)]
struct KeyMap {
    held: HashTable<HeldKey>,
    periods: HashTable<PeriodKey>,
}

/// A `Started` or `Finished` key, held until its holder is claimed or ends.
#[derive(Debug)]
struct HeldKey {
    hash: u64,
    /// The holder's record, shared with the job map (the entry allocates nothing).
    holder: Arc<NewJob>,
}

impl HeldKey {
    /// Whether this is the entry of `key`, whose hash is `hash` (the string is read only when
    /// the hashes match).
    fn is(&self, hash: u64, key: &str) -> bool {
        self.hash == hash && self.holder.unique.as_ref().is_some_and(|unique| unique.key == key)
    }
}

/// A `Period` key, held until its time is up whatever its holder does.
#[derive(Debug)]
struct PeriodKey {
    hash: u64,
    key: Box<str>,
    holder: Id,
    frees: Millis,
}

impl PeriodKey {
    fn is(&self, hash: u64, key: &str) -> bool {
        self.hash == hash && *self.key == *key
    }
}

impl KeyMap {
    /// Frees `job`'s `Started` or `Finished` key if `job` holds it.
    fn free_held(&mut self, key: &str, job: &NewJob) {
        let hash = key_hash(key);
        if let Ok(entry) = self.held.find_entry(hash, |held| held.is(hash, key))
            && (std::ptr::eq(&*entry.get().holder, job) || entry.get().holder.id == job.id)
        {
            entry.remove();
        }
    }

    /// Frees `Period` key `key` if its time is up at `now`.
    fn free_expired(&mut self, key: &str, now: Millis) {
        let hash = key_hash(key);
        if let Ok(entry) = self.periods.find_entry(hash, |held| held.is(hash, key))
            && entry.get().frees <= now
        {
            entry.remove();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len() + self.periods.len()
    }
}

#[derive(Debug)]
struct Stored {
    /// Shared with the claims in flight: a claim takes a reference under the lock and copies
    /// the strings of the worker's record after releasing it.
    job: Arc<NewJob>,
    attempts: u32,
    last_error: Option<String>,
    state: JobState,
    progress: Option<String>,
    cancel_requested: bool,
    /// The errors of its failed attempts, oldest first (at most `MAX_ERROR_HISTORY`).
    errors: Vec<String>,
}

impl Stored {
    /// A job about to be enqueued ([`enqueue_in`] sets its state).
    fn new(
        job: Arc<NewJob>,
        attempts: u32,
        last_error: Option<String>,
        errors: Vec<String>,
    ) -> Self {
        Self {
            job,
            attempts,
            last_error,
            state: JobState::Ready,
            progress: None,
            cancel_requested: false,
            errors,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum JobState {
    Ready,
    Delayed(Millis),
    Reserved { token: u64, until: Millis },
}

/// A pushed job with what its insert needs (its shared id and record, its unique key's hash,
/// and a copy of a `Period` key for the key map: see [`KeyMap`]), made before the driver's lock
/// is taken: a push holds the lock for the index updates only, so concurrent dispatchers wait
/// less.
struct Incoming {
    id: Id,
    job: Arc<NewJob>,
    key: Option<(u64, Option<Box<str>>)>,
}

impl Incoming {
    fn new(job: NewJob) -> Self {
        let key = job.unique.as_ref().map(|unique| {
            let key = unique.key.as_str();
            let own = matches!(unique.until, UniqueUntil::Period(_)).then(|| Box::from(key));
            (key_hash(key), own)
        });
        Self { id: Id::from(job.id.as_str()), job: Arc::new(job), key }
    }
}

/// A job taken by a claim, made into the worker's [`Reserved`] after the lock is released.
struct Claimed {
    job: Arc<NewJob>,
    attempt: u32,
    last_error: Option<String>,
    token: u64,
    until: Millis,
}

impl Claimed {
    fn reserved(self) -> Reserved {
        let job = &*self.job;
        let record = JobRecord::from_new(job, self.attempt, self.last_error);
        let lease =
            Lease::new(job.id.clone(), job.queue.clone(), self.token.to_string(), self.until);
        Reserved::new(record, lease)
    }
}

#[derive(Debug)]
struct FailedEntry {
    job: Arc<NewJob>,
    failed: FailedJob,
    /// The job's error history, its last failure included.
    errors: Vec<String>,
}

/// `errors` with `error` appended, the oldest dropped beyond `MAX_ERROR_HISTORY`.
fn with_error(mut errors: Vec<String>, error: &str) -> Vec<String> {
    errors.push(error.to_owned());
    let excess = errors.len().saturating_sub(MAX_ERROR_HISTORY);
    errors.drain(..excess);
    errors
}

impl MemoryDriver {
    /// An empty set of queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes idle workers if a batch rule stored a callback job in this step.
    fn wake_for_callbacks(&self, state: &mut State) {
        if std::mem::take(&mut state.batch_woke) {
            self.inner.ready.notify_waiters();
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that matters
        // more than losing every job, so keep going with it.
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// [`MemoryDriver::state`] for the hot paths (push, claim, settle), which a worker's run
    /// loop, its settle writer and an application's dispatches run on every runtime thread at
    /// once. A thread that meets the lock taken tries again, then lets its runtime run other
    /// tasks, instead of sleeping on the lock: a sleeping waiter costs two context switches and
    /// makes the holder's unlock a system call (a drain's settles met the claims' lock thousands
    /// of times a second; BENCHMARKS.md, round 14). It blocks only after many tries (the
    /// holder's thread was preempted).
    async fn state_shared(&self) -> MutexGuard<'_, State> {
        for attempt in 1..=CONTENDED_TRIES {
            if let Some(guard) = self.try_state() {
                return guard;
            }
            if attempt % CONTENDED_SPINS == 0 {
                tokio::task::yield_now().await;
            } else {
                std::hint::spin_loop();
            }
        }
        self.state()
    }

    /// The lock if it is free now.
    fn try_state(&self) -> Option<MutexGuard<'_, State>> {
        match self.inner.state.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

/// The state of queue `name` in `queues`, made if it has none.
fn queue_of<'a>(queues: &'a mut BTreeMap<String, QueueState>, name: &str) -> &'a mut QueueState {
    if !queues.contains_key(name) {
        queues.insert(name.to_owned(), QueueState::default());
    }
    queues.get_mut(name).expect("inserted above")
}

/// Whether job id `id` is taken, by a job stored or one in the failed set (a push of it is a
/// duplicate). (The fields of [`State`] it reads, apart, as for [`enqueue_in`].)
fn id_taken(jobs: &FastMap<Id, Stored>, failed_index: &FastMap<String, u64>, id: &str) -> bool {
    jobs.contains_key(id) || failed_index.contains_key(id)
}

/// Puts `stored` in `queue`'s ready or delayed set as `available_at` says, and in the job map.
/// (The fields of [`State`] it needs, apart: a push borrows its queue's key map meanwhile.)
fn enqueue_in(
    queue: &mut QueueState,
    jobs: &mut FastMap<Id, Stored>,
    id: Id,
    mut stored: Stored,
    available_at: Millis,
    now: Millis,
) {
    // The current due time, as `get` shows it and `latency_ms` measures from. (No claim holds
    // the job any more, so this does not copy it.)
    if stored.job.available_at != available_at {
        Arc::make_mut(&mut stored.job).available_at = available_at;
    }
    stored.state = if available_at <= now {
        queue.ready.insert((Reverse(stored.job.priority), SortId::new(Arc::clone(&id))));
        queue.ready_since_add(available_at);
        JobState::Ready
    } else {
        queue.delayed.insert((available_at, SortId::new(Arc::clone(&id))));
        JobState::Delayed(available_at)
    };
    jobs.insert(id, stored);
}

impl State {
    fn queue(&mut self, name: &str) -> &mut QueueState {
        queue_of(&mut self.queues, name)
    }

    /// Puts a job in its queue's ready or delayed set, with its error history.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        id: Id,
        job: Arc<NewJob>,
        attempts: u32,
        last_error: Option<String>,
        errors: Vec<String>,
        available_at: Millis,
        now: Millis,
    ) {
        let queue = queue_of(&mut self.queues, &job.queue);
        let stored = Stored::new(job, attempts, last_error, errors);
        enqueue_in(queue, &mut self.jobs, id, stored, available_at, now);
    }

    /// Whether `lease` is the current claim of its job.
    fn holds(&self, lease: &Lease) -> bool {
        let token = parse_token(&lease.token);
        matches!(
            self.jobs.get(lease.id.as_str()),
            Some(Stored { state: JobState::Reserved { token: held, .. }, .. }) if Some(*held) == token
        )
    }

    /// Takes a claimed job out of the reserved set if `lease` is its current claim.
    fn take_leased(&mut self, lease: &Lease) -> Result<(Id, Stored)> {
        if !self.holds(lease) {
            return Err(Error::LeaseLost { id: lease.id.clone() });
        }
        let (id, stored) = self.jobs.remove_entry(lease.id.as_str()).expect("checked above");
        if let JobState::Reserved { until, token } = stored.state {
            self.queue(&stored.job.queue).reserved.remove(&(until, token));
        }
        Ok((id, stored))
    }

    /// Stores a job as a push would; if its id or its unique key is taken, answers the holder.
    fn insert_new(&mut self, job: NewJob, now: Millis) -> PushOutcome {
        self.insert_incoming(Incoming::new(job), now)
    }

    /// [`State::insert_new`] for a job whose allocations were made before the lock was taken.
    fn insert_incoming(&mut self, incoming: Incoming, now: Millis) -> PushOutcome {
        let Incoming { id, job, key } = incoming;
        let available_at = job.available_at;
        let (Some(unique), Some((hash, own))) = (&job.unique, key) else {
            if id_taken(&self.jobs, &self.failed_index, &id) {
                return PushOutcome::Duplicate { id: job.id.clone() };
            }
            self.enqueue(id, job, 0, None, Vec::new(), available_at, now);
            return PushOutcome::Stored;
        };
        let State { jobs, queues, failed_index, .. } = self;
        let queue = queue_of(queues, &job.queue);
        let frees = unique.expires_at(job.dispatched_at).unwrap_or(Millis::MAX);
        let period_key = own.clone();
        if period_key.is_some() {
            queue.sweep_period_keys(now, PERIOD_SWEEP_PER_PUSH);
        }
        // The key's probe before the id's: in maps of many entries each is a cache miss, and
        // in this order the processor waits for both at once (the id's answer comes first all
        // the same: nothing is written before it).
        let key = unique.key.as_str();
        let entry = queue.unique.held.entry(hash, |held| held.is(hash, key), |held| held.hash);
        if id_taken(jobs, failed_index, &id) {
            return PushOutcome::Duplicate { id: job.id.clone() };
        }
        let mut holder = match &entry {
            Entry::Occupied(held) => Some(held.get().holder.id.clone()),
            Entry::Vacant(_) => None,
        };
        // Not held as a `Started` or `Finished` key: maybe as a `Period` key, live, or expired
        // (its entry goes: this job takes the key over below, in the table of its own kind).
        if holder.is_none()
            && !queue.unique.periods.is_empty()
            && let Ok(period) = queue.unique.periods.find_entry(hash, |held| held.is(hash, key))
        {
            if period.get().frees > now {
                holder = Some(period.get().holder.to_string());
            } else {
                period.remove();
            }
        }
        if let Some(holder) = holder {
            if unique.debounce && self.replace_waiting(&holder, &job, now) {
                return PushOutcome::Replaced { id: holder };
            }
            return PushOutcome::Duplicate { id: holder };
        }
        match (own, entry) {
            (Some(key), _) => {
                let held = PeriodKey { hash, key, holder: Arc::clone(&id), frees };
                queue.unique.periods.insert_unique(hash, held, |held| held.hash);
            }
            (None, Entry::Vacant(entry)) => {
                entry.insert(HeldKey { hash, holder: Arc::clone(&job) });
            }
            (None, Entry::Occupied(_)) => unreachable!("a held key's holder answered above"),
        }
        if let Some(key) = period_key {
            queue.period_keys.insert((frees, key));
        }
        enqueue_in(queue, jobs, id, Stored::new(job, 0, None, Vec::new()), available_at, now);
        PushOutcome::Stored
    }

    /// Debounce: gives waiting job `holder` the payload and run time of `job`, moving it between
    /// the ready and delayed sets as its new time says. False (nothing changed) when the holder
    /// is running or gone.
    fn replace_waiting(&mut self, holder: &str, job: &NewJob, now: Millis) -> bool {
        let Some((id, stored)) = self.jobs.get_key_value(holder) else { return false };
        let id = Arc::clone(id);
        let (priority, since) = (stored.job.priority, stored.job.available_at);
        let was = stored.state.clone();
        let queue = self.queue(&job.queue);
        match was {
            JobState::Ready => {
                queue.ready_since_remove(since);
                queue.ready.remove(&(Reverse(priority), SortId::new(Arc::clone(&id))));
            }
            JobState::Delayed(at) => {
                queue.delayed.remove(&(at, SortId::new(Arc::clone(&id))));
            }
            JobState::Reserved { .. } => return false,
        }
        let available_at = job.available_at;
        let state = if available_at <= now {
            queue.ready.insert((Reverse(priority), SortId::new(Arc::clone(&id))));
            queue.ready_since_add(available_at);
            JobState::Ready
        } else {
            queue.delayed.insert((available_at, SortId::new(Arc::clone(&id))));
            JobState::Delayed(available_at)
        };
        let stored = self.jobs.get_mut(holder).expect("found above");
        let record = Arc::make_mut(&mut stored.job);
        record.payload.clone_from(&job.payload);
        record.available_at = available_at;
        stored.state = state;
        true
    }

    /// Deletes a pending or delayed job (cancel, clear), freeing its key.
    fn remove_waiting(&mut self, id: &str) -> Option<Stored> {
        let (id, stored) = self.jobs.remove_entry(id)?;
        let queue = self.queue(&stored.job.queue);
        match stored.state {
            JobState::Ready => {
                queue.ready_since_remove(stored.job.available_at);
                queue.ready.remove(&(Reverse(stored.job.priority), SortId::new(id)))
            }
            JobState::Delayed(at) => queue.delayed.remove(&(at, SortId::new(id))),
            JobState::Reserved { .. } => unreachable!("only waiting jobs are removed"),
        };
        queue.free_key(&stored.job, UniqueUntil::Finished);
        queue.free_key(&stored.job, UniqueUntil::Started);
        Some(stored)
    }

    /// One settle: the token check, the transition and its effects, or nothing.
    /// Jobs that end here go to `dead`, for the caller to free after releasing the lock.
    fn settle(&mut self, settle: &Settle, now: Millis, dead: &mut Vec<(Id, Stored)>) -> Result<()> {
        let (id, stored) = self.take_leased(&settle.lease)?;
        match &settle.transition {
            Transition::Complete => {
                let queue = self.queue(&stored.job.queue);
                queue.processed += 1;
                queue.free_key(&stored.job, UniqueUntil::Finished);
                self.child_ended(&stored.job, Ended::Processed, now);
                dead.push((id, stored));
            }
            Transition::Cancel => {
                let queue = self.queue(&stored.job.queue);
                queue.cancelled += 1;
                queue.free_key(&stored.job, UniqueUntil::Finished);
                self.child_ended(&stored.job, Ended::Cancelled, now);
                dead.push((id, stored));
            }
            Transition::Retry { run_at, error } => {
                let errors = with_error(stored.errors, error);
                let last_error = Some(error.clone());
                self.enqueue(id, stored.job, stored.attempts, last_error, errors, *run_at, now);
            }
            Transition::Fail { error } => {
                let failed = FailedJob::new(&stored.job, stored.attempts, error.clone(), now);
                let errors = with_error(stored.errors, error);
                let queue = self.queue(&stored.job.queue);
                queue.failed += 1;
                queue.failed_total += 1;
                queue.free_key(&stored.job, UniqueUntil::Finished);
                self.child_ended(&stored.job, Ended::Failed, now);
                self.next_seq += 1;
                let seq = self.next_seq;
                self.failed_index.insert(stored.job.id.clone(), seq);
                self.failed.insert(seq, FailedEntry { job: stored.job, failed, errors });
            }
            Transition::Release { run_at } => {
                // The interrupted attempt does not count: the job did not fail, the worker stopped.
                let attempts = stored.attempts.saturating_sub(1);
                let (job, last_error, errors) = (stored.job, stored.last_error, stored.errors);
                self.enqueue(id, job, attempts, last_error, errors, *run_at, now);
            }
            other => {
                return Err(Error::unsupported("memory", format!("the transition {other:?}")));
            }
        }
        for job in &settle.effects.enqueue {
            self.insert_new(job.clone(), now);
        }
        Ok(())
    }

    fn info(&self, id: &str) -> Option<JobInfo> {
        if let Some(stored) = self.jobs.get(id) {
            let mut job = NewJob::clone(&stored.job);
            let (state, lease) = match &stored.state {
                JobState::Ready => (State_::Pending, None),
                JobState::Delayed(at) => {
                    job.available_at = *at;
                    (State_::Delayed, None)
                }
                JobState::Reserved { until, .. } => (State_::Reserved, Some(*until)),
            };
            let mut info = JobInfo::new(job, state, stored.attempts);
            info.last_error = stored.last_error.clone();
            info.lease_expires_at = lease;
            info.progress = stored.progress.clone();
            info.cancel_requested = stored.cancel_requested;
            info.errors.clone_from(&stored.errors);
            return Some(info);
        }
        let entry = self.failed.get(self.failed_index.get(id)?)?;
        let mut info =
            JobInfo::new(NewJob::clone(&entry.job), State_::Failed, entry.failed.attempts);
        info.last_error = Some(entry.failed.error.clone());
        info.failed_at = Some(entry.failed.failed_at);
        info.errors.clone_from(&entry.errors);
        Some(info)
    }

    /// Claims ready jobs of `queue` into `out` until it holds `until_full`.
    fn claim_from(
        &mut self,
        queue: &str,
        req: &ClaimRequest<'_>,
        until_full: usize,
        out: &mut Vec<Claimed>,
    ) {
        // Borrowed apart: the job map and the queue are updated together for each job.
        let Self { jobs, queues, next_seq, .. } = self;
        let Some(q) = queues.get_mut(queue) else { return };
        while out.len() < until_full {
            let Some((_, SortId { id, .. })) = q.ready.pop_first() else { break };
            let stored = jobs.get_mut(&*id).expect("a ready id has a job");
            *next_seq += 1;
            let token = *next_seq;
            let until = req.lease_until(stored.job.timeout_ms);
            stored.attempts += 1;
            stored.state = JobState::Reserved { token, until };
            q.ready_since_remove(stored.job.available_at);
            q.free_key(&stored.job, UniqueUntil::Started);
            if q.limits.rate.is_some() {
                q.starts.push_back(req.now);
            }
            q.reserved.insert((until, token), id);
            out.push(Claimed {
                job: Arc::clone(&stored.job),
                attempt: stored.attempts,
                last_error: stored.last_error.clone(),
                token,
                until,
            });
        }
    }

    fn promote_due(&mut self, queue: &str, now: Millis) {
        let Some(q) = self.queues.get_mut(queue) else { return };
        while let Some((at, id)) = q.delayed.first().cloned() {
            if at > now {
                break;
            }
            q.delayed.pop_first();
            if let Some(stored) = self.jobs.get_mut(&*id.id) {
                stored.state = JobState::Ready;
                q.ready_since_add(at);
                q.ready.insert((Reverse(stored.job.priority), id));
            }
        }
    }
}

/// Operations: queue latency and pruning the failed set.
impl State {
    /// How long the oldest due job of `queue` has waited at `now`: the earliest due time among
    /// its ready jobs and its delayed jobs that are due but not yet promoted.
    fn latency(&self, queue: &str, now: Millis) -> Option<u64> {
        let q = self.queues.get(queue)?;
        let ready = q.ready_since.first_key_value().map(|(at, _)| *at);
        let due = q.delayed.first().map(|(at, _)| *at).filter(|at| *at <= now);
        let oldest = match (ready, due) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(u64::try_from(now.saturating_sub(oldest)).unwrap_or(0))
    }

    /// Deletes the failed jobs `prune` names; returns how many. The failed set is kept in the
    /// order jobs failed, so the age rule stops at the first job young enough.
    fn prune_failed(&mut self, prune: &Prune) -> u64 {
        let in_scope =
            |entry: &FailedEntry| prune.queue.as_deref().is_none_or(|q| entry.failed.queue == q);
        let mut doomed = BTreeSet::new();
        if let Some(before) = prune.failed_before {
            for (seq, entry) in &self.failed {
                if !in_scope(entry) {
                    continue;
                }
                if entry.failed.failed_at >= before {
                    break;
                }
                doomed.insert(*seq);
            }
        }
        if let Some(keep) = prune.keep {
            let count = match &prune.queue {
                Some(q) => self.queues.get(q.as_str()).map_or(0, |q| q.failed),
                None => self.failed.len() as u64,
            };
            let excess = usize::try_from(count.saturating_sub(keep)).unwrap_or(usize::MAX);
            doomed.extend(
                self.failed.iter().filter(|(_, e)| in_scope(e)).take(excess).map(|(seq, _)| *seq),
            );
        }
        for seq in &doomed {
            let entry = self.failed.remove(seq).expect("collected from the set");
            self.failed_index.remove(&entry.failed.id);
            let queue = self.queue(&entry.failed.queue);
            queue.failed = queue.failed.saturating_sub(1);
        }
        doomed.len() as u64
    }
}

/// Batches: the counting rules of [`NewBatch`], applied inside the step that ends each child.
impl State {
    /// Stores a batch and its children; a duplicate child is not part of it.
    fn push_batch(&mut self, batch: NewBatch, children: Vec<NewJob>) -> Result<Vec<PushOutcome>> {
        if self.batches.contains_key(&batch.id) {
            return Err(Error::invalid(
                "batch",
                format!("a batch with id {} exists; give a new batch a new id", batch.id),
            ));
        }
        if let Some(child) =
            children.iter().find(|c| c.batch.as_ref().is_some_and(|b| *b != batch.id))
        {
            return Err(Error::invalid(
                "batch child",
                format!(
                    "job {} names batch {:?}, not {}; a child belongs to the batch it is pushed with",
                    child.id, child.batch, batch.id
                ),
            ));
        }
        let callback = |job: &Option<NewJob>| {
            job.as_ref().map(|job| BatchCallback::new(job, CallbackState::Waiting))
        };
        let mut info = BatchInfo::new(batch.id.clone());
        info.allow_failures = batch.allow_failures;
        info.created_at = batch.created_at;
        info.then = callback(&batch.then);
        info.catch = callback(&batch.catch);
        info.finally = callback(&batch.finally);
        let mut unfinished = BTreeSet::new();
        let outcomes = children
            .into_iter()
            .map(|mut child| {
                child.batch = Some(batch.id.clone());
                let id = child.id.clone();
                let now = child.dispatched_at;
                let outcome = self.insert_new(child, now);
                if outcome == PushOutcome::Stored {
                    unfinished.insert(id);
                }
                outcome
            })
            .collect();
        info.total = unfinished.len() as u64;
        info.pending = info.total;
        let id = batch.id.clone();
        let state = BatchState {
            info,
            then: batch.then,
            catch: batch.catch,
            finally: batch.finally,
            unfinished,
        };
        self.batches.insert(id.clone(), state);
        // A batch left without children finishes in this same step.
        self.finish_batch_if_done(&id, batch.created_at);
        Ok(outcomes)
    }

    /// Counts the end of `job` in its batch, if it is an unfinished child of one: the first
    /// failure dispatches `catch` and (unless failures are allowed) cancels the batch; the last
    /// child finishes it.
    fn child_ended(&mut self, job: &NewJob, ended: Ended, now: Millis) {
        let Some(id) = &job.batch else { return };
        let Some(batch) = self.batches.get_mut(id) else { return };
        if !batch.unfinished.remove(&job.id) {
            return;
        }
        batch.info.pending -= 1;
        match ended {
            Ended::Processed => batch.info.processed += 1,
            Ended::Failed => batch.info.failed += 1,
            Ended::Cancelled => batch.info.cancelled += 1,
        }
        if ended == Ended::Failed && batch.info.failed == 1 {
            let catch = dispatch_callback(&mut batch.info.catch, batch.catch.as_ref());
            let cancels = !batch.info.allow_failures;
            let id = id.clone();
            self.store_callbacks(catch, now);
            if cancels {
                self.cancel_batch(&id, now);
            }
            self.finish_batch_if_done(&id, now);
        } else {
            let id = id.clone();
            self.finish_batch_if_done(&id, now);
        }
    }

    /// Cancels a batch that is neither cancelled nor finished: removes its waiting children
    /// (counted cancelled, keys freed) and asks its running ones to stop.
    fn cancel_batch(&mut self, id: &str, now: Millis) {
        let Some(batch) = self.batches.get_mut(id) else { return };
        if batch.info.cancelled_at.is_some() || batch.info.finished_at.is_some() {
            return;
        }
        batch.info.cancelled_at = Some(now);
        let children: Vec<String> = batch.unfinished.iter().cloned().collect();
        for child in children {
            match self.jobs.get_mut(child.as_str()) {
                Some(stored) if matches!(stored.state, JobState::Reserved { .. }) => {
                    stored.cancel_requested = true;
                }
                Some(_) => {
                    let stored = self.remove_waiting(&child).expect("found above");
                    self.queue(&stored.job.queue).cancelled += 1;
                    self.child_ended(&stored.job, Ended::Cancelled, now);
                }
                None => {}
            }
        }
        self.finish_batch_if_done(id, now);
    }

    /// Finishes a batch whose last child ended: `then` if every child completed, `finally`
    /// always, and a callback not dispatched is skipped.
    fn finish_batch_if_done(&mut self, id: &str, now: Millis) {
        let Some(batch) = self.batches.get_mut(id) else { return };
        if batch.info.pending > 0 || batch.info.finished_at.is_some() {
            return;
        }
        let info = &mut batch.info;
        info.finished_at = Some(now);
        let succeeded = info.failed == 0 && info.cancelled == 0 && info.cancelled_at.is_none();
        let mut jobs = Vec::new();
        if succeeded {
            jobs.extend(dispatch_callback(&mut info.then, batch.then.as_ref()));
        }
        jobs.extend(dispatch_callback(&mut info.finally, batch.finally.as_ref()));
        for callback in [&mut info.then, &mut info.catch].into_iter().flatten() {
            if callback.state == CallbackState::Waiting {
                callback.state = CallbackState::Skipped;
            }
        }
        self.store_callbacks(jobs, now);
    }

    /// Stores dispatched callbacks as a push would (an existing id is left as it is).
    fn store_callbacks(&mut self, jobs: impl IntoIterator<Item = NewJob>, now: Millis) {
        for job in jobs {
            self.insert_new(job, now);
            self.batch_woke = true;
        }
    }
}

/// Marks a waiting callback dispatched and answers its job; `None` if it is not waiting.
fn dispatch_callback(shown: &mut Option<BatchCallback>, job: Option<&NewJob>) -> Option<NewJob> {
    let shown = shown.as_mut()?;
    if shown.state != CallbackState::Waiting {
        return None;
    }
    shown.state = CallbackState::Dispatched;
    job.cloned()
}

#[async_trait]
impl Driver for MemoryDriver {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.cross_queue_atomic = true;
        capabilities
    }

    async fn push(&self, jobs: Vec<NewJob>) -> Result<Vec<PushOutcome>> {
        let incoming: Vec<Incoming> = jobs.into_iter().map(Incoming::new).collect();
        let outcomes = {
            let mut state = self.state_shared().await;
            incoming
                .into_iter()
                .map(|job| {
                    let now = job.job.dispatched_at;
                    state.insert_incoming(job, now)
                })
                .collect()
        };
        self.inner.ready.notify_waiters();
        Ok(outcomes)
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim> {
        let mut claim = Claim::default();
        let mut claimed = Vec::new();
        let mut state = self.state_shared().await;
        // Read under the lock: a claim that waited for it counts its starts when it took them.
        let req = &req.at_step();
        for queue in req.queues {
            if state.queues.get(queue.as_str()).is_some_and(|q| q.paused) {
                continue;
            }
            state.promote_due(queue, req.now);
            let want = req.max.saturating_sub(claimed.len());
            let settling = req.settling.map(|settling| (settling, want));
            let (allowed, reopens) = state
                .queues
                .get_mut(queue.as_str())
                .map_or((usize::MAX, None), |q| q.allowance(req.now, settling));
            if let Some(at) = reopens
                && state.queues.get(queue.as_str()).is_some_and(|q| !q.ready.is_empty())
            {
                claim.next_due = Some(claim.next_due.map_or(at, |due: Millis| due.min(at)));
            }
            let until_full = claimed.len().saturating_add(allowed).min(req.max);
            state.claim_from(queue, req, until_full, &mut claimed);
            if let Some(q) = state.queues.get(queue.as_str())
                && let Some((at, _)) = q.delayed.first()
            {
                claim.next_due = Some(claim.next_due.map_or(*at, |due: Millis| due.min(*at)));
            }
        }
        drop(state);
        // The records' strings are copied outside the lock, so a claim holds it for the index
        // updates only and the settles of the worker's writer wait less.
        claim.jobs = claimed.into_iter().map(Claimed::reserved).collect();
        Ok(claim)
    }

    async fn settle(&self, batch: &[Settle], now: Millis) -> Vec<Result<()>> {
        // One lock for the batch instead of one per job. A settle wakes waiters when it makes a
        // job claimable, or frees a slot of a queue with a concurrency limit.
        let mut wakes = false;
        // Freed after the lock is released: the worker's claims need not wait for it.
        let mut dead = Vec::with_capacity(batch.len());
        let results: Vec<Result<()>> = {
            let mut state = self.state_shared().await;
            let results = batch
                .iter()
                .map(|settle| {
                    let result = state.settle(settle, now, &mut dead);
                    wakes |= result.is_ok()
                        && (!settle.effects.enqueue.is_empty()
                            || matches!(
                                settle.transition,
                                Transition::Retry { .. } | Transition::Release { .. }
                            )
                            || state
                                .queues
                                .get(settle.lease.queue.as_str())
                                .is_some_and(|q| q.limits.concurrency.is_some()));
                    result
                })
                .collect::<Vec<_>>();
            // A batch callback stored by one of these settles is claimable too.
            wakes |= std::mem::take(&mut state.batch_woke);
            results
        };
        drop(dead);
        if wakes {
            self.inner.ready.notify_waiters();
        }
        results
    }

    async fn fire_schedule(&self, fire: &Fire, now: Millis) -> Result<bool> {
        {
            // The cursor's compare-and-set and the push under one lock: one atomic step.
            let mut state = self.state();
            let record = state
                .schedules
                .get_mut(&fire.name)
                .ok_or_else(|| Error::NotFound { id: fire.name.clone() })?;
            if record.cursor != fire.expected_cursor {
                return Ok(false);
            }
            record.cursor = fire.cursor;
            if fire.last_run.is_some() {
                record.last_run = fire.last_run;
            }
            record.next_run = fire.next_run;
            for job in &fire.jobs {
                state.insert_new(job.clone(), now);
            }
        }
        if !fire.jobs.is_empty() {
            self.inner.ready.notify_waiters();
        }
        Ok(true)
    }

    async fn push_batch(&self, batch: NewBatch, children: Vec<NewJob>) -> Result<Vec<PushOutcome>> {
        let outcomes = self.state().push_batch(batch, children)?;
        // Children (or the callbacks of a batch left empty) are claimable.
        self.inner.ready.notify_waiters();
        Ok(outcomes)
    }

    async fn touch(&self, running: &[Touch], _now: Millis) -> Result<Vec<String>> {
        let mut state = self.state();
        let mut cancelled = Vec::new();
        for touch in running {
            if !state.holds(&touch.lease) {
                continue;
            }
            let stored = state.jobs.get_mut(touch.lease.id.as_str()).expect("held");
            if let Some(progress) = &touch.progress {
                stored.progress = Some(progress.clone());
            }
            if stored.cancel_requested {
                cancelled.push(touch.lease.id.clone());
            }
        }
        Ok(cancelled)
    }

    async fn extend(&self, lease: &Lease, until: Millis, _now: Millis) -> Result<Lease> {
        let mut state = self.state();
        let (id, stored) = state.take_leased(lease)?;
        let JobState::Reserved { token, .. } = stored.state else { unreachable!("leased") };
        state.queue(&stored.job.queue).reserved.insert((until, token), Arc::clone(&id));
        state.jobs.insert(id, Stored { state: JobState::Reserved { token, until }, ..stored });
        let mut extended = lease.clone();
        extended.expires_at = until;
        Ok(extended)
    }

    async fn recover(&self, queues: &[String], now: Millis) -> Result<u64> {
        let mut recovered = 0;
        let woke;
        {
            let mut state = self.state();
            for queue in queues {
                while let Some(q) = state.queues.get_mut(queue.as_str()) {
                    let Some((&(until, _), _)) = q.reserved.first_key_value() else { break };
                    if until > now {
                        break;
                    }
                    let (_, id) = q.reserved.pop_first().expect("looked above");
                    if state.jobs.get(&*id).is_some_and(|s| s.cancel_requested) {
                        // Cancelled while its worker was lost: it ends here instead of running again.
                        let stored = state.jobs.remove(&*id).expect("checked above");
                        let q = state.queue(queue);
                        q.cancelled += 1;
                        q.free_key(&stored.job, UniqueUntil::Finished);
                        state.child_ended(&stored.job, Ended::Cancelled, now);
                        continue;
                    }
                    let stored = state.jobs.get_mut(&*id).expect("a reserved id has a job");
                    stored.state = JobState::Ready;
                    // Claimable again since its lease ran out.
                    Arc::make_mut(&mut stored.job).available_at = until;
                    stored.last_error = Some(format!(
                        "lease expired at {until}: the worker running attempt {} stopped responding",
                        stored.attempts
                    ));
                    let priority = stored.job.priority;
                    let q = state.queue(queue);
                    q.ready_since_add(until);
                    q.ready.insert((Reverse(priority), SortId::new(id)));
                    recovered += 1;
                }
                if let Some(q) = state.queues.get_mut(queue.as_str()) {
                    q.sweep_period_keys(now, usize::MAX);
                }
            }
            // A cancelled batch child's end may have dispatched its batch's callbacks.
            woke = std::mem::take(&mut state.batch_woke);
        }
        if recovered > 0 || woke {
            self.inner.ready.notify_waiters();
        }
        Ok(recovered)
    }

    async fn wait(&self, queues: &[String], now: Millis, timeout: Duration) -> Result<()> {
        let notified = self.inner.ready.notified();
        let mut notified = std::pin::pin!(notified);
        // Register before looking, so a push between the look and the wait still wakes us.
        notified.as_mut().enable();
        {
            let mut state = self.state();
            let claimable = |q: &mut QueueState| {
                !q.paused
                    && (!q.ready.is_empty() || q.delayed.first().is_some_and(|(at, _)| *at <= now))
                    && q.allowance(now, None).0 > 0
            };
            if queues.iter().any(|q| state.queues.get_mut(q.as_str()).is_some_and(claimable)) {
                return Ok(());
            }
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        Ok(())
    }
}

#[async_trait]
impl Admin for MemoryDriver {
    async fn stats(&self, queue: &str, now: Millis) -> Result<QueueStats> {
        let state = self.state();
        let mut stats = QueueStats::new(queue);
        stats.latency_ms = state.latency(queue, now);
        let Some(q) = state.queues.get(queue) else { return Ok(stats) };
        let due =
            q.delayed.range(..(now.saturating_add(1), SortId::new(Id::from("")))).count() as u64;
        stats.pending = q.ready.len() as u64 + due;
        stats.delayed = q.delayed.len() as u64 - due;
        stats.reserved = q.reserved.len() as u64;
        stats.failed = q.failed;
        stats.processed = q.processed;
        stats.failed_total = q.failed_total;
        stats.paused = q.paused;
        stats.cancelled = q.cancelled;
        stats.limits = q.limits;
        Ok(stats)
    }

    async fn queues(&self) -> Result<Vec<String>> {
        Ok(self.state().queues.keys().cloned().collect())
    }

    async fn get(&self, id: &str, _now: Millis) -> Result<Option<JobInfo>> {
        Ok(self.state().info(id))
    }

    async fn list(&self, req: &ListRequest, _now: Millis) -> Result<Vec<JobInfo>> {
        let state = self.state();
        let Some(q) = state.queues.get(req.queue.as_str()) else { return Ok(Vec::new()) };
        let ids: Box<dyn Iterator<Item = &Id>> = match req.state {
            State_::Pending => Box::new(q.ready.iter().map(|(_, sorted)| &sorted.id)),
            State_::Delayed => Box::new(q.delayed.iter().map(|(_, sorted)| &sorted.id)),
            State_::Reserved => Box::new(q.reserved.values()),
            other => {
                return Err(Error::invalid(
                    "job state",
                    format!(
                        "list shows pending, delayed or reserved jobs, not {other}; use failed()"
                    ),
                ));
            }
        };
        Ok(ids
            .skip(usize::try_from(req.offset).unwrap_or(usize::MAX))
            .take(req.limit.min(MAX_PAGE))
            .filter_map(|id| state.info(id))
            .collect())
    }

    async fn clear(&self, queue: &str, now: Millis) -> Result<u64> {
        let mut state = self.state();
        let Some(q) = state.queues.get_mut(queue) else { return Ok(0) };
        q.ready_since.clear();
        let ids: Vec<Id> = std::mem::take(&mut q.ready)
            .into_iter()
            .map(|(_, sorted)| sorted.id)
            .chain(std::mem::take(&mut q.delayed).into_iter().map(|(_, sorted)| sorted.id))
            .collect();
        for id in &ids {
            if let Some(stored) = state.jobs.remove(&**id) {
                let queue = state.queue(&stored.job.queue);
                queue.free_key(&stored.job, UniqueUntil::Finished);
                queue.free_key(&stored.job, UniqueUntil::Started);
                state.child_ended(&stored.job, Ended::Cancelled, now);
            }
        }
        self.wake_for_callbacks(&mut state);
        Ok(ids.len() as u64)
    }

    async fn failed(&self, query: &FailedQuery) -> Result<Vec<FailedJob>> {
        let state = self.state();
        Ok(state
            .failed
            .values()
            .filter(|entry| query.queue.as_deref().is_none_or(|q| entry.failed.queue == q))
            .skip(usize::try_from(query.offset).unwrap_or(usize::MAX))
            .take(query.limit.min(MAX_PAGE))
            .map(|entry| entry.failed.clone())
            .collect())
    }

    async fn retry_failed(&self, id: &str, now: Millis) -> Result<()> {
        {
            let mut state = self.state();
            let seq = state
                .failed_index
                .remove(id)
                .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
            let mut entry = state.failed.remove(&seq).expect("the index points at an entry");
            state.queue(&entry.job.queue).failed -= 1;
            // It was counted in its batch when it failed: back on its queue, it leaves the batch.
            Arc::make_mut(&mut entry.job).batch = None;
            // Its error history stays with it: the next failures add to it.
            let id = Id::from(entry.job.id.as_str());
            state.enqueue(id, entry.job, 0, None, entry.errors, now, now);
        }
        self.inner.ready.notify_waiters();
        Ok(())
    }

    async fn forget_failed(&self, id: &str) -> Result<()> {
        let mut state = self.state();
        let seq =
            state.failed_index.remove(id).ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        let entry = state.failed.remove(&seq).expect("the index points at an entry");
        state.queue(&entry.job.queue).failed -= 1;
        Ok(())
    }

    async fn flush_failed(&self) -> Result<u64> {
        let mut state = self.state();
        let count = state.failed.len() as u64;
        state.failed.clear();
        state.failed_index.clear();
        for q in state.queues.values_mut() {
            q.failed = 0;
        }
        Ok(count)
    }

    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()> {
        self.state().queue(queue).limits = *limits;
        // Looser limits may let idle workers claim.
        self.inner.ready.notify_waiters();
        Ok(())
    }

    async fn cancel(&self, id: &str, now: Millis) -> Result<CancelOutcome> {
        let mut state = self.state();
        match state.jobs.get_mut(id) {
            None => Err(Error::NotFound { id: id.to_owned() }),
            Some(stored) if matches!(stored.state, JobState::Reserved { .. }) => {
                stored.cancel_requested = true;
                Ok(CancelOutcome::Requested)
            }
            Some(_) => {
                let stored = state.remove_waiting(id).expect("found above");
                state.queue(&stored.job.queue).cancelled += 1;
                state.child_ended(&stored.job, Ended::Cancelled, now);
                self.wake_for_callbacks(&mut state);
                Ok(CancelOutcome::Removed)
            }
        }
    }

    async fn batch(&self, id: &str) -> Result<Option<BatchInfo>> {
        Ok(self.state().batches.get(id).map(|batch| batch.info.clone()))
    }

    async fn cancel_batch(&self, id: &str, now: Millis) -> Result<BatchInfo> {
        let mut state = self.state();
        if !state.batches.contains_key(id) {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        state.cancel_batch(id, now);
        self.wake_for_callbacks(&mut state);
        Ok(state.batches[id].info.clone())
    }

    async fn register_schedule(&self, record: &ScheduleRecord) -> Result<ScheduleRecord> {
        let mut state = self.state();
        let stored = state
            .schedules
            .entry(record.name.clone())
            .and_modify(|stored| {
                // An existing schedule keeps its cursor (and runs): only the definition changes.
                stored.queue.clone_from(&record.queue);
                stored.definition.clone_from(&record.definition);
                stored.updated_at = record.updated_at;
            })
            .or_insert_with(|| record.clone());
        Ok(stored.clone())
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        Ok(self.state().schedules.values().cloned().collect())
    }

    async fn forget_schedule(&self, name: &str) -> Result<bool> {
        Ok(self.state().schedules.remove(name).is_some())
    }

    async fn heartbeat(
        &self,
        worker: &WorkerInfo,
        ended: &[Throughput],
        ttl_ms: u64,
        now: Millis,
    ) -> Result<()> {
        let mut state = self.state();
        let mut entry = worker.clone();
        entry.last_heartbeat = now;
        let expires = now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        state.workers.insert(entry.id.clone(), (entry, expires));
        let minute = now - now.rem_euclid(60_000);
        for t in ended.iter().filter(|t| t.processed > 0 || t.failed > 0) {
            let bucket = state.throughput.entry((minute, t.queue.clone())).or_default();
            bucket.0 += t.processed;
            bucket.1 += t.failed;
        }
        // The oldest buckets come first: drop those past the horizon.
        let horizon = now.saturating_sub(THROUGHPUT_HORIZON_MS);
        while state.throughput.first_key_value().is_some_and(|((m, _), _)| *m < horizon) {
            state.throughput.pop_first();
        }
        Ok(())
    }

    async fn workers(&self, now: Millis) -> Result<Vec<WorkerInfo>> {
        let mut state = self.state();
        state.workers.retain(|_, (_, expires)| *expires >= now);
        let mut workers: Vec<WorkerInfo> =
            state.workers.values().map(|(info, _)| info.clone()).collect();
        workers.sort_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.id.cmp(&b.id)));
        Ok(workers)
    }

    async fn forget_worker(&self, id: &str) -> Result<bool> {
        Ok(self.state().workers.remove(id).is_some())
    }

    async fn throughput(&self, queue: Option<&str>, since: Millis) -> Result<Vec<Throughput>> {
        let state = self.state();
        let mut history: Vec<Throughput> = Vec::new();
        let from = (since, String::new());
        for ((minute, name), (processed, failed)) in state.throughput.range(from..) {
            if queue.is_some_and(|q| q != name) {
                continue;
            }
            match history.last_mut() {
                // Over every queue, the queues of one minute are summed.
                Some(last) if last.minute == *minute => {
                    last.processed += processed;
                    last.failed += failed;
                }
                _ => {
                    let mut bucket =
                        Throughput::new(queue.unwrap_or_default(), *processed, *failed);
                    bucket.minute = *minute;
                    history.push(bucket);
                }
            }
        }
        Ok(history)
    }

    async fn prune_failed(&self, prune: &Prune) -> Result<u64> {
        Ok(self.state().prune_failed(prune))
    }

    async fn forget_queue(&self, queue: &str) -> Result<bool> {
        // Under the lock: the check and the removal are one step.
        let mut state = self.state();
        let Some(q) = state.queues.get(queue) else { return Ok(true) };
        if !q.ready.is_empty() || !q.delayed.is_empty() || !q.reserved.is_empty() || q.failed > 0 {
            return Ok(false);
        }
        // Its counters, pause flag, limits, start log and held (`Period`) keys go with it.
        state.queues.remove(queue);
        Ok(true)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.state().queue(queue).paused = paused;
        if !paused {
            self.inner.ready.notify_waiters();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use orcs_core::{Driver as _, NewJob, PushOutcome, Unique, UniqueUntil};

    use super::*;

    fn keyed(queue: &str, id: &str, key: &str, until: UniqueUntil, at: Millis) -> NewJob {
        let mut job = NewJob::new(id, "noop", queue, "{}", at);
        job.unique = Some(Unique::new(key, until));
        job
    }

    /// The ready and delayed sets order ids as their strings do, whether an id compares as a
    /// number (a canonical ULID) or as a string (any other id, a lower-case ULID included).
    #[test]
    fn sort_ids_order_as_their_strings() {
        let mut ids: Vec<String> = [
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "01ARZ3NDEKTSV4RRFFQ69G5FAW",
            "01arz3ndektsv4rrffq69g5fav",
            "01ARZ3NDEKTSV4RRFFQ69G5FA",
            "01ARZ3NDEKTSV4RRFFQ69G5FAVX",
            "01ARZ3NDEKTSV4RRFFQ69G5FAI",
            "00000000000000000000000000",
            "0000000000000000000000000Z",
            "7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "80000000000000000000000000",
            "ZZZ",
            "a",
            "",
        ]
        .map(String::from)
        .into();
        ids.extend((0..200).map(|_| orcs_core::new_job_id()));
        assert!(ulid_bits(&ids[0]).is_some() && ulid_bits(&ids[ids.len() - 1]).is_some());
        assert_eq!(ulid_bits("01arz3ndektsv4rrffq69g5fav"), None);
        assert_eq!(ulid_bits("80000000000000000000000000"), None, "over 128 bits");
        assert_eq!(ulid_bits("01ARZ3NDEKTSV4RRFFQ69G5FAI"), None, "I is not a digit");
        for a in &ids {
            for b in &ids {
                let (x, y) = (SortId::new(Id::from(a.as_str())), SortId::new(Id::from(b.as_str())));
                assert_eq!(x.cmp(&y), a.cmp(b), "{a:?} against {b:?}");
                assert_eq!(x == y, a == b, "{a:?} against {b:?}");
            }
        }
    }

    /// A held key's entry stays small: a push writes one into a table of every waiting job's
    /// key (see `KeyMap`).
    #[test]
    fn a_held_key_is_a_hash_and_a_pointer() {
        assert_eq!(std::mem::size_of::<HeldKey>(), 16);
    }

    fn held_keys(driver: &MemoryDriver, queue: &str) -> (usize, usize) {
        let state = driver.state();
        state.queues.get(queue).map_or((0, 0), |q| (q.unique.len(), q.period_keys.len()))
    }

    /// An expired `Period` key is free whether or not its entry is there (the conformance
    /// suite checks that); this checks that the entry goes too, so that a process dispatching
    /// with `Period` keys does not keep every key it ever used. Recovery drops every expired
    /// one of its queues, a `Period` push a few; a key taken over since stays with its new
    /// holder.
    #[tokio::test]
    async fn expired_period_keys_leave_the_key_map() {
        let driver = MemoryDriver::new();
        let period = UniqueUntil::Period(1_000);
        let old: Vec<NewJob> =
            (0..10).map(|i| keyed("q", &format!("old{i}"), &format!("k{i}"), period, 0)).collect();
        let live = keyed("q", "live", "live", UniqueUntil::Period(60_000), 0);
        let finished = keyed("q", "fin", "fin", UniqueUntil::Finished, 0);
        let other = keyed("other", "other", "k0", period, 0);
        let pushed = driver.push([old, vec![live, finished, other]].concat()).await.unwrap();
        assert!(pushed.iter().all(|o| *o == PushOutcome::Stored), "{pushed:?}");
        assert_eq!(held_keys(&driver, "q"), (12, 11));

        // Key k0 expired and is taken over by a Finished key: its old time entry goes, the key
        // stays held. The push also drops up to four other expired keys.
        let again = keyed("q", "again", "k0", UniqueUntil::Finished, 5_000);
        assert_eq!(driver.push(vec![again]).await.unwrap(), [PushOutcome::Stored]);
        let taken = keyed("q", "taken", "k0", UniqueUntil::Finished, 5_000);
        assert_eq!(
            driver.push(vec![taken]).await.unwrap(),
            [PushOutcome::Duplicate { id: "again".into() }]
        );
        // A Period push sweeps four time entries: k0's stale one (the key stays with `again`),
        // then k1, k2 and k3, whose keys go.
        let fresh = keyed("q", "fresh", "p", period, 5_000);
        assert_eq!(driver.push(vec![fresh]).await.unwrap(), [PushOutcome::Stored]);
        assert_eq!(held_keys(&driver, "q"), (10, 8));

        // Recovery drops every expired one of its queues; the live, Finished and taken-over
        // keys stay, and so does the other queue's expired key until its own recovery.
        driver.recover(&["q".to_owned()], 5_000).await.unwrap();
        assert_eq!(held_keys(&driver, "q"), (4, 2), "live, fin, k0 (again) and p stay");
        assert_eq!(held_keys(&driver, "other"), (1, 1));
        driver.recover(&["other".to_owned()], 5_000).await.unwrap();
        assert_eq!(held_keys(&driver, "other"), (0, 0));
        // The freed keys are free.
        let reuse = keyed("q", "reuse", "k9", period, 5_000);
        assert_eq!(driver.push(vec![reuse]).await.unwrap(), [PushOutcome::Stored]);
    }
}
