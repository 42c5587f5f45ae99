//! The stored-record codec, exposed for the fuzz targets in `fuzz/` only (the `fuzzing`
//! feature); not an API.

use orcs_core::NewJob;

use crate::keys::{LAYOUT_VERSION, decode, encode};

/// Decodes a stored record (the `{P:Q}:jobs` hash value) as a worker does when it claims it.
/// When it decodes, encoding the result and decoding again gives the same job.
///
/// # Errors
/// The reason the record is unreadable, as it goes to the failed set.
///
/// # Panics
/// When the round trip does not hold: the bug the fuzzer looks for.
pub fn decode_record(bytes: &[u8]) -> Result<(), String> {
    let stored = decode(bytes)?;
    let job = stored.clone().into_job(String::new(), "");
    let again = decode(encode(&job, LAYOUT_VERSION).as_bytes()).expect("an encoded record decodes");
    assert_eq!(again, stored, "decode(encode(decode(x))) != decode(x)");
    Ok(())
}

/// Encodes `job` (as layout 3 does: a keyed job's record carries its key; a job of a batch or
/// with metadata is a v4 record) and decodes it again; the job's fields must survive.
///
/// # Panics
/// When they do not.
pub fn round_trip(job: &NewJob) {
    let stored = decode(encode(job, LAYOUT_VERSION).as_bytes()).expect("an encoded record decodes");
    assert_eq!(
        (
            stored.name.as_str(),
            stored.payload.as_str(),
            stored.priority,
            stored.max_retries,
            stored.retry_delay_ms,
            stored.timeout_ms,
            stored.dispatched_at,
            stored.available_at,
            stored.unique.as_ref(),
            stored.batch.as_ref(),
            stored.meta.as_ref()
        ),
        (
            job.name.as_str(),
            job.payload.as_str(),
            job.priority,
            job.max_retries,
            job.retry_delay_ms,
            job.timeout_ms,
            job.dispatched_at,
            job.available_at,
            job.unique.as_ref(),
            job.batch.as_ref(),
            job.meta.as_ref()
        )
    );
}
