//! Job ids: ULIDs, unique and sortable by creation time.

use std::sync::{LazyLock, Mutex};

use ulid::Generator;

/// One generator per process, so that ids made in the same millisecond still sort in creation
/// order: the drivers use the id as the FIFO tie-breaker among jobs of equal priority.
static GENERATOR: LazyLock<Mutex<Generator>> = LazyLock::new(|| Mutex::new(Generator::new()));

/// A new job id: a 26-character ULID whose string order is its creation order within this process
/// (and its millisecond order across processes).
pub fn new_job_id() -> String {
    let mut generator = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match generator.generate() {
        Ok(id) => id.to_string(),
        // The random part overflowed within one millisecond (2^80 ids): take a fresh ULID, which
        // is still unique and still sorts by millisecond.
        Err(_) => ulid::Ulid::new().to_string(),
    }
}
