//! The Lua scripts: each one atomic, bounded, touching only the keys passed in KEYS. redis-rs
//! calls them by SHA and loads them on NOSCRIPT.
//!
//! Each script comes with one function that builds its call, so the order of its KEYS and ARGV
//! is written once, next to the script that reads them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use orcs_core::{
    ClaimRequest, Millis, NewJob, QueueLimits, SettlingMarks, THROUGHPUT_HORIZON_MS, Touch,
    Transition, Unique, UniqueUntil,
};
use redis::{Script, ScriptInvocation};

use crate::keys::{HomeKeys, OpsKeys, QueueKeys, encode, encode_child, encode_unique, is_v4};

/// Helpers prepended to the scripts that need them, each script taking only the ones it uses:
/// every `local function` is a closure made again on each call (about 0.05 us each), which the
/// hot scripts (push, claim, settle) do not pay for helpers they never call. A helper may use
/// those listed before it in [`PRELUDE`].
/// A record's priority and own timeout.
const HEADER: &str = r"
-- A record starts with 'v2|priority|timeout|' or 'v3|priority|timeout|' (layout 1:
-- 'priority|timeout|'); a damaged one
-- reads as priority 0 and no own timeout, and is failed by the client when it cannot parse it.
local function header(blob)
  if not blob then return 0, nil end
  local p, t = string.match(blob, '^v%d+|(-?%d+)|(%d*)|')
  if not p then p, t = string.match(blob, '^(-?%d+)|(%d*)|') end
  return tonumber(p) or 0, tonumber(t)
end
";

/// Arms a queue's wake-up marker.
const ARM: &str = r"
-- One item in the marker list wakes one blocked worker; more would only wake them for nothing.
local function arm(marker)
  if redis.call('LLEN', marker) == 0 then redis.call('RPUSH', marker, '1') end
end
";

/// A name longer than a listpack entry may be (`hash-max-listpack-value` and
/// `zset-max-listpack-value`, 64 bytes by default): a claim writes it into the hashes `attempts`
/// and `tokens` (an empty value) and the sorted set `reserved` (score `+inf`), so that Redis keeps
/// them hash tables and skip lists for good. They hold about one entry per running job, few
/// enough to be listpacks, which Redis searches entry by entry: each `HMGET`, `HSET`, `HDEL`,
/// `ZADD` and `ZREM` of a claim's or a settle's batch compared every id with every entry
/// (BENCHMARKS.md round 14). No job has the name (it starts with a NUL byte); readers of
/// `reserved` count and list it up to `(+inf` only, so it is never a running job.
const WIDE: &str = r"
local WIDE = '\0orcs: this entry is wider than a listpack holds, so this key stays a hash table or skip list'
";

/// The unique key a record (or `unique_of`) names.
const KEY_OF: &str = r"
-- The unique key job `id` was dispatched with, as mode and key: a keyed record of layout 3
-- carries it ('v3|', six fields, then mode|period|key_len|name_len|<key>...), and so does a v4
-- record (mode '-' without a key, see keys.rs `encode`); a job stored under
-- layout 2 has it in `unique_of`, looked up only when `legacy` says that hash exists (so a queue
-- whose layout-2 jobs are gone pays nothing for them). nil for a job without a key.
local function key_of(blob, unique_of, id, legacy)
  if blob then
    local mode, len, at = string.match(blob,
      '^v3|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|(%a)|%d*|(%d+)|%d+|()')
    if not mode then
      -- A v4 record (a job of a batch, or with metadata): mode '-' for no key.
      mode, len, at = string.match(blob,
        '^v4|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|(%a)|%d*|(%d+)|%d*|%d*|%d+|()')
    end
    if mode then return mode, string.sub(blob, at, at + tonumber(len) - 1) end
  end
  if legacy then
    local spec = redis.call('HGET', unique_of, id)
    if spec then return string.match(spec, '^(%a)|%d*|(.*)$') end
  end
  return nil
end
";

/// Frees a job's unique key (needs [`KEY_OF`] and [`WIDE`]).
const FREE_KEY: &str = r"
-- Frees `key` (of mode `mode`, as key_of answers) if the mode is one of `modes` and job `id`
-- still holds it; a Period key also leaves `expiry` (nil where no caller frees Period keys).
-- The wide entry (see FREE_KEYS) goes with the last key, however it was freed: left alone, it
-- would make claims and settles look for keys in a queue that holds none.
local function free_key(unique, expiry, id, mode, key, modes)
  if mode and string.find(modes, mode, 1, true) and redis.call('HGET', unique, key) == id then
    redis.call('HDEL', unique, key)
    if mode == 'p' and expiry then redis.call('ZREM', expiry, key) end
    -- (Its value is empty, which no holder's id is: a key spelled like it is a key.)
    if redis.call('HLEN', unique) == 1 and redis.call('HGET', unique, WIDE) == '' then
      redis.call('DEL', unique)
    end
  end
end
-- Frees the unique key job `id` holds, as free_key does (no Period keys), its record read from
-- `jobs` (see key_of for `unique_of` and `legacy`).
local function free_key_of(jobs, unique, unique_of, id, legacy, modes)
  local mode, key = key_of(redis.call('HGET', jobs, id), unique_of, id, legacy)
  free_key(unique, nil, id, mode, key, modes)
end
";

/// Frees the keys of many jobs at once (needs [`KEY_OF`] and [`WIDE`]): the Finished keys of a
/// settle's completions, the Started keys of a claim's jobs; only those scripts define it.
///
/// It also keeps a queue's `unique` hash a hash table while it holds more than
/// `WIDE_KEYS` keys: as a listpack (up to `hash-max-listpack-entries` keys, 128 by default, 512
/// on Debian's build) every `HSETNX`, `HGET`, `HMGET` and `HDEL` of a key compared it with each
/// key held, so a keyed push cost twice a push's instructions at 300 keys held (BENCHMARKS.md
/// round 33). The wide entry's value is empty, which no job id is: a push meeting it as a key's
/// holder finds no record and takes the key (the general push script), so even a unique key
/// spelled like it works. It goes with the last key freed here, so that a queue holding no key
/// has no `unique` hash (claims and settles look for keys only while it exists).
const FREE_KEYS: &str = r"
local WIDE_KEYS = 64
-- Frees each of `keys` (fields of `unique`) that holders[i] still holds: three commands for them
-- all, instead of two per key; then adds or drops the wide entry (see above).
local function free_held(unique, keys, holders)
  if #keys == 0 then return end
  local held = redis.call('HMGET', unique, WIDE, unpack(keys))
  local free = {}
  for i = 1, #keys do
    if held[i + 1] == holders[i] then free[#free + 1] = keys[i] end
  end
  if #free == 0 then return end
  redis.call('HDEL', unique, unpack(free))
  local left = redis.call('HLEN', unique)
  if held[1] == '' then
    if left == 1 then redis.call('DEL', unique) end
  elseif not held[1] and left > WIDE_KEYS then
    redis.call('HSET', unique, WIDE, '')
  end
end
-- Adds the Finished keys of jobs `ids`, read from their records in `jobs` with one command (see
-- key_of for `unique_of` and `legacy`), to `keys`, and the jobs to `holders`.
local function finished_keys(jobs, unique_of, ids, legacy, keys, holders)
  local blobs = redis.call('HMGET', jobs, unpack(ids))
  for i = 1, #ids do
    local id = ids[i]
    local mode, key = key_of(blobs[i], unique_of, id, legacy)
    if mode == 'f' then
      keys[#keys + 1] = key
      holders[#keys] = id
    end
  end
end
";

/// Puts a job back in the ready set (needs [`HEADER`]).
const MAKE_READY: &str = r"
-- Puts job `id` into the ready set at the priority its record in `jobs` carries.
local function make_ready(ready, jobs, id)
  redis.call('ZADD', ready, -header(redis.call('HGET', jobs, id)), id)
end
";

/// Moves a job to the failed set.
const FAIL: &str = r"
-- Moves job `id` to the failed set (in the order of the `failseq` counter in `stats`) with
-- error `err` and time `at`, and counts it in `failed_total`.
local function fail(stats, failed, failed_at, errors, id, at, err)
  local seq = redis.call('HINCRBY', stats, 'failseq', 1)
  redis.call('ZADD', failed, seq, id)
  redis.call('HSET', failed_at, id, at)
  redis.call('HSET', errors, id, err)
  redis.call('HINCRBY', stats, 'failed_total', 1)
end
";

/// The batch a record counts in.
const BATCH_OF: &str = r"
-- A v4 record (keys.rs `encode`) of a batch's counted child: its batch length marked '+'.
local CHILD = '^v4|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|%d*|(%d+)|%+(%d+)|%d*|%d+|()'
-- The batch whose child a record is (its batch length marked '+': pushed with the batch and
-- counted there), or nil (a job of no batch, or one that names a batch it was not pushed with).
local function batch_of(blob)
  if not blob then return nil end
  local klen, blen, at = string.match(blob, CHILD)
  if not klen then return nil end
  local from = at + tonumber(klen)
  return string.sub(blob, from, from + tonumber(blen) - 1)
end
";

/// Settles a unique key some other job holds already.
const KEY_HELD: &str = r"
-- Called when job `id`, whose record was just stored in `jobs`, could not take unique `key` (a
-- field of `unique`, its holder's id the value) with HSETNX: if the holder still holds it (a
-- Period key until its time in `expiry`, a Started or Finished key while the holder's record
-- lives), takes the record out again and returns the holder's id. Otherwise (a holder without
-- a record was deleted by an older orcs, say) the key passes to `id`, leaving `expiry` unless
-- `period` (the caller sets the new time), and it returns nil. The caller makes the HSETNX
-- itself, so that a free key (the common case) costs no function call.
local function key_held(jobs, unique, expiry, id, key, now, period)
  local holder = redis.call('HGET', unique, key)
  local exp = redis.call('ZSCORE', expiry, key)
  local held
  if exp then
    held = now < tonumber(exp)
  else
    held = redis.call('HEXISTS', jobs, holder) == 1
  end
  if held then
    redis.call('HDEL', jobs, id)
    return holder
  end
  redis.call('HSET', unique, key, id)
  if exp and not period then redis.call('ZREM', expiry, key) end
  return nil
end
";

/// Debounce: hands a new job's payload and due time to the waiting job holding its key (needs
/// [`HEADER`] and [`ARM`]).
const DEBOUNCE: &str = r"
-- The parts of record `blob` (keys.rs `encode`, layouts v2 to v4) a debounce rewrites: the
-- span (from, to) of its available_at field and where its payload starts; nil for a record
-- this build does not take apart (then the job is left as it is).
local function parts(blob)
  local v, from, to, rest =
    string.match(blob, '^v(%d)|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|()-?%d*()|()')
  local lens
  if v == '2' then
    lens = {string.match(blob, '^(%d+)|()', rest)}
  elseif v == '3' then
    lens = {string.match(blob, '^%a|%d*|(%d+)|(%d+)|()', rest)}
  elseif v == '4' then
    lens = {string.match(blob, '^%a|%d*|(%d+)|%+?(%d*)|(%d*)|(%d+)|()', rest)}
  end
  if not lens or #lens == 0 then return nil end
  local at = lens[#lens]
  for i = 1, #lens - 1 do at = at + (tonumber(lens[i]) or 0) end
  return from, to, at
end
-- Gives job `holder` of the group after KEYS[k] (ready, delayed, jobs, marker) the payload of
-- record `blob` and due time `due`, placed as `place` says ('r' ready, 'd' delayed, scored by
-- `due`), if it is waiting (in the ready or delayed set). Returns true if it did.
local function debounce(k, holder, blob, place, due)
  local old = redis.call('HGET', KEYS[k + 3], holder)
  if not old then return false end
  local set = KEYS[k + 1]
  if not redis.call('ZSCORE', set, holder) then
    set = KEYS[k + 2]
    if not redis.call('ZSCORE', set, holder) then return false end
  end
  local from, to, at = parts(old)
  local _, _, payload = parts(blob)
  if not from or not payload then return false end
  redis.call('HSET', KEYS[k + 3], holder,
    string.sub(old, 1, from - 1) .. due .. string.sub(old, to, at - 1) .. string.sub(blob, payload))
  redis.call('ZREM', set, holder)
  if place == 'r' then
    redis.call('ZADD', KEYS[k + 1], -header(old), holder)
    arm(KEYS[k + 4])
  else
    redis.call('ZADD', KEYS[k + 2], due, holder)
  end
  return true
end
";

/// Stores a job as a push does, with or without the `registered` mark (needs [`KEY_HELD`]).
const STORE: &str = r"
-- Stores one job of the group whose keys start after KEYS[k] (ready, delayed, jobs, marker,
-- unique, unique_expiry, unique_of), from its 9 arguments starting at a[b] (group, id,
-- 'r' or 'd', score, record, unique spec, unique key, Period expiry or '', now); `a` is ARGV, or
-- a batch callback's fields. The spec is ''
-- for a job without a key, 'k' when its record carries the key (layout 3), else the layout-2
-- spec for `unique_of`; '~' before it marks a debounced job.
-- Returns 1 if stored, 0 if its id is in use, the id of the job holding its unique key, or
-- {holder} when a debounced job gave its payload and due time to a waiting holder.
local function store(k, a, b)
  local id = a[b + 1]
  -- HSETNX checks the id and stores the record in one command; a key held by another job
  -- takes the record out again.
  if redis.call('HSETNX', KEYS[k + 3], id, a[b + 4]) == 0 then return 0 end
  local spec = a[b + 5]
  local debounced = string.byte(spec) == 126
  if debounced then spec = string.sub(spec, 2) end
  if spec ~= '' then
    local key, expires, now = a[b + 6], a[b + 7], tonumber(a[b + 8])
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
      local holder = key_held(KEYS[k + 3], KEYS[k + 5], KEYS[k + 6], id, key, now, expires ~= '')
      if holder then
        local due = a[b + 2] == 'r' and a[b + 8] or a[b + 3]
        if debounced and debounce(k, holder, a[b + 4], a[b + 2], due) then return {holder} end
        return holder
      end
    end
    if expires ~= '' then redis.call('ZADD', KEYS[k + 6], expires, key) end
    if spec ~= 'k' then redis.call('HSET', KEYS[k + 7], id, spec) end
  end
  if a[b + 2] == 'r' then
    redis.call('ZADD', KEYS[k + 1], a[b + 3], id)
  else
    redis.call('ZADD', KEYS[k + 2], a[b + 3], id)
  end
  return 1
end
-- Stores a job as `store` does, then, for the first job stored in its group of this call
-- (`touched` keeps the groups), sets the queue's `registered` mark in `stats` (KEYS[k + 8]).
-- Returns what `store` returns, but 2 where it set that mark.
local function store_marked(k, a, b, touched)
  local r = store(k, a, b)
  if r == 1 and not touched[k] then
    touched[k] = true
    if redis.call('HSETNX', KEYS[k + 8], 'registered', 1) == 1 then return 2 end
  end
  return r
end
";

/// Every helper, in an order where each comes after those it uses.
const PRELUDE: [&str; 11] =
    [HEADER, ARM, WIDE, KEY_OF, FREE_KEY, MAKE_READY, FAIL, BATCH_OF, KEY_HELD, DEBOUNCE, STORE];

/// Helpers of the scripts that may end a batch's child, or create, cancel or fire workflow
/// state; appended to [`PRELUDE`].
///
/// Such a script reads its *context* with `context`: the home keys of the batches (B: the
/// `batches` hash, C: the `batch_children` index) and the queue groups it was given (G: queue
/// name -> the KEYS offset of its 16 keys, in the order of [`full_group_keys`]). A child's end
/// that would touch a queue the script was not given (a callback's, or a sibling's when the
/// first failure cancels the batch) changes nothing: the script adds the queue to NEED and
/// answers, and the client calls again with it (a script may only touch keys named in KEYS).
/// FRESH collects the queues whose `registered` mark a dispatched callback set, for the client
/// to list again. STATES holds each batch's state as the call read and changed it, and DROPS,
/// per queue `meta`, how many batch children left it; `flush` writes both once per call, so the
/// children of one batch ending in one settle cost their own record read and index entry each,
/// and the batch's counters once.
///
/// A batch `b` is a set of fields of B: `r<b>` its record (packed: 'b1', created at, then the
/// packed `then`, `catch` and `finally` callbacks, each '' when absent: queue, then the 8 store
/// arguments after the group); `k<b>` its state, five characters: then, catch, finally ('-'
/// absent, 'w' waiting, 'd' dispatched, 's' skipped), allow failures ('1' or '0'), 'o' while
/// open (a push in several steps not sealed yet) or 's'; `n`, `p`, `d`, `f`, `c` the total,
/// pending, processed, failed and cancelled counters; `x` when it was cancelled, `e` when it
/// finished; `q` the packed names of its children's queues. Each unfinished child is a member of
/// C (`member`), and counted in its queue's `meta` field `batched`, which lets every other job's
/// end skip all of this with the `HMGET` of `meta` the settle makes anyway.
const WORKFLOW: &str = r"
local B, C = nil, nil
local G, NEED, FRESH, DROPS = {}, {}, {}, {}
-- Reads ARGV[a] ('-' for no context, else the number of queue groups) and the group names
-- after it; the context keys (B, C, then the groups) start after KEYS[k]. Returns the ARGV index
-- after the names and the KEYS index after the context.
local function context(a, k)
  if ARGV[a] == '-' then return a + 1, k end
  local n = tonumber(ARGV[a])
  B, C = KEYS[k + 1], KEYS[k + 2]
  for i = 1, n do G[ARGV[a + i]] = k + 2 + (i - 1) * 16 end
  return a + n + 1, k + 2 + n * 16
end
-- True (and the queue added to NEED) when the script was not given `queue`'s keys.
local function want(queue)
  if G[queue] then return false end
  NEED[#NEED + 1] = queue
  return true
end
-- The strings of a packed value ('<len>:<bytes>' each, keys.rs `pack`).
local function fields(s)
  local out, at = {}, 1
  while at <= #s do
    local colon = string.find(s, ':', at, true)
    local len = tonumber(string.sub(s, at, colon - 1))
    out[#out + 1] = string.sub(s, colon + 1, colon + len)
    at = colon + len + 1
  end
  return out
end
local function pack(t)
  local out = {}
  for i, s in ipairs(t) do out[i] = #s .. ':' .. s end
  return table.concat(out)
end
local UNBATCH = '^(v4|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|%d*|(%d+)|)%+?(%d+)(|%d*|%d+|)()'
-- The record without its batch (a failed child moved back leaves its batch).
local function unbatch(blob)
  local head, klen, blen, tail, at = string.match(blob, UNBATCH)
  if not blen then return blob end
  local from = at + tonumber(klen)
  return head .. tail .. string.sub(blob, at, from - 1) .. string.sub(blob, from + tonumber(blen))
end
-- A child's member of C (see HomeKeys::children).
local function member(bid, queue, id)
  return #bid .. ':' .. bid .. #queue .. ':' .. queue .. id
end
-- A batch's state, read once per call: the children of one batch that end in one call share
-- it, and `flush` writes the counters once.
local STATES = {}
local function batch_state(bid)
  local st = STATES[bid]
  if st then return st end
  local v = redis.call('HMGET', B, 'k' .. bid, 'p' .. bid, 'd' .. bid, 'f' .. bid, 'c' .. bid,
    'x' .. bid, 'e' .. bid)
  if not v[1] then return nil end
  st = {bid = bid, k = v[1], p = tonumber(v[2]) or 0, d = tonumber(v[3]) or 0,
    f = tonumber(v[4]) or 0, c = tonumber(v[5]) or 0, x = v[6] or nil, e = v[7] or nil}
  STATES[bid] = st
  return st
end
local function save(st)
  local b = st.bid
  redis.call('HSET', B, 'k' .. b, st.k, 'p' .. b, st.p, 'd' .. b, st.d, 'f' .. b, st.f,
    'c' .. b, st.c)
  st.dirty = false
end
local function setk(st, i, c)
  st.k = string.sub(st.k, 1, i - 1) .. c .. string.sub(st.k, i + 1)
end
local function callbacks(bid)
  return fields(redis.call('HGET', B, 'r' .. bid) or '')
end
local function cb_queue(cb)
  local n, at = string.match(cb or '', '^(%d+):()')
  if not n then return nil end
  return string.sub(cb, at, at + tonumber(n) - 1)
end
-- Stores a callback as a push would (an existing id is left as it is) and wakes its queue.
local function dispatch(cb)
  local a = fields(cb)
  local g = G[a[1]]
  local r = store_marked(g, a, 1, {})
  if r == 2 then FRESH[#FRESH + 1] = a[1] end
  if r == 1 or r == 2 then arm(KEYS[g + 4]) end
end
-- Counts a child out of its queue's `batched` (written by `flush`).
local function drop_count(queue)
  local meta = KEYS[G[queue] + 14]
  DROPS[meta] = (DROPS[meta] or 0) + 1
end
-- Writes what the call changed: the batches' counters and the queues' `batched` counts.
local function flush()
  for _, st in pairs(STATES) do
    if st.dirty then save(st) end
  end
  for meta, n in pairs(DROPS) do
    if redis.call('HINCRBY', meta, 'batched', -n) <= 0 then redis.call('HDEL', meta, 'batched') end
  end
  DROPS = {}
end
-- The members of C of batch `bid` run from `[prefix` to `[prefix\255`.
local function members_prefix(bid)
  return #bid .. ':' .. bid
end
-- The finish rule: `then` if every child completed and the batch was not cancelled, `finally`
-- always; a callback not dispatched is skipped. The batch's children leave C.
local function finish(st, now)
  local rec = callbacks(st.bid)
  local t, c, f = string.sub(st.k, 1, 1), string.sub(st.k, 2, 2), string.sub(st.k, 3, 3)
  if t == 'w' then
    if st.f == 0 and st.c == 0 and not st.x then
      dispatch(rec[3])
      t = 'd'
    else
      t = 's'
    end
  end
  if c == 'w' then c = 's' end
  if f == 'w' then
    dispatch(rec[5])
    f = 'd'
  end
  st.k = t .. c .. f .. string.sub(st.k, 4)
  st.e = now
  redis.call('HSET', B, 'e' .. st.bid, now)
  local prefix = members_prefix(st.bid)
  redis.call('ZREMRANGEBYLEX', C, '[' .. prefix, '[' .. prefix .. '\255')
end
-- Deletes waiting job `id` of group `g` (record `rec`) as a cancel does: its Started or Finished
-- key freed, counted cancelled in its queue.
local function drop(g, id, rec)
  local mode, key = key_of(rec, KEYS[g + 7], id, true)
  free_key(KEYS[g + 5], nil, id, mode, key, 'sf')
  for _, o in ipairs({3, 7, 10, 11, 12, 16}) do redis.call('HDEL', KEYS[g + o], id) end
  redis.call('SREM', KEYS[g + 13], id)
  redis.call('HINCRBY', KEYS[g + 8], 'cancelled', 1)
end
-- Cancels every unfinished child of a batch: a waiting one is deleted and counted cancelled,
-- a running one is asked to stop (its worker's settle counts it). A member whose job ended
-- (its record gone, in the failed set, or another job's since) is passed over.
local function cancel_children(st)
  local prefix = members_prefix(st.bid)
  local members = redis.call('ZRANGEBYLEX', C, '[' .. prefix, '[' .. prefix .. '\255')
  for _, m in ipairs(members) do
    local qlen, at = string.match(m, '^(%d+):()', #prefix + 1)
    local queue = string.sub(m, at, at + tonumber(qlen) - 1)
    local id = string.sub(m, at + tonumber(qlen))
    local g = G[queue]
    local rec = redis.call('HGET', KEYS[g + 3], id)
    if rec and batch_of(rec) == st.bid then
      if redis.call('ZSCORE', KEYS[g + 9], id) then
        redis.call('SADD', KEYS[g + 13], id)
      elseif redis.call('ZREM', KEYS[g + 1], id) + redis.call('ZREM', KEYS[g + 2], id) > 0 then
        drop(g, id, rec)
        drop_count(queue)
        st.p = st.p - 1
        st.c = st.c + 1
      end
    end
  end
end
-- The state of batch `bid` (nil: none) whose child `id` of `queue` ends as `how` ('d'
-- processed, 'f' failed, 'c' cancelled), read before any change: nil if the end counts in no
-- batch; false if it may touch a queue the script was not given (NEED says which; '' when the
-- script was given no context at all): the caller must then change nothing.
local function prepare(bid, queue, id, how)
  if not bid then return nil end
  if not B then
    NEED[#NEED + 1] = queue
    return false
  end
  local st = batch_state(bid)
  if not st or st.e then return nil end
  local missing = want(queue)
  local first = how == 'f' and st.f == 0
  local cancels = first and string.sub(st.k, 4, 4) ~= '1' and not st.x
  -- The cheap tests first: a call of string.sub costs as much as a hash write, per child.
  local ends = (st.p <= 1 or cancels) and string.sub(st.k, 5, 5) ~= 'o'
  if first or ends then
    local rec = callbacks(bid)
    if first and string.sub(st.k, 2, 2) == 'w' then missing = want(cb_queue(rec[4])) or missing end
    if ends then
      if string.sub(st.k, 1, 1) == 'w' then missing = want(cb_queue(rec[3])) or missing end
      if string.sub(st.k, 3, 3) == 'w' then missing = want(cb_queue(rec[5])) or missing end
    end
    if cancels then
      for _, q in ipairs(fields(redis.call('HGET', B, 'q' .. bid) or '')) do
        missing = want(q) or missing
      end
    end
  end
  if missing then return false end
  return st
end
-- Counts the end of child `id` of `queue` in batch state `st` (from `prepare`): the first
-- failure dispatches catch and, unless failures are allowed, cancels the batch; the last child
-- of a sealed batch finishes it. A child ends once (its token, or its removal, says so), and
-- its record stops naming the batch when it ends, so it is counted once.
local function count_end(st, queue, id, how, now)
  drop_count(queue)
  st.p = st.p - 1
  local first = how == 'f' and st.f == 0
  if how == 'd' then
    st.d = st.d + 1
  elseif how == 'f' then
    st.f = st.f + 1
  else
    st.c = st.c + 1
  end
  if first then
    if string.sub(st.k, 2, 2) == 'w' then
      dispatch(callbacks(st.bid)[4])
      setk(st, 2, 'd')
    end
    if string.sub(st.k, 4, 4) ~= '1' and not st.x then
      st.x = now
      redis.call('HSET', B, 'x' .. st.bid, now)
      cancel_children(st)
    end
  end
  if st.p <= 0 and string.sub(st.k, 5, 5) ~= 'o' then finish(st, now) end
  st.dirty = true
end
";

/// What the settle of a queue without batch children has instead of [`WORKFLOW`], whose many
/// functions would cost every call microseconds to define: no context, and a batch's child
/// (which such a queue may have after all: another process pushed one since the client chose)
/// asks for the context, changing nothing of it, so the client calls the full script.
const NO_WORKFLOW: &str = r"
local NEED, FRESH = {}, {}
local function context(a, k) return a + 1, k end
local function prepare()
  NEED[1] = ''
  return false
end
local function count_end() end
local function flush() end
";

/// The helper of the scripts that write a job's `history` entry (its due time when it is queued
/// again, the errors of its failed attempts); only they define it.
const HISTORY: &str = r"
-- Sets job `id`'s entry in `history` (`<due>|<errors>`, see keys.rs `history_value`): its due
-- time to `due` (a string; nil keeps it) and, for an `err`, that error appended to the packed
-- list, of which the latest 10 (orcs_core::MAX_ERROR_HISTORY) are kept.
local function note(history, id, due, err)
  local old = redis.call('HGET', history, id)
  local at, errs = '', ''
  if old then
    local a, e = string.match(old, '^(%d*)|(.*)$')
    if a then at, errs = a, e end
  end
  if due then at = due end
  if err then
    errs = errs .. #err .. ':' .. err
    local starts, pos = {}, 1
    while pos <= #errs do
      local colon = string.find(errs, ':', pos, true)
      local len = colon and tonumber(string.sub(errs, pos, colon - 1))
      if not len then
        -- Damaged: start again from this error.
        starts, errs = {1}, #err .. ':' .. err
        break
      end
      starts[#starts + 1] = pos
      pos = colon + 1 + len
    end
    if #starts > 10 then errs = string.sub(errs, starts[#starts - 9]) end
  end
  redis.call('HSET', history, id, at .. '|' .. errs)
end
";

/// The 16 keys of a queue group in a workflow context, in the order `context` reads them: the
/// first 8 as `store` takes them, then reserved, attempts, errors, progress, cancel, meta,
/// tokens, history.
fn full_group_keys(call: &mut ScriptInvocation<'static>, keys: &QueueKeys) {
    group_keys(call, keys);
    call.key(&keys.reserved)
        .key(&keys.attempts)
        .key(&keys.errors)
        .key(&keys.progress)
        .key(&keys.cancel)
        .key(&keys.meta)
        .key(&keys.tokens)
        .key(&keys.history);
}

/// A workflow context: the home keys of the batches, and the queue groups given (names and
/// keys), as `context` reads them.
pub(crate) struct Context<'a> {
    pub(crate) home: &'a HomeKeys,
    pub(crate) groups: &'a [(String, Arc<QueueKeys>)],
}

/// Appends a context's keys and its ARGV part: the number of groups, then their names; for no
/// context, no key and `-`.
fn context_args(call: &mut ScriptInvocation<'static>, context: Option<&Context<'_>>) {
    match context {
        Some(context) => {
            call.key(&context.home.batches).key(&context.home.children);
            for (_, keys) in context.groups {
                full_group_keys(call, keys);
            }
            call.arg(context.groups.len());
            for (name, _) in context.groups {
                call.arg(name);
            }
        }
        None => {
            call.arg("-");
        }
    }
}

/// The keys a job is stored under, in the order `store` reads them, then the queue's `stats`
/// (whose `registered` field says whether the queue was listed since it was created or
/// forgotten).
fn group_keys(call: &mut ScriptInvocation<'static>, keys: &QueueKeys) {
    push_keys(call, keys, 7);
    call.key(&keys.stats);
}

/// The first `n` of a queue group's keys, in the order every push script reads them: ready,
/// delayed, jobs, marker, unique, unique_expiry, unique_of (the lean scripts take 4 or 5).
fn push_keys(call: &mut ScriptInvocation<'static>, keys: &QueueKeys, n: usize) {
    let order = [
        &keys.ready,
        &keys.delayed,
        &keys.jobs,
        &keys.marker,
        &keys.unique,
        &keys.unique_expiry,
        &keys.unique_of,
    ];
    for key in order.into_iter().take(n) {
        call.key(key);
    }
}

/// The 9 arguments `store` takes for one job of group `group`, its record written for storage
/// layout `layout` (as a batch's counted child for `child`).
fn job_args(
    call: &mut ScriptInvocation<'static>,
    group: usize,
    job: &NewJob,
    layout: u32,
    child: bool,
) {
    call.arg(group).arg(&job.id);
    place_args(call, job);
    call.arg(if child { encode_child(job, layout) } else { encode(job, layout) });
    match &job.unique {
        Some(unique) => {
            call.arg(unique_spec(job, unique, layout));
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

/// The unique spec `store` takes for a keyed job: 'k' where its record carries the key (layout
/// 3, or a v4 record under any layout), else the layout-2 spec for `unique_of`; '~' before it
/// for a debounced job.
fn unique_spec(job: &NewJob, unique: &Unique, layout: u32) -> String {
    let spec = if layout >= 3 || is_v4(job) { "k".to_owned() } else { encode_unique(unique) };
    if unique.debounce { format!("~{spec}") } else { spec }
}

/// A batch callback as the batch's record keeps it: its queue, then the 8 arguments `store`
/// takes after the group, as [`job_args`] writes them (the dispatch of a callback is a push).
pub(crate) fn callback_fields(job: &NewJob, layout: u32) -> Vec<String> {
    let (place, score) = if job.available_at <= job.dispatched_at {
        ("r", -i64::from(job.priority))
    } else {
        ("d", job.available_at)
    };
    let mut fields = vec![
        job.queue.clone(),
        job.id.clone(),
        place.to_owned(),
        score.to_string(),
        encode(job, layout),
    ];
    match &job.unique {
        Some(unique) => {
            fields.push(unique_spec(job, unique, layout));
            fields.push(unique.key.clone());
            fields.push(
                unique.expires_at(job.dispatched_at).map(|at| at.to_string()).unwrap_or_default(),
            );
            fields.push(job.dispatched_at.to_string());
        }
        None => fields.extend(std::iter::repeat_n(String::new(), 4)),
    }
    fields
}

/// Stores jobs of one or more queues (several only on a single server), skipping ids in use.
///
/// `ARGV[1]`: the keys per queue group, 6 or 7. KEYS, per queue group g (0-based): ready, delayed,
/// jobs, marker, unique, unique_expiry, and under layout 2 unique_of (the only one a push does
/// not always need is left out: every key costs the call time). ARGV from 2, 9 per job as
/// `store` takes them. Returns per job 1 (stored), 0 (duplicate id) or the id of the job
/// holding its unique key.
///
/// Unlike the colder paths that store jobs (a settle's effects, batches, schedules), a push sets
/// no `registered` mark: a queue forgotten while a process still remembers having listed it is
/// found again by the readers of the registry (see "Forgetting a queue" in the README), which
/// saves a command on every dispatch.
const PUSH: &str = r"
local size = tonumber(ARGV[1])
local out, touched = {}, {}
for b = 2, #ARGV, 9 do
  local k = tonumber(ARGV[b]) * size
  local r = store(k, ARGV, b)
  if r == 1 then touched[k] = true end
  out[#out + 1] = r
end
for k in pairs(touched) do arm(KEYS[k + 4]) end
return out
";

/// [`PUSH`] for jobs without a unique key, which need neither the key's keys nor its
/// arguments: KEYS, 4 per queue group g (0-based): ready, delayed, jobs, marker. ARGV, 5 per
/// job: group, id, 'r' or 'd', score, record. Returns per job 1 (stored) or 0 (duplicate id).
/// Every key and argument costs a script call time (Redis makes an object of each), so a
/// dispatch of plain jobs, the common one, sends the fewest.
const PUSH_PLAIN: &str = r"
local out, touched = {}, {}
for b = 1, #ARGV, 5 do
  local k = tonumber(ARGV[b]) * 4
  local id = ARGV[b + 1]
  if redis.call('HSETNX', KEYS[k + 3], id, ARGV[b + 4]) == 1 then
    if ARGV[b + 2] == 'r' then
      redis.call('ZADD', KEYS[k + 1], ARGV[b + 3], id)
    else
      redis.call('ZADD', KEYS[k + 2], ARGV[b + 3], id)
    end
    touched[k] = true
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
for k in pairs(touched) do arm(KEYS[k + 4]) end
return out
";

/// [`PUSH`] for jobs whose keys, if any, are `Started` or `Finished` keys carried in their
/// records (layout 3, or a v4 record), the usual keyed dispatch: no Period key to set or
/// prune, no `unique_of`, so a keyed job costs [`PUSH_PLAIN`]'s commands plus the key's
/// `HSETNX`, and one argument more. KEYS, 5 per queue group g (0-based): ready, delayed, jobs,
/// marker, unique. ARGV, 6 per job: group, id, 'r' or 'd', score, record, unique key ('' for
/// none). Returns per job what [`PUSH`] returns, or nothing at all (an empty array): then the
/// call changed nothing and the client sends the same jobs to [`PUSH`].
///
/// A key taken already is answered here only when its holder's record carries it as a
/// `Started` or `Finished` key: such a holder keeps it while its record lives (the common
/// duplicate). Any other holder (a `Period` one, whose time only `unique_expiry` and each job's
/// dispatch time tell; a layout-2 one; one without a record) is judged by [`PUSH`], as before:
/// this script then takes back what it stored in the call and answers nothing (the holder's
/// record read with [`KEY_OF`]'s `key_of`). So it needs
/// neither `unique_expiry` nor a time, which saves a key and an argument on every keyed call
/// (every key and argument costs a script call time, see [`PUSH_PLAIN`]).
const PUSH_KEYED: &str = r"
local out, touched = {}, {}
for b = 1, #ARGV, 6 do
  local k = tonumber(ARGV[b]) * 5
  local id, key = ARGV[b + 1], ARGV[b + 5]
  local r = 1
  if redis.call('HSETNX', KEYS[k + 3], id, ARGV[b + 4]) == 0 then
    r = 0
  elseif key ~= '' and redis.call('HSETNX', KEYS[k + 5], key, id) == 0 then
    redis.call('HDEL', KEYS[k + 3], id)
    local holder = redis.call('HGET', KEYS[k + 5], key)
    local mode = key_of(redis.call('HGET', KEYS[k + 3], holder), nil, holder, false)
    if mode ~= 's' and mode ~= 'f' then
      -- Only the general script can judge this holder: undo the jobs stored before it.
      for e = 1, b - 6, 6 do
        if out[(e + 5) / 6] == 1 then
          local g = tonumber(ARGV[e]) * 5
          redis.call('HDEL', KEYS[g + 3], ARGV[e + 1])
          redis.call('ZREM', KEYS[g + (ARGV[e + 2] == 'r' and 1 or 2)], ARGV[e + 1])
          if ARGV[e + 5] ~= '' then redis.call('HDEL', KEYS[g + 5], ARGV[e + 5]) end
        end
      end
      return {}
    end
    r = holder
  end
  if r == 1 then
    if ARGV[b + 2] == 'r' then
      redis.call('ZADD', KEYS[k + 1], ARGV[b + 3], id)
    else
      redis.call('ZADD', KEYS[k + 2], ARGV[b + 3], id)
    end
    touched[k] = true
  end
  out[#out + 1] = r
end
for k in pairs(touched) do arm(KEYS[k + 4]) end
return out
";

/// Appends a job's place ('r'eady or 'd'elayed) and score, as the push scripts take them: a
/// job due by its dispatch goes straight to the ready set; a delayed one waits (and a waiter
/// woken by the marker learns its due time from the next claim).
fn place_args(call: &mut ScriptInvocation<'static>, job: &NewJob) {
    if job.available_at <= job.dispatched_at {
        call.arg("r").arg(-i64::from(job.priority));
    } else {
        call.arg("d").arg(job.available_at);
    }
}

/// True when [`PUSH_KEYED`] may take `groups` (stored under `layout`): every key a `Started`
/// or `Finished` key carried in its record, not debounced (only [`PUSH`] replaces a holder),
/// and not empty ('' stands for none in the lean
/// script's arguments).
fn lean_keys(groups: &[(Arc<QueueKeys>, Vec<&NewJob>)], layout: u32) -> bool {
    groups.iter().flat_map(|(_, jobs)| jobs).all(|job| {
        job.unique.as_ref().is_none_or(|unique| {
            (layout >= 3 || is_v4(job))
                && !unique.debounce
                && !unique.key.is_empty()
                && unique.expires_at(job.dispatched_at).is_none()
        })
    })
}

/// The push of `groups`: each a queue and its jobs (at most 1000 in all, checked by the caller),
/// written for storage layout `layout`; by [`PUSH_PLAIN`] when no job has a unique key, by
/// [`PUSH_KEYED`] when their keys allow (an empty answer from it: send [`push_general`]).
pub(crate) fn push(
    groups: &[(Arc<QueueKeys>, Vec<&NewJob>)],
    layout: u32,
) -> ScriptInvocation<'static> {
    if groups.iter().all(|(_, jobs)| jobs.iter().all(|job| job.unique.is_none())) {
        let mut call = SCRIPTS.push_plain.prepare_invoke();
        for (index, (keys, jobs)) in groups.iter().enumerate() {
            push_keys(&mut call, keys, 4);
            for job in jobs {
                call.arg(index).arg(&job.id);
                place_args(&mut call, job);
                call.arg(encode(job, layout));
            }
        }
        return call;
    }
    if lean_keys(groups, layout) {
        let mut call = SCRIPTS.push_keyed.prepare_invoke();
        for (index, (keys, jobs)) in groups.iter().enumerate() {
            push_keys(&mut call, keys, 5);
            for job in jobs {
                call.arg(index).arg(&job.id);
                place_args(&mut call, job);
                call.arg(encode(job, layout));
                call.arg(job.unique.as_ref().map_or("", |u| u.key.as_str()));
            }
        }
        return call;
    }
    push_general(groups, layout)
}

/// The push of `groups` by the general script [`PUSH`], which takes every kind of key and
/// holder.
pub(crate) fn push_general(
    groups: &[(Arc<QueueKeys>, Vec<&NewJob>)],
    layout: u32,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.push.prepare_invoke();
    // Layout 2 keeps a keyed job's key in `unique_of`; layout 3 in its record.
    let legacy = layout < 3;
    call.arg(if legacy { 7 } else { 6 });
    for (index, (keys, jobs)) in groups.iter().enumerate() {
        push_keys(&mut call, keys, if legacy { 7 } else { 6 });
        for job in jobs {
            job_args(&mut call, index, job, layout, false);
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

/// Claims up to `ARGV[2]` ready jobs (at most 1000 per call, which keeps every `unpack` far below
/// Lua's stack limit), after promoting due delayed jobs; nothing on a paused queue.
///
/// The queue's settings come with one `HMGET` of `meta`. A concurrency limit takes at most the
/// limit minus the reserved jobs (a `ZCARD`); a rate limit prunes the start log to the window and
/// takes at most the limit minus the starts left in it, then logs one start per claimed job
/// (member = its token, unique per queue). A claimed job's Started unique key frees, looked up
/// (in the record, or in `unique_of` for a job stored under layout 2) only when the queue holds
/// any key at all.
///
/// Promotion takes at most `ARGV[5]` due jobs, oldest due first. If more remain due after that,
/// the call claims nothing and answers `more` = 1: one of those left could outrank every ready
/// job, so claiming now could invert priorities. The client calls again; each call promotes
/// another chunk, so every call stays bounded and the claim happens once all due jobs compete.
///
/// On a queue with batch children (`meta`'s `batched`, read in the same `HMGET`), the reply says
/// so (`batched` = 1), and the client gives a child's lease the token `<n>|<batch id>`, the
/// batch read from the record it decodes anyway: its settle finds the batch in the token it
/// checks (see [`SETTLE`]), without reading the record. The script does not parse the records
/// for it: the pattern that finds a record's batch cost a claim about 10,000 of Redis's
/// instructions per child, a third of a plain job's whole claim (BENCHMARKS.md round 17).
///
/// On a queue with a concurrency limit, the jobs of the claiming worker whose code has ended and
/// whose settles are on their way (`ClaimRequest::settling`) are not counted as running while
/// they still hold their leases. A worker's settles are numbered ([`orcs_core::SettleMark`]),
/// and each settle call records the highest number it carries in the writer's mark key of the
/// queue ([`QueueKeys::mark`], see [`SETTLE`]): the client sends the runs of its settling jobs'
/// numbers, and the script counts those above the recorded one (one `GET`), read only when the
/// limit would cut the claim short. Settles without numbers are named by their jobs' ids and
/// stored tokens instead, whose current tokens the script reads (one `HMGET`; ~72 jobs a claim
/// in a drain cost 5-7 % of its server time, BENCHMARKS.md round 35). Without either, a drain
/// under a limit equal to the worker's slots waited for its settles between claims. The reply
/// says whether the queue's limit could bind soon (it leaves less room than twice the jobs
/// asked), so that the client sends them from the next claim on, and not to a limit far above
/// what runs.
///
/// KEYS: ready, delayed, reserved, jobs, attempts, tokens, errors, stats, marker, failed,
/// failed_at, meta, unique, unique_of, starts, then with settling jobs by number the writer's
/// mark key. ARGV: now, max, the default lease deadline ([`default_deadline`]), grace ms,
/// promotion limit, then the settling jobs: 'm' and their numbers' runs (first, last), or 't'
/// and their ids and tokens.
/// Returns {next_due or nil, more, flags (1: batched, 2: limited), then 6 per job: id, record,
/// attempt, token, lease deadline
/// (nil for the default one, which the client sent), last error or
/// nil}; next_due is the earliest of the next delayed job's due time and, when
/// the rate limit holds back ready jobs, the time its window frees a start.
///
/// Each step works on the whole batch in one command (HMGET, HSET and ZADD of many fields), so
/// the cost of a call grows with the jobs it claims, not with the commands it makes per job.
const CLAIM: &str = r"
local meta = redis.call('HMGET', KEYS[12], 'paused', 'concurrency', 'rate_limit', 'rate_period',
  'batched')
if meta[1] == '1' then return {false, 0, 0} end
-- The client gives a batch's child a lease token that names its batch ('<n>|<batch id>', the
-- batch read from the record): its settle reads the batch from the token it checks anyway.
local batched = meta[5] and 1 or 0
local now = tonumber(ARGV[1])
local max = math.min(tonumber(ARGV[2]), 1000)
local concurrency, rate, period = tonumber(meta[2]), tonumber(meta[3]), tonumber(meta[4])
local limit = tonumber(ARGV[5])
-- The first delayed job: when it is not due, nothing is to be promoted and it is the next due
-- time (one command instead of two on a queue without due delayed jobs).
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local due = {}
if first[2] and tonumber(first[2]) <= now then
  due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
end
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
    return {false, 1, 0}
  end
end
-- The third field: 1 if the queue has batch children, 2 if a concurrency limit that could
-- bind soon (less room than twice the jobs asked: the next claims send the settling jobs), or
-- both.
local out = {false, 0, batched}
-- What the limits leave room for, before this claim.
local room = math.huge
if concurrency then
  room = concurrency - redis.call('ZCOUNT', KEYS[3], '-inf', '(+inf')
  if room < 2 * max then out[3] = batched + 2 end
  -- The claiming worker's settling jobs (ARGV[6] on), whose code has ended: they run no
  -- more, and are not counted. Read only when the limit would cut this claim short.
  if room < max and #ARGV > 5 then
    if ARGV[6] == 'm' then
      -- By their settles' numbers: runs (first, last) of this queue's, apart and in order,
      -- whose leases cannot have run out. The writer's settles of this queue record the
      -- highest number they carried (KEYS[16], before they change a job): those numbered
      -- above it are unwritten, so still reserved under their leases. Without a record (none
      -- written yet, or lost) they count as running.
      local hi = tonumber(redis.call('GET', KEYS[16]))
      if hi then
        for i = 7, #ARGV, 2 do
          local first, last = math.max(tonumber(ARGV[i]), hi + 1), tonumber(ARGV[i + 1])
          if last >= first then room = room + last - first + 1 end
        end
      end
    else
      -- By their leases (ARGV[7] on, id and token pairs): those still reserved under those
      -- tokens; a token matches only its job's current lease (a job recovered and claimed
      -- again has another), and each job counts once.
      local ids = {}
      for i = 7, #ARGV, 2 do ids[#ids + 1] = ARGV[i] end
      local current = redis.call('HMGET', KEYS[6], unpack(ids))
      local seen = {}
      for j, id in ipairs(ids) do
        local token = ARGV[6 + 2 * j]
        if token ~= '' and current[j] == token and not seen[id] then
          seen[id] = true
          room = room + 1
        end
      end
    end
    room = math.min(room, concurrency)
  end
end
if rate and period then
  redis.call('ZREMRANGEBYSCORE', KEYS[15], '-inf', now - period)
  room = math.min(room, rate - redis.call('ZCARD', KEYS[15]))
end
max = math.min(max, room)
local ids, blobs = {}, {}
while #ids < max do
  -- The first ids by rank, then their removal: ZPOPMIN would also send each score, formatted
  -- as a float and made a Lua string, for nothing (a tenth of a claim's server time).
  local batch = redis.call('ZRANGE', KEYS[1], 0, max - #ids - 1)
  if #batch == 0 then break end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #batch - 1)
  local records = redis.call('HMGET', KEYS[4], unpack(batch))
  for i = 1, #batch do
    local id = batch[i]
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
  -- Redis turns a number given to a command into a string with `%.17g`, a float format that
  -- cost a few percent of a drain's server time: the claim passes strings, made with the
  -- integer format; the lease deadline of a job without a timeout of its own is the client's
  -- (ARGV[3], see `default_deadline`), already a string.
  local grace = tonumber(ARGV[4])
  local function lease_until(timeout)
    return math.min(now + timeout + grace, 9007199254740991)
  end
  local default_lease = ARGV[3]
  -- Last errors and held keys: one command says whether there is either, a second which.
  local extras = redis.call('EXISTS', KEYS[7], KEYS[13])
  local errors, held = {}, false
  if extras > 0 then
    local errs = redis.call('EXISTS', KEYS[7]) == 1
    held = extras > (errs and 1 or 0)
    if errs then errors = redis.call('HMGET', KEYS[7], unpack(ids)) end
  end
  -- Each with the wide entry (see WIDE), in the same command.
  local attempt_fields, token_fields = {WIDE, ''}, {WIDE, ''}
  local leases, starts = {'+inf', WIDE}, {}
  -- Each call of a C function (string.*, tonumber, the iterator of ipairs) costs a script
  -- about as much as a hash field's write, so the loop makes as few as the common job allows.
  for i = 1, #ids do
    local id = ids[i]
    -- A record without its own timeout (the common case) reads so with one search, no captures.
    local timeout = nil
    if not string.find(blobs[i], '^v%d+|%-?%d+||') then
      local _
      _, timeout = header(blobs[i])
    end
    -- A first attempt (the common case) stores the string '1'.
    local attempt, attempt_text = 1, '1'
    if attempts[i] then
      attempt = tonumber(attempts[i]) + 1
      attempt_text = string.format('%d', attempt)
    end
    local token = last - #ids + i
    local token_text = string.format('%d', token)
    -- The default deadline is answered as false: the client knows it (see `claim_queue`).
    local deadline, lease = false, default_lease
    if timeout then
      deadline = lease_until(timeout)
      lease = string.format('%d', deadline)
    end
    attempt_fields[#attempt_fields + 1] = id
    attempt_fields[#attempt_fields + 1] = attempt_text
    token_fields[#token_fields + 1] = id
    token_fields[#token_fields + 1] = token_text
    leases[#leases + 1] = lease
    leases[#leases + 1] = id
    if rate then
      starts[#starts + 1] = ARGV[1]
      starts[#starts + 1] = token_text
    end
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
  -- Started keys free here; only a queue with a key held at all has one to free. A record
  -- with a Started key has 's|' in its header (its mode field, the header's only letter but
  -- the version's 'v'): a record without it is parsed no further, a plain search costing a
  -- third of key_of's match (a name or payload with 's|' only costs that match). They free
  -- together, as a settle's completions free their Finished keys (free_held: three commands
  -- for all, and the wide entry kept while many keys are held, so that pushes to a queue of
  -- Started keys do not search a listpack of them).
  if held then
    local specs = {}
    if redis.call('EXISTS', KEYS[14]) == 1 then specs = redis.call('HMGET', KEYS[14], unpack(ids)) end
    local keys, holders = {}, {}
    for i = 1, #ids do
      local id, mode, key = ids[i], nil, nil
      if string.find(blobs[i], 's|', 1, true) then mode, key = key_of(blobs[i], nil, id, false) end
      if not mode and specs[i] then mode, key = string.match(specs[i], '^(%a)|%d*|(.*)$') end
      if mode == 's' then
        keys[#keys + 1] = key
        holders[#keys] = id
      end
    end
    free_held(KEYS[13], keys, holders)
  end
end
local ready = 0
if #ids > 0 or (rate and period) then ready = redis.call('ZCARD', KEYS[1]) end
-- Another idle worker is woken only if the limits leave it something to claim.
if #ids > 0 and ready > 0 and room > #ids then arm(KEYS[9]) end
local next_due = first
if #due > 0 then next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES') end
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

/// The lease deadline of a job claimed without its own timeout: `now` plus the default timeout
/// and the grace (each capped at 2^50 ms, as the grace is sent to the script for the jobs with
/// their own), at most 2^53 - 1 (the script's numbers are doubles). The claim sends it, and
/// answers it as nil, so the client and the script cannot disagree on it.
pub(crate) fn default_deadline(req: &ClaimRequest<'_>) -> Millis {
    let length = req.default_timeout_ms.min(1 << 50) + grace(req);
    req.now.saturating_add(length as Millis).min((1 << 53) - 1)
}

/// The claim's grace, capped at 2^50 ms: what the script adds to a job's own timeout, and what
/// the client adds to the default one and to `now` for a settling job's lease.
fn grace(req: &ClaimRequest<'_>) -> u64 {
    req.grace_ms.min(1 << 50)
}

/// The claim of up to `want` jobs of queue `keys`.
pub(crate) fn claim(
    queue: &str,
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
        .arg(default_deadline(req))
        .arg(grace(req))
        .arg(PROMOTE_LIMIT);
    if let Some(settling) = req.settling
        && keys.limited.load(Ordering::Relaxed)
    {
        if let Some(marked) = settling.marks(queue).map(SettlingMarks::sorted) {
            // A lease that may have run out (within the grace, which bounds the clock skew
            // leases tolerate) may have been recovered without its settle: it counts.
            let live = req.now.saturating_add(grace(req) as Millis);
            let seqs: Vec<i64> = marked
                .marks
                .iter()
                .filter(|(_, until)| *until > live)
                .map(|(seq, _)| *seq)
                .collect();
            if !seqs.is_empty() {
                call.key(keys.mark(&marked.writer)).arg("m");
                for (first, last) in runs(&seqs).take(SETTLING_SENT) {
                    call.arg(first).arg(last);
                }
            }
        } else {
            // 't' only before a lease: a view without leases (tokens alone) sends nothing, and
            // its jobs count as running.
            let mut sent = 0;
            settling.each_lease(&mut |lease| {
                if sent < SETTLING_SENT && lease.queue == queue {
                    if sent == 0 {
                        call.arg("t");
                    }
                    call.arg(&lease.id).arg(stored_token(&lease.token));
                    sent += 1;
                }
            });
        }
    }
    call
}

/// Most settling jobs (or runs of settle numbers) a claim sends; the rest count as running. The
/// script unpacks the jobs' ids into one command, as it does a claim's 1000 jobs.
const SETTLING_SENT: usize = 1000;

/// The runs of consecutive numbers in `seqs` (sorted, each once), as (first, last): a worker's
/// settling jobs of one queue are mostly one or two runs of its settle numbers.
fn runs(seqs: &[i64]) -> impl Iterator<Item = (i64, i64)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let first = *seqs.get(at)?;
        let mut last = first;
        at += 1;
        while seqs.get(at) == Some(&(last + 1)) {
            last += 1;
            at += 1;
        }
        Some((first, last))
    })
}

/// Settles claimed jobs of one queue, each item on its own: a stale token leaves it (and its
/// effects) untouched.
///
/// Every item's current token is read with one `HMGET`, and the completions without effects
/// are removed together at the end, one command per key for all of them: a settle of many
/// completions costs about what one costs. An item with effects, or another transition,
/// first removes the completions before it, so that each item sees what a settle of the items
/// one by one would have seen.
///
/// The per-job extras (unique keys, layout-2 key specs, progress, cancel requests, histories)
/// are looked at only when the queue has any (one `EXISTS` of them all per call, then one each
/// when there is any), and the queue's
/// waiters are woken when it has a concurrency limit (a slot freed), so the complete path of a
/// plain queue stays as it was. Batch children are looked for only when the queue's `meta`
/// counts any (its `batched` field, read with the concurrency limit in one `HMGET`): then each
/// ending job's record says its batch, and its end is counted there in the same step (see
/// [`WORKFLOW`]). A Retry or Fail appends its error to the job's history, a Retry or Release
/// notes when it is due again (see [`HISTORY`]).
///
/// A completion frees the job's `Finished` key if the job still holds it. Its lease names the key
/// when the claim's record had one ([`lease_token`]): then the key is checked and deleted with
/// the call's other completions' (one `HMGET` and one `HDEL` of `unique` per call), and the
/// record is not read; otherwise the record says (one `HMGET` of them per call). On a queue with
/// batch children each completion frees its key at once, before its end is counted (which may
/// dispatch a callback that takes the key).
///
/// KEYS: reserved, ready, delayed, jobs, attempts, tokens, errors, stats, marker, failed,
/// failed_at, unique, unique_of, meta, progress, cancel, history of the settled queue (1-17),
/// the mark key of the items' settle writer ([`QueueKeys::mark`]; 18), then the workflow
/// context (none, or the batches' home keys and 16 per group, the settled queue's first), then
/// 8 per effect group g (0-based) as PUSH takes them.
/// ARGV: now, the items' highest settle number ('' when they carry none), the context's group
/// count and names, then per item: id, token, op (the kind:
/// 'c'omplete, 'r'etry, 'f'ail, re'l'ease, cancel 'x', followed by the number of effect jobs
/// unless there are none: `c`, `r2`), then run_at and error for a retry, run_at for a release,
/// error for a fail, nothing for a complete or cancel (a plain complete costs three arguments),
/// then 9 per effect job as PUSH takes them; a complete without effects whose lease names its
/// `Finished` key is op 'k', then the key.
/// Returns {results, NEED, FRESH}: one 1 (applied) or 0 (stale token) per item; 2 (applied) for
/// an item whose effect set a queue's `registered` mark (as `store_marked` answers 2). A
/// duplicate effect job is skipped. When an item's batch needs queues the call was not given,
/// the results stop before it (nothing of it changed) and NEED names them ('' for the settled
/// queue's own context); FRESH names queues a batch callback re-created.
const SETTLE: &str = r"
local now = tonumber(ARGV[1])
-- The highest settle number the items carry (ARGV[2], '' for none), recorded in their writer's
-- mark key before any job changes: a limited claim counts that writer's settling jobs numbered
-- above it as unwritten (see CLAIM). Never lowered (a settle retried late carries an older
-- number); an item this call leaves (stale, or cut short) counts as written, so as running.
-- Recorded on every queue, limited or not: a limit set between a settle and a claim that
-- names its job would otherwise meet a written settle without its record.
if ARGV[2] ~= '' then
  local was = tonumber(redis.call('GET', KEYS[18]))
  if not was or was < tonumber(ARGV[2]) then
    redis.call('SET', KEYS[18], ARGV[2], 'PX', '86400000')
  end
end
local first_item, effect_keys = context(3, 18)
local own = ARGV[3] ~= '-' and ARGV[4] or ''
-- `keyed`: some key is held, so a finished job may hold one (its record says which);
-- `legacy`: jobs stored under layout 2 keep their key's spec in `unique_of`.
local keyed, legacy, extras, hist, errs = false, false, false, false, false
-- One command says whether the queue has any of them (a plain queue has none).
local present = redis.call('EXISTS', KEYS[12], KEYS[13], KEYS[15], KEYS[16], KEYS[17], KEYS[7])
if present > 0 then
  keyed = redis.call('EXISTS', KEYS[12]) == 1
  -- A queue whose jobs hold keys and nothing else (the common keyed case) asks no more.
  if present > (keyed and 1 or 0) then
    legacy = redis.call('EXISTS', KEYS[13]) == 1
    extras = redis.call('EXISTS', KEYS[15], KEYS[16]) > 0
    hist = redis.call('EXISTS', KEYS[17]) == 1
    errs = redis.call('EXISTS', KEYS[7]) == 1
  end
end
local meta = redis.call('HMGET', KEYS[14], 'concurrency', 'batched')
local limited, batched = meta[1] ~= false, meta[2] ~= false
local ends = {c = 'd', k = 'd', x = 'c', f = 'f'}
-- Each item: id, token, op (its kind, then its number of effect jobs unless 0: 'c', 'r2'), then
-- run_at and error for a retry, run_at for a release, error for a fail, then its effect jobs.
-- A completion whose lease named its Finished key is kind 'k', then the key.
local at, ids, kinds, effs = {}, {}, {}, {}
local i = first_item
while i <= #ARGV do
  local n = #at + 1
  local op = ARGV[i + 2]
  local kind, effects, extra = op, 0, 0
  if op == 'k' then
    extra = 1
  elseif op ~= 'c' then
    kind = string.sub(op, 1, 1)
    effects = tonumber(string.sub(op, 2)) or 0
    if kind == 'r' then extra = 2 elseif kind == 'f' or kind == 'l' then extra = 1 end
  end
  at[n], ids[n], kinds[n], effs[n] = i, ARGV[i], kind, effects
  i = i + 3 + extra + effects * 9
end
local current = {}
if #ids > 0 then current = redis.call('HMGET', KEYS[6], unpack(ids)) end
-- Plain completions waiting to be removed; `gone`: jobs settled by an earlier item of this call
-- (a repeated item is stale, as its token would be after the first).
local done, gone = {}, {}
-- On a queue without batch children the Finished keys of those completions free together, with
-- their removal (a batch child's frees at once: its end may dispatch a callback that takes the
-- key): `named` the keys their leases named, held by `holders`; `unnamed` the completions whose
-- records tell.
local defer = keyed and not batched
local named, holders, unnamed, nn = {}, {}, {}, 0
local function remove_done()
  if #done == 0 then return end
  if defer then
    if #unnamed > 0 then
      finished_keys(KEYS[4], KEYS[13], unnamed, legacy, named, holders)
      unnamed = {}
    end
    free_held(KEYS[12], named, holders)
    named, holders, nn = {}, {}, 0
  end
  redis.call('ZREM', KEYS[1], unpack(done))
  for _, k in ipairs({6, 4, 5}) do redis.call('HDEL', KEYS[k], unpack(done)) end
  if errs then redis.call('HDEL', KEYS[7], unpack(done)) end
  if legacy then redis.call('HDEL', KEYS[13], unpack(done)) end
  if extras then
    redis.call('HDEL', KEYS[15], unpack(done))
    redis.call('SREM', KEYS[16], unpack(done))
  end
  if hist then redis.call('HDEL', KEYS[17], unpack(done)) end
  redis.call('HINCRBY', KEYS[8], 'processed', #done)
  done = {}
end
local out, touched, settled = {}, {}, false
for n = 1, #at do
  local b = at[n]
  local id, token, kind, effects = ids[n], ARGV[b + 1], kinds[n], effs[n]
  local run_at, err = ARGV[b + 3], ARGV[b + 4]
  if kind == 'f' then err = run_at end
  -- A batch's child's lease token is the stored token, '|' and its batch (see CLAIM): the
  -- stored part is checked, the batch taken from the rest. A queue without batch children has
  -- no such lease (an aborted batch's running child, whose queue may have none left, holds a
  -- lease that matches no stored token: see ABORT_BATCH).
  local bid = nil
  if batched then
    local stored, batch = string.match(token, '^(%d+)|(.+)$')
    if stored then token, bid = stored, batch end
  end
  if current[n] ~= token or gone[id] then
    out[#out + 1] = 0
  else
    local st = nil
    if bid and ends[kind] then
      st = prepare(bid, own, id, ends[kind])
      if st == false then break end
    end
    settled = true
    gone[id] = true
    if kind == 'k' or (kind == 'c' and effects == 0) then
      -- Its Finished key frees, named by its lease or read from its record before the removal:
      -- with the call's other completions (`defer`), else now. A batch child's completion never
      -- reads other jobs (only a first failure cancels the siblings).
      if keyed then
        local key = kind == 'k' and ARGV[b + 3]
        if defer then
          if key then
            nn = nn + 1
            named[nn], holders[nn] = key, id
          else
            unnamed[#unnamed + 1] = id
          end
        elseif key then
          free_key(KEYS[12], nil, id, 'f', key, 'f')
        else
          free_key_of(KEYS[4], KEYS[12], KEYS[13], id, legacy, 'f')
        end
      end
      done[#done + 1] = id
      if st then count_end(st, own, id, 'd', now) end
      out[#out + 1] = 1
    else
      -- Effects may reuse a completed job's id, and a first failure cancels the batch's
      -- waiting and running children: the completions before this item are removed first.
      remove_done()
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
        if hist then redis.call('HDEL', KEYS[17], id) end
        redis.call('HINCRBY', KEYS[8], kind == 'c' and 'processed' or 'cancelled', 1)
      elseif kind == 'f' then
        fail(KEYS[8], KEYS[10], KEYS[11], KEYS[7], id, now, err)
        note(KEYS[17], id, nil, err)
        if keyed then free_key_of(KEYS[4], KEYS[12], KEYS[13], id, legacy, 'f') end
        if extras then redis.call('SREM', KEYS[16], id) end
      else
        if kind == 'r' then
          redis.call('HSET', KEYS[7], id, err)
          note(KEYS[17], id, run_at, err)
        else
          if redis.call('HINCRBY', KEYS[5], id, -1) < 0 then redis.call('HSET', KEYS[5], id, 0) end
          note(KEYS[17], id, run_at, nil)
        end
        if tonumber(run_at) <= now then
          make_ready(KEYS[2], KEYS[4], id)
        else
          redis.call('ZADD', KEYS[3], run_at, id)
        end
        arm(KEYS[9])
      end
      if st then count_end(st, own, id, ends[kind], now) end
      local fresh = false
      local from = (at[n + 1] or #ARGV + 1) - effects * 9
      for j = from, from + (effects - 1) * 9, 9 do
        if store_marked(effect_keys + tonumber(ARGV[j]) * 8, ARGV, j, touched) == 2 then
          fresh = true
        end
      end
      out[#out + 1] = fresh and 2 or 1
    end
  end
end
remove_done()
flush()
for k in pairs(touched) do arm(KEYS[k + 4]) end
-- A slot of a concurrency-limited queue freed: wake a worker the limit held back.
if limited and settled then arm(KEYS[9]) end
return {out, NEED, FRESH}
";

/// The token a lease carries for a claimed job whose claim token is `token` (digits): for a
/// counted child of a batch (`batch`, when the claim said the queue has any), that token, `|` and
/// the batch, which its settle reads instead of the record (see [`CLAIM`]); for a job holding a
/// `Finished` key (its record says so), the token, `+` and the key. Its completion then names the
/// key to the settle script, which frees it without reading and parsing the job's record (it
/// checks that the job holds it, so a key the job does not hold frees nothing); a child's key
/// is read from its record. Touch and extend send the stored token ([`stored_token`]), a settle
/// the token without the key ([`split_token`]).
pub(crate) fn lease_token(token: String, unique: Option<&Unique>, batch: Option<&str>) -> String {
    let plain = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    let (mark, tail) = match (batch, unique) {
        (Some(batch), _) if plain => ('|', batch),
        (None, Some(Unique { key, until: UniqueUntil::Finished, .. })) if plain => {
            ('+', key.as_str())
        }
        _ => return token,
    };
    let mut out = token;
    out.reserve(1 + tail.len());
    out.push(mark);
    out.push_str(tail);
    out
}

/// A lease token as [`lease_token`] made it, as a settle sends it: the token without the
/// `Finished` key it names, and the key. A batch child's token stays whole (the settle script
/// reads the batch from it); any other token (a stale or made-up one) is taken whole, and
/// matches no stored token.
pub(crate) fn split_token(token: &str) -> (&str, Option<&str>) {
    let digits = token.bytes().take_while(u8::is_ascii_digit).count();
    match token.as_bytes().get(digits) {
        Some(b'+') if digits > 0 => (&token[..digits], Some(&token[digits + 1..])),
        _ => (token, None),
    }
}

/// The token stored in `tokens` for a lease token as [`lease_token`] made it: its digits, without
/// the key or batch after them; any other token whole.
pub(crate) fn stored_token(token: &str) -> &str {
    let digits = token.bytes().take_while(u8::is_ascii_digit).count();
    match token.as_bytes().get(digits) {
        Some(b'+' | b'|') if digits > 0 => &token[..digits],
        _ => token,
    }
}

/// One settle as the SETTLE script takes it: the lease's id and token, the transition, and its
/// effect jobs with the index of their queue group.
pub(crate) struct SettleItem<'a> {
    pub(crate) id: &'a str,
    pub(crate) token: &'a str,
    pub(crate) transition: &'a Transition,
    pub(crate) effects: Vec<(usize, &'a NewJob)>,
}

/// The settle of `items` of queue `keys`, in workflow context `context` (the settled queue's
/// group first; none for a queue whose jobs count in no batch), whose effects go to `groups` (by
/// index), effect jobs written for storage layout `layout`. `mark`: the items' settle writer and
/// the highest number they carry, if they carry any (one writer's settles a call).
pub(crate) fn settle(
    keys: &QueueKeys,
    context: Option<&Context<'_>>,
    groups: &[Arc<QueueKeys>],
    items: &[SettleItem<'_>],
    mark: Option<(&str, i64)>,
    now: Millis,
    layout: u32,
) -> ScriptInvocation<'static> {
    let script = if context.is_some() { &SCRIPTS.settle_batched } else { &SCRIPTS.settle };
    let mut call = script.prepare_invoke();
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
        .key(&keys.cancel)
        .key(&keys.history);
    // Without a mark, a key of the queue's slot that nothing writes.
    call.key(keys.mark(mark.map_or("", |(writer, _)| writer)));
    call.arg(now);
    match mark {
        Some((_, seq)) => call.arg(seq),
        None => call.arg(""),
    };
    context_args(&mut call, context);
    for group in groups {
        group_keys(&mut call, group);
    }
    for item in items {
        let (kind, run_at, error) = match item.transition {
            Transition::Complete => ('c', None, None),
            Transition::Retry { run_at, error } => ('r', Some(*run_at), Some(error.as_str())),
            Transition::Fail { error } => ('f', None, Some(error.as_str())),
            Transition::Release { run_at } => ('l', Some(*run_at), None),
            Transition::Cancel => ('x', None, None),
            // A transition this build does not know: as a release at once, which loses nothing.
            _ => ('l', Some(now), None),
        };
        let (token, key) = split_token(item.token);
        call.arg(item.id).arg(token);
        match (item.effects.len(), key) {
            // A completion that names its Finished key: 'k', then the key.
            (0, Some(key)) if kind == 'c' => call.arg("k").arg(key),
            (0, _) => call.arg(kind.to_string()),
            (n, _) => call.arg(format!("{kind}{n}")),
        };
        if let Some(run_at) = run_at {
            call.arg(run_at);
        }
        if let Some(error) = error {
            call.arg(error);
        }
        for (group, job) in &item.effects {
            job_args(&mut call, *group, job, layout, false);
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
    call.key(&keys.reserved).key(&keys.tokens).arg(id).arg(stored_token(token)).arg(until);
    call
}

/// Returns jobs whose lease ran out by `ARGV[1]` to the ready set (at most `ARGV[2]` per call),
/// re-checking each deadline here, atomically. The lost attempt stays counted. A job whose
/// cancel was asked for is deleted instead and counted as cancelled (its key freed), and in its
/// batch, if it has one. A recovered job is due again from its lease's deadline (its history
/// notes it, for `latency_ms` and `get`).
/// KEYS: reserved, ready, jobs, attempts, tokens, errors, marker, stats, unique, unique_of,
/// progress, cancel, meta, history, then the workflow context (the queue's own group first).
/// ARGV: now, limit, the context's group count and names.
/// Returns {how many, NEED, FRESH} (see SETTLE): a job whose batch needs queues the call was
/// not given is left for the next call, which the client makes with them.
const RECOVER: &str = r"
local now = tonumber(ARGV[1])
context(3, 14)
local own = ARGV[4]
local batched = redis.call('HEXISTS', KEYS[13], 'batched') == 1
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local done = 0
for i = 1, #expired, 2 do
  local id = expired[i]
  if redis.call('SISMEMBER', KEYS[12], id) == 1 then
    local st = nil
    if batched then
      st = prepare(batch_of(redis.call('HGET', KEYS[3], id)), own, id, 'c')
      if st == false then break end
    end
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('SREM', KEYS[12], id)
    free_key_of(KEYS[3], KEYS[9], KEYS[10], id, true, 'f')
    redis.call('HDEL', KEYS[10], id)
    for _, k in ipairs({3, 4, 6, 11, 14}) do redis.call('HDEL', KEYS[k], id) end
    redis.call('HINCRBY', KEYS[8], 'cancelled', 1)
    if st then count_end(st, own, id, 'c', now) end
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[5], id)
    local attempt = redis.call('HGET', KEYS[4], id) or '0'
    redis.call('HSET', KEYS[6], id, string.format(
      'lease expired at %.0f: the worker running attempt %s stopped responding',
      tonumber(expired[i + 1]), attempt))
    note(KEYS[14], id, string.format('%d', tonumber(expired[i + 1])), nil)
    make_ready(KEYS[2], KEYS[3], id)
  end
  done = done + 1
end
flush()
-- Jobs became ready, or slots of a concurrency limit freed: wake a worker.
if done > 0 then arm(KEYS[7]) end
return {done, NEED, FRESH}
";

/// Expired leases recovered per script call.
pub(crate) const RECOVER_LIMIT: usize = 500;

pub(crate) fn recover(
    keys: &QueueKeys,
    context: &Context<'_>,
    now: Millis,
) -> ScriptInvocation<'static> {
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
        .key(&keys.meta)
        .key(&keys.history)
        .arg(now)
        .arg(RECOVER_LIMIT);
    context_args(&mut call, Some(context));
    call
}

/// The counters at `ARGV[1]`, and the due time of the longest-waiting due job.
///
/// The ready set is ordered by priority, then id (dispatch order), not by due time, and keeping
/// an index by due time would cost every push and claim a command. So the due time is the
/// oldest among the first job of each priority level (at most [`LATENCY_LEVELS`] levels, the
/// highest first: one `O(log n)` seek each) and the first delayed job if it is due (not promoted
/// yet): a level's first job is its longest-waiting one unless a job dispatched after it became
/// due before it (a delayed or retried job promoted late). A job's due time is the one its
/// history notes (a retry, release or recovery queued it again), else its record's.
///
/// KEYS: ready, delayed, reserved, failed, stats, meta, jobs, history.
/// Returns {ready, due delayed, all delayed, reserved, failed, processed, failed_total, paused,
/// cancelled, concurrency limit, rate limit, rate period, oldest due time}, a limit that is not
/// set as -1, no due job as nil.
const STATS: &str = r"
local now = tonumber(ARGV[1])
local counters = redis.call('HMGET', KEYS[5], 'processed', 'failed_total', 'cancelled')
local meta = redis.call('HMGET', KEYS[6], 'paused', 'concurrency', 'rate_limit', 'rate_period')
local paused = 0
if meta[1] == '1' then paused = 1 end
local oldest = false
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] and tonumber(first[2]) <= now then oldest = tonumber(first[2]) end
local heads, from = {}, '-inf'
for _ = 1, tonumber(ARGV[2]) do
  local head = redis.call('ZRANGEBYSCORE', KEYS[1], from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if not head[1] then break end
  heads[#heads + 1] = head[1]
  from = '(' .. head[2]
end
if #heads > 0 then
  local records = redis.call('HMGET', KEYS[7], unpack(heads))
  local notes = {}
  if redis.call('EXISTS', KEYS[8]) == 1 then notes = redis.call('HMGET', KEYS[8], unpack(heads)) end
  for i = 1, #heads do
    local due = notes[i] and tonumber(string.match(notes[i], '^(%d+)|'))
    local rec = records[i]
    if not due and rec then
      -- v2, v3, v4: the 6th field after the tag; layout 1 had no due time: its dispatch time.
      due = tonumber(string.match(rec, '^v%d+|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|(%-?%d+)|')
        or string.match(rec, '^%-?%d+|[^|]*|[^|]*|[^|]*|(%-?%d+)|'))
    end
    if due and (not oldest or due < oldest) then oldest = due end
  end
end
return {
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCOUNT', KEYS[2], '-inf', ARGV[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCOUNT', KEYS[3], '-inf', '(+inf'),
  redis.call('ZCARD', KEYS[4]),
  tonumber(counters[1] or '0'),
  tonumber(counters[2] or '0'),
  paused,
  tonumber(counters[3] or '0'),
  tonumber(meta[2] or '-1'),
  tonumber(meta[3] or '-1'),
  tonumber(meta[4] or '-1'),
  oldest,
}
";

/// Priority levels of the ready set whose first job [`STATS`] looks at for the queue's latency.
pub(crate) const LATENCY_LEVELS: usize = 16;

pub(crate) fn stats(keys: &QueueKeys, now: Millis) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.stats.prepare_invoke();
    call.key(&keys.ready)
        .key(&keys.delayed)
        .key(&keys.reserved)
        .key(&keys.failed)
        .key(&keys.stats)
        .key(&keys.meta)
        .key(&keys.jobs)
        .key(&keys.history)
        .arg(now)
        .arg(LATENCY_LEVELS);
    call
}

/// Pauses (`ARGV[1]` = '1') or resumes a queue. KEYS: meta, marker, stats. Resuming arms the
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
/// unique_of, progress, cancel, meta, history, then the workflow context (the queue's own group
/// first).
/// ARGV: id, the context's group count and names.
/// Returns {outcome, NEED, FRESH}: outcome 1 for a pending or delayed job, deleted (its Started
/// or Finished key freed, `cancelled` counted, and counted in its batch); 2 for a reserved one,
/// which gets the cancel flag its worker's next touch reports; -1 for a failed one; 0 when the
/// queue has no such job; 3 when its batch needs queues the call was not given (NEED; nothing
/// changed).
const CANCEL: &str = r"
local id = ARGV[1]
context(2, 13)
local own = ARGV[3]
local record = redis.call('HGET', KEYS[1], id)
if not record then return {0, NEED, FRESH} end
if redis.call('ZSCORE', KEYS[2], id) or redis.call('ZSCORE', KEYS[3], id) then
  local st = nil
  if redis.call('HEXISTS', KEYS[12], 'batched') == 1 then
    st = prepare(batch_of(record), own, id, 'c')
    if st == false then return {3, NEED, FRESH} end
  end
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  local mode, key = key_of(record, KEYS[9], id, true)
  free_key(KEYS[8], nil, id, mode, key, 'sf')
  redis.call('HDEL', KEYS[9], id)
  for _, k in ipairs({1, 5, 6, 10, 13}) do redis.call('HDEL', KEYS[k], id) end
  redis.call('SREM', KEYS[11], id)
  redis.call('HINCRBY', KEYS[7], 'cancelled', 1)
  if st then count_end(st, own, id, 'c', ARGV[#ARGV]) end
  flush()
  return {1, NEED, FRESH}
end
if redis.call('ZSCORE', KEYS[4], id) then
  redis.call('SADD', KEYS[11], id)
  return {2, NEED, FRESH}
end
return {-1, NEED, FRESH}
";

pub(crate) fn cancel(
    keys: &QueueKeys,
    context: &Context<'_>,
    id: &str,
    now: Millis,
) -> ScriptInvocation<'static> {
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
        .key(&keys.meta)
        .key(&keys.history)
        .arg(id);
    context_args(&mut call, Some(context));
    call.arg(now);
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
pub(crate) fn touch(groups: &[(Arc<QueueKeys>, Vec<&Touch>)]) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.touch.prepare_invoke();
    for (index, (keys, touches)) in groups.iter().enumerate() {
        call.key(&keys.tokens).key(&keys.progress).key(&keys.cancel);
        for touch in touches {
            call.arg(index).arg(&touch.lease.id).arg(stored_token(&touch.lease.token));
            match &touch.progress {
                Some(progress) => call.arg("1").arg(progress),
                None => call.arg("0").arg(""),
            };
        }
    }
    call
}

/// One job by id. KEYS: jobs, ready, delayed, reserved, failed, failed_at, attempts, errors,
/// unique_of, progress, cancel, history.
/// ARGV: id. Returns nil when the queue has no such job, else {where ('ready', 'delayed',
/// 'reserved', 'failed'), record, score in that set, attempts, last error, failed_at, unique
/// spec, progress, cancel requested (1 or 0), history}.
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
  redis.call('HGET', KEYS[12], ARGV[1]) or false,
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
        .key(&keys.history)
        .arg(id);
    call
}

/// A page of one of a queue's sorted sets (ready, delayed or reserved) in its order.
/// KEYS: the set, jobs, attempts, errors, unique_of, progress, cancel, history. ARGV: first
/// index, last index. Returns 9 per job: id, score, record, attempts, last error, unique spec,
/// progress, cancel requested (1 or 0), history.
const LIST: &str = r"
local page = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
local out = {}
for i = 1, #page, 2 do
  local id = page[i]
  -- The reserved set's wide entry (see WIDE), last by its score, is no job.
  if id == WIDE then break end
  local n = #out
  out[n + 1] = id
  out[n + 2] = page[i + 1]
  out[n + 3] = redis.call('HGET', KEYS[2], id) or false
  out[n + 4] = redis.call('HGET', KEYS[3], id) or false
  out[n + 5] = redis.call('HGET', KEYS[4], id) or false
  out[n + 6] = redis.call('HGET', KEYS[5], id) or false
  out[n + 7] = redis.call('HGET', KEYS[6], id) or false
  out[n + 8] = redis.call('SISMEMBER', KEYS[7], id)
  out[n + 9] = redis.call('HGET', KEYS[8], id) or false
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
        .key(&keys.history)
        .arg(first)
        .arg(last);
    call
}

/// Removes up to `ARGV[1]` pending, then delayed jobs, freeing their Started and Finished unique
/// keys (and `unique`'s wide entry with the last of them, see [`FREE_KEY`]); a batch's child
/// is counted cancelled in its batch. It sets the queue's `registered`
/// mark, so that a queue that got jobs stays listed once they are cleared (see "Forgetting a
/// queue" in the README). KEYS: ready, delayed, jobs, attempts, errors, unique, unique_of,
/// progress, cancel, meta, history, stats, then the workflow context (the queue's own group
/// first). ARGV: limit, now, the context's group count and names.
/// Returns {how many, NEED, FRESH}; the caller repeats until fewer than `ARGV[1]` were removed and
/// nothing was needed (a child whose batch needs queues the call was not given stops the call
/// before it, see SETTLE).
const CLEAR: &str = r"
local limit, now = tonumber(ARGV[1]), ARGV[2]
context(3, 12)
local own = ARGV[4]
local removed = 0
local keyed = redis.call('EXISTS', KEYS[6]) == 1
local legacy = redis.call('EXISTS', KEYS[7]) == 1
local batched = redis.call('HEXISTS', KEYS[10], 'batched') == 1
local function forget(id)
  if keyed then free_key_of(KEYS[3], KEYS[6], KEYS[7], id, legacy, 'sf') end
  if legacy then redis.call('HDEL', KEYS[7], id) end
  for _, k in ipairs({3, 4, 5, 8, 11}) do redis.call('HDEL', KEYS[k], id) end
  redis.call('SREM', KEYS[9], id)
end
for z = 1, 2 do
  if removed < limit and #NEED == 0 then
    if batched then
      -- One job at a time: a child's batch is prepared before the job changes.
      local ids = redis.call('ZRANGE', KEYS[z], 0, limit - removed - 1)
      for _, id in ipairs(ids) do
        local st = prepare(batch_of(redis.call('HGET', KEYS[3], id)), own, id, 'c')
        if st == false then break end
        redis.call('ZREM', KEYS[z], id)
        forget(id)
        if st then count_end(st, own, id, 'c', now) end
        removed = removed + 1
      end
    else
      local popped = redis.call('ZPOPMIN', KEYS[z], limit - removed)
      for i = 1, #popped, 2 do forget(popped[i]) end
      removed = removed + #popped / 2
    end
  end
end
flush()
if removed > 0 then redis.call('HSETNX', KEYS[12], 'registered', 1) end
return {removed, NEED, FRESH}
";

/// Jobs removed per `clear` or `flush` script call, so no call blocks Redis for long.
pub(crate) const DELETE_LIMIT: usize = 1000;

pub(crate) fn clear(
    keys: &QueueKeys,
    context: &Context<'_>,
    now: Millis,
) -> ScriptInvocation<'static> {
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
        .key(&keys.meta)
        .key(&keys.history)
        .key(&keys.stats)
        .arg(DELETE_LIMIT)
        .arg(now);
    context_args(&mut call, Some(context));
    call
}

/// The keys of a queue's failed set, in the order the failed-set scripts read them: failed,
/// failed_at, then the per-job hashes a deleted job leaves (jobs, attempts, errors, unique_of,
/// progress, history).
fn failed_keys(call: &mut ScriptInvocation<'static>, keys: &QueueKeys) {
    call.key(&keys.failed)
        .key(&keys.failed_at)
        .key(&keys.jobs)
        .key(&keys.attempts)
        .key(&keys.errors)
        .key(&keys.unique_of)
        .key(&keys.progress)
        .key(&keys.history);
}

/// A page of the failed set, oldest first. KEYS: failed, failed_at, jobs, attempts, errors (and
/// unique_of, progress, history, unused here). ARGV: first index, last index. Returns 5 per job: id,
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
/// again, and a batch's child leaves its batch (its record loses the batch id); it keeps its
/// error history, and is due again from `ARGV[2]`. KEYS: failed, failed_at, jobs, attempts,
/// errors, unique_of, progress, history, ready, marker. ARGV: id, now. Returns 1, or 0 when the
/// id is not in the failed set (so of concurrent callers one wins).
const RETRY_FAILED: &str = r"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
-- A batch's child leaves its batch: its failure was counted there already.
local record = redis.call('HGET', KEYS[3], ARGV[1])
if batch_of(record) then redis.call('HSET', KEYS[3], ARGV[1], unbatch(record)) end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
note(KEYS[8], ARGV[1], ARGV[2], nil)
make_ready(KEYS[9], KEYS[3], ARGV[1])
arm(KEYS[10])
return 1
";

pub(crate) fn retry_failed(keys: &QueueKeys, id: &str, now: Millis) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.retry_failed.prepare_invoke();
    failed_keys(&mut call, keys);
    call.key(&keys.ready).key(&keys.marker).arg(id).arg(now);
    call
}

/// Deletes one failed job. KEYS: as [`failed_keys`]. ARGV: id. Returns 1, or 0 when the id is
/// not in the failed set.
const FORGET_FAILED: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
for k = 2, 8 do redis.call('HDEL', KEYS[k], ARGV[1]) end
return 1
";

pub(crate) fn forget_failed(keys: &QueueKeys, id: &str) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.forget_failed.prepare_invoke();
    failed_keys(&mut call, keys);
    call.arg(id);
    call
}

/// Deletes up to `ARGV[1]` failed jobs. KEYS: as [`failed_keys`]. Returns how many; the caller
/// repeats until fewer were deleted.
const FLUSH_FAILED: &str = r"
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
for i = 1, #popped, 2 do
  for k = 2, 8 do redis.call('HDEL', KEYS[k], popped[i]) end
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
    /// A single server: forgets an empty, idle queue and, in the same step, moves it from the
    /// registry to the forgotten set (the last two keys).
    Standalone,
    /// A cluster, where the registry is in another slot: forgets an empty, idle queue; the
    /// caller then takes it out of the registry.
    Cluster,
}

/// Forgets a queue if it holds no job: no pending, delayed, reserved or failed one, and no
/// record. KEYS: ready, delayed, reserved, failed, jobs, stats, then the queue's other keys
/// (`ARGV[2]` queue keys in all), then for [`Forget::Standalone`] the registry and the forgotten
/// set. ARGV: the queue's name, the number of queue keys, now.
/// Returns 1 when the queue was forgotten, 0 when it holds a job (and nothing changed).
const FORGET: &str = r"
local n = tonumber(ARGV[2])
if redis.call('HLEN', KEYS[5]) > 0 then return 0 end
-- Up to (+inf: the reserved set's wide entry (see WIDE) is no job.
for k = 1, 4 do
  if redis.call('ZCOUNT', KEYS[k], '-inf', '(+inf') > 0 then return 0 end
end
redis.call('DEL', unpack(KEYS, 1, n))
if #KEYS > n then
  redis.call('SREM', KEYS[n + 1], ARGV[1])
  redis.call('ZADD', KEYS[n + 2], ARGV[3], ARGV[1])
end
return 1
";

pub(crate) fn forget_queue(
    keys: &QueueKeys,
    queue: &str,
    mode: Forget,
    registry: &str,
    forgotten: &str,
    now: Millis,
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
        &keys.history,
    ];
    for key in all {
        call.key(key);
    }
    if mode == Forget::Standalone {
        call.key(registry).key(forgotten);
    }
    call.arg(queue).arg(all.len()).arg(now);
    call
}

/// On a cluster, after [`FORGET`] deleted a queue's keys in its own slot: moves it from the
/// registry (`KEYS[1]`) to the forgotten set (`KEYS[2]`) at `ARGV[2]`. `ARGV[1]`: the queue.
const UNLIST: &str = r"
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
";

pub(crate) fn unlist(
    registry: &str,
    forgotten: &str,
    queue: &str,
    now: Millis,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.unlist.prepare_invoke();
    call.key(registry).key(forgotten).arg(queue).arg(now);
    call
}

/// The registry (`KEYS[1]`) and the forgotten set (`KEYS[2]`, with when each was forgotten), read in
/// one step. Returns {queues, {queue, forgotten at, ...}}.
const QUEUES: &str = r"
return {redis.call('SMEMBERS', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')}
";

pub(crate) fn queues(registry: &str, forgotten: &str) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.queues.prepare_invoke();
    call.key(registry).key(forgotten);
    call
}

/// Settles a forgotten queue's entry: `ARGV[2]` = '1' when its keys exist (a process that still
/// remembered listing it stored something since): back to the registry (`KEYS[1]`) from the
/// forgotten set (`KEYS[2]`); otherwise the entry goes if it was forgotten before `ARGV[3]`, when
/// every process has listed the queue again before storing in it. `ARGV[1]`: the queue.
/// Returns 1 when the queue is listed again.
const REVIVE: &str = r"
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[1], ARGV[1])
  return 1
end
local at = redis.call('ZSCORE', KEYS[2], ARGV[1])
if at and tonumber(at) < tonumber(ARGV[3]) then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 0
";

pub(crate) fn revive(
    registry: &str,
    forgotten: &str,
    queue: &str,
    found: bool,
    stale_before: Millis,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.revive.prepare_invoke();
    call.key(registry).key(forgotten).arg(queue).arg(if found { "1" } else { "0" });
    call.arg(stale_before);
    call
}

/// Stores a worker's heartbeat: its entry (`KEYS[1]`, id -> JSON) listed until `ARGV[3]` (`KEYS[2]`),
/// up to 10 entries that expired before now removed (so the entries of killed workers do not pile
/// up when nobody lists them), and the jobs that ended added to the bucket of minute `ARGV[5]` of
/// every queue (`KEYS[3]`) and of each queue (KEYS[4..]); each written hash drops its buckets
/// before `ARGV[6]` (now minus the horizon) and lives a horizon after its last write.
/// ARGV: id, JSON, expires at, now, minute, cutoff, horizon ms, then processed and failed per
/// queue (in the order of KEYS[4..]), then their sums.
///
/// Each hash keeps `from`, the oldest minute it may hold, so the trim costs nothing until a
/// minute passes the horizon (amortized one `HDEL` per minute), and at most a day's minutes when
/// heartbeats stopped for longer.
const HEARTBEAT: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4], 'LIMIT', 0, 10)
if #dead > 0 then
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
end
local minute, cutoff, horizon = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local function add(h, p, f)
  local old = redis.call('HGET', h, minute)
  if old then
    local op, of = string.match(old, '^(%d+)|(%d+)$')
    p = p + (tonumber(op) or 0)
    f = f + (tonumber(of) or 0)
  end
  redis.call('HSET', h, minute, string.format('%d|%d', p, f))
  local from = tonumber(redis.call('HGET', h, 'from'))
  if not from or tonumber(minute) < from then
    redis.call('HSET', h, 'from', minute)
  elseif from < cutoff then
    local old_minutes = {}
    if cutoff - from > horizon then
      for _, m in ipairs(redis.call('HKEYS', h)) do
        if tonumber(m) and tonumber(m) < cutoff then old_minutes[#old_minutes + 1] = m end
      end
    else
      for m = from, cutoff - 1, 60000 do old_minutes[#old_minutes + 1] = string.format('%d', m) end
    end
    for i = 1, #old_minutes, 1000 do
      redis.call('HDEL', h, unpack(old_minutes, i, math.min(i + 999, #old_minutes)))
    end
    redis.call('HSET', h, 'from', string.format('%d', cutoff + (60000 - cutoff % 60000) % 60000))
  end
  redis.call('PEXPIRE', h, horizon + 120000)
end
local n = #KEYS - 3
if n > 0 then
  for q = 1, n do
    add(KEYS[3 + q], tonumber(ARGV[6 + 2 * q]), tonumber(ARGV[7 + 2 * q]))
  end
  add(KEYS[3], tonumber(ARGV[8 + 2 * n]), tonumber(ARGV[9 + 2 * n]))
end
return 1
";

/// The heartbeat of worker `id` (its entry `json`) at `now`, listed until `expires`, with the
/// jobs that ended per queue (`ended`: queue hash, processed, failed; none zero).
pub(crate) fn heartbeat(
    ops: &OpsKeys,
    id: &str,
    json: &str,
    expires: Millis,
    now: Millis,
    ended: &[(String, u64, u64)],
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.heartbeat.prepare_invoke();
    call.key(&ops.workers).key(&ops.worker_expiry).key(&ops.throughput);
    let minute = now - now.rem_euclid(60_000);
    let cutoff = now.saturating_sub(THROUGHPUT_HORIZON_MS);
    call.arg(id).arg(json).arg(expires).arg(now).arg(minute).arg(cutoff);
    call.arg(THROUGHPUT_HORIZON_MS);
    let (mut processed, mut failed) = (0u64, 0u64);
    for (key, p, f) in ended {
        call.key(key).arg(p).arg(f);
        processed = processed.saturating_add(*p);
        failed = failed.saturating_add(*f);
    }
    call.arg(processed).arg(failed);
    call
}

/// The live workers at `ARGV[1]`: entries (`KEYS[1]`) whose expiry (`KEYS[2]`) is not before now;
/// expired ones are removed first (at most 1000 per call). Returns their JSON.
const WORKERS: &str = r"
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
if #dead > 0 then
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
end
local live = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], '+inf')
local out = {}
for i = 1, #live, 1000 do
  local part = redis.call('HMGET', KEYS[1], unpack(live, i, math.min(i + 999, #live)))
  for _, entry in ipairs(part) do
    if entry then out[#out + 1] = entry end
  end
end
return out
";

pub(crate) fn workers(ops: &OpsKeys, now: Millis) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.workers.prepare_invoke();
    call.key(&ops.workers).key(&ops.worker_expiry).arg(now);
    call
}

/// Removes worker `ARGV[1]`'s entry. Returns 1 if it was there.
const FORGET_WORKER: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
";

pub(crate) fn forget_worker(ops: &OpsKeys, id: &str) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.forget_worker.prepare_invoke();
    call.key(&ops.workers).key(&ops.worker_expiry).arg(id);
    call
}

/// Deletes the oldest failed jobs of a queue as long as a rule names them, at most `ARGV[4]` per
/// call: beyond the newest `ARGV[2]` (count), failed before `ARGV[1]` (time), or at or before
/// failure sequence `ARGV[3]` (the cut a prune over every queue chose); an empty argument is no
/// rule. The failed set is in failure order, so the walk stops at the first job no rule names
/// (a job a slower clock stamped earlier than the one before it waits for the next prune).
/// KEYS: as [`failed_keys`]. Returns how many it deleted; the caller repeats while that is the
/// limit.
const PRUNE: &str = r"
local before, keep, upto = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local excess = 0
if keep then excess = redis.call('ZCARD', KEYS[1]) - keep end
local page = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1, 'WITHSCORES')
if #page == 0 then return 0 end
local ids = {}
for i = 1, #page, 2 do ids[#ids + 1] = page[i] end
local times = redis.call('HMGET', KEYS[2], unpack(ids))
local doomed = {}
for n, id in ipairs(ids) do
  local named = n <= excess
    or (before and (tonumber(times[n]) or 0) < before)
    or (upto and tonumber(page[2 * n]) <= upto)
  if not named then break end
  doomed[#doomed + 1] = id
end
if #doomed > 0 then
  redis.call('ZREM', KEYS[1], unpack(doomed))
  for k = 2, 8 do redis.call('HDEL', KEYS[k], unpack(doomed)) end
end
return #doomed
";

/// Failed jobs deleted per [`PRUNE`] call.
pub(crate) const PRUNE_LIMIT: usize = 1000;

pub(crate) fn prune(
    keys: &QueueKeys,
    failed_before: Option<Millis>,
    keep: Option<u64>,
    upto: Option<i64>,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.prune.prepare_invoke();
    failed_keys(&mut call, keys);
    let opt = |v: Option<String>| v.unwrap_or_default();
    call.arg(opt(failed_before.map(|v| v.to_string())))
        .arg(opt(keep.map(|v| v.to_string())))
        .arg(opt(upto.map(|v| v.to_string())))
        .arg(PRUNE_LIMIT);
    call
}

/// Failure sequence numbers and times of the failed set's jobs `ARGV[1]`..=`ARGV[2]` (oldest
/// first). KEYS: failed, failed_at. Returns {sequence, time, ...} (time false when unknown).
const FAILED_TIMES: &str = r"
local page = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
if #page == 0 then return {} end
local ids = {}
for i = 1, #page, 2 do ids[#ids + 1] = page[i] end
local times = redis.call('HMGET', KEYS[2], unpack(ids))
local out = {}
for n = 1, #ids do
  out[#out + 1] = page[2 * n]
  out[#out + 1] = times[n]
end
return out
";

pub(crate) fn failed_times(keys: &QueueKeys, first: u64, last: u64) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.failed_times.prepare_invoke();
    call.key(&keys.failed).key(&keys.failed_at).arg(first).arg(last);
    call
}

/// Moves the storage layout mark `KEYS[1]` from `ARGV[1]` (or no mark) to `ARGV[2]`, in one step so
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

/// Stores one step of a batch's push: its children (at most 1000) and, in the first step, the
/// batch itself. `mode` holds 'c' to create the batch (refused if it exists) and 's' to seal it
/// (the last step): an open batch never finishes, so its callbacks cannot run before every
/// child is stored; sealing one whose children all ended already finishes it in that step.
///
/// KEYS: the workflow context (every child's queue and every callback's queue as groups).
/// ARGV: mode, batch id, created at (the batch's "now"), its record, its initial state (see
/// [`WORKFLOW`]), the context's group count and names, then 9 per child as PUSH takes them (the
/// group an index into the context's groups).
/// Returns {{status, outcomes}, NEED (always empty), FRESH}: status 'ok'; 'exists' (create: a batch with this id
/// exists; nothing changed); 'gone' (no such batch: it was aborted); 'cancelled' (the batch was
/// cancelled while it was being pushed: nothing stored, the batch sealed). Outcomes per child
/// as PUSH answers them.
const PUSH_BATCH: &str = r"
local mode, bid, now = ARGV[1], ARGV[2], ARGV[3]
local first_child = context(6, 0)
if string.find(mode, 'c', 1, true) then
  if redis.call('HEXISTS', B, 'k' .. bid) == 1 then return {{'exists', {}}, NEED, FRESH} end
  redis.call('HSET', B, 'r' .. bid, ARGV[4], 'k' .. bid, ARGV[5], 'n' .. bid, 0, 'p' .. bid, 0,
    'd' .. bid, 0, 'f' .. bid, 0, 'c' .. bid, 0)
end
local st = batch_state(bid)
if not st then return {{'gone', {}}, NEED, FRESH} end
local seal = string.find(mode, 's', 1, true)
if st.x then
  -- Cancelled meanwhile (by cancel_batch, or by a child that failed): no more children.
  if string.sub(st.k, 5, 5) == 'o' then
    setk(st, 5, 's')
    if st.p <= 0 and not st.e then finish(st, now) end
    save(st)
  end
  return {{'cancelled', {}}, NEED, FRESH}
end
local out, touched, per_group, stored = {}, {}, {}, 0
for b = first_child, #ARGV, 9 do
  local g = tonumber(ARGV[b])
  local r = store_marked(2 + g * 16, ARGV, b, touched)
  if r == 1 or r == 2 then
    redis.call('ZADD', C, 0, member(bid, ARGV[7 + g], ARGV[b + 1]))
    per_group[g] = (per_group[g] or 0) + 1
    stored = stored + 1
  end
  out[#out + 1] = r
end
if stored > 0 then
  local queues = fields(redis.call('HGET', B, 'q' .. bid) or '')
  local known = {}
  for _, q in ipairs(queues) do known[q] = true end
  for g, n in pairs(per_group) do
    local queue = ARGV[7 + g]
    redis.call('HINCRBY', KEYS[2 + g * 16 + 14], 'batched', n)
    if not known[queue] then
      queues[#queues + 1] = queue
      known[queue] = true
    end
  end
  redis.call('HSET', B, 'q' .. bid, pack(queues))
  redis.call('HINCRBY', B, 'n' .. bid, stored)
  st.p = st.p + stored
end
for k in pairs(touched) do arm(KEYS[k + 4]) end
if seal then
  setk(st, 5, 's')
  if st.p <= 0 then finish(st, now) end
end
save(st)
return {{'ok', out}, NEED, FRESH}
";

/// The batch-push step `mode` ('c' create, 's' seal, both, or neither) of batch `id` created at
/// `created_at` (with `record` and `state` when it creates it), storing `children` (each with
/// its group's index in `context`), written for storage layout `layout`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn push_batch(
    context: &Context<'_>,
    mode: &str,
    id: &str,
    created_at: Millis,
    record: &str,
    state: &str,
    children: &[(usize, &NewJob)],
    layout: u32,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.push_batch.prepare_invoke();
    call.arg(mode).arg(id).arg(created_at).arg(record).arg(state);
    context_args(&mut call, Some(context));
    for (group, job) in children {
        job_args(&mut call, *group, job, layout, true);
    }
    call
}

/// Undoes a batch push that failed before its last step: every child still untouched (waiting,
/// never claimed) is deleted, the others stay as jobs of no batch (their records lose the batch),
/// and the batch is deleted, so the dispatcher may push it again. A sealed batch (its last step went
/// through after all) is left as it is.
/// KEYS: the workflow context (every child's queue). ARGV: the context's group count and names,
/// batch id. Returns {1 (undone) or 0 (sealed: left), NEED, FRESH}.
const ABORT_BATCH: &str = r"
local a = context(1, 0)
local bid = ARGV[a]
local st = batch_state(bid)
if not st then return {1, NEED, FRESH} end
if string.sub(st.k, 5, 5) ~= 'o' then return {0, NEED, FRESH} end
for _, q in ipairs(fields(redis.call('HGET', B, 'q' .. bid) or '')) do want(q) end
if #NEED > 0 then return {0, NEED, FRESH} end
local prefix = members_prefix(bid)
for _, m in ipairs(redis.call('ZRANGEBYLEX', C, '[' .. prefix, '[' .. prefix .. '\255')) do
  local qlen, at = string.match(m, '^(%d+):()', #prefix + 1)
  local queue = string.sub(m, at, at + tonumber(qlen) - 1)
  local id = string.sub(m, at + tonumber(qlen))
  local g = G[queue]
  local rec = redis.call('HGET', KEYS[g + 3], id)
  if rec and batch_of(rec) == bid then
    if not redis.call('HGET', KEYS[g + 10], id)
      and redis.call('ZREM', KEYS[g + 1], id) + redis.call('ZREM', KEYS[g + 2], id) > 0 then
      local mode, key = key_of(rec, KEYS[g + 7], id, true)
      free_key(KEYS[g + 5], KEYS[g + 6], id, mode, key, 'sfp')
      for _, o in ipairs({3, 7, 10, 11, 16}) do redis.call('HDEL', KEYS[g + o], id) end
    else
      -- Claimed already: it stays, as a job of no batch. A running one's lease named the
      -- batch: it is lost (the job runs again once the lease runs out), its stored token
      -- changed to one no lease carries (a lease's token is digits, or digits, '|' and a
      -- batch; a build before round 17 stored the batch in the token too).
      redis.call('HSET', KEYS[g + 3], id, unbatch(rec))
      local token = redis.call('HGET', KEYS[g + 15], id)
      if token then
        redis.call('HSET', KEYS[g + 15], id, (string.match(token, '^%d+') or '') .. '|')
      end
    end
    drop_count(queue)
  end
end
redis.call('ZREMRANGEBYLEX', C, '[' .. prefix, '[' .. prefix .. '\255')
for _, f in ipairs({'r', 'k', 'n', 'p', 'd', 'f', 'c', 'x', 'e', 'q'}) do
  redis.call('HDEL', B, f .. bid)
end
flush()
return {1, NEED, FRESH}
";

pub(crate) fn abort_batch(context: &Context<'_>, id: &str) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.abort_batch.prepare_invoke();
    context_args(&mut call, Some(context));
    call.arg(id);
    call
}

/// Cancels a batch: when it is neither cancelled nor finished, marks it cancelled at `ARGV[1]`,
/// seals it (a push cut short by a dead dispatcher ends this way), removes its waiting children
/// (counted cancelled), asks its running ones to stop, and finishes it if none is left.
/// KEYS: the workflow context (every child's queue, `then`'s and `finally`'s). ARGV: now, the
/// context's group count and names, batch id.
/// Returns {1 (the batch exists) or 0, NEED, FRESH}; with NEED, nothing changed.
const CANCEL_BATCH: &str = r"
local now = ARGV[1]
local a = context(2, 0)
local bid = ARGV[a]
local st = batch_state(bid)
if not st then return {0, NEED, FRESH} end
if st.x or st.e then return {1, NEED, FRESH} end
local rec = callbacks(bid)
for _, q in ipairs(fields(redis.call('HGET', B, 'q' .. bid) or '')) do want(q) end
if string.sub(st.k, 1, 1) == 'w' then want(cb_queue(rec[3])) end
if string.sub(st.k, 3, 3) == 'w' then want(cb_queue(rec[5])) end
if #NEED > 0 then return {1, NEED, FRESH} end
st.x = now
redis.call('HSET', B, 'x' .. bid, now)
setk(st, 5, 's')
cancel_children(st)
if st.p <= 0 then finish(st, now) end
save(st)
flush()
return {1, NEED, FRESH}
";

pub(crate) fn cancel_batch(
    context: &Context<'_>,
    id: &str,
    now: Millis,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.cancel_batch.prepare_invoke();
    call.arg(now);
    context_args(&mut call, Some(context));
    call.arg(id);
    call
}

/// Registers a schedule: stores `ARGV[2]` (a record, keys.rs `encode_schedule`) under name
/// `ARGV[1]` in `KEYS[1]` if none is stored; otherwise keeps the stored cursor, last run and next
/// run and takes the rest (queue, definition, updated at) from `ARGV[2]`. `ARGV[3]`, when not '',
/// is the record of the schedule as another slot held it (a cluster moving it to its new
/// queue's slot): a new record then starts from its cursor and runs.
/// Returns the stored record.
const REGISTER_SCHEDULE: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1]) or ARGV[3]
local new = fields(ARGV[2])
if old ~= '' then
  local kept = fields(old)
  if kept[1] == 's1' then new[2], new[3], new[4] = kept[2], kept[3], kept[4] end
end
local record = pack(new)
redis.call('HSET', KEYS[1], ARGV[1], record)
return record
";

pub(crate) fn register_schedule(
    schedules: &str,
    name: &str,
    record: &str,
    carried: &str,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.register_schedule.prepare_invoke();
    call.key(schedules).arg(name).arg(record).arg(carried);
    call
}

/// Fires a schedule: if the cursor stored for `ARGV[1]` in `KEYS[1]` is `ARGV[2]`, moves it to
/// `ARGV[3]`, sets the last run to `ARGV[4]` (kept when '') and the next run to `ARGV[5]`, and pushes
/// the jobs as PUSH does. KEYS: schedules, then 8 per job group as PUSH takes them. ARGV: name,
/// expected cursor, cursor, last run, next run, then 9 per job as PUSH takes them.
/// Returns {-1} for an unknown schedule, {-2} for an unreadable record, {0} when the cursor
/// moved on (nothing changed), else {1, then per job what PUSH answers}.
const FIRE: &str = r"
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return {-1} end
local f = fields(record)
if f[1] ~= 's1' then return {-2} end
if f[2] ~= ARGV[2] then return {0} end
f[2] = ARGV[3]
if ARGV[4] ~= '' then f[3] = ARGV[4] end
f[4] = ARGV[5]
redis.call('HSET', KEYS[1], ARGV[1], pack(f))
local out, touched = {1}, {}
for b = 6, #ARGV, 9 do
  out[#out + 1] = store_marked(1 + tonumber(ARGV[b]) * 8, ARGV, b, touched)
end
for k in pairs(touched) do arm(KEYS[k + 4]) end
return out
";

/// The fire of schedule `fire` stored in `schedules`, its jobs in `groups` (jobs with their
/// group's index), written for storage layout `layout`.
pub(crate) fn fire(
    schedules: &str,
    fire: &orcs_core::Fire,
    groups: &[Arc<QueueKeys>],
    jobs: &[(usize, &NewJob)],
    layout: u32,
) -> ScriptInvocation<'static> {
    let mut call = SCRIPTS.fire.prepare_invoke();
    call.key(schedules);
    for group in groups {
        group_keys(&mut call, group);
    }
    let opt = |v: Option<Millis>| v.map(|v| v.to_string()).unwrap_or_default();
    call.arg(&fire.name)
        .arg(fire.expected_cursor)
        .arg(fire.cursor)
        .arg(opt(fire.last_run))
        .arg(opt(fire.next_run));
    for (group, job) in jobs {
        job_args(&mut call, *group, job, layout, false);
    }
    call
}

/// Every script, compiled once per process (the SHA is computed here, the load happens on the
/// first NOSCRIPT answer of each server).
#[derive(Debug)]
struct Scripts {
    push: Script,
    push_plain: Script,
    push_keyed: Script,
    unstore: Script,
    claim: Script,
    settle: Script,
    settle_batched: Script,
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
    unlist: Script,
    queues: Script,
    revive: Script,
    heartbeat: Script,
    workers: Script,
    forget_worker: Script,
    prune: Script,
    failed_times: Script,
    upgrade: Script,
    push_batch: Script,
    abort_batch: Script,
    cancel_batch: Script,
    register_schedule: Script,
    fire: Script,
}

/// A script of `parts` (helpers and the body, in order).
fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

/// Every helper, the workflow helpers (scripts that may end a batch's child, or handle batches
/// and schedules), then `more` and `body`.
fn with_workflow(more: &str, body: &str) -> Script {
    Script::new(&format!("{}{WORKFLOW}{more}{body}", PRELUDE.concat()))
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    push: script(&[HEADER, ARM, KEY_HELD, DEBOUNCE, STORE, PUSH]),
    push_plain: script(&[ARM, PUSH_PLAIN]),
    push_keyed: script(&[ARM, KEY_OF, PUSH_KEYED]),
    unstore: script(&[WIDE, KEY_OF, FREE_KEY, UNSTORE]),
    claim: script(&[WIDE, HEADER, ARM, KEY_OF, FREE_KEYS, FAIL, CLAIM]),
    settle: script(&[
        HEADER,
        ARM,
        WIDE,
        KEY_OF,
        FREE_KEY,
        MAKE_READY,
        FAIL,
        KEY_HELD,
        DEBOUNCE,
        STORE,
        NO_WORKFLOW,
        HISTORY,
        FREE_KEYS,
        SETTLE,
    ]),
    settle_batched: with_workflow(&[HISTORY, FREE_KEYS].concat(), SETTLE),
    extend: Script::new(EXTEND),
    recover: with_workflow(HISTORY, RECOVER),
    stats: Script::new(STATS),
    set_paused: script(&[ARM, SET_PAUSED]),
    set_limits: script(&[ARM, SET_LIMITS]),
    cancel: with_workflow("", CANCEL),
    touch: Script::new(TOUCH),
    get: Script::new(GET),
    list: script(&[WIDE, LIST]),
    clear: with_workflow("", CLEAR),
    failed_page: Script::new(FAILED_PAGE),
    retry_failed: with_workflow(HISTORY, RETRY_FAILED),
    forget_failed: Script::new(FORGET_FAILED),
    flush_failed: Script::new(FLUSH_FAILED),
    forget_queue: Script::new(FORGET),
    unlist: Script::new(UNLIST),
    queues: Script::new(QUEUES),
    revive: Script::new(REVIVE),
    heartbeat: Script::new(HEARTBEAT),
    workers: Script::new(WORKERS),
    forget_worker: Script::new(FORGET_WORKER),
    prune: Script::new(PRUNE),
    failed_times: Script::new(FAILED_TIMES),
    upgrade: Script::new(UPGRADE),
    push_batch: with_workflow("", PUSH_BATCH),
    abort_batch: with_workflow("", ABORT_BATCH),
    cancel_batch: with_workflow("", CANCEL_BATCH),
    register_schedule: with_workflow("", REGISTER_SCHEDULE),
    fire: with_workflow("", FIRE),
});

#[cfg(test)]
mod tests {
    use orcs_core::{Unique, UniqueUntil};

    use super::{lease_token, runs, split_token, stored_token};

    /// A limited claim names its settling jobs by runs of their settle numbers.
    #[test]
    fn settle_numbers_go_as_runs() {
        let of = |seqs: &[i64]| runs(seqs).collect::<Vec<_>>();
        assert_eq!(of(&[]), []);
        assert_eq!(of(&[7]), [(7, 7)]);
        assert_eq!(of(&[3, 4, 5, 9, 10, 12]), [(3, 5), (9, 10), (12, 12)]);
    }

    #[test]
    fn a_lease_names_only_a_finished_key_of_a_plain_token() {
        let finished = Unique::new("k+1|x", UniqueUntil::Finished);
        let token = lease_token("42".to_owned(), Some(&finished), None);
        assert_eq!(token, "42+k+1|x");
        assert_eq!(split_token(&token), ("42", Some("k+1|x")));
        assert_eq!(stored_token(&token), "42");
        for until in [UniqueUntil::Started, UniqueUntil::Period(5)] {
            assert_eq!(lease_token("42".to_owned(), Some(&Unique::new("k", until)), None), "42");
        }
        assert_eq!(lease_token("42".to_owned(), None, None), "42");
        assert_eq!(split_token("42"), ("42", None));
        assert_eq!(stored_token("42"), "42");
        // A made-up token is taken whole (and matches no stored token); an empty key is a key.
        assert_eq!(split_token("not-the-token"), ("not-the-token", None));
        assert_eq!(stored_token("not-the-token"), "not-the-token");
        assert_eq!(split_token("+k"), ("+k", None));
        assert_eq!(stored_token("|b"), "|b");
        assert_eq!(split_token("42+"), ("42", Some("")));
    }

    #[test]
    fn a_batch_childs_lease_names_its_batch_and_no_key() {
        let finished = Unique::new("k", UniqueUntil::Finished);
        let token = lease_token("7".to_owned(), Some(&finished), Some("b+1|x"));
        assert_eq!(token, "7|b+1|x");
        // A settle sends it whole (the script reads the batch), touch and extend the digits.
        assert_eq!(split_token(&token), ("7|b+1|x", None));
        assert_eq!(stored_token(&token), "7");
        assert_eq!(lease_token("7".to_owned(), None, Some("b")), "7|b");
        // Only a claim's token (digits) gets the batch.
        assert_eq!(lease_token("x".to_owned(), None, Some("b")), "x");
    }
}
