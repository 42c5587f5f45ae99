//! The key layout (documented in the README) and the record encoding.

use orcs_core::{JobRecord, Millis, NewJob, Unique, UniqueUntil};

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
            tag,
        }
    }

    /// The private list a blocked waiter is woken through when its own deadline passes.
    pub(crate) fn wake(&self, waiter: &str) -> String {
        format!("{}:wake:{waiter}", self.tag)
    }
}

/// The set of queue names, hash-tagged on the prefix alone.
pub(crate) fn registry(prefix: &str) -> String {
    format!("{{{prefix}}}:queues")
}

/// The key holding the storage layout version of a prefix.
pub(crate) fn version_key(prefix: &str) -> String {
    format!("{{{prefix}}}:version")
}

/// The storage layout this build reads and writes (see "Versions" in the README). Layout 1 had
/// no version key and untagged records; layout 2 reads it as it is.
pub(crate) const LAYOUT_VERSION: u32 = 2;

/// The version tag every record written by this build starts with.
const RECORD_TAG: &str = "v2|";

/// Encodes a job's fixed part as one string, tagged with the record version:
/// `v2|priority|timeout|max_retries|retry_delay_ms|dispatched_at|available_at|name_len|<name><payload>`.
///
/// The scripts read only the priority and timeout (to re-queue by priority and to set the lease);
/// the payload goes last, unescaped, so encoding is a copy.
pub(crate) fn encode(job: &NewJob) -> String {
    let timeout = job.timeout_ms.map(|t| t.to_string()).unwrap_or_default();
    format!(
        "{RECORD_TAG}{}|{timeout}|{}|{}|{}|{}|{}|{}{}",
        job.priority,
        job.max_retries,
        job.retry_delay_ms,
        job.dispatched_at,
        job.available_at,
        job.name.len(),
        job.name,
        job.payload
    )
}

/// A job's unique key as the scripts keep it in `unique_of`: `<mode>|<period ms>|<key>`, mode
/// `s` (until started), `f` (until finished) or `p` (for a period). The scripts read the mode
/// and the key; the period is kept so that `get` shows the job as dispatched.
pub(crate) fn encode_unique(unique: &Unique) -> String {
    let (mode, ms) = match unique.until {
        UniqueUntil::Started => ('s', 0),
        UniqueUntil::Period(ms) => ('p', ms),
        // Finished, and any mode a later orcs adds: held until the job ends, the safe side.
        _ => ('f', 0),
    };
    format!("{mode}|{ms}|{}", unique.key)
}

/// Decodes [`encode_unique`]'s output; `None` for anything else.
pub(crate) fn decode_unique(spec: &str) -> Option<Unique> {
    let mut fields = spec.splitn(3, '|');
    let (mode, ms, key) = (fields.next()?, fields.next()?, fields.next()?);
    let until = match mode {
        "s" => UniqueUntil::Started,
        "f" => UniqueUntil::Finished,
        "p" => UniqueUntil::Period(ms.parse().ok()?),
        _ => return None,
    };
    Some(Unique::new(key, until))
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
        job
    }
}

/// Decodes [`encode`]'s output; the error says what is wrong, for the failed set.
pub(crate) fn decode(bytes: &[u8]) -> Result<Stored, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("unreadable job record: not UTF-8 ({e})"))?;
    let bad = |what: &str| format!("unreadable job record: {what}");
    // A tagged record (layout 2) keeps its due time; an untagged one is from layout 1.
    let (text, tagged) = match text.strip_prefix('v') {
        Some(rest) => match rest.strip_prefix("2|") {
            Some(rest) => (rest, true),
            None => return Err(bad("an unknown record version (written by a newer orcs?)")),
        },
        None => (text, false),
    };
    let mut fields = text.splitn(if tagged { 8 } else { 7 }, '|');
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
    let available_at = if tagged {
        next("available_at")?.parse().map_err(|_| bad("bad available_at"))?
    } else {
        dispatched_at
    };
    let name_len: usize = next("name length")?.parse().map_err(|_| bad("bad name length"))?;
    let rest = next("name")?;
    if !rest.is_char_boundary(name_len.min(rest.len())) || name_len > rest.len() {
        return Err(bad("the name is cut short"));
    }
    let (name, payload) = rest.split_at(name_len);
    Ok(Stored {
        name: name.to_owned(),
        payload: payload.to_owned(),
        priority,
        max_retries,
        retry_delay_ms,
        timeout_ms,
        dispatched_at,
        available_at,
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
            let encoded = encode(&job(name, payload, timeout));
            let stored = decode(encoded.as_bytes()).expect("decodes");
            assert_eq!(
                (stored.name.as_str(), stored.payload.as_str(), stored.timeout_ms),
                (name, payload, timeout)
            );
            assert_eq!((stored.priority, stored.max_retries), (-7, 3));
            assert_eq!(stored.dispatched_at, 1_700_000_000_123);
            assert_eq!(stored.available_at, 1_700_000_000_456);
            assert!(encoded.starts_with("v2|"), "{encoded}");
        }
    }

    #[test]
    fn untagged_layout_1_records_still_decode() {
        let stored = decode(b"-7|30000|3|60000|1700000000123|4|Mailhi").expect("decodes");
        assert_eq!((stored.name.as_str(), stored.payload.as_str()), ("Mail", "hi"));
        assert_eq!(stored.available_at, stored.dispatched_at);
        assert!(decode(b"v9|1|2|3").expect_err("bad").contains("unknown record version"));
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
    }
}
