//! The key layout (documented in the README) and the record encoding.

use std::sync::atomic::AtomicBool;

use orcs_core::{JobRecord, Millis, NewJob, ScheduleRecord, Unique, UniqueUntil};

/// Every key of one queue. All share the hash tag `{prefix:queue}`, so they live in one cluster
/// slot and a script may touch them together.
#[derive(Debug)]
pub(crate) struct QueueKeys {
    tag: String,
    pub(crate) ready: String,
    pub(crate) delayed: String,
    pub(crate) reserved: String,
    pub(crate) jobs: String,
    pub(crate) attempts: String,
    pub(crate) tokens: String,
    pub(crate) errors: String,
    pub(crate) stats: String,
    pub(crate) marker: String,
    pub(crate) failed: String,
    pub(crate) failed_at: String,
    pub(crate) meta: String,
    pub(crate) unique: String,
    pub(crate) unique_expiry: String,
    pub(crate) unique_of: String,
    pub(crate) progress: String,
    pub(crate) cancel: String,
    pub(crate) starts: String,
    /// Per job: when it last became due again (a retry, release or recovery) and the errors of
    /// its failed attempts ([`history_value`]).
    pub(crate) history: String,
    /// Whether the queue's last claim found a concurrency limit that could bind soon (or this
    /// process's `set_limits` set one): its claims then send the worker's settling jobs (see
    /// the claim script). Not a key, but known per queue as its keys are.
    pub(crate) limited: AtomicBool,
}

impl QueueKeys {
    pub(crate) fn new(prefix: &str, queue: &str) -> Self {
        let tag = format!("{{{prefix}:{queue}}}");
        let key = |name: &str| format!("{tag}:{name}");
        Self {
            ready: key("ready"),
            delayed: key("delayed"),
            reserved: key("reserved"),
            jobs: key("jobs"),
            attempts: key("attempts"),
            tokens: key("tokens"),
            errors: key("errors"),
            stats: key("stats"),
            marker: key("marker"),
            failed: key("failed"),
            failed_at: key("failed_at"),
            meta: key("meta"),
            unique: key("unique"),
            unique_expiry: key("unique_expiry"),
            unique_of: key("unique_of"),
            progress: key("progress"),
            cancel: key("cancel"),
            starts: key("starts"),
            history: key("history"),
            limited: AtomicBool::new(false),
            tag,
        }
    }

    /// String: the highest settle number (see [`orcs_core::SettleMark`]) that settle writer
    /// `writer`'s settles of this queue have carried, so that a limited claim tells that
    /// writer's settling jobs still unwritten from their numbers. Lives a day after its last
    /// raise (the settle script's `PX`); without it (before the writer's first settle of the
    /// queue, or lost) a claim counts the writer's settling jobs as running.
    pub(crate) fn mark(&self, writer: &str) -> String {
        format!("{}:mark:{writer}", self.tag)
    }

    /// The private list a blocked waiter is woken through when its own deadline passes.
    pub(crate) fn wake(&self, waiter: &str) -> String {
        format!("{}:wake:{waiter}", self.tag)
    }
}

/// Where a batch or schedule lives: the keys of the workflow state that a job's terminal step
/// updates with it. On a single server they are the prefix's own (`{P}:batches`, ...), shared by
/// every queue, so a batch may span queues; on a cluster they are the queue's (`{P:Q}:batches`,
/// ...), in the slot of the jobs they count (see "Batches and schedules" in the README).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HomeKeys {
    /// Hash: per batch, its record, counters and state (fields `<letter><batch id>`).
    pub(crate) batches: String,
    /// Sorted set (all scores 0, ordered by member): one member per unfinished child,
    /// `<len>:<batch id><len>:<queue><job id>` (lengths in bytes), so the members of one batch
    /// share a prefix no other batch's have and its children are one `ZRANGEBYLEX` away.
    pub(crate) children: String,
    /// Hash: schedule name -> its record ([`encode_schedule`]).
    pub(crate) schedules: String,
}

impl HomeKeys {
    /// The workflow keys under hash tag `tag` (`{P}` or `{P:Q}`, braces included).
    pub(crate) fn new(tag: &str) -> Self {
        Self {
            batches: format!("{tag}:batches"),
            children: format!("{tag}:batch_children"),
            schedules: format!("{tag}:schedules"),
        }
    }
}

/// The hash tag of a prefix's own keys, `{P}`.
pub(crate) fn prefix_tag(prefix: &str) -> String {
    format!("{{{prefix}}}")
}

/// The hash tag of a queue's keys, `{P:Q}`.
pub(crate) fn queue_tag(prefix: &str, queue: &str) -> String {
    format!("{{{prefix}:{queue}}}")
}

/// On a cluster, the hash that tells each schedule's queue (and so the slot of its record):
/// name -> queue, hash-tagged on the prefix.
pub(crate) fn schedule_index(prefix: &str) -> String {
    format!("{{{prefix}}}:schedule_queues")
}

/// Strings packed as `<byte length>:<bytes>` each: binary-safe, and read back in Lua by
/// `fields` (scripts.rs) without a JSON library.
pub(crate) fn pack<S: AsRef<str>>(parts: &[S]) -> String {
    let mut out = String::new();
    for part in parts {
        let part = part.as_ref();
        out.push_str(&part.len().to_string());
        out.push(':');
        out.push_str(part);
    }
    out
}

/// Reads [`pack`]'s output; `None` for anything else.
pub(crate) fn unpack(mut text: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    while !text.is_empty() {
        let (len, rest) = text.split_once(':')?;
        let len: usize = len.parse().ok()?;
        if len > rest.len() || !rest.is_char_boundary(len) {
            return None;
        }
        let (part, rest) = rest.split_at(len);
        out.push(part);
        text = rest;
    }
    Some(out)
}

/// A schedule's record in [`HomeKeys::schedules`]: packed `s1`, cursor, last run, next run
/// (each `''` when absent), updated at, queue, definition. The fire script compares the cursor
/// as it is written here (decimal), and rewrites the first four fields only.
pub(crate) fn encode_schedule(record: &ScheduleRecord) -> String {
    let opt = |v: Option<Millis>| v.map(|v| v.to_string()).unwrap_or_default();
    pack(&[
        "s1".to_owned(),
        record.cursor.to_string(),
        opt(record.last_run),
        opt(record.next_run),
        record.updated_at.to_string(),
        record.queue.clone(),
        record.definition.clone(),
    ])
}

/// Reads [`encode_schedule`]'s output for schedule `name`; the error says what is wrong.
pub(crate) fn decode_schedule(name: &str, text: &str) -> Result<ScheduleRecord, String> {
    let bad = || format!("unreadable schedule record of {name:?} (written by a newer orcs?)");
    let parts = unpack(text).ok_or_else(bad)?;
    let [tag, cursor, last, next, updated, queue, definition] = parts[..] else {
        return Err(bad());
    };
    if tag != "s1" {
        return Err(bad());
    }
    let millis = |v: &str| v.parse::<Millis>().map_err(|_| bad());
    let opt = |v: &str| if v.is_empty() { Ok(None) } else { millis(v).map(Some) };
    let mut record = ScheduleRecord::new(name, queue, definition, millis(cursor)?);
    record.last_run = opt(last)?;
    record.next_run = opt(next)?;
    record.updated_at = millis(updated)?;
    Ok(record)
}

/// The set of queue names, hash-tagged on the prefix alone.
pub(crate) fn registry(prefix: &str) -> String {
    format!("{{{prefix}}}:queues")
}

/// The prefix's own keys of operations (issue #13), all hash-tagged on the prefix alone, so one
/// script reaches them together on a cluster too.
#[derive(Debug)]
pub(crate) struct OpsKeys {
    /// Hash: worker id -> its `WorkerInfo` as JSON.
    pub(crate) workers: String,
    /// Sorted set: worker id, scored by when its entry expires.
    pub(crate) worker_expiry: String,
    /// Hash: minute -> `<processed>|<failed>` over every queue (and `from`, see
    /// [`OpsKeys::throughput_of`]).
    pub(crate) throughput: String,
    /// Sorted set: queues forgotten by `forget_queue`, scored by when (see "Forgetting a queue" in
    /// the README).
    pub(crate) forgotten: String,
    tag: String,
}

impl OpsKeys {
    pub(crate) fn new(prefix: &str) -> Self {
        let tag = prefix_tag(prefix);
        Self {
            workers: format!("{tag}:workers"),
            worker_expiry: format!("{tag}:worker_expiry"),
            throughput: format!("{tag}:throughput"),
            forgotten: format!("{tag}:forgotten"),
            tag,
        }
    }

    /// Hash: minute -> `<processed>|<failed>` of one queue, and `from`, the oldest minute it may
    /// still hold (the trim starts there). In the prefix's slot, not the queue's, so a heartbeat
    /// writes every queue's bucket in one script.
    pub(crate) fn throughput_of(&self, queue: &str) -> String {
        format!("{}:throughput:{queue}", self.tag)
    }
}

/// A job's entry in [`QueueKeys::history`]: `<due>|<errors>`, `due` the time it last became due
/// again (empty when it never did) and `errors` packed ([`pack`]), oldest first. Written by the
/// scripts; this reads it back, `None` for anything else.
pub(crate) fn history_value(text: &str) -> Option<(Option<Millis>, Vec<String>)> {
    let (due, errors) = text.split_once('|')?;
    let due = if due.is_empty() { None } else { Some(due.parse().ok()?) };
    let errors = unpack(errors)?.into_iter().map(str::to_owned).collect();
    Some((due, errors))
}

/// The key holding the storage layout version of a prefix.
pub(crate) fn version_key(prefix: &str) -> String {
    format!("{{{prefix}}}:version")
}

/// The storage layout this build writes on a new prefix (see "Versions" in the README).
/// Layout 3 adds one record form to layout 2: a keyed job's record carries its unique key, which
/// saves the `unique_of` write on every keyed push. Layout 1 had no version key and untagged
/// records; layouts 2 and 3 read it as it is.
pub(crate) const LAYOUT_VERSION: u32 = 3;

/// The earlier layout this build still writes on a prefix marked with it, so that older workers
/// of the deployment keep reading every record, until the prefix is upgraded explicitly.
pub(crate) const COMPAT_LAYOUT: u32 = 2;

/// Encodes a job's fixed part as one string, tagged with the record version. A plain job, or
/// any job under layout 2, is written as
/// `v2|priority|timeout|max_retries|retry_delay_ms|dispatched_at|available_at|name_len|<name><payload>`;
/// a keyed job under layout 3 as
/// `v3|priority|timeout|max_retries|retry_delay_ms|dispatched_at|available_at|mode|period|key_len|name_len|<key><name><payload>`
/// (mode and period as in [`encode_unique`]); a job of a batch or with workflow metadata, under
/// any layout, as
/// `v4|priority|timeout|max_retries|retry_delay_ms|dispatched_at|available_at|mode|period|key_len|batch_len|meta_len|name_len|<key><batch><meta><name><payload>`
/// (mode `-`, period 0 and key length 0 without a key; an empty batch or meta length for none;
/// a batch length marked `+` for a child pushed with its batch, see [`encode_child`]). A job with
/// neither batch nor meta is written exactly as before they existed.
///
/// The scripts read the priority and timeout (to re-queue by priority and to set the lease), a
/// v3 or v4 record's mode and key (to free the key) and a v4 record's batch (to count the job's
/// end in it); the payload goes last, unescaped, so encoding is a copy.
pub(crate) fn encode(job: &NewJob, layout: u32) -> String {
    encode_as(job, layout, false)
}

/// Encodes a child of a batch as [`Driver::push_batch`](orcs_core::Driver::push_batch) stores
/// it: its batch length marked `+`, which is what the scripts count: a record that names a
/// batch without the mark (a job pushed on its own with a batch id, or a child that left its
/// batch) ends without touching the batch.
pub(crate) fn encode_child(job: &NewJob, layout: u32) -> String {
    encode_as(job, layout, true)
}

fn encode_as(job: &NewJob, layout: u32, child: bool) -> String {
    let timeout = job.timeout_ms.map(|t| t.to_string()).unwrap_or_default();
    let head = format!(
        "{}|{timeout}|{}|{}|{}|{}",
        job.priority, job.max_retries, job.retry_delay_ms, job.dispatched_at, job.available_at
    );
    if is_v4(job) {
        let (mode, ms, key) = match &job.unique {
            Some(unique) => {
                let (mode, ms) = unique_mode(unique);
                (mode, ms, unique.key.as_str())
            }
            None => ('-', 0, ""),
        };
        let len = |v: &Option<String>| v.as_ref().map(|v| v.len().to_string()).unwrap_or_default();
        let mark = if child && job.batch.is_some() { "+" } else { "" };
        return format!(
            "v4|{head}|{mode}|{ms}|{}|{mark}{}|{}|{}|{key}{}{}{}{}",
            key.len(),
            len(&job.batch),
            len(&job.meta),
            job.name.len(),
            job.batch.as_deref().unwrap_or(""),
            job.meta.as_deref().unwrap_or(""),
            job.name,
            job.payload
        );
    }
    match &job.unique {
        Some(unique) if layout >= 3 => {
            let (mode, ms) = unique_mode(unique);
            format!(
                "v3|{head}|{mode}|{ms}|{}|{}|{}{}{}",
                unique.key.len(),
                job.name.len(),
                unique.key,
                job.name,
                job.payload
            )
        }
        _ => format!("v2|{head}|{}|{}{}", job.name.len(), job.name, job.payload),
    }
}

/// True for a job written as a `v4` record (see [`encode`]): it has a batch or metadata. Such a
/// record carries its unique key under every layout.
pub(crate) fn is_v4(job: &NewJob) -> bool {
    job.batch.is_some() || job.meta.is_some()
}

/// A unique key's mode letter and period (0 unless a Period key).
fn unique_mode(unique: &Unique) -> (char, u64) {
    match unique.until {
        UniqueUntil::Started => ('s', 0),
        UniqueUntil::Period(ms) => ('p', ms),
        // Finished, and any mode a later orcs adds: held until the job ends, the safe side.
        _ => ('f', 0),
    }
}

/// A unique key as layout 2 keeps it in `unique_of`: `<mode>|<period ms>|<key>`, mode `s` (until
/// started), `f` (until finished) or `p` (for a period). The scripts read the mode and the key;
/// the period is kept so that `get` shows the job as dispatched.
pub(crate) fn encode_unique(unique: &Unique) -> String {
    let (mode, ms) = unique_mode(unique);
    format!("{mode}|{ms}|{}", unique.key)
}

/// Decodes [`encode_unique`]'s output (or a v3 record's mode and period); `None` for anything
/// else.
pub(crate) fn decode_unique(spec: &str) -> Option<Unique> {
    let mut fields = spec.splitn(3, '|');
    let (mode, ms, key) = (fields.next()?, fields.next()?, fields.next()?);
    Some(Unique::new(key, until_of(mode, ms)?))
}

fn until_of(mode: &str, ms: &str) -> Option<UniqueUntil> {
    match mode {
        "s" => Some(UniqueUntil::Started),
        "f" => Some(UniqueUntil::Finished),
        "p" => Some(UniqueUntil::Period(ms.parse().ok()?)),
        _ => None,
    }
}

/// The fixed part of a stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) name: String,
    pub(crate) payload: String,
    pub(crate) priority: i32,
    pub(crate) max_retries: u32,
    pub(crate) retry_delay_ms: u64,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) dispatched_at: Millis,
    /// When the job was first due (layout 1 records did not keep it: their dispatch time).
    pub(crate) available_at: Millis,
    /// The unique key, as a v3 or v4 record carries it (layout 2 keeps it in `unique_of`).
    pub(crate) unique: Option<Unique>,
    /// The batch (v4 records).
    pub(crate) batch: Option<String>,
    /// Whether the job is a child its batch counts (pushed with it: its batch length marked
    /// `+`, see [`encode_child`]).
    pub(crate) child: bool,
    /// The workflow metadata (v4 records).
    pub(crate) meta: Option<String>,
}

impl Stored {
    pub(crate) fn into_record(
        self,
        id: String,
        queue: &str,
        attempt: u32,
        last_error: Option<String>,
    ) -> JobRecord {
        JobRecord::from_new(&self.into_job(id, queue), attempt, last_error)
    }

    /// The job as dispatched, due at `available_at`.
    pub(crate) fn into_job(self, id: String, queue: &str) -> NewJob {
        let mut job = NewJob::new(id, self.name, queue, self.payload, self.dispatched_at);
        job.priority = self.priority;
        job.max_retries = self.max_retries;
        job.retry_delay_ms = self.retry_delay_ms;
        job.timeout_ms = self.timeout_ms;
        job.available_at = self.available_at;
        job.unique = self.unique;
        job.batch = self.batch;
        job.meta = self.meta;
        job
    }
}

/// The record versions [`decode`] knows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// Layout 1: no tag, no due time.
    Untagged,
    V2,
    /// A keyed job's record under layout 3: the key follows the due time.
    V3,
    /// A job of a batch or with metadata: key, batch and meta lengths follow the due time.
    V4,
}

/// Decodes [`encode`]'s output; the error says what is wrong, for the failed set.
pub(crate) fn decode(bytes: &[u8]) -> Result<Stored, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("unreadable job record: not UTF-8 ({e})"))?;
    let bad = |what: &str| format!("unreadable job record: {what}");
    let (text, tag) = match text.strip_prefix('v') {
        Some(rest) => {
            if let Some(rest) = rest.strip_prefix("2|") {
                (rest, Tag::V2)
            } else if let Some(rest) = rest.strip_prefix("3|") {
                (rest, Tag::V3)
            } else if let Some(rest) = rest.strip_prefix("4|") {
                (rest, Tag::V4)
            } else {
                return Err(bad("an unknown record version (written by a newer orcs?)"));
            }
        }
        None => (text, Tag::Untagged),
    };
    let parts = match tag {
        Tag::Untagged => 7,
        Tag::V2 => 8,
        Tag::V3 => 11,
        Tag::V4 => 13,
    };
    let mut fields = text.splitn(parts, '|');
    let mut next = |what: &str| fields.next().ok_or_else(|| bad(&format!("no {what} field")));
    let priority = next("priority")?.parse().map_err(|_| bad("bad priority"))?;
    let timeout = next("timeout")?;
    let timeout_ms = if timeout.is_empty() {
        None
    } else {
        Some(timeout.parse().map_err(|_| bad("bad timeout"))?)
    };
    let max_retries = next("max_retries")?.parse().map_err(|_| bad("bad max_retries"))?;
    let retry_delay_ms = next("retry_delay")?.parse().map_err(|_| bad("bad retry_delay"))?;
    let dispatched_at = next("dispatched_at")?.parse().map_err(|_| bad("bad dispatched_at"))?;
    let available_at = if tag == Tag::Untagged {
        dispatched_at
    } else {
        next("available_at")?.parse().map_err(|_| bad("bad available_at"))?
    };
    let key = match tag {
        Tag::V3 | Tag::V4 => {
            let (mode, ms) = (next("unique mode")?, next("unique period")?);
            let len: usize = next("key length")?.parse().map_err(|_| bad("bad key length"))?;
            if tag == Tag::V4 && mode == "-" {
                if len != 0 {
                    return Err(bad("a key length without a key"));
                }
                None
            } else {
                let until = until_of(mode, ms).ok_or_else(|| bad("bad unique mode or period"))?;
                Some((until, len))
            }
        }
        _ => None,
    };
    // An absent batch or meta has an empty length; a present one, even empty, has digits (a
    // batch's child's marked `+`): each length comes with whether it was marked.
    let mut optional_len = |what: &str| -> Result<(Option<usize>, bool), String> {
        let field = next(what)?;
        let (field, marked) = match field.strip_prefix('+') {
            Some(field) => (field, true),
            None => (field, false),
        };
        if field.is_empty() {
            return Ok((None, marked));
        }
        let len = field.parse().map_err(|_| bad(&format!("bad {what}")))?;
        Ok((Some(len), marked))
    };
    let ((batch_len, child), meta_len) = if tag == Tag::V4 {
        (optional_len("batch length")?, optional_len("meta length")?.0)
    } else {
        ((None, false), None)
    };
    let name_len: usize = next("name length")?.parse().map_err(|_| bad("bad name length"))?;
    let mut rest = next("name")?;
    let mut cut = |len: usize, what: &str| {
        if len > rest.len() || !rest.is_char_boundary(len) {
            return Err(bad(&format!("the {what} is cut short")));
        }
        let (head, tail) = rest.split_at(len);
        rest = tail;
        Ok(head)
    };
    let unique = match key {
        Some((until, len)) => Some(Unique::new(cut(len, "unique key")?, until)),
        None => None,
    };
    let batch = batch_len.map(|len| cut(len, "batch").map(str::to_owned)).transpose()?;
    let meta = meta_len.map(|len| cut(len, "meta").map(str::to_owned)).transpose()?;
    let name = cut(name_len, "name")?;
    Ok(Stored {
        name: name.to_owned(),
        payload: rest.to_owned(),
        priority,
        max_retries,
        retry_delay_ms,
        timeout_ms,
        dispatched_at,
        available_at,
        unique,
        child: child && batch.is_some(),
        batch,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, payload: &str, timeout_ms: Option<u64>) -> NewJob {
        let mut job = NewJob::new("01J", name, "default", payload, 1_700_000_000_123);
        job.priority = -7;
        job.max_retries = 3;
        job.retry_delay_ms = 60_000;
        job.timeout_ms = timeout_ms;
        job.available_at = 1_700_000_000_456;
        job
    }

    #[test]
    fn records_round_trip() {
        for (name, payload, timeout) in [
            ("SendEmailJob", r#"{"to":"a|b"}"#, Some(30_000)),
            ("A|B", "", None),
            ("", "ünïcode|payload", Some(0)),
        ] {
            let encoded = encode(&job(name, payload, timeout), LAYOUT_VERSION);
            let stored = decode(encoded.as_bytes()).expect("decodes");
            assert_eq!(
                (stored.name.as_str(), stored.payload.as_str(), stored.timeout_ms),
                (name, payload, timeout)
            );
            assert_eq!((stored.priority, stored.max_retries), (-7, 3));
            assert_eq!(stored.dispatched_at, 1_700_000_000_123);
            assert_eq!(stored.available_at, 1_700_000_000_456);
            assert_eq!(stored.unique, None);
            // A plain job's record is the same under layouts 2 and 3.
            assert!(encoded.starts_with("v2|"), "{encoded}");
            assert_eq!(encoded, encode(&job(name, payload, timeout), COMPAT_LAYOUT));
        }
    }

    #[test]
    fn keyed_records_carry_their_key_under_layout_3() {
        for unique in [
            Unique::new("user:1|x", UniqueUntil::Started),
            Unique::new("", UniqueUntil::Finished),
            Unique::new("ключ", UniqueUntil::Period(60_000)),
        ] {
            let mut keyed = job("A|B", "ünï|code", Some(5));
            keyed.unique = Some(unique.clone());
            let encoded = encode(&keyed, LAYOUT_VERSION);
            assert!(encoded.starts_with("v3|-7|5|3|60000|"), "{encoded}");
            let stored = decode(encoded.as_bytes()).expect("decodes");
            assert_eq!(stored.unique.as_ref(), Some(&unique));
            assert_eq!((stored.name.as_str(), stored.payload.as_str()), ("A|B", "ünï|code"));
            assert_eq!(stored.available_at, 1_700_000_000_456);
            // Layout 2 keeps the key out of the record (in `unique_of`).
            let old = decode(encode(&keyed, COMPAT_LAYOUT).as_bytes()).expect("decodes");
            assert_eq!((old.unique, old.payload.as_str()), (None, "ünï|code"));
        }
        let record = "v3|0||0|0|1|2|p|5|1|4|kMailhi";
        let stored = decode(record.as_bytes()).expect("decodes");
        assert_eq!(stored.unique, Some(Unique::new("k", UniqueUntil::Period(5))));
        assert_eq!((stored.name.as_str(), stored.payload.as_str()), ("Mail", "hi"));
        assert!(decode(b"v3|0||0|0|1|2|q|5|1|4|kMailhi").expect_err("bad").contains("unique mode"));
        assert!(decode(b"v3|0||0|0|1|2|f|0|9|4|kMailhi").expect_err("bad").contains("key is cut"));
        assert!(decode(b"v3|0||0|0|1|2|f|0|1|9|kMail").expect_err("bad").contains("name is cut"));
    }

    #[test]
    fn workflow_records_are_v4_and_plain_ones_stay_as_they_were() {
        // Neither batch nor meta: byte for byte the record of a build before workflows.
        let plain = job("Mail", "hi", Some(5));
        assert_eq!(
            encode(&plain, LAYOUT_VERSION),
            "v2|-7|5|3|60000|1700000000123|1700000000456|4|Mailhi"
        );
        let mut keyed = plain;
        keyed.unique = Some(Unique::new("k", UniqueUntil::Finished));
        assert_eq!(
            encode(&keyed, LAYOUT_VERSION),
            "v3|-7|5|3|60000|1700000000123|1700000000456|f|0|1|4|kMailhi"
        );
        for (batch, meta, unique) in [
            (Some("01JBATCH"), None, None),
            (None, Some(r#"{"steps":[1,"|"]}"#), None),
            (Some(""), Some(""), Some(Unique::new("k|ey", UniqueUntil::Period(9)))),
            (Some("b"), Some("m"), Some(Unique::new("", UniqueUntil::Started))),
        ] {
            let mut workflow = job("A|B", "ünï|code", None);
            workflow.batch = batch.map(str::to_owned);
            workflow.meta = meta.map(str::to_owned);
            workflow.unique = unique.clone();
            for layout in [COMPAT_LAYOUT, LAYOUT_VERSION] {
                let encoded = encode(&workflow, layout);
                assert!(encoded.starts_with("v4|-7||3|60000|"), "{encoded}");
                let stored = decode(encoded.as_bytes()).expect("decodes");
                assert_eq!(stored.batch.as_deref(), batch);
                assert_eq!(stored.meta.as_deref(), meta);
                assert_eq!(stored.unique, unique, "a v4 record carries its key on every layout");
                assert_eq!((stored.name.as_str(), stored.payload.as_str()), ("A|B", "ünï|code"));
                let back = stored.into_job("id".to_owned(), "q");
                assert_eq!((back.batch.as_deref(), back.meta.as_deref()), (batch, meta));
            }
        }
        let record = "v4|0||0|0|1|2|-|0|0|2||4|b1Mailhi";
        let stored = decode(record.as_bytes()).expect("decodes");
        assert_eq!((stored.batch.as_deref(), stored.meta, stored.unique), (Some("b1"), None, None));
        assert!(decode(b"v4|0||0|0|1|2|-|0|3|2||4|b1Mailhi").expect_err("bad").contains("key"));
        assert!(decode(b"v4|0||0|0|1|2|-|0|0|9||4|b1Mail").expect_err("bad").contains("batch"));
        assert!(decode(b"v4|0||0|0|1|2|-|0|0|x||4|b1Mail").expect_err("bad").contains("batch"));
    }

    #[test]
    fn packed_fields_and_schedule_records_round_trip() {
        let parts = ["", "a:b", "ünï", "12:34"];
        assert_eq!(unpack(&pack(&parts)), Some(parts.to_vec()));
        assert_eq!(pack(&["ab", ""]), "2:ab0:");
        assert_eq!(unpack("3:ab"), None);
        assert_eq!(unpack("x:ab"), None);
        let mut record = ScheduleRecord::new("nightly|1", "mail", r#"{"cron":"0 0 * * *"}"#, 10);
        record.last_run = Some(-5);
        record.updated_at = 12;
        let encoded = encode_schedule(&record);
        assert!(encoded.starts_with("2:s12:10"), "{encoded}");
        assert_eq!(decode_schedule("nightly|1", &encoded), Ok(record));
        assert!(decode_schedule("x", "2:s21:1").is_err());
    }

    #[test]
    fn untagged_layout_1_records_still_decode() {
        let stored = decode(b"-7|30000|3|60000|1700000000123|4|Mailhi").expect("decodes");
        assert_eq!((stored.name.as_str(), stored.payload.as_str()), ("Mail", "hi"));
        assert_eq!(stored.available_at, stored.dispatched_at);
        assert!(decode(b"v9|1|2|3").expect_err("bad").contains("unknown record version"));
        let v2 = decode(b"v2|-7|30000|3|60000|1700000000123|1700000000456|4|Mailhi").expect("v2");
        assert_eq!(
            (v2.name.as_str(), v2.available_at, v2.unique),
            ("Mail", 1_700_000_000_456, None)
        );
    }

    #[test]
    fn damaged_records_say_what_is_wrong() {
        assert!(decode(b"\xff\xfe").expect_err("bad").contains("not UTF-8"));
        assert!(decode(b"1|2|3").expect_err("bad").contains("no retry_delay"));
        assert!(decode(b"x|||||").expect_err("bad").contains("bad priority"));
        assert!(decode(b"0||3|10|5|99|ab").expect_err("bad").contains("cut short"));
    }

    #[test]
    fn unique_keys_round_trip() {
        for unique in [
            Unique::new("user:1|x", UniqueUntil::Started),
            Unique::new("", UniqueUntil::Finished),
            Unique::new("k", UniqueUntil::Period(60_000)),
        ] {
            assert_eq!(decode_unique(&encode_unique(&unique)), Some(unique));
        }
        assert_eq!(encode_unique(&Unique::new("a", UniqueUntil::Period(5))), "p|5|a");
        assert_eq!(decode_unique("x|0|k"), None);
        assert_eq!(decode_unique("p|soon|k"), None);
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = QueueKeys::new("orcs", "emails");
        assert_eq!(keys.ready, "{orcs:emails}:ready");
        assert_eq!(keys.wake("w1"), "{orcs:emails}:wake:w1");
        assert_eq!(registry("orcs"), "{orcs}:queues");
        assert_eq!(version_key("orcs"), "{orcs}:version");
        assert_eq!(keys.meta, "{orcs:emails}:meta");
        assert_eq!(keys.history, "{orcs:emails}:history");
        let ops = OpsKeys::new("orcs");
        assert_eq!(ops.workers, "{orcs}:workers");
        assert_eq!(ops.throughput_of("emails"), "{orcs}:throughput:emails");
    }

    #[test]
    fn history_values_read_back() {
        assert_eq!(history_value("|"), Some((None, vec![])));
        assert_eq!(
            history_value("17|3:a|b0:"),
            Some((Some(17), vec!["a|b".to_owned(), String::new()]))
        );
        assert_eq!(history_value("x|"), None);
        assert_eq!(history_value("5|9:short"), None);
        assert_eq!(history_value("no bar"), None);
    }
}
