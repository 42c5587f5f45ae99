//! The key layout (documented in the README) and the record encoding.

use orcs_core::{JobRecord, Millis, NewJob};

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

/// Encodes a job's fixed part as one string:
/// `priority|timeout|max_retries|retry_delay_ms|dispatched_at|name_len|<name><payload>`.
///
/// The scripts read only the first two fields (to re-queue by priority and to set the lease);
/// the payload goes last, unescaped, so encoding is a copy.
pub(crate) fn encode(job: &NewJob) -> String {
    let timeout = job.timeout_ms.map(|t| t.to_string()).unwrap_or_default();
    format!(
        "{}|{timeout}|{}|{}|{}|{}|{}{}",
        job.priority,
        job.max_retries,
        job.retry_delay_ms,
        job.dispatched_at,
        job.name.len(),
        job.name,
        job.payload
    )
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
}

impl Stored {
    pub(crate) fn into_record(
        self,
        id: String,
        queue: &str,
        attempt: u32,
        last_error: Option<String>,
    ) -> JobRecord {
        JobRecord {
            id,
            name: self.name,
            queue: queue.to_owned(),
            payload: self.payload,
            priority: self.priority,
            attempt,
            max_retries: self.max_retries,
            retry_delay_ms: self.retry_delay_ms,
            timeout_ms: self.timeout_ms,
            dispatched_at: self.dispatched_at,
            last_error,
        }
    }
}

/// Decodes [`encode`]'s output; the error says what is wrong, for the failed set.
pub(crate) fn decode(bytes: &[u8]) -> Result<Stored, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("unreadable job record: not UTF-8 ({e})"))?;
    let bad = |what: &str| format!("unreadable job record: {what}");
    let mut fields = text.splitn(7, '|');
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, payload: &str, timeout_ms: Option<u64>) -> NewJob {
        NewJob {
            id: "01J".to_owned(),
            name: name.to_owned(),
            queue: "default".to_owned(),
            payload: payload.to_owned(),
            priority: -7,
            max_retries: 3,
            retry_delay_ms: 60_000,
            timeout_ms,
            dispatched_at: 1_700_000_000_123,
            available_at: 1_700_000_000_123,
        }
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
        }
    }

    #[test]
    fn damaged_records_say_what_is_wrong() {
        assert!(decode(b"\xff\xfe").expect_err("bad").contains("not UTF-8"));
        assert!(decode(b"1|2|3").expect_err("bad").contains("no retry_delay"));
        assert!(decode(b"x|||||").expect_err("bad").contains("bad priority"));
        assert!(decode(b"0||3|10|5|99|ab").expect_err("bad").contains("cut short"));
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = QueueKeys::new("orcs", "emails");
        assert_eq!(keys.ready, "{orcs:emails}:ready");
        assert_eq!(keys.wake("w1"), "{orcs:emails}:wake:w1");
        assert_eq!(registry("orcs"), "{orcs}:queues");
    }
}
