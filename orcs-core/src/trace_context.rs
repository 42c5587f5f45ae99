//! Trace context across processes (feature `opentelemetry`): a job dispatched inside a traced
//! span carries that span's W3C `traceparent` in [`NewJob::meta`](crate::NewJob::meta), and the
//! worker's attempt span ([`crate::TraceLayer`]) continues it, so one trace shows the request
//! that dispatched a job and every attempt of it, whichever process ran them.
//!
//! The key is `"traceparent"` in the meta object, next to the other features' keys; its value is
//! the header's text, `00-<trace id>-<span id>-<flags>` (W3C Trace Context, level 1).
//!
//! Which span a job continues:
//! - a dispatch (`dispatch*`, `prepare`, a chain's first step, a batch's children and callbacks)
//!   takes the span current at the dispatch; a job dispatched by a running job takes that job's
//!   attempt span;
//! - a chain's next step and its `catch` take the trace context of the step that enqueued them,
//!   that is the dispatch's: every step of a chain, like every child and callback of a batch,
//!   hangs under the span that dispatched the workflow;
//! - a schedule's slot jobs carry none (nothing traced dispatched them); a schedule triggered by
//!   hand takes the caller's span.
//!
//! Without the feature every function here is an empty inline one: no parse, no allocation.
//! With it, a job without meta costs nothing in the worker, and a dispatch outside any traced span
//! writes nothing. A malformed `traceparent` is ignored with a debug event: tracing never fails
//! a job.

#[cfg(feature = "opentelemetry")]
pub(crate) use enabled::{continue_trace, inherit, stamp, stamp_all};

#[cfg(not(feature = "opentelemetry"))]
pub(crate) use disabled::{continue_trace, inherit, stamp, stamp_all};

/// The key of the trace context in a job's meta object.
#[cfg(any(test, feature = "opentelemetry"))]
const KEY: &str = "traceparent";

/// A parsed `traceparent`: the ids of the trace and of the parent span, and the trace flags.
#[cfg(any(test, feature = "opentelemetry"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TraceParent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

#[cfg(any(test, feature = "opentelemetry"))]
impl TraceParent {
    /// Parses a `traceparent` header value; `None` if it is not a valid one.
    ///
    /// Version `00` must be exactly four fields; a later version may append fields after a `-`,
    /// which are ignored (the W3C rule for forward compatibility). Version `ff`, an all-zero
    /// trace or span id and upper-case hex are invalid.
    fn parse(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        // "vv-" + 32 + "-" + 16 + "-" + 2
        if bytes.len() < 55 || !bytes[..55].is_ascii() {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = hex(&value[0..2])? as u8;
        let valid_length = match version {
            0xff => false,
            0x00 => bytes.len() == 55,
            _ => bytes.len() == 55 || bytes[55] == b'-',
        };
        if !valid_length {
            return None;
        }
        let trace_id = hex(&value[3..35])?;
        let span_id = u64::try_from(hex(&value[36..52])?).ok()?;
        let flags = hex(&value[53..55])? as u8;
        (trace_id != 0 && span_id != 0).then_some(Self { trace_id, span_id, flags })
    }
}

#[cfg(any(test, feature = "opentelemetry"))]
impl std::fmt::Display for TraceParent {
    /// The header value, version `00`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// Lower-case hex digits (at most 32) as a number; `None` for anything else (`from_str_radix`
/// alone would take a sign and upper case).
#[cfg(any(test, feature = "opentelemetry"))]
fn hex(digits: &str) -> Option<u128> {
    let lower = digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lower || digits.is_empty() || digits.len() > 32 {
        return None;
    }
    u128::from_str_radix(digits, 16).ok()
}

/// The `traceparent` stored in `meta`, if it holds a valid one; a malformed one is reported at
/// debug level and ignored.
#[cfg(any(test, feature = "opentelemetry"))]
fn from_meta(meta: &str) -> Option<TraceParent> {
    // Chains and schedules carry meta without a trace context: skip their parse. An unescaped
    // `"traceparent"` can only be an object key, so its absence is certain.
    if !meta.contains("\"traceparent\"") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Carrier {
        traceparent: Option<String>,
    }
    let value = match serde_json::from_str::<Carrier>(meta) {
        Ok(Carrier { traceparent: Some(value) }) => value,
        Ok(Carrier { traceparent: None }) => return None,
        Err(e) => {
            tracing::debug!(error = %e, "the job's meta is not a JSON object; its trace context is ignored");
            return None;
        }
    };
    let parsed = TraceParent::parse(&value);
    if parsed.is_none() {
        tracing::debug!(
            traceparent = %value,
            "the job's traceparent is not a valid W3C trace context; its attempt starts a new trace"
        );
    }
    parsed
}

/// Writes `traceparent` into `meta`, keeping every other key; a meta that already has one keeps
/// it, and one that is not a JSON object is left as it is.
#[cfg(any(test, feature = "opentelemetry"))]
fn merge(meta: &mut Option<String>, traceparent: &str) {
    let Some(existing) = meta else {
        *meta = Some(format!(r#"{{"{KEY}":"{traceparent}"}}"#));
        return;
    };
    // See from_meta: an unescaped key can only be one of the object's keys.
    if existing.contains("\"traceparent\"") {
        return;
    }
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(existing) {
        Ok(mut object) => {
            object.insert(KEY.to_owned(), serde_json::Value::String(traceparent.to_owned()));
            *existing = serde_json::Value::Object(object).to_string();
        }
        Err(e) => tracing::debug!(
            error = %e,
            "the job's meta is not a JSON object; no trace context is stored with it"
        ),
    }
}

#[cfg(feature = "opentelemetry")]
mod enabled {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::{OpenTelemetrySpanExt as _, SetParentError};

    use super::{TraceParent, from_meta, merge};
    use crate::record::NewJob;

    /// The trace context of the current `tracing` span, if it has a valid OpenTelemetry one.
    fn current() -> Option<TraceParent> {
        let span = tracing::Span::current();
        // No span, or none the subscriber records: no lookup at all.
        if span.is_none() || span.is_disabled() {
            return None;
        }
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| TraceParent {
            trace_id: u128::from_be_bytes(span_context.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(span_context.span_id().to_bytes()),
            flags: span_context.trace_flags().to_u8(),
        })
    }

    /// Stores the current span's trace context in the meta of a job being dispatched.
    pub(crate) fn stamp(meta: &mut Option<String>) {
        if let Some(parent) = current() {
            merge(meta, &parent.to_string());
        }
    }

    /// [`stamp`] for each record that has no trace context yet, reading the span once.
    pub(crate) fn stamp_all(jobs: &mut [NewJob]) {
        if jobs.is_empty() {
            return;
        }
        if let Some(parent) = current() {
            let value = parent.to_string();
            for job in jobs {
                merge(&mut job.meta, &value);
            }
        }
    }

    /// Gives jobs enqueued by a job (a chain's next step or `catch`) that job's trace context.
    pub(crate) fn inherit(from: Option<&str>, jobs: &mut [NewJob]) {
        if jobs.is_empty() {
            return;
        }
        let Some(parent) = from.and_then(from_meta) else { return };
        let value = parent.to_string();
        for job in jobs {
            merge(&mut job.meta, &value);
        }
    }

    /// Makes `span` (not entered yet) continue the trace stored in the job's `meta`.
    pub(crate) fn continue_trace(span: &tracing::Span, meta: Option<&str>) {
        let Some(meta) = meta else { return };
        // A span nobody records has no OpenTelemetry context to set: skip the parse too.
        if span.is_disabled() {
            return;
        }
        let Some(parent) = from_meta(meta) else { return };
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id.to_be_bytes()),
            SpanId::from_bytes(parent.span_id.to_be_bytes()),
            TraceFlags::new(parent.flags),
            true,
            TraceState::NONE,
        );
        let context = opentelemetry::Context::new().with_remote_span_context(remote);
        match span.set_parent(context) {
            Ok(()) => {}
            // The subscriber has no tracing-opentelemetry layer: nothing to continue.
            Err(SetParentError::LayerNotFound | SetParentError::SpanDisabled) => {}
            Err(e) => tracing::debug!(
                error = %e,
                "could not continue the dispatcher's trace in the attempt's span"
            ),
        }
    }
}

#[cfg(not(feature = "opentelemetry"))]
mod disabled {
    //! The feature is off: nothing to store, nothing to continue.

    use crate::record::NewJob;

    #[inline(always)]
    pub(crate) fn stamp(_meta: &mut Option<String>) {}

    #[inline(always)]
    pub(crate) fn stamp_all(_jobs: &mut [NewJob]) {}

    #[inline(always)]
    pub(crate) fn inherit(_from: Option<&str>, _jobs: &mut [NewJob]) {}

    #[inline(always)]
    pub(crate) fn continue_trace(_span: &tracing::Span, _meta: Option<&str>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_parses_and_formats_back() {
        let parsed = TraceParent::parse(VALID).expect("valid");
        assert_eq!(parsed.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(parsed.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), VALID);
        let small = TraceParent { trace_id: 1, span_id: 2, flags: 0 };
        assert_eq!(small.to_string(), "00-00000000000000000000000000000001-0000000000000002-00");
        assert_eq!(TraceParent::parse(&small.to_string()), Some(small));
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(TraceParent::parse(later).map(|p| p.span_id), Some(0x00f0_67aa_0ba9_02b7));
        // Version 00 has exactly four fields; the formatted value is always version 00.
        assert_eq!(TraceParent::parse(&format!("{VALID}-x")), None);
        assert!(TraceParent::parse(later).expect("valid").to_string().starts_with("00-"));
    }

    #[test]
    fn bad_traceparents_are_refused() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?} must be refused");
        }
    }

    #[test]
    fn the_trace_context_is_read_from_meta_and_bad_ones_are_ignored() {
        let meta = format!(r#"{{"chain":{{"next":[]}},"traceparent":"{VALID}"}}"#);
        assert_eq!(from_meta(&meta).map(|p| p.to_string()).as_deref(), Some(VALID));
        assert_eq!(from_meta(r#"{"schedule":"daily","slot":1}"#), None, "no key");
        assert_eq!(from_meta(r#"{"traceparent":"00-nope"}"#), None, "a malformed value");
        assert_eq!(from_meta(r#"{"traceparent":7}"#), None, "not a string");
        assert_eq!(from_meta(r#"["traceparent"]"#), None, "not an object");
        // A chain's nested records hold their own meta as escaped strings: not this job's key.
        let nested =
            format!(r#"{{"chain":{{"next":[{{"meta":"{{\"traceparent\":\"{VALID}\"}}"}}]}}}}"#);
        assert_eq!(from_meta(&nested), None);
    }

    #[test]
    fn merging_keeps_the_other_keys_and_an_existing_trace_context() {
        let mut meta = None;
        merge(&mut meta, VALID);
        assert_eq!(meta.as_deref(), Some(format!(r#"{{"traceparent":"{VALID}"}}"#).as_str()));

        let mut chain = Some(r#"{"chain":{"next":[]}}"#.to_owned());
        merge(&mut chain, VALID);
        let value: serde_json::Value =
            serde_json::from_str(chain.as_deref().expect("some")).expect("json");
        assert_eq!(value, serde_json::json!({ "chain": { "next": [] }, "traceparent": VALID }));

        let other = "00-00000000000000000000000000000001-0000000000000002-00";
        let mut kept = meta.clone();
        merge(&mut kept, other);
        assert_eq!(kept, meta, "the first trace context stays");

        let mut not_an_object = Some("[1]".to_owned());
        merge(&mut not_an_object, VALID);
        assert_eq!(not_an_object.as_deref(), Some("[1]"), "left as it is");
    }
}
