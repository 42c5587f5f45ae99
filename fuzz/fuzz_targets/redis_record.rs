//! A stored Redis job record (the value in `{P:Q}:jobs`), as a worker decodes it on claim:
//! damaged bytes must give a reason for the failed set, never a panic, and whatever decodes
//! must survive encoding and decoding again.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(reason) = orcs_redis::fuzzing::decode_record(data) {
        assert!(reason.starts_with("unreadable job record"), "{reason}");
    }
});
