//! The shape of a kill -9 chaos run and its random choices, shared by the chaos tests.

use std::time::{Duration, Instant};

/// The shape of a chaos run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chaos {
    /// Jobs dispatched in all (a batch's children in a batch run).
    pub(crate) jobs: u64,
    /// How long workers are killed and replaced.
    pub(crate) duration: Duration,
    /// The pause between kills is drawn from this range.
    pub(crate) kill_every: (Duration, Duration),
    /// How long a job's attempt sleeps.
    pub(crate) work_ms: u64,
}

impl Chaos {
    /// `ORCS_CHAOS_JOBS`, `ORCS_CHAOS_SECS` and `ORCS_CHAOS_WORK_MS` over `default`.
    pub(crate) fn from_env(default: Self) -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
        let mut chaos = default;
        if let Some(n) = var("ORCS_CHAOS_JOBS") {
            chaos.jobs = n as u64;
        }
        if let Some(s) = var("ORCS_CHAOS_SECS") {
            chaos.duration = Duration::from_secs_f64(s);
        }
        if let Some(ms) = var("ORCS_CHAOS_WORK_MS") {
            chaos.work_ms = ms as u64;
        }
        chaos
    }
}

/// A small deterministic generator (the seed is printed, and `ORCS_CHAOS_SEED` replays it).
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded by `ORCS_CHAOS_SEED` if set, else from the process id and the clock; the seed is
    /// returned so the test can print it.
    pub(crate) fn from_env(started: Instant) -> (Self, u64) {
        let seed = std::env::var("ORCS_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                u64::from(std::process::id())
                    ^ u64::from(started.elapsed().subsec_nanos())
                    ^ 0x9e37_79b9
            });
        (Rng(seed), seed)
    }

    /// A number in `0..below`.
    pub(crate) fn next(&mut self, below: u64) -> u64 {
        self.0 =
            self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below.max(1)
    }
}
