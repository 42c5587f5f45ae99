//! `DatabaseConfig`: the URL, the PostgreSQL schema and the table names.

use std::fmt;
use std::str::FromStr;

use orcs_core::{Error, Result};

/// What [`Error::Config`] names when the URL is wrong: the driver's own setting (the URL given to
/// `DatabaseDriver::connect` or `DatabaseConfig::new`). Whatever supplied it (an environment
/// variable, a config file) is the caller's to add.
pub(crate) const URL_SETTING: &str = "the database URL";

/// What a database URL may look like, for error messages.
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
    /// PostgreSQL: the schema holding the tables, created at setup if missing; every statement
    /// names it. Default: none (the connection's `search_path` decides). SQLite has no schemas.
    pub schema: Option<String>,
}

impl DatabaseConfig {
    /// The default tables on the database at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            jobs_table: "jobs".to_owned(),
            failed_table: "failed_jobs".to_owned(),
            counters_table: "job_counters".to_owned(),
            schema: None,
        }
    }

    /// PostgreSQL: keeps the tables in `schema` (created at setup if missing), whatever the
    /// connections' `search_path`, so that they stay apart from an application's own tables.
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Names the three tables `<prefix>jobs`, `<prefix>failed_jobs` and `<prefix>job_counters`
    /// (the other tables are named after the jobs table): the way to keep orcs's tables apart
    /// on SQLite, which has no schemas.
    #[must_use]
    pub fn with_table_prefix(self, prefix: &str) -> Self {
        self.with_jobs_table(format!("{prefix}jobs"))
            .with_failed_table(format!("{prefix}failed_jobs"))
            .with_counters_table(format!("{prefix}job_counters"))
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
            "" => Err(Error::config(URL_SETTING, format!("the URL has no scheme: {ACCEPTED}"))),
            other => Err(Error::config(
                URL_SETTING,
                format!("unsupported scheme `{other}://`: {ACCEPTED}"),
            )),
        }
    }

    /// Checks the table and schema names for `backend`: they go into SQL text, so only plain
    /// identifiers are allowed, and a schema only on PostgreSQL.
    pub(crate) fn validate(&self, backend: Backend) -> Result<()> {
        if let Some(schema) = &self.schema {
            if backend == Backend::Sqlite {
                return Err(Error::invalid(
                    "schema",
                    format!(
                        "{schema:?}: SQLite has no schemas; keep orcs's tables apart with a \
                         table prefix instead (DatabaseConfig::with_table_prefix)"
                    ),
                ));
            }
            if !plain_identifier(schema, 63) {
                return Err(Error::invalid(
                    "schema",
                    format!(
                        "{schema:?}: use letters, digits and underscores, starting with a \
                         letter, at most 63 characters"
                    ),
                ));
            }
        }
        self.validate_tables()
    }

    /// Checks the table names: they go into SQL text, so only plain identifiers are allowed.
    fn validate_tables(&self) -> Result<()> {
        let names = [&self.jobs_table, &self.failed_table, &self.counters_table];
        for name in names {
            // 50: leaves room for the index suffixes within PostgreSQL's 63-byte names.
            if !plain_identifier(name, 50) {
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
            .field("schema", &self.schema)
            .finish()
    }
}

/// A name that needs no quoting rules beyond double quotes: ASCII letters, digits and
/// underscores, not starting with a digit, at most `max` bytes.
fn plain_identifier(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= max
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
        assert!(text.contains("the database URL") && text.contains("sqlite://"), "{text}");
        assert!(!text.contains("DATABASE_URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(DatabaseConfig::default().validate_tables().is_ok());
        assert!(DatabaseConfig::default().with_jobs_table("jobs; DROP").validate_tables().is_err());
        assert!(DatabaseConfig::default().with_failed_table("jobs").validate_tables().is_err());
    }

    #[test]
    fn a_schema_is_a_plain_identifier_on_postgres_only() {
        let pg = DatabaseConfig::new("postgres://h/db").with_schema("orcs");
        assert!(pg.validate(Backend::Postgres).is_ok());
        let text = pg.validate(Backend::Sqlite).expect_err("sqlite").to_string();
        assert!(text.contains("with_table_prefix"), "{text}");
        let bad = DatabaseConfig::new("postgres://h/db").with_schema("a\"; DROP");
        assert!(bad.validate(Backend::Postgres).is_err());
        let prefixed = DatabaseConfig::default().with_table_prefix("orcs_");
        assert_eq!(
            (prefixed.jobs_table.as_str(), prefixed.failed_table.as_str()),
            ("orcs_jobs", "orcs_failed_jobs")
        );
        assert_eq!(prefixed.counters_table, "orcs_job_counters");
    }
}
