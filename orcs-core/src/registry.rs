//! Maps stored job names to the types that run them.

use std::any::{Any, TypeId};
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
    state: State,
}

#[derive(Clone)]
struct Entry {
    decode: Decoder,
    defaults: JobDefaults,
    needs: Needs,
}

/// The application's state given to jobs, by type ([`Registry::state`], [`JobContext::state`]).
#[derive(Clone, Default)]
pub(crate) struct State(Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>);

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The values are the application's (they may hold secrets): show how many, not what.
        f.debug_struct("State").field("values", &self.0.len()).finish()
    }
}

impl State {
    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>()).and_then(|value| value.downcast_ref::<T>())
    }
}

/// The state types a job reaches through [`JobContext::state`], declared in [`Job::needs`] so that
/// a worker missing one refuses to start instead of failing the first such job.
#[derive(Debug, Clone, Default)]
pub struct Needs(Vec<(TypeId, &'static str)>);

impl Needs {
    /// The job reads state of type `T`.
    pub fn state<T: Send + Sync + 'static>(&mut self) -> &mut Self {
        self.0.push((TypeId::of::<T>(), std::any::type_name::<T>()));
        self
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `J` under `J::NAME`; a later registration of the same name replaces it.
    #[must_use]
    pub fn register<J: Job>(mut self) -> Self {
        let mut needs = Needs::default();
        J::needs(&mut needs);
        self.entries.insert(
            J::NAME,
            Entry { decode: decode::<J>, defaults: JobDefaults::of::<J>(), needs },
        );
        self
    }

    /// Gives jobs a value of the application's state (a database pool, an HTTP client, a config),
    /// which a job reads with [`JobContext::state`]. One value per type; cheap-to-clone handles
    /// are typical (`PgPool`, `reqwest::Client`, an `Arc` of your own).
    #[must_use]
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        Arc::make_mut(&mut self.state.0).insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    pub(crate) fn shared_state(&self) -> &State {
        &self.state
    }

    /// Checks that every state type a registered job declares in [`Job::needs`] was given.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] naming the job and the missing type.
    pub fn check_state(&self) -> crate::Result<()> {
        let mut names: Vec<_> = self.entries.iter().collect();
        names.sort_unstable_by_key(|(name, _)| **name);
        for (name, entry) in names {
            if let Some((_, missing)) =
                entry.needs.0.iter().find(|(id, _)| !self.state.0.contains_key(id))
            {
                return Err(crate::Error::invalid(
                    "job state",
                    format!(
                        "job {name} needs state of type {missing}, which this worker was not \
                         given; add it with Registry::state(value)"
                    ),
                ));
            }
        }
        Ok(())
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
