//! Reading script replies: loose conversions of single values, and the error for a reply of the
//! wrong shape.

use orcs_core::Error;
use redis::Value;

use crate::conn::DRIVER;

pub(crate) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Double(d) => Some(*d as i64),
        _ => None,
    }
}

pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A count such as attempts; absent or unreadable reads as 0.
pub(crate) fn count(value: &Value) -> u32 {
    int(value).and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// A reply that does not have the shape the script returns: permanent (it repeats until the
/// scripts and the driver agree again).
pub(crate) fn protocol(script: &str, expected: &str) -> Error {
    Error::backend_permanent(
        DRIVER,
        format!(
            "unexpected reply from the {script} script: expected {expected}; this is a bug in orcs-redis"
        ),
    )
}
