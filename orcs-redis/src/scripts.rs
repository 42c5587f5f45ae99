//! The Lua scripts: each one atomic, bounded, touching only the keys passed in KEYS. redis-rs
//! calls them by SHA and loads them on NOSCRIPT.
//!
//! Each script comes with one function that builds its call, so the order of its KEYS and ARGV
//! is written once, next to the script that reads them.

use std::sync::LazyLock;

use orcs_core::{ClaimRequest, Millis, NewJob, QueueLimits, Touch, Transition};
use redis::{Script, ScriptInvocation};

use crate::keys::{QueueKeys, encode, encode_unique};

/// Helpers prepended to every script that needs them.
const PRELUDE: &str = r"
-- A record starts with 'v2|priority|timeout|' or 'v3|priority|timeout|' (layout 1:
-- 'priority|timeout|'); a damaged one
-- reads as priority 0 and no own timeout, and is failed by the client when it cannot parse it.
local function header(blob)
  if not blob then return 0, nil end
  local p, t = string.match(blob, '^v%d+|(-?%d+)|(%d*)|')
  if not p then p, t = string.match(blob, '^(-?%d+)|(%d*)|') end
  return tonumber(p) or 0, tonumber(t)
end
-- One item in the marker list wakes one blocked worker; more would only wake them for nothing.
local function arm(marker)
  if redis.call('LLEN', marker) == 0 then redis.call('RPUSH', marker, '1') end
end
-- The unique key job `id` was dispatched with, as mode and key: a keyed record of layout 3
-- carries it ('v3|', six fields, then mode|period|key_len|name_len|<key>...); a job stored under
-- layout 2 has it in `unique_of`, looked up only when `legacy` says that hash exists (so a queue
-- whose layout-2 jobs are gone pays nothing for them). nil for a job without a key.
local function key_of(blob, unique_of, id, legacy)
  if blob then
    local mode, len, at = string.match(blob,
      '^v3|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|(%a)|%d*|(%d+)|%d+|()')
    if mode then return mode, string.sub(blob, at, at + tonumber(len) - 1) end
  end
  if legacy then
    local spec = redis.call('HGET', unique_of, id)
    if spec then return string.match(spec, '^(%a)|%d*|(.*)$') end
  end
  return nil
end
-- Frees `key` (of mode `mode`, as key_of answers) if the mode is one of `modes` and job `id`
-- still holds it; a Period key also leaves `expiry` (nil where no caller frees Period keys).
local function free_key(unique, expiry, id, mode, key, modes)
  if mode and string.find(modes, mode, 1, true) and redis.call('HGET', unique, key) == id then
    redis.call('HDEL', unique, key)
    if mode == 'p' and expiry then redis.call('ZREM', expiry, key) end
  end
end
-- Frees the unique key job `id` holds, as free_key does (no Period keys), its record read from
-- `jobs` (see key_of for `unique_of` and `legacy`).
local function free_key_of(jobs, unique, unique_of, id, legacy, modes)
  local mode, key = key_of(redis.call('HGET', jobs, id), unique_of, id, legacy)
  free_key(unique, nil, id, mode, key, modes)
end
-- Puts job `id` into the ready set at the priority its record in `jobs` carries.
local function make_ready(ready, jobs, id)
  redis.call('ZADD', ready, -header(redis.call('HGET', jobs, id)), id)
end
-- Moves job `id` to the failed set (in the order of the `failseq` counter in `stats`) with
-- error `err` and time `at`, and counts it in `failed_total`.
local function fail(stats, failed, failed_at, errors, id, at, err)
  local seq = redis.call('HINCRBY', stats, 'failseq', 1)
  redis.call('ZADD', failed, seq, id)
  redis.call('HSET', failed_at, id, at)
  redis.call('HSET', errors, id, err)
  redis.call('HINCRBY', stats, 'failed_total', 1)
end
-- Stores one job of the group whose keys start after KEYS[k] (ready, delayed, jobs, marker,
-- unique, unique_expiry, unique_of), from its 9 arguments starting at ARGV[b] (group, id,
-- 'r' or 'd', score, record, unique spec, unique key, Period expiry or '', now). The spec is ''
-- for a job without a key, 'k' when its record carries the key (layout 3), else the layout-2
-- spec for `unique_of`.
-- Returns 1 if stored, 0 if its id is in use, or the id of the job holding its unique key.
local function store(k, b)
  local id = ARGV[b + 1]
  -- HSETNX checks the id and stores the record in one command; a key held by another job
  -- takes the record out again.
  if redis.call('HSETNX', KEYS[k + 3], id, ARGV[b + 4]) == 0 then return 0 end
  local spec = ARGV[b + 5]
  if spec ~= '' then
    local key, expires, now = ARGV[b + 6], ARGV[b + 7], tonumber(ARGV[b + 8])
    if expires ~= '' then
      -- Each Period push deletes up to four Period keys whose time is up (only Period pushes
      -- add them), so they do not pile up.
      local old = redis.call('ZRANGEBYSCORE', KEYS[k + 6], '-inf', now, 'LIMIT', 0, 4)
      for _, o in ipairs(old) do
        redis.call('HDEL', KEYS[k + 5], o)
        redis.call('ZREM', KEYS[k + 6], o)
      end
    end
    if redis.call('HSETNX', KEYS[k + 5], key, id) == 0 then
      local holder = redis.call('HGET', KEYS[k + 5], key)
      local exp = redis.call('ZSCORE', KEYS[k + 6], key)
      local held
      if exp then
        held = now < tonumber(exp)
      else
        -- A Started or Finished key is held while its job lives; a holder without a record
        -- (deleted by an older orcs, say) frees it.
        held = redis.call('HEXISTS', KEYS[k + 3], holder) == 1
      end
      if held then
        redis.call('HDEL', KEYS[k + 3], id)
        return holder
      end
      redis.call('HSET', KEYS[k + 5], key, id)
      if exp and expires == '' then redis.call('ZREM', KEYS[k + 6], key) end
    end
    if expires ~= '' then redis.call('ZADD', KEYS[k + 6], expires, key) end
    if spec ~= 'k' then redis.call('HSET', KEYS[k + 7], id, spec) end
  end
  if ARGV[b + 2] == 'r' then
    redis.call('ZADD', KEYS[k + 1], ARGV[b + 3], id)
  else
    redis.call('ZADD', KEYS[k + 2], ARGV[b + 3], id)
  end
  return 1
end
-- Stores a job as `store` does, then, for the first job stored in its group of this call
-- (`touched` keeps the groups), sets the queue's `registered` mark in `stats` (KEYS[k + 8]).
-- Returns what `store` returns, but 2 where it set that mark.
local function store_marked(k, b, touched)
  local r = store(k, b)
  if r == 1 and not touched[k] then
    touched[k] = true
    if redis.call('HSETNX', KEYS[k + 8], 'registered', 1) == 1 then return 2 end
  end
  return r
end
";

/// The keys a job is stored under, in the order `store` reads them, then the queue's `stats`
/// (whose `registered` field says whether the queue was listed since it was created or
/// forgotten).
fn group_keys(call: &mut ScriptInvocation<'static>, keys: &QueueKeys) {
    call.key(&keys.ready)
        .key(&keys.delayed)
        .key(&keys.jobs)
        .key(&keys.marker)
        .key(&keys.unique)
        .key(&keys.unique_expiry)
        .key(&keys.unique_of)
        .key(&keys.stats);
}

/// The 9 arguments `store` takes for one job of group `group`, its record written for storage
/// layout `layout`.
fn job_args(call: &mut ScriptInvocation<'static>, group: usize, job: &NewJob, layout: u32) {
    call.arg(group).arg(&job.id);
    // A job due by its dispatch goes straight to the ready set; a delayed one waits (and a
    // waiter woken by the marker learns its due time from the next claim).
    if job.available_at <= job.dispatched_at {
        call.arg("r").arg(-i64::from(job.priority));
    } else {
        call.arg("d").arg(job.available_at);
    }
    call.arg(encode(job, layout));
    match &job.unique {
        Some(unique) => {
            // Layout 3 keeps the key in the record; layout 2 in `unique_of`, by this spec.
            if layout >= 3 {
                call.arg("k");
            } else {
                call.arg(encode_unique(unique));
            }
            call.arg(&unique.key);
            match unique.expires_at(job.dispatched_at) {
                Some(at) => call.arg(at),
                None => call.arg(""),
            };
            // A push's "now" is the job's dispatch time.
            call.arg(job.dispatched_at);
        }
        None => {
            call.arg("").arg("").arg("").arg("");
        }
    }
}

/// Stores jobs of one or more queues (several only on a single server), skipping ids in use.
///
/// KEYS, 8 per queue group g (0-based): ready, delayed, jobs, marker, unique, unique_expiry,
/// unique_of, stats. ARGV, 9 per job as `store` takes them.
/// Returns per job 1 (stored), 0 (duplicate id) or the id of the job holding its unique key;
/// 2 (stored) for the first job of a queue whose `registered` mark this call set: the queue is
/// new or was forgotten, and the caller adds it to the registry again (a registry cached by a
/// process may be stale since `forget_queue`).
const PUSH: &str = r"
local out, touched = {}, {}
for b = 1, #ARGV, 9 do
  out[#out + 1] = store_marked(tonumber(ARGV[b]) * 8, b, touched)
end
for k in pairs(touched) do arm(KEYS[k + 4]) end
return out
";

/// The push of `groups`: each a queue and its jobs (at most 1000 in all, checked by the caller),
/// written for storage layout `layout`.
pub(crate) fn push(groups: &[(QueueKeys, Vec<&NewJob>)], layout: u32) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.push.prepare_invoke();
    for (index, (keys, jobs)) in groups.iter().enumerate() {
        group_keys(&mut call, keys);
        for job in jobs {
            job_args(&mut call, index, job, layout);
        }
    }
    call
}

/// Removes jobs a failed large push stored, if they are still untouched (same record, not
/// claimed), and gives back the unique keys they took. KEYS: ready, delayed, jobs, unique,
/// unique_expiry, unique_of. ARGV: id, record pairs. Returns how many it removed.
const UNSTORE: &str = r"
local removed = 0
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[3], id) == ARGV[i + 1] then
    local n = redis.call('ZREM', KEYS[1], id) + redis.call('ZREM', KEYS[2], id)
    if n > 0 then
      redis.call('HDEL', KEYS[3], id)
      local mode, key = key_of(ARGV[i + 1], KEYS[6], id, true)
      free_key(KEYS[4], KEYS[5], id, mode, key, 'sfp')
      redis.call('HDEL', KEYS[6], id)
      removed = removed + 1
    end
  end
end
return removed
";

/// The compensation of `jobs` of queue `keys`, pushed for storage layout `layout` (the records
/// must match what the push stored).
pub(crate) fn unstore(
    keys: &QueueKeys,
    jobs: &[&NewJob],
    layout: u32,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.unstore.prepare_invoke();
    call.key(&keys.ready)
        .key(&keys.delayed)
        .key(&keys.jobs)
        .key(&keys.unique)
        .key(&keys.unique_expiry)
        .key(&keys.unique_of);
    for job in jobs {
        call.arg(&job.id).arg(encode(job, layout));
    }
    call
}

/// Claims up to ARGV[2] ready jobs (at most 1000 per call, which keeps every `unpack` far below
/// Lua's stack limit), after promoting due delayed jobs; nothing on a paused queue.
///
/// The queue's settings come with one `HMGET` of `meta`. A concurrency limit takes at most the
/// limit minus the reserved jobs (a `ZCARD`); a rate limit prunes the start log to the window and
/// takes at most the limit minus the starts left in it, then logs one start per claimed job
/// (member = its token, unique per queue). A claimed job's Started unique key frees, looked up
/// (in the record, or in `unique_of` for a job stored under layout 2) only when the queue holds
/// any key at all.
///
/// Promotion takes at most ARGV[5] due jobs, oldest due first. If more remain due after that,
/// the call claims nothing and answers `more` = 1: one of those left could outrank every ready
/// job, so claiming now could invert priorities. The client calls again; each call promotes
/// another chunk, so every call stays bounded and the claim happens once all due jobs compete.
///
/// KEYS: ready, delayed, reserved, jobs, attempts, tokens, errors, stats, marker, failed,
/// failed_at, meta, unique, unique_of, starts. ARGV: now, max, default timeout ms, grace ms,
/// promotion limit.
/// Returns {next_due or nil, more, then 6 per job: id, record, attempt, token, lease deadline,
/// last error or nil}; next_due is the earliest of the next delayed job's due time and, when
/// the rate limit holds back ready jobs, the time its window frees a start.
///
/// Each step works on the whole batch in one command (HMGET, HSET and ZADD of many fields), so
/// the cost of a call grows with the jobs it claims, not with the commands it makes per job.
const CLAIM: &str = r"
local meta = redis.call('HMGET', KEYS[12], 'paused', 'concurrency', 'rate_limit', 'rate_period')
if meta[1] == '1' then return {false, 0} end
local now = tonumber(ARGV[1])
local max = math.min(tonumber(ARGV[2]), 1000)
local concurrency, rate, period = tonumber(meta[2]), tonumber(meta[3]), tonumber(meta[4])
local limit = tonumber(ARGV[5])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
if #due > 0 then
  local records = redis.call('HMGET', KEYS[4], unpack(due))
  local fields = {}
  for i, id in ipairs(due) do
    fields[#fields + 1] = -header(records[i])
    fields[#fields + 1] = id
  end
  redis.call('ZADD', KEYS[1], unpack(fields))
  redis.call('ZREM', KEYS[2], unpack(due))
  if #due == limit and redis.call('ZCOUNT', KEYS[2], '-inf', now) > 0 then
    return {false, 1}
  end
end
local out = {false, 0}
-- What the limits leave room for, before this claim.
local room = math.huge
if concurrency then room = concurrency - redis.call('ZCARD', KEYS[3]) end
if rate and period then
  redis.call('ZREMRANGEBYSCORE', KEYS[15], '-inf', now - period)
  room = math.min(room, rate - redis.call('ZCARD', KEYS[15]))
end
max = math.min(max, room)
local ids, blobs = {}, {}
while #ids < max do
  local popped = redis.call('ZPOPMIN', KEYS[1], max - #ids)
  if #popped == 0 then break end
  local batch = {}
  for i = 1, #popped, 2 do batch[#batch + 1] = popped[i] end
  local records = redis.call('HMGET', KEYS[4], unpack(batch))
  for i, id in ipairs(batch) do
    if not records[i] then
      -- An id without a record cannot run: it goes to the failed set with the reason.
      fail(KEYS[8], KEYS[10], KEYS[11], KEYS[7], id, ARGV[1],
        'unreadable job record: its data is missing from ' .. KEYS[4])
    else
      ids[#ids + 1] = id
      blobs[#ids] = records[i]
    end
  end
end
if #ids > 0 then
  local attempts = redis.call('HMGET', KEYS[5], unpack(ids))
  -- Tokens come from one counter: this call takes the #ids numbers up to `last`.
  local last = redis.call('HINCRBY', KEYS[8], 'tokens', #ids)
  local errors = {}
  if redis.call('EXISTS', KEYS[7]) == 1 then errors = redis.call('HMGET', KEYS[7], unpack(ids)) end
  local attempt_fields, token_fields, leases, starts = {}, {}, {}, {}
  for i, id in ipairs(ids) do
    local _, timeout = header(blobs[i])
    local attempt = (tonumber(attempts[i]) or 0) + 1
    local token = last - #ids + i
    local deadline = math.min(now + (timeout or tonumber(ARGV[3])) + tonumber(ARGV[4]), 9007199254740991)
    attempt_fields[#attempt_fields + 1] = id
    attempt_fields[#attempt_fields + 1] = attempt
    token_fields[#token_fields + 1] = id
    token_fields[#token_fields + 1] = token
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
    starts[#starts + 1] = now
    starts[#starts + 1] = token
    local n = #out
    out[n + 1] = id
    out[n + 2] = blobs[i]
    out[n + 3] = attempt
    out[n + 4] = token
    out[n + 5] = deadline
    out[n + 6] = errors[i] or false
  end
  redis.call('HSET', KEYS[5], unpack(attempt_fields))
  redis.call('HSET', KEYS[6], unpack(token_fields))
  redis.call('ZADD', KEYS[3], unpack(leases))
  if rate and period then redis.call('ZADD', KEYS[15], unpack(starts)) end
  -- Started keys free here; only a queue with a key held at all has one to free.
  if redis.call('EXISTS', KEYS[13]) == 1 then
    local specs = {}
    if redis.call('EXISTS', KEYS[14]) == 1 then specs = redis.call('HMGET', KEYS[14], unpack(ids)) end
    for i, id in ipairs(ids) do
      local mode, key = key_of(blobs[i], nil, id, false)
      if not mode and specs[i] then mode, key = string.match(specs[i], '^(%a)|%d*|(.*)$') end
      if mode == 's' and redis.call('HGET', KEYS[13], key) == id then
        redis.call('HDEL', KEYS[13], key)
      end
    end
  end
end
local ready = redis.call('ZCARD', KEYS[1])
-- Another idle worker is woken only if the limits leave it something to claim.
if #ids > 0 and ready > 0 and room > #ids then arm(KEYS[9]) end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if next_due[2] then out[1] = tonumber(next_due[2]) end
if rate and period and ready > 0 and redis.call('ZCARD', KEYS[15]) >= rate then
  local oldest = redis.call('ZRANGE', KEYS[15], 0, 0, 'WITHSCORES')
  if oldest[2] then
    local reopens = tonumber(oldest[2]) + period
    if not out[1] or reopens < out[1] then out[1] = reopens end
  end
end
return out
";

/// Due delayed jobs promoted per claim call; see [`CLAIM`].
pub(crate) const PROMOTE_LIMIT: usize = 1000;

/// The claim of up to `want` jobs of queue `keys`.
pub(crate) fn claim(
    keys: &QueueKeys,
    req: &ClaimRequest<'_>,
    want: usize,
) -> ScriptInvocation<'static> {
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
        .key(&keys.meta)
        .key(&keys.unique)
        .key(&keys.unique_of)
        .key(&keys.starts)
        .arg(req.now)
        .arg(want)
        .arg(req.default_timeout_ms.min(1 << 50))
        .arg(req.grace_ms.min(1 << 50))
        .arg(PROMOTE_LIMIT);
    call
}

/// Settles claimed jobs of one queue, each item on its own: a stale token leaves it (and its
/// effects) untouched.
///
/// The per-job extras (unique keys, layout-2 key specs, progress, cancel requests) are looked at
/// only when the queue has any (one `EXISTS` each per call), and the queue's waiters are woken
/// when it has a
/// concurrency limit (a slot freed), so the complete path of a plain queue stays as it was.
///
/// KEYS: reserved, ready, delayed, jobs, attempts, tokens, errors, stats, marker, failed,
/// failed_at, unique, unique_of, meta, progress, cancel of the settled queue (1-16), then 8 per
/// effect group g (0-based) as PUSH takes them.
/// ARGV: now, then per item: id, token, kind ('c'omplete, 'r'etry, 'f'ail, re'l'ease, cancel
/// 'x'), run_at, error, number of effect jobs, then 9 per effect job as PUSH takes them.
/// Returns one 1 (applied) or 0 (stale token) per item; 2 (applied) for an item whose effect
/// set a queue's `registered` mark (as PUSH answers 2). A duplicate effect job is skipped.
const SETTLE: &str = r"
local now = tonumber(ARGV[1])
-- `keyed`: some key is held, so a finished job may hold one (its record says which);
-- `legacy`: jobs stored under layout 2 keep their key's spec in `unique_of`.
local keyed = redis.call('EXISTS', KEYS[12]) == 1
local legacy = redis.call('EXISTS', KEYS[13]) == 1
local extras = redis.call('EXISTS', KEYS[15]) + redis.call('EXISTS', KEYS[16]) > 0
local limited = redis.call('HEXISTS', KEYS[14], 'concurrency') == 1
local out, touched, settled = {}, {}, false
local i = 2
while i <= #ARGV do
  local id, token, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local run_at, err, effects = tonumber(ARGV[i + 3]), ARGV[i + 4], tonumber(ARGV[i + 5])
  local first = i + 6
  i = first + effects * 9
  if redis.call('HGET', KEYS[6], id) ~= token then
    out[#out + 1] = 0
  else
    settled = true
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[6], id)
    if kind == 'c' or kind == 'x' then
      if keyed then free_key_of(KEYS[4], KEYS[12], KEYS[13], id, legacy, 'f') end
      if legacy then redis.call('HDEL', KEYS[13], id) end
      redis.call('HDEL', KEYS[4], id)
      redis.call('HDEL', KEYS[5], id)
      redis.call('HDEL', KEYS[7], id)
      if extras then
        redis.call('HDEL', KEYS[15], id)
        redis.call('SREM', KEYS[16], id)
      end
      redis.call('HINCRBY', KEYS[8], kind == 'c' and 'processed' or 'cancelled', 1)
    elseif kind == 'f' then
      fail(KEYS[8], KEYS[10], KEYS[11], KEYS[7], id, now, err)
      if keyed then free_key_of(KEYS[4], KEYS[12], KEYS[13], id, legacy, 'f') end
      if extras then redis.call('SREM', KEYS[16], id) end
    else
      if kind == 'r' then
        redis.call('HSET', KEYS[7], id, err)
      elseif redis.call('HINCRBY', KEYS[5], id, -1) < 0 then
        redis.call('HSET', KEYS[5], id, 0)
      end
      if run_at <= now then
        make_ready(KEYS[2], KEYS[4], id)
      else
        redis.call('ZADD', KEYS[3], run_at, id)
      end
      arm(KEYS[9])
    end
    local fresh = false
    for j = first, i - 1, 9 do
      if store_marked(16 + tonumber(ARGV[j]) * 8, j, touched) == 2 then fresh = true end
    end
    out[#out + 1] = fresh and 2 or 1
  end
end
for k in pairs(touched) do arm(KEYS[k + 4]) end
-- A slot of a concurrency-limited queue freed: wake a worker the limit held back.
if limited and settled then arm(KEYS[9]) end
return out
";

/// One settle as the SETTLE script takes it: the lease's id and token, the transition, and its
/// effect jobs with the index of their queue group.
pub(crate) struct SettleItem<'a> {
    pub(crate) id: &'a str,
    pub(crate) token: &'a str,
    pub(crate) transition: &'a Transition,
    pub(crate) effects: Vec<(usize, &'a NewJob)>,
}

/// The settle of `items` of queue `keys`, whose effects go to `groups` (by index), effect jobs
/// written for storage layout `layout`.
pub(crate) fn settle(
    keys: &QueueKeys,
    groups: &[QueueKeys],
    items: &[SettleItem<'_>],
    now: Millis,
    layout: u32,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.settle.prepare_invoke();
    call.key(&keys.reserved)
        .key(&keys.ready)
        .key(&keys.delayed)
        .key(&keys.jobs)
        .key(&keys.attempts)
        .key(&keys.tokens)
        .key(&keys.errors)
        .key(&keys.stats)
        .key(&keys.marker)
        .key(&keys.failed)
        .key(&keys.failed_at)
        .key(&keys.unique)
        .key(&keys.unique_of)
        .key(&keys.meta)
        .key(&keys.progress)
        .key(&keys.cancel);
    for group in groups {
        group_keys(&mut call, group);
    }
    call.arg(now);
    for item in items {
        let (kind, run_at, error) = match item.transition {
            Transition::Complete => ("c", now, ""),
            Transition::Retry { run_at, error } => ("r", *run_at, error.as_str()),
            Transition::Fail { error } => ("f", now, error.as_str()),
            Transition::Release { run_at } => ("l", *run_at, ""),
            Transition::Cancel => ("x", now, ""),
            // A transition this build does not know: as a release at once, which loses nothing.
            _ => ("l", now, ""),
        };
        call.arg(item.id).arg(item.token).arg(kind).arg(run_at).arg(error);
        call.arg(item.effects.len());
        for (group, job) in &item.effects {
            job_args(&mut call, *group, job, layout);
        }
    }
    call
}

/// Moves a lease's deadline. KEYS: reserved, tokens. ARGV: id, token, until.
/// Returns 1, or 0 when the token is stale.
const EXTEND: &str = r"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
";

pub(crate) fn extend(
    keys: &QueueKeys,
    id: &str,
    token: &str,
    until: Millis,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.extend.prepare_invoke();
    call.key(&keys.reserved).key(&keys.tokens).arg(id).arg(token).arg(until);
    call
}

/// Returns jobs whose lease ran out by ARGV[1] to the ready set (at most ARGV[2] per call),
/// re-checking each deadline here, atomically. The lost attempt stays counted. A job whose
/// cancel was asked for is deleted instead and counted as cancelled (its key freed).
/// KEYS: reserved, ready, jobs, attempts, tokens, errors, marker, stats, unique, unique_of,
/// progress, cancel. Returns how many.
const RECOVER: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #expired, 2 do
  local id = expired[i]
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[5], id)
  if redis.call('SREM', KEYS[12], id) == 1 then
    free_key_of(KEYS[3], KEYS[9], KEYS[10], id, true, 'f')
    redis.call('HDEL', KEYS[10], id)
    for _, k in ipairs({3, 4, 6, 11}) do redis.call('HDEL', KEYS[k], id) end
    redis.call('HINCRBY', KEYS[8], 'cancelled', 1)
  else
    local attempt = redis.call('HGET', KEYS[4], id) or '0'
    redis.call('HSET', KEYS[6], id, string.format(
      'lease expired at %.0f: the worker running attempt %s stopped responding',
      tonumber(expired[i + 1]), attempt))
    make_ready(KEYS[2], KEYS[3], id)
  end
end
-- Jobs became ready, or slots of a concurrency limit freed: wake a worker.
if #expired > 0 then arm(KEYS[7]) end
return #expired / 2
";

/// Expired leases recovered per script call.
pub(crate) const RECOVER_LIMIT: usize = 500;

pub(crate) fn recover(keys: &QueueKeys, now: Millis) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.recover.prepare_invoke();
    call.key(&keys.reserved)
        .key(&keys.ready)
        .key(&keys.jobs)
        .key(&keys.attempts)
        .key(&keys.tokens)
        .key(&keys.errors)
        .key(&keys.marker)
        .key(&keys.stats)
        .key(&keys.unique)
        .key(&keys.unique_of)
        .key(&keys.progress)
        .key(&keys.cancel)
        .arg(now)
        .arg(RECOVER_LIMIT);
    call
}

/// The counters at ARGV[1]. KEYS: ready, delayed, reserved, failed, stats, meta.
/// Returns {ready, due delayed, all delayed, reserved, failed, processed, failed_total, paused,
/// cancelled, concurrency limit, rate limit, rate period}, a limit that is not set as -1.
const STATS: &str = r"
local counters = redis.call('HMGET', KEYS[5], 'processed', 'failed_total', 'cancelled')
local meta = redis.call('HMGET', KEYS[6], 'paused', 'concurrency', 'rate_limit', 'rate_period')
local paused = 0
if meta[1] == '1' then paused = 1 end
return {
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCOUNT', KEYS[2], '-inf', ARGV[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]),
  tonumber(counters[1] or '0'),
  tonumber(counters[2] or '0'),
  paused,
  tonumber(counters[3] or '0'),
  tonumber(meta[2] or '-1'),
  tonumber(meta[3] or '-1'),
  tonumber(meta[4] or '-1'),
}
";

pub(crate) fn stats(keys: &QueueKeys, now: Millis) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.stats.prepare_invoke();
    call.key(&keys.ready)
        .key(&keys.delayed)
        .key(&keys.reserved)
        .key(&keys.failed)
        .key(&keys.stats)
        .key(&keys.meta)
        .arg(now);
    call
}

/// Pauses (ARGV[1] = '1') or resumes a queue. KEYS: meta, marker, stats. Resuming arms the
/// marker, so idle workers wake and claim. Returns 1 when it set the queue's `registered` mark
/// (the caller lists the queue again, as after PUSH's 2), else 0.
const SET_PAUSED: &str = r"
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'paused', '1')
else
  redis.call('HDEL', KEYS[1], 'paused')
  arm(KEYS[2])
end
return redis.call('HSETNX', KEYS[3], 'registered', 1)
";

pub(crate) fn set_paused(keys: &QueueKeys, paused: bool) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.set_paused.prepare_invoke();
    call.key(&keys.meta).key(&keys.marker).key(&keys.stats).arg(if paused { "1" } else { "0" });
    call
}

/// Sets or clears a queue's limits in `meta` (an empty argument clears that field) and arms
/// the marker, as a raised limit may let idle workers claim. KEYS: meta, marker, stats.
/// ARGV: concurrency, rate limit, rate period. Returns what SET_PAUSED returns.
const SET_LIMITS: &str = r"
local fields = {'concurrency', 'rate_limit', 'rate_period'}
for i = 1, 3 do
  if ARGV[i] == '' then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    redis.call('HSET', KEYS[1], fields[i], ARGV[i])
  end
end
arm(KEYS[2])
return redis.call('HSETNX', KEYS[3], 'registered', 1)
";

pub(crate) fn set_limits(keys: &QueueKeys, limits: &QueueLimits) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.set_limits.prepare_invoke();
    call.key(&keys.meta).key(&keys.marker).key(&keys.stats);
    match limits.concurrency {
        Some(n) => call.arg(n),
        None => call.arg(""),
    };
    match limits.rate {
        Some(rate) => call.arg(rate.limit).arg(rate.period_ms.min(1 << 50)),
        None => call.arg("").arg(""),
    };
    call
}

/// Cancels one job. KEYS: jobs, ready, delayed, reserved, attempts, errors, stats, unique,
/// unique_of, progress, cancel. ARGV: id.
/// Returns 1 for a pending or delayed job, deleted (its Started or Finished key freed,
/// `cancelled` counted); 2 for a reserved one, which gets the cancel flag its worker's next
/// touch reports; -1 for a failed one; 0 when the queue has no such job.
const CANCEL: &str = r"
local id = ARGV[1]
local record = redis.call('HGET', KEYS[1], id)
if not record then return 0 end
if redis.call('ZREM', KEYS[2], id) + redis.call('ZREM', KEYS[3], id) > 0 then
  local mode, key = key_of(record, KEYS[9], id, true)
  free_key(KEYS[8], nil, id, mode, key, 'sf')
  redis.call('HDEL', KEYS[9], id)
  for _, k in ipairs({1, 5, 6, 10}) do redis.call('HDEL', KEYS[k], id) end
  redis.call('SREM', KEYS[11], id)
  redis.call('HINCRBY', KEYS[7], 'cancelled', 1)
  return 1
end
if redis.call('ZSCORE', KEYS[4], id) then
  redis.call('SADD', KEYS[11], id)
  return 2
end
return -1
";

pub(crate) fn cancel(keys: &QueueKeys, id: &str) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.cancel.prepare_invoke();
    call.key(&keys.jobs)
        .key(&keys.ready)
        .key(&keys.delayed)
        .key(&keys.reserved)
        .key(&keys.attempts)
        .key(&keys.errors)
        .key(&keys.stats)
        .key(&keys.unique)
        .key(&keys.unique_of)
        .key(&keys.progress)
        .key(&keys.cancel)
        .arg(id);
    call
}

/// Reports on running jobs. KEYS, 3 per queue group g (0-based): tokens, progress, cancel.
/// ARGV, 5 per touch: group, id, token, '1' if progress follows else '0', progress.
/// A stale token is skipped. Returns the ids (of valid touches) whose cancel was asked for.
const TOUCH: &str = r"
local out = {}
for b = 1, #ARGV, 5 do
  local k = tonumber(ARGV[b]) * 3
  local id = ARGV[b + 1]
  if redis.call('HGET', KEYS[k + 1], id) == ARGV[b + 2] then
    if ARGV[b + 3] == '1' then redis.call('HSET', KEYS[k + 2], id, ARGV[b + 4]) end
    if redis.call('SISMEMBER', KEYS[k + 3], id) == 1 then out[#out + 1] = id end
  end
end
return out
";

/// The touch of `groups`: each a queue and its touches (several queues only on one server).
pub(crate) fn touch(groups: &[(QueueKeys, Vec<&Touch>)]) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.touch.prepare_invoke();
    for (index, (keys, touches)) in groups.iter().enumerate() {
        call.key(&keys.tokens).key(&keys.progress).key(&keys.cancel);
        for touch in touches {
            call.arg(index).arg(&touch.lease.id).arg(&touch.lease.token);
            match &touch.progress {
                Some(progress) => call.arg("1").arg(progress),
                None => call.arg("0").arg(""),
            };
        }
    }
    call
}

/// One job by id. KEYS: jobs, ready, delayed, reserved, failed, failed_at, attempts, errors,
/// unique_of, progress, cancel.
/// ARGV: id. Returns nil when the queue has no such job, else {where ('ready', 'delayed',
/// 'reserved', 'failed'), record, score in that set, attempts, last error, failed_at, unique
/// spec, progress, cancel requested (1 or 0)}.
const GET: &str = r"
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return false end
local where, score = false, false
local sets = {'ready', 'delayed', 'reserved', 'failed'}
for i = 1, 4 do
  score = redis.call('ZSCORE', KEYS[i + 1], ARGV[1])
  if score then where = sets[i] break end
end
if not where then return false end
return {
  where, record, score,
  redis.call('HGET', KEYS[7], ARGV[1]) or false,
  redis.call('HGET', KEYS[8], ARGV[1]) or false,
  redis.call('HGET', KEYS[6], ARGV[1]) or false,
  redis.call('HGET', KEYS[9], ARGV[1]) or false,
  redis.call('HGET', KEYS[10], ARGV[1]) or false,
  redis.call('SISMEMBER', KEYS[11], ARGV[1]),
}
";

pub(crate) fn get(keys: &QueueKeys, id: &str) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.get.prepare_invoke();
    call.key(&keys.jobs)
        .key(&keys.ready)
        .key(&keys.delayed)
        .key(&keys.reserved)
        .key(&keys.failed)
        .key(&keys.failed_at)
        .key(&keys.attempts)
        .key(&keys.errors)
        .key(&keys.unique_of)
        .key(&keys.progress)
        .key(&keys.cancel)
        .arg(id);
    call
}

/// A page of one of a queue's sorted sets (ready, delayed or reserved) in its order.
/// KEYS: the set, jobs, attempts, errors, unique_of, progress, cancel. ARGV: first index, last
/// index. Returns 8 per job: id, score, record, attempts, last error, unique spec, progress,
/// cancel requested (1 or 0).
const LIST: &str = r"
local page = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
local out = {}
for i = 1, #page, 2 do
  local id = page[i]
  local n = #out
  out[n + 1] = id
  out[n + 2] = page[i + 1]
  out[n + 3] = redis.call('HGET', KEYS[2], id) or false
  out[n + 4] = redis.call('HGET', KEYS[3], id) or false
  out[n + 5] = redis.call('HGET', KEYS[4], id) or false
  out[n + 6] = redis.call('HGET', KEYS[5], id) or false
  out[n + 7] = redis.call('HGET', KEYS[6], id) or false
  out[n + 8] = redis.call('SISMEMBER', KEYS[7], id)
end
return out
";

pub(crate) fn list(
    keys: &QueueKeys,
    set: &str,
    first: u64,
    last: u64,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.list.prepare_invoke();
    call.key(set)
        .key(&keys.jobs)
        .key(&keys.attempts)
        .key(&keys.errors)
        .key(&keys.unique_of)
        .key(&keys.progress)
        .key(&keys.cancel)
        .arg(first)
        .arg(last);
    call
}

/// Removes up to ARGV[1] pending, then delayed jobs, freeing their Started and Finished unique
/// keys. KEYS: ready, delayed, jobs, attempts, errors, unique, unique_of, progress, cancel.
/// Returns how many; the caller repeats until fewer than ARGV[1] were removed.
const CLEAR: &str = r"
local limit = tonumber(ARGV[1])
local removed = 0
local keyed = redis.call('EXISTS', KEYS[6]) == 1
local legacy = redis.call('EXISTS', KEYS[7]) == 1
for z = 1, 2 do
  if removed < limit then
    local popped = redis.call('ZPOPMIN', KEYS[z], limit - removed)
    for i = 1, #popped, 2 do
      local id = popped[i]
      if keyed then free_key_of(KEYS[3], KEYS[6], KEYS[7], id, legacy, 'sf') end
      if legacy then redis.call('HDEL', KEYS[7], id) end
      for _, k in ipairs({3, 4, 5, 8}) do redis.call('HDEL', KEYS[k], id) end
      redis.call('SREM', KEYS[9], id)
    end
    removed = removed + #popped / 2
  end
end
return removed
";

/// Jobs removed per `clear` or `flush` script call, so no call blocks Redis for long.
pub(crate) const DELETE_LIMIT: usize = 1000;

pub(crate) fn clear(keys: &QueueKeys) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.clear.prepare_invoke();
    call.key(&keys.ready)
        .key(&keys.delayed)
        .key(&keys.jobs)
        .key(&keys.attempts)
        .key(&keys.errors)
        .key(&keys.unique)
        .key(&keys.unique_of)
        .key(&keys.progress)
        .key(&keys.cancel)
        .arg(DELETE_LIMIT);
    call
}

/// The keys of a queue's failed set, in the order the failed-set scripts read them.
fn failed_keys(call: &mut ScriptInvocation<'static>, keys: &QueueKeys) {
    call.key(&keys.failed)
        .key(&keys.failed_at)
        .key(&keys.jobs)
        .key(&keys.attempts)
        .key(&keys.errors)
        .key(&keys.unique_of)
        .key(&keys.progress);
}

/// A page of the failed set, oldest first. KEYS: failed, failed_at, jobs, attempts, errors (and
/// unique_of, progress, unused here). ARGV: first index, last index. Returns 5 per job: id,
/// record, attempts, error, failed_at.
const FAILED_PAGE: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local n = #out
  out[n + 1] = id
  out[n + 2] = redis.call('HGET', KEYS[3], id) or false
  out[n + 3] = redis.call('HGET', KEYS[4], id) or false
  out[n + 4] = redis.call('HGET', KEYS[5], id) or false
  out[n + 5] = redis.call('HGET', KEYS[2], id) or false
end
return out
";

pub(crate) fn failed_page(keys: &QueueKeys, first: u64, last: u64) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.failed_page.prepare_invoke();
    failed_keys(&mut call, keys);
    call.arg(first).arg(last);
    call
}

/// Moves a failed job back to the ready set with fresh attempts. It does not take its unique key
/// again. KEYS: failed, failed_at, jobs, attempts, errors, unique_of, progress, ready, marker.
/// ARGV: id. Returns 1, or 0 when the id is not in the failed set (so of concurrent callers one
/// wins).
const RETRY_FAILED: &str = r"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
make_ready(KEYS[8], KEYS[3], ARGV[1])
arm(KEYS[9])
return 1
";

pub(crate) fn retry_failed(keys: &QueueKeys, id: &str) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.retry_failed.prepare_invoke();
    failed_keys(&mut call, keys);
    call.key(&keys.ready).key(&keys.marker).arg(id);
    call
}

/// Deletes one failed job. KEYS: failed, failed_at, jobs, attempts, errors, unique_of,
/// progress. ARGV: id. Returns 1, or 0 when the id is not in the failed set.
const FORGET_FAILED: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
for k = 2, 7 do redis.call('HDEL', KEYS[k], ARGV[1]) end
return 1
";

pub(crate) fn forget_failed(keys: &QueueKeys, id: &str) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.forget_failed.prepare_invoke();
    failed_keys(&mut call, keys);
    call.arg(id);
    call
}

/// Deletes up to ARGV[1] failed jobs. KEYS: failed, failed_at, jobs, attempts, errors,
/// unique_of, progress. Returns how many; the caller repeats until fewer were deleted.
const FLUSH_FAILED: &str = r"
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
for i = 1, #popped, 2 do
  for k = 2, 7 do redis.call('HDEL', KEYS[k], popped[i]) end
end
return #popped / 2
";

pub(crate) fn flush_failed(keys: &QueueKeys) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.flush_failed.prepare_invoke();
    failed_keys(&mut call, keys);
    call.arg(DELETE_LIMIT);
    call
}

/// How [`forget_queue`] goes about a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forget {
    /// A single server: forgets an empty, idle queue and takes it out of the registry (the
    /// last key) in the same step.
    Standalone,
    /// A cluster, where the registry is in another slot: forgets an empty, idle queue; the
    /// caller then takes it out of the registry.
    Cluster,
}

/// Forgets a queue if it holds no job: no pending, delayed, reserved or failed one, and no
/// record. KEYS: ready, delayed, reserved, failed, jobs, stats, then the queue's other keys
/// (ARGV[2] queue keys in all), then for [`Forget::Standalone`] the registry. ARGV: the
/// queue's name, the number of queue keys.
/// Returns 1 when the queue was forgotten, 0 when it holds a job (and nothing changed).
const FORGET: &str = r"
local n = tonumber(ARGV[2])
if redis.call('HLEN', KEYS[5]) > 0 then return 0 end
for k = 1, 4 do
  if redis.call('ZCARD', KEYS[k]) > 0 then return 0 end
end
redis.call('DEL', unpack(KEYS, 1, n))
if #KEYS > n then redis.call('SREM', KEYS[n + 1], ARGV[1]) end
return 1
";

pub(crate) fn forget_queue(
    keys: &QueueKeys,
    queue: &str,
    mode: Forget,
    registry: &str,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.forget_queue.prepare_invoke();
    let all = [
        &keys.ready,
        &keys.delayed,
        &keys.reserved,
        &keys.failed,
        &keys.jobs,
        &keys.stats,
        &keys.attempts,
        &keys.tokens,
        &keys.errors,
        &keys.marker,
        &keys.failed_at,
        &keys.meta,
        &keys.unique,
        &keys.unique_expiry,
        &keys.unique_of,
        &keys.progress,
        &keys.cancel,
        &keys.starts,
    ];
    for key in all {
        call.key(key);
    }
    if mode == Forget::Standalone {
        call.key(registry);
    }
    call.arg(queue).arg(all.len());
    call
}

/// Moves the storage layout mark KEYS[1] from ARGV[1] (or no mark) to ARGV[2], in one step so
/// that it never overwrites a mark another orcs set meanwhile. Returns the mark it leaves.
const UPGRADE: &str = r"
local found = redis.call('GET', KEYS[1])
if found == false or found == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return found
";

pub(crate) fn upgrade(key: &str, from: u32, to: u32) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.upgrade.prepare_invoke();
    call.key(key).arg(from).arg(to);
    call
}

/// Every script, compiled once per process (the SHA is computed here, the load happens on the
/// first NOSCRIPT answer of each server).
#[derive(Debug)]
struct Scripts {
    push: Script,
    unstore: Script,
    claim: Script,
    settle: Script,
    extend: Script,
    recover: Script,
    stats: Script,
    set_paused: Script,
    set_limits: Script,
    cancel: Script,
    touch: Script,
    get: Script,
    list: Script,
    clear: Script,
    failed_page: Script,
    retry_failed: Script,
    forget_failed: Script,
    flush_failed: Script,
    forget_queue: Script,
    upgrade: Script,
}

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    push: with_prelude(PUSH),
    unstore: with_prelude(UNSTORE),
    claim: with_prelude(CLAIM),
    settle: with_prelude(SETTLE),
    extend: Script::new(EXTEND),
    recover: with_prelude(RECOVER),
    stats: Script::new(STATS),
    set_paused: with_prelude(SET_PAUSED),
    set_limits: with_prelude(SET_LIMITS),
    cancel: with_prelude(CANCEL),
    touch: Script::new(TOUCH),
    get: Script::new(GET),
    list: Script::new(LIST),
    clear: with_prelude(CLEAR),
    failed_page: Script::new(FAILED_PAGE),
    retry_failed: with_prelude(RETRY_FAILED),
    forget_failed: Script::new(FORGET_FAILED),
    flush_failed: Script::new(FLUSH_FAILED),
    forget_queue: Script::new(FORGET),
    upgrade: Script::new(UPGRADE),
});
