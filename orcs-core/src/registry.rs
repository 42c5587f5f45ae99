//! Maps stored job names to the types that run them.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use crate::job::{Job, JobContext, JobError};
use crate::queue::JobDefaults;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A decoded job of some registered type, with its type erased.
pub(crate) trait ErasedJob: Send + Sync {
    fn handle<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>>;
    fn failed<'a>(&'a self, ctx: &'a JobContext, error: &'a JobError) -> BoxFuture<'a, ()>;
}

impl<J: Job> ErasedJob for J {
    fn handle<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(Job::handle(self, ctx))
    }

    fn failed<'a>(&'a self, ctx: &'a JobContext, error: &'a JobError) -> BoxFuture<'a, ()> {
        Box::pin(Job::failed(self, ctx, error))
    }
}

type Decoder = fn(&str) -> Result<Arc<dyn ErasedJob>, serde_json::Error>;

fn decode<J: Job>(payload: &str) -> Result<Arc<dyn ErasedJob>, serde_json::Error> {
    let job: J = serde_json::from_str(payload)?;
    Ok(Arc::new(job))
}

/// The job types a worker can run, by [`Job::NAME`].
///
/// A claimed job whose name is not registered goes to the failed set with a reason; it never
/// blocks the queue.
#[derive(Clone, Default)]
pub struct Registry {
    entries: HashMap<&'static str, Entry>,
}

#[derive(Clone, Copy)]
struct Entry {
    decode: Decoder,
    defaults: JobDefaults,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `J` under `J::NAME`; a later registration of the same name replaces it.
    #[must_use]
    pub fn register<J: Job>(mut self) -> Self {
        self.entries
            .insert(J::NAME, Entry { decode: decode::<J>, defaults: JobDefaults::of::<J>() });
        self
    }

    /// True if a job type is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.entries.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// The defaults (queue, priority, retries, timeout) of the type registered under `name`.
    pub fn defaults(&self, name: &str) -> Option<JobDefaults> {
        self.entries.get(name).map(|entry| entry.defaults)
    }

    /// Decodes a stored payload into the registered type; `None` if the name is unknown.
    pub(crate) fn decode(
        &self,
        name: &str,
        payload: &str,
    ) -> Option<Result<Arc<dyn ErasedJob>, serde_json::Error>> {
        self.entries.get(name).map(|entry| (entry.decode)(payload))
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("jobs", &self.names()).finish()
    }
}
