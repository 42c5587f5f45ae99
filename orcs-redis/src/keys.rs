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
/// (mode and period as in [`encode_unique`]).
///
/// The scripts read the priority and timeout (to re-queue by priority and to set the lease) and
/// a v3 record's mode and key (to free the key); the payload goes last, unescaped, so encoding
/// is a copy.
pub(crate) fn encode(job: &NewJob, layout: u32) -> String {
    let timeout = job.timeout_ms.map(|t| t.to_string()).unwrap_or_default();
    let head = format!(
        "{}|{timeout}|{}|{}|{}|{}",
        job.priority, job.max_retries, job.retry_delay_ms, job.dispatched_at, job.available_at
    );
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
    /// The unique key, as a v3 record carries it (layout 2 keeps it in `unique_of` instead).
    pub(crate) unique: Option<Unique>,
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
}

/// Decodes [`encode`]'s output; the error says what is wrong, for the failed set.
pub(crate) fn decode(bytes: &[u8]) -> Result<Stored, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("unreadable job record: not UTF-8 ({e})"))?;
    let bad = |what: &str| format!("unreadable job record: {what}");
    let (text, tag) = match text.strip_prefix('v') {
        Some(rest) => match (rest.strip_prefix("2|"), rest.strip_prefix("3|")) {
            (Some(rest), _) => (rest, Tag::V2),
            (_, Some(rest)) => (rest, Tag::V3),
            _ => return Err(bad("an unknown record version (written by a newer orcs?)")),
        },
        None => (text, Tag::Untagged),
    };
    let parts = match tag {
        Tag::Untagged => 7,
        Tag::V2 => 8,
        Tag::V3 => 11,
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
    let key = if tag == Tag::V3 {
        let (mode, ms) = (next("unique mode")?, next("unique period")?);
        let until = until_of(mode, ms).ok_or_else(|| bad("bad unique mode or period"))?;
        let len: usize = next("key length")?.parse().map_err(|_| bad("bad key length"))?;
        Some((until, len))
    } else {
        None
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
    }
}
