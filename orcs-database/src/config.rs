//! `DatabaseConfig`: the URL and the table names.

use std::fmt;
use std::str::FromStr;

use orcs_core::{Error, Result};

/// The configuration key that names the database in errors.
pub(crate) const URL_KEY: &str = "DATABASE_URL";

/// What a `DATABASE_URL` may look like, for error messages.
pub(crate) const ACCEPTED: &str = "expected sqlite://PATH (for example sqlite://storage/queue.db) \
     or postgres://USER:PASSWORD@HOST:PORT/DATABASE (postgresql:// works too)";

/// Which backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// How to reach the database and which tables to use.
///
/// ```
/// use orcs_database::DatabaseConfig;
///
/// let config = DatabaseConfig::new("postgres://orcs:secret@db.internal/app")
///     .with_jobs_table("orcs_jobs")
///     .with_failed_table("orcs_failed_jobs");
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct DatabaseConfig {
    /// `sqlite://PATH`, `postgres://...` or `postgresql://...`. Default:
    /// [`orcs_core::config::DEFAULT_DATABASE_URL`] (`sqlite://storage/queue.db`).
    pub url: String,
    /// The table of queued and running jobs. Default: `jobs`.
    pub jobs_table: String,
    /// The failed set. Default: `failed_jobs`.
    pub failed_table: String,
    /// The per-queue totals (processed, failed). Default: `job_counters`.
    pub counters_table: String,
}

impl DatabaseConfig {
    /// The default tables on the database at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            jobs_table: "jobs".to_owned(),
            failed_table: "failed_jobs".to_owned(),
            counters_table: "job_counters".to_owned(),
        }
    }

    /// Uses another name for the jobs table.
    #[must_use]
    pub fn with_jobs_table(mut self, name: impl Into<String>) -> Self {
        self.jobs_table = name.into();
        self
    }

    /// Uses another name for the failed-jobs table.
    #[must_use]
    pub fn with_failed_table(mut self, name: impl Into<String>) -> Self {
        self.failed_table = name.into();
        self
    }

    /// Uses another name for the per-queue counters table.
    #[must_use]
    pub fn with_counters_table(mut self, name: impl Into<String>) -> Self {
        self.counters_table = name.into();
        self
    }

    /// Which backend the URL names.
    pub(crate) fn backend(&self) -> Result<Backend> {
        let scheme = self.url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "" => Err(Error::config(URL_KEY, format!("the URL has no scheme: {ACCEPTED}"))),
            other => {
                Err(Error::config(URL_KEY, format!("unsupported scheme `{other}://`: {ACCEPTED}")))
            }
        }
    }

    /// Checks the table names: they go into SQL text, so only plain identifiers are allowed.
    pub(crate) fn validate_tables(&self) -> Result<()> {
        let names = [&self.jobs_table, &self.failed_table, &self.counters_table];
        for name in names {
            let mut chars = name.chars();
            let plain = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                // Leaves room for the index suffixes within PostgreSQL's 63-byte names.
                && name.len() <= 50;
            if !plain {
                return Err(Error::invalid(
                    "table name",
                    format!(
                        "{name:?}: use letters, digits and underscores, starting with a letter, \
                         at most 50 characters"
                    ),
                ));
            }
        }
        if names[0] == names[1] || names[0] == names[2] || names[1] == names[2] {
            return Err(Error::invalid("table name", "the three tables need different names"));
        }
        Ok(())
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self::new(orcs_core::config::DEFAULT_DATABASE_URL)
    }
}

impl FromStr for DatabaseConfig {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        let config = Self::new(url);
        config.backend()?;
        Ok(config)
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact(&self.url))
            .field("jobs_table", &self.jobs_table)
            .field("failed_table", &self.failed_table)
            .field("counters_table", &self.counters_table)
            .finish()
    }
}

/// The URL with its password (in the authority or a `password=` parameter) replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let authority_end = out[start..].find(['/', '?', '#']).map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..authority_end].rfind('@').map(|i| start + i)
            && let Some(colon) = out[start..at].find(':').map(|i| start + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(query) = out.find('?') {
        let (head, tail) = out.split_at(query + 1);
        let params: Vec<String> = tail
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:p%40ss@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(
            redact("postgres://u@h/db?password=x&a=b"),
            "postgres://u@h/db?password=***&a=b"
        );
        assert_eq!(redact("sqlite://storage/queue.db"), "sqlite://storage/queue.db");
    }

    #[test]
    fn picks_the_backend_by_scheme() {
        assert_eq!(DatabaseConfig::new("sqlite://a.db").backend().ok(), Some(Backend::Sqlite));
        assert_eq!(
            DatabaseConfig::new("postgresql://h/db").backend().ok(),
            Some(Backend::Postgres)
        );
        let err = DatabaseConfig::new("mysql://u:hunter2@h/db").backend().expect_err("mysql");
        let text = err.to_string();
        assert!(text.contains("DATABASE_URL") && text.contains("sqlite://"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(DatabaseConfig::default().validate_tables().is_ok());
        assert!(DatabaseConfig::default().with_jobs_table("jobs; DROP").validate_tables().is_err());
        assert!(DatabaseConfig::default().with_failed_table("jobs").validate_tables().is_err());
    }
}
