//! Configuration as `Queue::from_env` and the `orcs` command line read it: defaults, then
//! `config/queue.toml`, then the environment (and `.env`).
//!
//! [`Config::load`] resolves the three layers, [`Config::connect`] connects the driver it names
//! (see [`crate::connect`]), and [`Config::worker_options`] gives a worker its settings; the
//! command line applies its flags on top. The variables and the file are the same everywhere, so
//! an application's worker binary and `orcs queue:work` read one configuration alike.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use orcs_core::{
    DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_QUEUE, Error, Result, WorkerOptions, validate_queue_name,
};

mod schedules;

pub use schedules::ScheduleConfig;

/// The config file read when none is named and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config/queue.toml";

/// The SQLite file used by the database driver when no `DATABASE_URL` is set.
pub const DEFAULT_DATABASE_URL: &str = orcs_core::config::DEFAULT_DATABASE_URL;

/// The Redis used when no `REDIS_URL` is set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The variable that sets the Redis key prefix (default `orcs`).
pub const REDIS_PREFIX: &str = "REDIS_PREFIX";

/// The variable that sets the payload limit, named when a dispatch is over it.
pub const MAX_PAYLOAD_BYTES_VAR: &str = "QUEUE_MAX_PAYLOAD_BYTES";

/// The variable that sets the worker's shutdown grace, in seconds.
pub const SHUTDOWN_TIMEOUT_VAR: &str = "QUEUE_WORKER_SHUTDOWN_TIMEOUT";

/// The variable that sets the database driver's jobs table.
pub const DATABASE_TABLE_VAR: &str = "QUEUE_DATABASE_TABLE";

/// The variable that sets how long failed jobs are kept ([`Config::failed_retention`]).
pub const FAILED_RETENTION_VAR: &str = "QUEUE_FAILED_RETENTION";

/// The variable that sets how many failed jobs are kept at most ([`Config::failed_keep`]).
pub const FAILED_KEEP_VAR: &str = "QUEUE_FAILED_KEEP";

/// Which backend stores the jobs (`QUEUE_DRIVER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DriverKind {
    /// In the process's memory: development and tests.
    #[default]
    Memory,
    /// A shared Redis.
    Redis,
    /// SQLite or PostgreSQL.
    Database,
}

impl DriverKind {
    /// The accepted names, for error messages.
    pub const NAMES: &'static str = "memory, redis, database";

    /// The name as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Database => "database",
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DriverKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            "database" | "db" => Ok(Self::Database),
            other => Err(format!("unknown driver {other:?}; use one of: {}", Self::NAMES)),
        }
    }
}

/// A setting that the drivers name in their errors and that the configuration reads from a
/// variable or a config-file key. The drivers name their settings as code gives them ("the Redis
/// URL", `RedisConfig::with_ca_cert_file`); [`Config::connect`] and `Config::redis_config` say
/// which variable or file key held the value (see [`Config::set_origin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Setting {
    /// The Redis URL: `REDIS_URL`, `url` under `[redis]`.
    RedisUrl,
    /// The Redis CA certificate file: `REDIS_CA_CERT`, `ca_cert` under `[redis]`.
    RedisCaCert,
    /// The Redis key prefix: `REDIS_PREFIX`.
    RedisPrefix,
    /// The database URL: `DATABASE_URL`, `url` under `[database]`.
    DatabaseUrl,
}

impl Setting {
    const ALL: [Self; 4] =
        [Self::RedisUrl, Self::RedisCaCert, Self::RedisPrefix, Self::DatabaseUrl];

    /// The environment variable that sets it.
    pub fn variable(self) -> &'static str {
        match self {
            Self::RedisUrl => "REDIS_URL",
            Self::RedisCaCert => "REDIS_CA_CERT",
            Self::RedisPrefix => REDIS_PREFIX,
            Self::DatabaseUrl => "DATABASE_URL",
        }
    }

    /// What the drivers call it in messages.
    fn name(self) -> &'static str {
        match self {
            Self::RedisUrl => "the Redis URL",
            Self::RedisCaCert => "the CA certificate",
            Self::RedisPrefix => "the Redis key prefix",
            Self::DatabaseUrl => "the database URL",
        }
    }

    /// The driver whose errors name it.
    fn driver(self) -> &'static str {
        match self {
            Self::RedisUrl | Self::RedisCaCert | Self::RedisPrefix => "redis",
            Self::DatabaseUrl => "database",
        }
    }

    /// True when a driver's `Error::Config` key names this setting. Both the drivers' keys
    /// ("the Redis URL", "RedisConfig::with_ca_cert[_file]", "database url" or "the database
    /// URL") and the variables they used to give ("REDIS_URL", "DATABASE_URL") count: keys are
    /// compared in lower case, with `_` as a space and without a leading "the ".
    fn is_key(self, key: &str) -> bool {
        let key = normalized(key);
        let key = key.strip_prefix("the ").unwrap_or(&key);
        match self {
            Self::RedisUrl => key == "redis url",
            Self::RedisCaCert => key.contains("with ca cert") || key == "redis ca cert",
            Self::RedisPrefix => key.contains("with prefix") || key == "redis prefix",
            Self::DatabaseUrl => key == "database url",
        }
    }

    /// True when a driver's message (a backend error's advice, a version error) mentions this
    /// setting, normalized as for [`Setting::is_key`].
    fn is_mentioned(self, message: &str) -> bool {
        let message = normalized(message);
        match self {
            Self::RedisUrl => message.contains("redis url"),
            Self::RedisCaCert => message.contains("with ca cert"),
            Self::RedisPrefix => message.contains("with prefix"),
            Self::DatabaseUrl => message.contains("database url"),
        }
    }
}

fn normalized(text: &str) -> String {
    text.to_lowercase().replace('_', " ")
}

/// Where a setting's value came from: its variable, its config-file key or what
/// [`Config::set_origin`] named, with the value it held (a field changed in code since has no
/// origin).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    setting: Setting,
    value: String,
    from: String,
}

/// The worker's part of the configuration.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Queues in strict order (`QUEUE_WORKER_QUEUES`, default: the default queue).
    pub queues: Vec<String>,
    /// Longest idle wait (`QUEUE_WORKER_SLEEP`, seconds, default 3).
    pub sleep: Duration,
    /// Stop after this many jobs (`QUEUE_WORKER_MAX_JOBS`, default none).
    pub max_jobs: Option<u64>,
    /// Jobs at once (default 1).
    pub concurrency: usize,
    /// Time limit for jobs without their own (seconds, default 60).
    pub timeout: Duration,
    /// How long running jobs may finish after SIGINT or SIGTERM (`QUEUE_WORKER_SHUTDOWN_TIMEOUT`,
    /// `[worker] shutdown_timeout`, seconds, default 10).
    pub shutdown_timeout: Duration,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The driver (`QUEUE_DRIVER`, default memory).
    pub driver: DriverKind,
    /// The queue for jobs that name none (`QUEUE_DEFAULT`, default `default`).
    pub default_queue: String,
    /// `REDIS_URL`.
    pub redis_url: Option<String>,
    /// `REDIS_PREFIX`: the Redis key prefix, separating several applications on one Redis (the
    /// driver's default is `orcs`).
    pub redis_prefix: Option<String>,
    /// `REDIS_CA_CERT`: a PEM file with the certificate(s) a `rediss://` server's certificate
    /// must chain to, instead of the system's roots (a private CA or a self-signed server).
    pub redis_ca_cert: Option<PathBuf>,
    /// `DATABASE_URL`.
    pub database_url: Option<String>,
    /// The database driver's jobs table (`[database] table`; the driver's default is `jobs`).
    pub database_table: Option<String>,
    /// The database driver's failed-jobs table (`[database] failed_table`; default `failed_jobs`).
    pub database_failed_table: Option<String>,
    /// The largest accepted serialized payload of a dispatched job, in bytes
    /// (`QUEUE_MAX_PAYLOAD_BYTES`, default [`DEFAULT_MAX_PAYLOAD_BYTES`], 512 KiB).
    pub max_payload_bytes: usize,
    /// Worker settings.
    pub worker: WorkerConfig,
    /// Failed jobs older than this are deleted by `queue:work` (every minute) and `queue:prune`
    /// (`QUEUE_FAILED_RETENTION`, `failed_retention`, e.g. `7d`; default: kept for ever).
    pub failed_retention: Option<Duration>,
    /// At most this many failed jobs are kept, the newest (`QUEUE_FAILED_KEEP`, `failed_keep`;
    /// default: no limit).
    pub failed_keep: Option<u64>,
    /// The schedules every worker declares (`[[schedule]]` tables; see [`ScheduleConfig`]).
    pub schedules: Vec<ScheduleConfig>,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    /// Where the settings the drivers name in their errors came from.
    origins: Vec<Origin>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            driver: DriverKind::Memory,
            default_queue: DEFAULT_QUEUE.to_owned(),
            redis_url: None,
            redis_prefix: None,
            redis_ca_cert: None,
            database_url: None,
            database_table: None,
            database_failed_table: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            worker: WorkerConfig {
                queues: Vec::new(),
                sleep: Duration::from_secs(3),
                max_jobs: None,
                concurrency: 1,
                timeout: Duration::from_secs(60),
                shutdown_timeout: Duration::from_secs(10),
            },
            failed_retention: None,
            failed_keep: None,
            schedules: Vec::new(),
            file: None,
            origins: Vec::new(),
        }
    }
}

/// `config/queue.toml`: the TOML twin of the seed's `config/queue.js`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    driver: Option<String>,
    default: Option<String>,
    max_payload_bytes: Option<usize>,
    redis: Option<FileRedis>,
    database: Option<FileDatabase>,
    worker: Option<FileWorker>,
    failed_retention: Option<FileAge>,
    failed_keep: Option<u64>,
    /// `[[schedule]]`.
    #[serde(default)]
    schedule: Vec<schedules::FileSchedule>,
}

/// An age in the config file: seconds, or text with a unit (`7d`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileAge {
    Seconds(f64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    url: Option<String>,
    table: Option<String>,
    failed_table: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRedis {
    url: Option<String>,
    ca_cert: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct FileWorker {
    queues: Option<Vec<String>>,
    sleep: Option<f64>,
    #[serde(alias = "maxJobs")]
    max_jobs: Option<u64>,
    concurrency: Option<usize>,
    timeout: Option<f64>,
    shutdown_timeout: Option<f64>,
}

impl Config {
    /// Reads `.env` (if present, without overriding the environment), the config file and the
    /// environment. `file` names a config file that must exist; without it `config/queue.toml` is
    /// read if it exists.
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable or key with a wrong value and what it accepts.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        if let Err(e) = dotenvy::dotenv()
            && !e.not_found()
        {
            return Err(Error::config(".env", format!("{e}; fix or remove the file")));
        }
        let (path, text) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::config(
                        path.display().to_string(),
                        format!("cannot read the config file: {e}"),
                    )
                })?;
                (Some(path.to_path_buf()), Some(text))
            }
            None => {
                let path = Path::new(DEFAULT_CONFIG_FILE);
                match std::fs::read_to_string(path) {
                    Ok(text) => (Some(path.to_path_buf()), Some(text)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
                    Err(e) => {
                        return Err(Error::config(
                            DEFAULT_CONFIG_FILE,
                            format!("cannot read the config file: {e}"),
                        ));
                    }
                }
            }
        };
        let file = match (&path, &text) {
            (Some(path), Some(text)) => Some((path.as_path(), text.as_str())),
            _ => None,
        };
        Self::from_sources(file, |key| std::env::var(key).ok())
    }

    /// Resolves the configuration from a config file's text and an environment lookup, without
    /// touching the process: the testable core of [`Config::load`].
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_sources(
        file: Option<(&Path, &str)>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut config = Self::default();
        if let Some((path, text)) = file {
            let shown = path.display().to_string();
            let parsed: FileConfig = toml::from_str(text).map_err(|e| {
                Error::config(
                    &shown,
                    format!("{}; see README.md for the file's keys", e.to_string().trim_end()),
                )
            })?;
            config.apply_file(parsed, &shown)?;
            config.file = Some(path.to_path_buf());
        }
        config.apply_env(&env)?;
        Ok(config)
    }

    fn apply_file(&mut self, file: FileConfig, shown: &str) -> Result<()> {
        let key = |k: &str| format!("{shown}: {k}");
        if let Some(driver) = file.driver {
            self.driver = driver.parse().map_err(|m| Error::config(key("driver"), m))?;
        }
        if let Some(default) = file.default {
            validate_queue_name(&default)
                .map_err(|e| Error::config(key("default"), e.to_string()))?;
            self.default_queue = default;
        }
        if let Some(bytes) = file.max_payload_bytes {
            self.max_payload_bytes =
                payload_limit(bytes).map_err(|m| Error::config(key("max_payload_bytes"), m))?;
        }
        if let Some(redis) = file.redis {
            if let Some(url) = redis.url {
                self.redis_url = Some(url);
                self.set_origin(Setting::RedisUrl, key("redis.url"));
            }
            if let Some(path) = redis.ca_cert {
                self.redis_ca_cert = Some(path);
                self.set_origin(Setting::RedisCaCert, key("redis.ca_cert"));
            }
        }
        if let Some(database) = file.database {
            if let Some(url) = database.url {
                self.database_url = Some(url);
                self.set_origin(Setting::DatabaseUrl, key("database.url"));
            }
            self.database_table = database.table.or(self.database_table.take());
            self.database_failed_table =
                database.failed_table.or(self.database_failed_table.take());
        }
        if let Some(age) = file.failed_retention {
            let age = match age {
                FileAge::Seconds(secs) => parse_age(&secs.to_string()),
                FileAge::Text(text) => parse_age(&text),
            };
            self.failed_retention =
                Some(age.map_err(|m| Error::config(key("failed_retention"), m))?);
        }
        if let Some(keep) = file.failed_keep {
            self.failed_keep = Some(keep);
        }
        self.schedules = schedules::from_file(file.schedule, shown)?;
        if let Some(worker) = file.worker {
            if let Some(queues) = worker.queues {
                for queue in &queues {
                    validate_queue_name(queue)
                        .map_err(|e| Error::config(key("worker.queues"), e.to_string()))?;
                }
                self.worker.queues = queues;
            }
            if let Some(sleep) = worker.sleep {
                self.worker.sleep =
                    seconds(sleep).map_err(|m| Error::config(key("worker.sleep"), m))?;
            }
            if let Some(max_jobs) = worker.max_jobs {
                self.worker.max_jobs = Some(max_jobs);
            }
            if let Some(concurrency) = worker.concurrency {
                if concurrency == 0 {
                    return Err(Error::config(key("worker.concurrency"), "0; use 1 or more"));
                }
                self.worker.concurrency = concurrency;
            }
            if let Some(timeout) = worker.timeout {
                if timeout <= 0.0 {
                    return Err(Error::config(
                        key("worker.timeout"),
                        format!(
                            "{timeout} would time every job out at once; use a number of seconds above 0, e.g. 60"
                        ),
                    ));
                }
                self.worker.timeout =
                    seconds(timeout).map_err(|m| Error::config(key("worker.timeout"), m))?;
            }
            if let Some(grace) = worker.shutdown_timeout {
                self.worker.shutdown_timeout = shutdown_seconds(&grace.to_string())
                    .map_err(|m| Error::config(key("worker.shutdown_timeout"), m))?;
            }
        }
        Ok(())
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<()> {
        // An empty variable counts as unset, as in the seed's `.env` (`QUEUE_WORKER_MAX_JOBS=`).
        let var = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        if let Some(v) = var("QUEUE_DRIVER") {
            self.driver = v.parse().map_err(|m| Error::config("QUEUE_DRIVER", m))?;
        }
        if let Some(v) = var("QUEUE_DEFAULT") {
            let v = v.trim().to_owned();
            validate_queue_name(&v).map_err(|e| Error::config("QUEUE_DEFAULT", e.to_string()))?;
            self.default_queue = v;
        }
        if let Some(v) = var(MAX_PAYLOAD_BYTES_VAR) {
            let bytes = v.trim().parse::<usize>().map_err(|_| {
                Error::config(
                    MAX_PAYLOAD_BYTES_VAR,
                    format!(
                        "{v:?} is not a whole number of bytes; use e.g. 1048576 for 1 MiB, or leave \
                         it empty for the default of {DEFAULT_MAX_PAYLOAD_BYTES}"
                    ),
                )
            })?;
            self.max_payload_bytes =
                payload_limit(bytes).map_err(|m| Error::config(MAX_PAYLOAD_BYTES_VAR, m))?;
        }
        if let Some(v) = var(Setting::RedisUrl.variable()) {
            self.redis_url = Some(v);
            self.set_origin(Setting::RedisUrl, Setting::RedisUrl.variable());
        }
        if let Some(v) = var(REDIS_PREFIX) {
            self.redis_prefix = Some(v.trim().to_owned());
            self.set_origin(Setting::RedisPrefix, REDIS_PREFIX);
        }
        if let Some(v) = var(Setting::RedisCaCert.variable()) {
            self.redis_ca_cert = Some(PathBuf::from(v.trim()));
            self.set_origin(Setting::RedisCaCert, Setting::RedisCaCert.variable());
        }
        if let Some(v) = var(Setting::DatabaseUrl.variable()) {
            self.database_url = Some(v);
            self.set_origin(Setting::DatabaseUrl, Setting::DatabaseUrl.variable());
        }
        if let Some(v) = var(DATABASE_TABLE_VAR) {
            self.database_table = Some(v.trim().to_owned());
        }
        if let Some(v) = var(FAILED_RETENTION_VAR) {
            self.failed_retention =
                Some(parse_age(&v).map_err(|m| Error::config(FAILED_RETENTION_VAR, m))?);
        }
        if let Some(v) = var(FAILED_KEEP_VAR) {
            let keep = v.trim().parse::<u64>().map_err(|_| {
                Error::config(
                    FAILED_KEEP_VAR,
                    format!(
                        "{v:?} is not a whole number; use e.g. 10000, or leave it empty to keep \
                         every failed job"
                    ),
                )
            })?;
            self.failed_keep = Some(keep);
        }
        if let Some(v) = var(SHUTDOWN_TIMEOUT_VAR) {
            self.worker.shutdown_timeout =
                shutdown_seconds(&v).map_err(|m| Error::config(SHUTDOWN_TIMEOUT_VAR, m))?;
        }
        if let Some(v) = var("QUEUE_WORKER_QUEUES") {
            self.worker.queues = parse_queue_list(&v)
                .map_err(|e| Error::config("QUEUE_WORKER_QUEUES", e.to_string()))?;
        }
        if let Some(v) = var("QUEUE_WORKER_SLEEP") {
            self.worker.sleep =
                parse_seconds(&v).map_err(|m| Error::config("QUEUE_WORKER_SLEEP", m))?;
        }
        if let Some(v) = var("QUEUE_WORKER_MAX_JOBS") {
            let n = v.trim().parse::<u64>().map_err(|_| {
                Error::config(
                    "QUEUE_WORKER_MAX_JOBS",
                    format!(
                        "{v:?} is not a whole number; use e.g. 100, or leave it empty for no limit"
                    ),
                )
            })?;
            self.worker.max_jobs = Some(n);
        }
        Ok(())
    }

    /// The Redis URL to use: `REDIS_URL` or the config file's, else [`DEFAULT_REDIS_URL`].
    pub fn redis_url(&self) -> &str {
        self.redis_url.as_deref().unwrap_or(DEFAULT_REDIS_URL)
    }

    /// The database URL to use: `DATABASE_URL` or the config file's, else [`DEFAULT_DATABASE_URL`].
    pub fn database_url(&self) -> &str {
        self.database_url.as_deref().unwrap_or(DEFAULT_DATABASE_URL)
    }

    /// Records that `setting`'s current value came from `from` (a command-line flag, say), to be
    /// named in errors about it instead of its variable or file key. [`Config::load`] records
    /// the variables and file keys itself; a value changed in code afterwards without this has
    /// no origin, and errors about it keep the driver's words. An unset setting has nothing to
    /// record (errors name its variable as not set).
    pub fn set_origin(&mut self, setting: Setting, from: impl Into<String>) {
        let Some(value) = self.value_of(setting) else { return };
        self.origins.retain(|o| o.setting != setting);
        self.origins.push(Origin { setting, value, from: from.into() });
    }

    /// The value of `setting`, as text; `None` when unset (the driver's default applies).
    fn value_of(&self, setting: Setting) -> Option<String> {
        match setting {
            Setting::RedisUrl => self.redis_url.clone(),
            Setting::RedisCaCert => {
                self.redis_ca_cert.as_ref().map(|p| p.to_string_lossy().into_owned())
            }
            Setting::RedisPrefix => self.redis_prefix.clone(),
            Setting::DatabaseUrl => self.database_url.clone(),
        }
    }

    /// Where `setting`'s value came from, as errors name it: the variable, file key or flag
    /// that held it, or `REDIS_URL (not set: the default)` for a default; `None` for a value set
    /// in code.
    fn origin(&self, setting: Setting) -> Option<String> {
        match self.value_of(setting) {
            None => Some(format!("{} (not set: the default)", setting.variable())),
            Some(value) => self
                .origins
                .iter()
                .find(|o| o.setting == setting && o.value == value)
                .map(|o| o.from.clone()),
        }
    }

    /// Says where the settings came from in an error a driver raised about them. The rule, the
    /// same for every driver: the drivers name their settings as code gives them ("the Redis
    /// URL", `RedisConfig::with_ca_cert_file`, "the database URL"); where such a setting came
    /// from a variable, a config-file key or a flag ([`Config::set_origin`]),
    ///
    /// - an [`Error::Config`] about it is re-keyed to that variable, key or flag (the message is
    ///   kept), e.g. `configuration error in REDIS_URL: ...`;
    /// - a backend or version error whose message mentions it gets `; the Redis URL came from
    ///   REDIS_URL` appended (unless the message names that origin already).
    ///
    /// An unset setting (the default applies) counts as coming from `REDIS_URL (not set: the
    /// default)`, and its note reads `REDIS_URL is not set`.
    ///
    /// Other errors, and settings given in code, are returned as they are. [`Config::connect`]
    /// and `Config::redis_config` apply this already; an application that connects a driver
    /// itself from `Config::database_config` or `Config::redis_config` can pass the
    /// driver's errors through it for the same messages.
    pub fn name_origins(&self, error: Error) -> Error {
        match error {
            Error::Config { key, message } => {
                match Setting::ALL.into_iter().find(|s| s.is_key(&key)) {
                    Some(setting) => match self.origin(setting) {
                        Some(from) => Error::Config { key: from, message },
                        None => Error::Config { key, message },
                    },
                    None => Error::Config { key, message },
                }
            }
            Error::Backend { driver, source, transient } => {
                match self.origin_notes(driver, &source.to_string()) {
                    Some(note) => {
                        let source = Box::new(Noted { source, note });
                        if transient {
                            Error::backend(driver, source)
                        } else {
                            Error::backend_permanent(driver, source)
                        }
                    }
                    None => Error::Backend { driver, source, transient },
                }
            }
            Error::Version { driver, message } => match self.origin_notes(driver, &message) {
                Some(note) => Error::Version { driver, message: format!("{message}; {note}") },
                None => Error::Version { driver, message },
            },
            other => other,
        }
    }

    /// `the Redis URL came from REDIS_URL` (or `REDIS_URL is not set`) for each of `driver`'s
    /// settings that `message` mentions and that came from somewhere the message does not name
    /// already.
    fn origin_notes(&self, driver: &str, message: &str) -> Option<String> {
        let notes: Vec<String> = Setting::ALL
            .into_iter()
            .filter(|s| s.driver() == driver && s.is_mentioned(message))
            .filter_map(|s| {
                let from = self.origin(s)?;
                (!message.contains(&from)).then(|| match self.value_of(s) {
                    Some(_) => format!("{} came from {from}", s.name()),
                    None => format!("{} is not set", s.variable()),
                })
            })
            .collect();
        (!notes.is_empty()).then(|| notes.join("; "))
    }

    /// The Redis driver's settings: the URL, the key prefix and the CA certificate.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL (without the password) or an unreadable CA
    /// certificate, keyed by the variable or file key that held the value (`REDIS_URL`,
    /// `REDIS_CA_CERT`, `config/queue.toml: redis.url`, ...).
    #[cfg(feature = "redis")]
    pub fn redis_config(&self) -> Result<orcs_redis::RedisConfig> {
        let build = || {
            let mut config = orcs_redis::RedisConfig::from_url(self.redis_url())?;
            if let Some(prefix) = &self.redis_prefix {
                config = config.with_prefix(prefix.clone());
            }
            if let Some(path) = &self.redis_ca_cert {
                config = config.with_ca_cert_file(path)?;
            }
            Ok(config)
        };
        build().map_err(|e| self.name_origins(e))
    }

    /// The database driver's settings: the URL and the tables.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn database_config(&self) -> orcs_database::DatabaseConfig {
        let mut config = orcs_database::DatabaseConfig::new(self.database_url());
        if let Some(table) = &self.database_table {
            // Counters follow the jobs table, so that two applications with their own tables in
            // one database keep their own counts.
            config = config.with_jobs_table(table).with_counters_table(format!("{table}_counters"));
        }
        if let Some(table) = &self.database_failed_table {
            config = config.with_failed_table(table);
        }
        config
    }

    /// The worker's queues: the configured list, else the default queue.
    pub fn worker_queues(&self) -> Vec<String> {
        if self.worker.queues.is_empty() {
            vec![self.default_queue.clone()]
        } else {
            self.worker.queues.clone()
        }
    }

    /// The pruning that the retention settings ask for at `now`: failed jobs of every queue
    /// older than [`Config::failed_retention`] and beyond the newest [`Config::failed_keep`];
    /// `None` when neither is set.
    pub fn failed_prune(&self, now: orcs_core::Millis) -> Option<orcs_core::Prune> {
        if self.failed_retention.is_none() && self.failed_keep.is_none() {
            return None;
        }
        let mut prune = orcs_core::Prune::new();
        prune.failed_before =
            self.failed_retention.map(|age| now.saturating_sub(orcs_core::millis(age)));
        prune.keep = self.failed_keep;
        Some(prune)
    }

    /// A worker's options from this configuration: the queues ([`Config::worker_queues`]),
    /// sleep, job limit, concurrency, default timeout and shutdown grace; the rest keep
    /// [`WorkerOptions`]' defaults. Give them to [`orcs_core::Worker::options`].
    pub fn worker_options(&self) -> WorkerOptions {
        let mut options = WorkerOptions::default();
        options.queues = self.worker_queues();
        options.sleep = self.worker.sleep;
        options.max_jobs = self.worker.max_jobs;
        options.concurrency = self.worker.concurrency;
        options.default_timeout = self.worker.timeout;
        options.shutdown_timeout = self.worker.shutdown_timeout;
        options
    }
}

/// A backend error with where a setting it mentions came from appended (see
/// [`Config::name_origins`]); its source is the driver's error, so the chain stays whole.
#[derive(Debug)]
struct Noted {
    source: orcs_core::BoxError,
    note: String,
}

impl fmt::Display for Noted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.source, self.note)
    }
}

impl std::error::Error for Noted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Parses a comma-separated queue list such as `high,default,low`.
///
/// # Errors
/// [`Error::Invalid`] for an empty list or an invalid name.
pub fn parse_queue_list(list: &str) -> Result<Vec<String>> {
    let queues: Vec<String> = list.split(',').map(|q| q.trim().to_owned()).collect();
    for queue in &queues {
        validate_queue_name(queue)?;
    }
    Ok(queues)
}

/// Parses a non-negative number of seconds (`3`, `0.5`).
///
/// # Errors
/// A message saying what was wrong and what is accepted.
pub fn parse_seconds(text: &str) -> std::result::Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds; use e.g. 3 or 0.5"))?;
    seconds(value)
}

/// An age such as `7d`, `12h`, `30m`, `90s` or `2w`; a plain number is seconds. Above 0.
///
/// # Errors
/// Says what was wrong and gives examples.
pub fn parse_age(text: &str) -> std::result::Result<Duration, String> {
    const FORM: &str = "use a number with a unit, s, m, h, d or w (e.g. 90s, 30m, 12h, 7d), or a \
                        number of seconds";
    let trimmed = text.trim();
    let (number, unit) = match trimmed.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => trimmed.split_at(at),
        None => (trimmed, "s"),
    };
    let scale: f64 = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3_600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        other => return Err(format!("{text:?} has the unknown unit {other:?}; {FORM}")),
    };
    let value: f64 =
        number.trim().parse().map_err(|_| format!("{text:?} is not an age; {FORM}"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{text:?} is not above 0; {FORM}"));
    }
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("{text:?} is too long; {FORM}"))
}

/// A shutdown grace: 0 (hand running jobs back at once) to an hour.
fn shutdown_seconds(text: &str) -> std::result::Result<Duration, String> {
    let value: f64 = text.trim().parse().map_err(|_| {
        format!("{text:?} is not a number of seconds; use a number from 0 to 3600, e.g. 10 or 30")
    })?;
    if !(0.0..=3600.0).contains(&value) {
        return Err(format!(
            "{value} is out of range; use a number of seconds from 0 to 3600, e.g. 10 or 30"
        ));
    }
    seconds(value)
}

fn payload_limit(bytes: usize) -> std::result::Result<usize, String> {
    if bytes == 0 {
        Err(format!(
            "0 would refuse every job; use a positive number of bytes such as \
             {DEFAULT_MAX_PAYLOAD_BYTES} (the default, 512 KiB)"
        ))
    } else {
        Ok(bytes)
    }
}

fn seconds(value: f64) -> std::result::Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        format!(
            "{value} is not a valid number of seconds; use a non-negative number such as 3 or 0.5"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn defaults_without_sources() {
        let config = Config::from_sources(None, env(&[])).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.worker_queues(), ["default"]);
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = r#"
            driver = "redis"
            default = "mail"
            [redis]
            ca_cert = "file-ca.pem"
            [worker]
            queues = ["a", "b"]
            sleep = 5
            max_jobs = 10
        "#;
        let config = Config::from_sources(
            Some((Path::new("queue.toml"), file)),
            env(&[
                ("QUEUE_DRIVER", "database"),
                ("QUEUE_WORKER_SLEEP", "0.5"),
                ("QUEUE_WORKER_MAX_JOBS", ""),
            ]),
        )
        .unwrap();
        assert_eq!(config.driver, DriverKind::Database);
        assert_eq!(config.default_queue, "mail");
        assert_eq!(config.worker.queues, ["a", "b"]);
        assert_eq!(config.worker.sleep, Duration::from_millis(500));
        assert_eq!(config.worker.max_jobs, Some(10), "an empty variable counts as unset");
        assert_eq!(config.redis_ca_cert, Some(PathBuf::from("file-ca.pem")));
    }

    #[test]
    fn the_shutdown_timeout_and_the_table_come_from_the_file_or_the_environment() {
        let file = Some((
            Path::new("q.toml"),
            "[worker]\nshutdown_timeout = 30\n[database]\ntable = \"f\"",
        ));
        let config = Config::from_sources(file, env(&[])).unwrap();
        assert_eq!(config.worker.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.database_table.as_deref(), Some("f"));
        let config = Config::from_sources(
            file,
            env(&[(SHUTDOWN_TIMEOUT_VAR, "2.5"), (DATABASE_TABLE_VAR, "e")]),
        )
        .unwrap();
        assert_eq!(config.worker.shutdown_timeout, Duration::from_millis(2500));
        assert_eq!(config.database_table.as_deref(), Some("e"));
        let err = Config::from_sources(None, env(&[(SHUTDOWN_TIMEOUT_VAR, "9999")])).unwrap_err();
        assert!(err.to_string().contains("from 0 to 3600"), "{err}");
        let file = Some((Path::new("q.toml"), "[worker]\ntimeout = 0"));
        let err = Config::from_sources(file, env(&[])).unwrap_err();
        assert!(err.to_string().contains("worker.timeout"), "{err}");
    }

    #[test]
    fn errors_name_the_variable_and_the_accepted_values() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("QUEUE_DRIVER", "kafka")],
                "QUEUE_DRIVER: unknown driver \"kafka\"; use one of: memory, redis, database",
            ),
            (
                &[("QUEUE_WORKER_SLEEP", "soon")],
                "QUEUE_WORKER_SLEEP: \"soon\" is not a number of seconds",
            ),
            (
                &[("QUEUE_WORKER_SLEEP", "-1")],
                "QUEUE_WORKER_SLEEP: -1 is not a valid number of seconds",
            ),
            (
                &[("QUEUE_WORKER_MAX_JOBS", "ten")],
                "QUEUE_WORKER_MAX_JOBS: \"ten\" is not a whole number",
            ),
            (
                &[("QUEUE_WORKER_QUEUES", "a,,b")],
                "QUEUE_WORKER_QUEUES: invalid queue name: \"\": it is empty",
            ),
            (&[("QUEUE_DEFAULT", "{x}")], "QUEUE_DEFAULT: invalid queue name"),
            (
                &[("QUEUE_MAX_PAYLOAD_BYTES", "1MB")],
                "QUEUE_MAX_PAYLOAD_BYTES: \"1MB\" is not a whole number of bytes",
            ),
            (
                &[("QUEUE_MAX_PAYLOAD_BYTES", "0")],
                "QUEUE_MAX_PAYLOAD_BYTES: 0 would refuse every job",
            ),
        ];
        for (vars, expected) in cases {
            let err = Config::from_sources(None, env(vars)).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
    }

    #[test]
    fn the_payload_limit_comes_from_the_file_or_the_environment() {
        assert_eq!(Config::default().max_payload_bytes, DEFAULT_MAX_PAYLOAD_BYTES);
        let file = Some((Path::new("queue.toml"), "max_payload_bytes = 2048"));
        assert_eq!(Config::from_sources(file, env(&[])).unwrap().max_payload_bytes, 2048);
        let config =
            Config::from_sources(file, env(&[("QUEUE_MAX_PAYLOAD_BYTES", " 4096 ")])).unwrap();
        assert_eq!(config.max_payload_bytes, 4096, "the environment beats the file");
        let err =
            Config::from_sources(Some((Path::new("q.toml"), "max_payload_bytes = 0")), env(&[]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("q.toml: max_payload_bytes: 0 would refuse every job"), "{err}");
    }

    #[test]
    fn the_redis_prefix_comes_from_the_environment() {
        assert_eq!(Config::default().redis_prefix, None, "the driver's default applies");
        let config = Config::from_sources(None, env(&[(REDIS_PREFIX, " app1 ")])).unwrap();
        assert_eq!(config.redis_prefix.as_deref(), Some("app1"));
        let config = Config::from_sources(None, env(&[(REDIS_PREFIX, "  ")])).unwrap();
        assert_eq!(config.redis_prefix, None, "an empty variable counts as unset");
    }

    #[test]
    fn worker_options_follow_the_configuration() {
        let file = "default = \"mail\"\n[worker]\nsleep = 0.25\nconcurrency = 4\ntimeout = 5";
        let config = Config::from_sources(
            Some((Path::new("queue.toml"), file)),
            env(&[("QUEUE_WORKER_MAX_JOBS", "7"), (SHUTDOWN_TIMEOUT_VAR, "2")]),
        )
        .unwrap();
        let options = config.worker_options();
        assert_eq!(options.queues, ["mail"], "no list: the default queue");
        assert_eq!(options.sleep, Duration::from_millis(250));
        assert_eq!(options.concurrency, 4);
        assert_eq!(options.default_timeout, Duration::from_secs(5));
        assert_eq!(options.max_jobs, Some(7));
        assert_eq!(options.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(options.lease_grace, WorkerOptions::default().lease_grace, "untouched");
    }

    #[test]
    fn urls_fall_back_to_the_defaults() {
        let config = Config::default();
        assert_eq!(config.redis_url(), DEFAULT_REDIS_URL);
        assert_eq!(config.database_url(), DEFAULT_DATABASE_URL);
        let config =
            Config::from_sources(None, env(&[("DATABASE_URL", "postgres://h/db")])).unwrap();
        assert_eq!(config.database_url(), "postgres://h/db");
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[test]
    fn the_database_config_takes_the_tables() {
        let file = "[database]\ntable = \"app_jobs\"\nfailed_table = \"app_failed\"";
        let config = Config::from_sources(Some((Path::new("queue.toml"), file)), env(&[])).unwrap();
        let database = config.database_config();
        assert_eq!(database.url, DEFAULT_DATABASE_URL);
        assert_eq!(database.jobs_table, "app_jobs");
        assert_eq!(database.counters_table, "app_jobs_counters");
        assert_eq!(database.failed_table, "app_failed");
    }

    #[test]
    fn database_tables_come_from_the_file() {
        let file = "[database]\nurl = \"sqlite://q.db\"\ntable = \"app_jobs\"\nfailed_table = \"app_failed\"";
        let config = Config::from_sources(Some((Path::new("queue.toml"), file)), env(&[])).unwrap();
        assert_eq!(config.database_url.as_deref(), Some("sqlite://q.db"));
        assert_eq!(config.database_table.as_deref(), Some("app_jobs"));
        assert_eq!(config.database_failed_table.as_deref(), Some("app_failed"));
        assert_eq!(Config::default().database_table, None, "the driver's default applies");
    }

    #[test]
    fn driver_errors_name_the_variable_file_key_or_flag_that_held_the_setting() {
        let file = Some((Path::new("config/queue.toml"), "[database]\nurl = \"sqlite::memory:\""));
        let from_file = Config::from_sources(file, env(&[])).unwrap();
        let from_env =
            Config::from_sources(file, env(&[("DATABASE_URL", "sqlite::memory:")])).unwrap();
        let mut from_flag = from_env.clone();
        from_flag.database_url = Some("sqlite://other.db".to_owned());
        from_flag.set_origin(Setting::DatabaseUrl, "--url");
        let mut in_code = from_env.clone();
        in_code.database_url = Some("sqlite://changed.db".to_owned());
        let key = |config: &Config, key: &str| match config
            .name_origins(Error::config(key, "sqlite::memory: would lose every job"))
        {
            Error::Config { key, message } => {
                assert_eq!(message, "sqlite::memory: would lose every job");
                key
            }
            other => panic!("{other:?}"),
        };
        // The database driver's key before and after its rewording.
        for driver_key in ["DATABASE_URL", "database url", "the database URL"] {
            assert_eq!(key(&from_file, driver_key), "config/queue.toml: database.url");
            assert_eq!(key(&from_env, driver_key), "DATABASE_URL");
            assert_eq!(key(&from_flag, driver_key), "--url");
            assert_eq!(key(&in_code, driver_key), driver_key, "set in code: the driver's words");
            assert_eq!(key(&Config::default(), driver_key), "DATABASE_URL (not set: the default)");
        }
        let redis = Config::from_sources(
            None,
            env(&[("REDIS_URL", "redis://h"), ("REDIS_CA_CERT", "ca.pem")]),
        )
        .unwrap();
        assert_eq!(key(&redis, "the Redis URL"), "REDIS_URL");
        assert_eq!(key(&redis, "RedisConfig::with_ca_cert_file"), "REDIS_CA_CERT");
        assert_eq!(key(&redis, "QUEUE_DRIVER"), "QUEUE_DRIVER", "other keys are left alone");

        // A backend error whose advice mentions the URL says where the URL came from, and
        // stays transient (or permanent) with the driver's error as its source.
        let refused = || {
            Error::backend(
                "redis",
                std::io::Error::other("refused; fix the host and port in the Redis URL"),
            )
        };
        let err = redis.name_origins(refused());
        assert!(err.is_transient());
        let text = err.to_string();
        assert!(text.ends_with("in the Redis URL; the Redis URL came from REDIS_URL"), "{text}");
        let source = std::error::Error::source(&err).and_then(std::error::Error::source);
        assert!(source.is_some_and(|s| s.to_string().starts_with("refused")), "{err:?}");
        let text = Config::default().name_origins(refused()).to_string();
        assert!(text.ends_with("; REDIS_URL is not set"), "{text}");
        let text = redis
            .name_origins(Error::backend_permanent("database", std::io::Error::other("no")))
            .to_string();
        assert_eq!(text, "database backend error: no", "nothing mentioned: unchanged");
        let err =
            Error::Version { driver: "redis", message: "use RedisConfig::with_prefix".into() };
        let text = redis.name_origins(err).to_string();
        assert!(text.ends_with("with_prefix; REDIS_PREFIX is not set"), "{text}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn the_redis_config_names_the_variable_or_file_key() {
        let err = |config: Config| config.redis_config().unwrap_err().to_string();
        let text =
            err(Config::from_sources(None, env(&[("REDIS_URL", "http://u:hunter2@h")])).unwrap());
        assert!(text.starts_with("configuration error in REDIS_URL: http://u:***@h"), "{text}");
        let file = "[redis]\nurl = \"redis://h\"\nca_cert = \"missing.pem\"";
        let text = err(Config::from_sources(Some((Path::new("q.toml"), file)), env(&[])).unwrap());
        assert!(text.starts_with("configuration error in q.toml: redis.ca_cert: "), "{text}");
        let file = Some((Path::new("q.toml"), "[redis]\nurl = \"redis://h:port\""));
        let text = err(Config::from_sources(file, env(&[])).unwrap());
        assert!(text.starts_with("configuration error in q.toml: redis.url: "), "{text}");
    }

    #[test]
    fn a_broken_file_names_the_file_and_the_key() {
        let err =
            Config::from_sources(Some((Path::new("config/queue.toml"), "driver = 3")), env(&[]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("config/queue.toml"), "{err}");
        let err = Config::from_sources(Some((Path::new("q.toml"), "[worker]\nslep = 3")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `slep`"), "{err}");
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;

    #[test]
    fn ages_take_a_unit_or_seconds() {
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_age(" 7d "), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_age("1.5h"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(1_209_600)));
        assert!(parse_age("7y").unwrap_err().contains("unknown unit \"y\""));
        assert!(parse_age("0d").unwrap_err().contains("not above 0"));
        assert!(parse_age("soon").unwrap_err().contains("e.g. 90s"));
    }

    #[test]
    fn retention_comes_from_the_file_and_the_environment() {
        let file = "failed_retention = \"7d\"\nfailed_keep = 1000\n";
        let config =
            Config::from_sources(Some((Path::new("queue.toml"), file)), |_| None).expect("config");
        assert_eq!(config.failed_retention, Some(Duration::from_secs(604_800)));
        assert_eq!(config.failed_keep, Some(1000));
        let prune = config.failed_prune(1_000_000_000).expect("a prune");
        assert_eq!(
            (prune.failed_before, prune.keep),
            (Some(1_000_000_000 - 604_800_000), Some(1000))
        );

        let seconds = "failed_retention = 3600\n";
        let config = Config::from_sources(Some((Path::new("queue.toml"), seconds)), |_| None)
            .expect("config");
        assert_eq!(config.failed_retention, Some(Duration::from_secs(3_600)));

        let env = |key: &str| match key {
            FAILED_RETENTION_VAR => Some("12h".to_owned()),
            FAILED_KEEP_VAR => Some("many".to_owned()),
            _ => None,
        };
        let error = Config::from_sources(None, env).expect_err("a bad count").to_string();
        assert!(error.contains(FAILED_KEEP_VAR) && error.contains("whole number"), "{error}");
        let error =
            Config::from_sources(Some((Path::new("q.toml"), "failed_retention = \"x\"")), |_| None)
                .expect_err("a bad age")
                .to_string();
        assert!(error.contains("q.toml: failed_retention"), "{error}");
        assert!(Config::default().failed_prune(0).is_none(), "no retention, no pruning");
    }
}
