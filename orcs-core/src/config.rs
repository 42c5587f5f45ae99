//! Defaults shared with the drivers. Loading configuration (the environment, `.env`,
//! `config/queue.toml`) lives in the `orcs` crate (`orcs::config`).

/// The SQLite file the database driver opens when it is given no URL
/// (`orcs_database::DatabaseConfig::default`).
// Kept here only because orcs-database's `DatabaseConfig::default` names it; it belongs with
// that driver and can move there.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://storage/queue.db";
