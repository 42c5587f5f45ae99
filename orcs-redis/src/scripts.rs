//! The Lua scripts: each one atomic, bounded, touching only the keys passed in KEYS (all of one
//! queue, so one hash slot). redis-rs calls them by SHA and loads them on NOSCRIPT.

use std::sync::LazyLock;

use redis::Script;

/// Helpers prepended to every script that needs them.
const PRELUDE: &str = r"
-- A record starts with 'priority|timeout|'; a damaged one reads as priority 0 and no own
-- timeout, and is failed by the client when it cannot parse it.
local function header(blob)
  if not blob then return 0, nil end
  local p, t = string.match(blob, '^(-?%d+)|(%d*)|')
  return tonumber(p) or 0, tonumber(t)
end
-- One item in the marker list wakes one blocked worker; more would only wake them for nothing.
local function arm(marker)
  if redis.call('LLEN', marker) == 0 then redis.call('RPUSH', marker, '1') end
end
";

/// Stores a batch, all or none. Jobs may belong to several queues (a single server only).
///
/// KEYS, 4 per queue group g (0-based): ready, delayed, jobs, marker.
/// ARGV, 5 per job: group, id, 'r' or 'd', score (-priority or available_at), record.
/// Returns nil, or the id that is already in use (then nothing was stored).
const PUSH: &str = r"
local n = #ARGV / 5
for i = 0, n - 1 do
  local b = i * 5
  local k = tonumber(ARGV[b + 1]) * 4
  if redis.call('HEXISTS', KEYS[k + 3], ARGV[b + 2]) == 1 then return ARGV[b + 2] end
end
local touched = {}
for i = 0, n - 1 do
  local b = i * 5
  local k = tonumber(ARGV[b + 1]) * 4
  local id = ARGV[b + 2]
  redis.call('HSET', KEYS[k + 3], id, ARGV[b + 5])
  if ARGV[b + 3] == 'r' then
    redis.call('ZADD', KEYS[k + 1], ARGV[b + 4], id)
  else
    redis.call('ZADD', KEYS[k + 2], ARGV[b + 4], id)
  end
  touched[k] = true
end
for k in pairs(touched) do arm(KEYS[k + 4]) end
return false
";

/// Promotes due delayed jobs (at most ARGV[5]), then claims up to ARGV[2] ready jobs (at most
/// 1000 per call, which keeps every `unpack` far below Lua's stack limit).
///
/// KEYS: ready, delayed, reserved, jobs, attempts, tokens, errors, stats, marker, failed,
/// failed_at. ARGV: now, max, default timeout ms, grace ms, promotion limit.
/// Returns {next_due or nil, then 6 per job: id, record, attempt, token, lease deadline, last
/// error or nil}.
///
/// Each step works on the whole batch in one command (HMGET, HSET and ZADD of many fields), so
/// the cost of a call grows with the jobs it claims, not with the commands it makes per job.
const CLAIM: &str = r"
local now = tonumber(ARGV[1])
local max = math.min(tonumber(ARGV[2]), 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
if #due > 0 then
  for _, id in ipairs(due) do
    local p = header(redis.call('HGET', KEYS[4], id))
    redis.call('ZADD', KEYS[1], -p, id)
  end
  redis.call('ZREM', KEYS[2], unpack(due))
end
local out = {false}
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
      local seq = redis.call('HINCRBY', KEYS[8], 'failseq', 1)
      redis.call('ZADD', KEYS[10], seq, id)
      redis.call('HSET', KEYS[11], id, ARGV[1])
      redis.call('HSET', KEYS[7], id, 'unreadable job record: its data is missing from ' .. KEYS[4])
      redis.call('HINCRBY', KEYS[8], 'failed_total', 1)
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
  local attempt_fields, token_fields, leases = {}, {}, {}
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
end
if #ids > 0 and redis.call('ZCARD', KEYS[1]) > 0 then arm(KEYS[9]) end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if next_due[2] then out[1] = tonumber(next_due[2]) end
return out
";

/// Finishes a claimed job. KEYS: reserved, jobs, attempts, tokens, errors, stats.
/// ARGV: id, token. Returns 1, or 0 when the token is stale (nothing changed).
const COMPLETE: &str = r"
if redis.call('HGET', KEYS[4], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HINCRBY', KEYS[6], 'processed', 1)
return 1
";

/// Finishes several claimed jobs of one queue, as COMPLETE does for each. KEYS: as COMPLETE.
/// ARGV: id, token pairs (at most 500). Returns one 1 or 0 per pair. The token check reads all
/// tokens in one HMGET, and the removals are one command per key for the whole batch.
const COMPLETE_MANY: &str = r"
local ids = {}
for i = 1, #ARGV, 2 do ids[#ids + 1] = ARGV[i] end
local current = redis.call('HMGET', KEYS[4], unpack(ids))
local out, done, seen = {}, {}, {}
for i, id in ipairs(ids) do
  if current[i] == ARGV[2 * i] and not seen[id] then
    seen[id] = true
    done[#done + 1] = id
    out[i] = 1
  else
    out[i] = 0
  end
end
if #done > 0 then
  redis.call('ZREM', KEYS[1], unpack(done))
  redis.call('HDEL', KEYS[2], unpack(done))
  redis.call('HDEL', KEYS[3], unpack(done))
  redis.call('HDEL', KEYS[4], unpack(done))
  if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('HDEL', KEYS[5], unpack(done)) end
  redis.call('HINCRBY', KEYS[6], 'processed', #done)
end
return out
";

/// Schedules the next attempt. KEYS: reserved, ready, delayed, jobs, tokens, errors, marker.
/// ARGV: id, token, run_at, error, now. Returns 1, or 0 when the token is stale.
const RETRY: &str = r"
if redis.call('HGET', KEYS[5], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[6], ARGV[1], ARGV[4])
if tonumber(ARGV[3]) <= tonumber(ARGV[5]) then
  local p = header(redis.call('HGET', KEYS[4], ARGV[1]))
  redis.call('ZADD', KEYS[2], -p, ARGV[1])
else
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
end
arm(KEYS[7])
return 1
";

/// Moves a claimed job to the failed set. KEYS: reserved, tokens, errors, stats, failed,
/// failed_at. ARGV: id, token, error, now. Returns 1, or 0 when the token is stale.
const FAIL: &str = r"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
local seq = redis.call('HINCRBY', KEYS[4], 'failseq', 1)
redis.call('ZADD', KEYS[5], seq, ARGV[1])
redis.call('HSET', KEYS[6], ARGV[1], ARGV[4])
redis.call('HINCRBY', KEYS[4], 'failed_total', 1)
return 1
";

/// Hands a claimed job back, claimable at once, its attempt uncounted.
/// KEYS: reserved, ready, jobs, attempts, tokens, marker. ARGV: id, token.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[5], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
if redis.call('HINCRBY', KEYS[4], ARGV[1], -1) < 0 then redis.call('HSET', KEYS[4], ARGV[1], 0) end
local p = header(redis.call('HGET', KEYS[3], ARGV[1]))
redis.call('ZADD', KEYS[2], -p, ARGV[1])
arm(KEYS[6])
return 1
";

/// Moves a lease's deadline. KEYS: reserved, tokens. ARGV: id, token, until.
const EXTEND: &str = r"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
";

/// Returns jobs whose lease ran out by ARGV[1] to the ready set (at most ARGV[2] per call),
/// re-checking each deadline here, atomically. The lost attempt stays counted.
/// KEYS: reserved, ready, jobs, attempts, tokens, errors, marker. Returns how many.
const RECOVER: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #expired, 2 do
  local id = expired[i]
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[5], id)
  local attempt = redis.call('HGET', KEYS[4], id) or '0'
  redis.call('HSET', KEYS[6], id, string.format(
    'lease expired at %.0f: the worker running attempt %s stopped responding',
    tonumber(expired[i + 1]), attempt))
  local p = header(redis.call('HGET', KEYS[3], id))
  redis.call('ZADD', KEYS[2], -p, id)
end
if #expired > 0 then arm(KEYS[7]) end
return #expired / 2
";

/// The counters at ARGV[1]. KEYS: ready, delayed, reserved, failed, stats.
/// Returns {ready, due delayed, all delayed, reserved, failed, processed, failed_total}.
const STATS: &str = r"
local counters = redis.call('HMGET', KEYS[5], 'processed', 'failed_total')
return {
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCOUNT', KEYS[2], '-inf', ARGV[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]),
  tonumber(counters[1] or '0'),
  tonumber(counters[2] or '0'),
}
";

/// Removes up to ARGV[1] pending, then delayed jobs. KEYS: ready, delayed, jobs, attempts,
/// errors. Returns how many; the caller repeats until fewer than ARGV[1] were removed.
const CLEAR: &str = r"
local limit = tonumber(ARGV[1])
local removed = 0
for z = 1, 2 do
  if removed < limit then
    local popped = redis.call('ZPOPMIN', KEYS[z], limit - removed)
    for i = 1, #popped, 2 do
      redis.call('HDEL', KEYS[3], popped[i])
      redis.call('HDEL', KEYS[4], popped[i])
      redis.call('HDEL', KEYS[5], popped[i])
    end
    removed = removed + #popped / 2
  end
end
return removed
";

/// A page of the failed set, oldest first. KEYS: failed, failed_at, jobs, attempts, errors.
/// ARGV: first index, last index. Returns 5 per job: id, record, attempts, error, failed_at.
const FAILED_PAGE: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local n = #out
  out[n + 1] = id
  out[n + 2] = redis.call('HGET', KEYS[3], id)
  out[n + 3] = redis.call('HGET', KEYS[4], id)
  out[n + 4] = redis.call('HGET', KEYS[5], id)
  out[n + 5] = redis.call('HGET', KEYS[2], id)
end
return out
";

/// Moves a failed job back to the ready set with fresh attempts.
/// KEYS: failed, failed_at, jobs, attempts, errors, ready, marker. ARGV: id.
/// Returns 1, or 0 when the id is not in the failed set.
const RETRY_FAILED: &str = r"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
local p = header(redis.call('HGET', KEYS[3], ARGV[1]))
redis.call('ZADD', KEYS[6], -p, ARGV[1])
arm(KEYS[7])
return 1
";

/// Deletes one failed job. KEYS: failed, failed_at, jobs, attempts, errors. ARGV: id.
/// Returns 1, or 0 when the id is not in the failed set.
const FORGET_FAILED: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
for k = 2, 5 do redis.call('HDEL', KEYS[k], ARGV[1]) end
return 1
";

/// Deletes up to ARGV[1] failed jobs. KEYS: failed, failed_at, jobs, attempts, errors.
/// Returns how many; the caller repeats until fewer were deleted.
const FLUSH_FAILED: &str = r"
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
for i = 1, #popped, 2 do
  for k = 2, 5 do redis.call('HDEL', KEYS[k], popped[i]) end
end
return #popped / 2
";

/// Every script, compiled once per process (the SHA is computed here, the load happens on the
/// first NOSCRIPT answer of each server).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) push: Script,
    pub(crate) claim: Script,
    pub(crate) complete: Script,
    pub(crate) complete_many: Script,
    pub(crate) retry: Script,
    pub(crate) fail: Script,
    pub(crate) release: Script,
    pub(crate) extend: Script,
    pub(crate) recover: Script,
    pub(crate) stats: Script,
    pub(crate) clear: Script,
    pub(crate) failed_page: Script,
    pub(crate) retry_failed: Script,
    pub(crate) forget_failed: Script,
    pub(crate) flush_failed: Script,
}

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    push: with_prelude(PUSH),
    claim: with_prelude(CLAIM),
    complete: Script::new(COMPLETE),
    complete_many: Script::new(COMPLETE_MANY),
    retry: with_prelude(RETRY),
    fail: Script::new(FAIL),
    release: with_prelude(RELEASE),
    extend: Script::new(EXTEND),
    recover: with_prelude(RECOVER),
    stats: Script::new(STATS),
    clear: Script::new(CLEAR),
    failed_page: Script::new(FAILED_PAGE),
    retry_failed: with_prelude(RETRY_FAILED),
    forget_failed: Script::new(FORGET_FAILED),
    flush_failed: Script::new(FLUSH_FAILED),
});
