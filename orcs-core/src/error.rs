//! The infrastructure error type shared by every driver.

/// A boxed error from a backend client, kept as the `source()` of [`Error::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Something went wrong in orcs or in its backend (not in a user's job: that is [`crate::JobError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No job (or failed job) with this id exists.
    #[error("job {id} not found: it finished or was removed, or the id is wrong")]
    NotFound {
        /// The id that was looked up.
        id: String,
    },
    /// The caller's lease on a job expired and the job was claimed again (or finished) since:
    /// the transition was rejected and changed nothing.
    #[error("lease on job {id} was lost: it expired and the job belongs to another claim now")]
    LeaseLost {
        /// The job whose lease was lost.
        id: String,
    },
    /// A value given by the user or the application is not acceptable.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// What was invalid (a queue name, a payload, an option).
        what: &'static str,
        /// What was wrong with it and what to do.
        message: String,
    },
    /// The configuration (environment, config file, URL) is wrong.
    #[error("configuration error in {key}: {message}")]
    Config {
        /// The variable, key or flag that holds the wrong value.
        key: String,
        /// What was wrong and what is accepted.
        message: String,
    },
    /// A job could not be serialized into its payload.
    #[error("could not serialize the job payload: {0}")]
    Serialization(#[source] serde_json::Error),
    /// The backend (Redis, the database) failed or could not be reached.
    #[error("{driver} backend error: {source}")]
    Backend {
        /// The driver that failed (`redis`, `database`).
        driver: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
        /// Whether trying again later may succeed (a dropped connection, a restarting server, a
        /// lock timeout) as opposed to an error that repeats until someone acts (a permission,
        /// a missing table, a script error).
        transient: bool,
    },
    /// The driver cannot do this atomically (or at all) on this backend; nothing was changed.
    /// [`crate::Driver::capabilities`] tells in advance.
    #[error("the {driver} driver does not support {what}")]
    Unsupported {
        /// The driver.
        driver: &'static str,
        /// What was asked for, and what to do instead.
        what: String,
    },
    /// The backend holds data in a storage layout this build does not know (written by a newer
    /// orcs, or not by orcs at all).
    #[error("{driver} storage version mismatch: {message}")]
    Version {
        /// The driver.
        driver: &'static str,
        /// The versions found and expected, and what to do.
        message: String,
    },
}

impl Error {
    /// Builds an [`Error::Invalid`].
    pub fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { what, message: message.into() }
    }

    /// Builds an [`Error::Config`].
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config { key: key.into(), message: message.into() }
    }

    /// Builds a transient [`Error::Backend`]: the operation may succeed if tried again.
    pub fn backend(driver: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend { driver, source: source.into(), transient: true }
    }

    /// Builds a permanent [`Error::Backend`]: the backend refused the operation for a reason that
    /// repeats until someone acts (permissions, schema, a script error).
    pub fn backend_permanent(driver: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend { driver, source: source.into(), transient: false }
    }

    /// Builds an [`Error::Unsupported`].
    pub fn unsupported(driver: &'static str, what: impl Into<String>) -> Self {
        Self::Unsupported { driver, what: what.into() }
    }

    /// This error again, for one item of a batch call that failed as a whole (`Error` is not
    /// `Clone`: its source is boxed). A backend error keeps its driver and its source's text, so it
    /// stays transient and the worker retries the item; any other failure of the batch call
    /// becomes a backend error of `driver` with its text.
    pub fn for_batch_item(&self, driver: &'static str) -> Self {
        match self {
            Self::Backend { driver, source, transient } => {
                Self::Backend { driver, source: source.to_string().into(), transient: *transient }
            }
            Self::LeaseLost { id } => Self::LeaseLost { id: id.clone() },
            Self::NotFound { id } => Self::NotFound { id: id.clone() },
            Self::Unsupported { driver, what } => Self::Unsupported { driver, what: what.clone() },
            other => Self::backend(driver, other.to_string()),
        }
    }

    /// True when trying the same operation again later may succeed (a dropped connection, a
    /// restarting server, a lock timeout), so the worker backs off and retries instead of giving
    /// up. Drivers classify their clients' errors; anything else is not transient.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Backend { transient: true, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_item_copy_keeps_the_driver_and_the_text() {
        let failed = Error::backend("redis", std::io::Error::other("broken pipe"));
        let copy = failed.for_batch_item("database");
        assert!(copy.is_transient(), "the item is retried like the batch would be");
        assert_eq!(copy.to_string(), "redis backend error: broken pipe");
        let other = Error::invalid("payload", "too big").for_batch_item("redis");
        assert_eq!(other.to_string(), "redis backend error: invalid payload: too big");
        let lost = Error::LeaseLost { id: "j1".into() }.for_batch_item("redis");
        assert!(matches!(lost, Error::LeaseLost { .. }), "a lost lease stays a lost lease");
    }

    #[test]
    fn only_transient_backend_errors_are_retried() {
        assert!(Error::backend("redis", "connection reset").is_transient());
        assert!(!Error::backend_permanent("redis", "NOPERM").is_transient());
        assert!(!Error::unsupported("redis", "x").is_transient());
        assert!(!Error::NotFound { id: "x".into() }.is_transient());
    }
}
