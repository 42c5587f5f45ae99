//! What the command line knows about running jobs, which the worker's events (one per finished
//! attempt) do not tell: how many run now (for the shutdown message) and which have run for a
//! while (for the "started" line of a long job).
//!
//! orcs-core reports no event when an attempt starts, so [`App::register`](crate::App::register)
//! registers each job type wrapped in [`Tracked`], which notes the attempt here while its
//! `handle` runs. Types of a bare [`orcs_core::Registry`] are not wrapped, so the count covers
//! only wrapped types ([`crate::App`] knows whether that is all of them).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use orcs_core::{Job, JobContext, JobError, Unique};
use serde::{Deserialize, Serialize};

/// An attempt that is running.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) queue: String,
    pub(crate) attempt: u32,
    /// When it started, for the line.
    pub(crate) started_at: SystemTime,
    started: Instant,
    announced: bool,
}

static RUNNING: LazyLock<Mutex<HashMap<String, Running>>> = LazyLock::new(Mutex::default);

fn running() -> MutexGuard<'static, HashMap<String, Running>> {
    RUNNING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many attempts of tracked job types run in this process now.
pub(crate) fn running_count() -> usize {
    running().len()
}

/// The attempts that have run for at least `after` and were not returned before; each is
/// returned once.
pub(crate) fn newly_long(after: Duration) -> Vec<Running> {
    let mut all = running();
    let mut long: Vec<Running> = all
        .values_mut()
        .filter(|job| !job.announced && job.started.elapsed() >= after)
        .map(|job| {
            job.announced = true;
            job.clone()
        })
        .collect();
    long.sort_by_key(|job| job.started);
    long
}

/// Removes the attempt when `handle` returns or its future is dropped (a timeout, a forced stop).
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        running().remove(&self.0);
    }
}

/// A job type whose attempts are noted in [`RUNNING`]; otherwise exactly `J` (same name, queue,
/// defaults and payload).
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Tracked<J>(J);

impl<J: Job> Job for Tracked<J> {
    const NAME: &'static str = J::NAME;
    const QUEUE: &'static str = J::QUEUE;
    const PRIORITY: i32 = J::PRIORITY;
    const MAX_RETRIES: u32 = J::MAX_RETRIES;
    const RETRY_DELAY: Duration = J::RETRY_DELAY;
    const TIMEOUT: Option<Duration> = J::TIMEOUT;

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        let entry = Running {
            id: ctx.id().to_owned(),
            name: ctx.name().to_owned(),
            queue: ctx.queue().to_owned(),
            attempt: ctx.attempt(),
            started_at: SystemTime::now(),
            started: Instant::now(),
            announced: false,
        };
        running().insert(entry.id.clone(), entry);
        let _guard = Guard(ctx.id().to_owned());
        self.0.handle(ctx).await
    }

    fn unique(&self) -> Option<Unique> {
        self.0.unique()
    }

    async fn failed(&self, ctx: &JobContext, error: &JobError) {
        self.0.failed(ctx, error).await;
    }
}

/// The field names a job type's `Deserialize` asks for, for error messages and help (`None` if
/// it is not a plain struct, e.g. an enum or a `flatten`ed type).
///
/// A derived `Deserialize` of a struct hands its field names to the deserializer; this one only
/// records them and stops.
pub(crate) fn fields<J: for<'de> Deserialize<'de>>() -> Option<Vec<&'static str>> {
    let mut found = None;
    let _ = J::deserialize(FieldProbe(&mut found));
    found.map(<[&str]>::to_vec)
}

struct FieldProbe<'a>(&'a mut Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probe")
    }
}

impl std::error::Error for Stop {}

impl serde::de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> serde::Deserializer<'de> for FieldProbe<'_> {
    type Error = Stop;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_the_example_jobs() {
        assert_eq!(
            fields::<crate::examples::SendEmailJob>(),
            Some(vec!["to", "subject", "body", "simulate"])
        );
        assert_eq!(
            fields::<crate::examples::SendWelcomeEmailJob>(),
            Some(vec!["userId", "email", "name", "simulate"])
        );
        assert_eq!(fields::<crate::examples::ImageOperation>(), None);
    }
}
