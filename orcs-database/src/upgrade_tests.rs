//! A database at storage version 3 (the release before workflows), with jobs in every state,
//! upgrades in place (to the latest version: migration 7 backfills the queue sizes from its rows,
//! migrations 9 and 11 move SQLite's and PostgreSQL's held keys to their jobs, migration 15
//! builds SQLite's sizes table again)
//! and its jobs still run; then batches work on it. The version-3
//! tables come from the very statements of migrations 1 to 3 (an applied migration is never
//! edited), so they are what that release created.

use std::time::Duration;

use orcs_core::{
    Admin, CallbackState, ClaimRequest, Clock, Driver, JobState, NewBatch, NewJob, PushOutcome,
    Settle, SystemClock,
};
use orcs_tests::services::{self, unique_name};
use sqlx::{Connection, Row};

use crate::sql::{Dialect, Sql};
use crate::{DatabaseConfig, DatabaseDriver};

/// Runs migrations 1 to 3 and records them, as that release's setup did.
fn version_3(dialect: Dialect) -> Vec<String> {
    let config = DatabaseConfig::default();
    let sql =
        Sql::new(dialect, None, &config.jobs_table, &config.failed_table, &config.counters_table);
    let mut statements = vec![sql.create_migrations.clone()];
    for migration in sql.migrations.iter().filter(|m| m.version <= 3) {
        statements.extend(migration.statements.iter().cloned());
        statements.push(format!(
            "INSERT INTO {} (version, applied_at) VALUES ({}, 0)",
            sql.migrations_table, migration.version
        ));
    }
    statements
}

/// Jobs of version 3 in every state at `now`: ready (with a unique key), delayed, reserved
/// with an expired lease, one in a concurrency-limited queue, and one in the failed set.
fn version_3_jobs(now: i64) -> Vec<String> {
    let columns = "id, queue, name, payload, priority, attempts, max_retries, retry_delay_ms, \
                   dispatched_at, available_at, reserved_until, token, state, unique_key, \
                   unique_mode";
    vec![
        format!(
            "INSERT INTO jobs ({columns}) VALUES \
             ('01J00000000000000000000001', 'mail', 'PlainJob', '{{}}', 0, 0, 3, 1000, {now}, \
             {now}, NULL, NULL, 0, 'k', 1), \
             ('01J00000000000000000000002', 'mail', 'PlainJob', '{{}}', 0, 0, 3, 1000, {now}, \
             {later}, NULL, NULL, 1, NULL, NULL), \
             ('01J00000000000000000000003', 'mail', 'PlainJob', '{{}}', 0, 1, 3, 1000, {now}, \
             {now}, {expired}, 'tok', 2, NULL, NULL), \
             ('01J00000000000000000000004', 'limited', 'PlainJob', '{{}}', 0, 0, 3, 1000, \
             {now}, {now}, NULL, NULL, 0, NULL, NULL)",
            later = now + 3_600_000,
            expired = now - 1,
        ),
        "INSERT INTO jobs_unique (queue, unique_key, holder, taken_at) \
         VALUES ('mail', 'k', '01J00000000000000000000001', 0)"
            .to_owned(),
        "INSERT INTO jobs_queues (queue, paused, concurrency) VALUES ('limited', FALSE, 2)"
            .to_owned(),
        format!(
            "INSERT INTO failed_jobs (id, queue, name, payload, priority, attempts, max_retries, \
             retry_delay_ms, dispatched_at, error, failed_at) VALUES \
             ('01J00000000000000000000005', 'mail', 'PlainJob', '{{}}', 0, 4, 3, 1000, {now}, \
             'boom', {now})"
        ),
    ]
}

/// Claims from `queue` at `now` and completes what it got; answers the ids.
async fn run_all(driver: &DatabaseDriver, queue: &str, now: i64) -> Vec<String> {
    let queues = vec![queue.to_owned()];
    let claim = driver.claim(&ClaimRequest::new(&queues, 10, now)).await.expect("claim");
    let mut ids = Vec::new();
    for reserved in claim.jobs {
        assert_eq!((reserved.record.batch, reserved.record.meta), (None, None));
        driver.settle_one(Settle::complete(reserved.lease), now).await.expect("complete");
        ids.push(reserved.record.id);
    }
    ids.sort();
    ids
}

/// The upgrade and what must still work after it, on a database that `execute` writes to and
/// `driver` opens.
async fn upgrade_keeps_the_jobs(target: Target) {
    let now = SystemClock.now();
    for statement in version_3(target.dialect()).into_iter().chain(version_3_jobs(now)) {
        target.execute(&statement).await;
    }
    let driver = DatabaseDriver::connect(&target.url()).await.expect("the upgrade");
    assert_eq!(
        target.versions().await,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    );
    if let Target::Sqlite(_) = &target {
        // Migration 15: the sizes' counts may be NULL (so that no statement that sets them can
        // abort), their key may not.
        assert_eq!(
            target.not_null("jobs_sizes").await,
            [
                ("queue", true),
                ("shard", true),
                ("ready", false),
                ("delayed", false),
                ("reserved", false),
                ("failed", false)
            ]
            .map(|(column, not_null)| (column.to_owned(), not_null))
        );
    }
    // Migration 7: the sizes were backfilled from the rows already there (`stats` reads them).
    assert_eq!(
        target.sizes().await,
        [("limited".to_owned(), 1, 0, 0, 0), ("mail".to_owned(), 1, 1, 1, 1)]
    );
    let limited = driver.stats("limited", now).await.expect("stats");
    assert_eq!((limited.pending, limited.delayed, limited.reserved, limited.failed), (1, 0, 0, 0));
    assert_eq!(driver.queues().await.expect("queues"), ["limited", "mail"]);
    if let Target::Postgres(url) = &target {
        // Migration 6: `_ready_since` over a condition the claim does not imply, and the claim
        // function replaced by the one that updates the picked rows by primary key; migration
        // 8: beside it (for workers still running the previous build), the one that takes the
        // worker's settling jobs; migration 17: the held keys indexed key first.
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        let row = sqlx::query(
            "SELECT pg_get_indexdef('jobs_ready_since'::regclass), \
             pg_get_functiondef('jobs_claim(text, bigint, bigint, bigint, text, bigint)'\
             ::regprocedure), \
             pg_get_functiondef('jobs_claim(text, bigint, bigint, bigint, text, bigint, text[])'\
             ::regprocedure), \
             pg_get_indexdef('jobs_held_key'::regclass)",
        )
        .fetch_one(&mut conn)
        .await
        .expect("catalog");
        let (index, function, settling, held): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert!(index.contains("reserved_until IS NULL"), "{index}");
        assert!(held.contains("UNIQUE INDEX") && held.contains("(unique_key, queue)"), "{held}");
        assert!(function.contains("= ANY (ARRAY (SELECT id FROM picked))"), "{function}");
        assert!(settling.contains("UNNEST($7::TEXT[])"), "{settling}");
    }
    // Migration 5: a job failed before it has no error history; the operations tables work.
    let failed = driver.get("01J00000000000000000000005", now).await.expect("get").expect("job");
    assert_eq!((failed.state, failed.errors.len()), (JobState::Failed, 0));
    let worker = orcs_core::WorkerInfo::new("w", "host", 1, now);
    let ended = [orcs_core::Throughput::new("mail", 2, 1)];
    driver.heartbeat(&worker, &ended, 1_000, now).await.expect("heartbeat");
    assert_eq!(driver.workers(now).await.expect("workers").len(), 1);
    assert_eq!(driver.stats("mail", now).await.expect("stats").latency_ms, Some(0));

    let stats = driver.stats("mail", now).await.expect("stats");
    assert_eq!((stats.pending, stats.delayed, stats.reserved, stats.failed), (1, 1, 1, 1));
    let delayed = driver.get("01J00000000000000000000002", now).await.expect("get").expect("job");
    assert_eq!(
        (delayed.state, delayed.job.batch, delayed.job.meta),
        (JobState::Delayed, None, None)
    );
    // The key taken before the upgrade is still held by its job (migration 9 on SQLite, 11 on
    // PostgreSQL moved it from the keys table to the job's row).
    let mut rival = NewJob::new(orcs_core::new_job_id(), "PlainJob", "mail", "{}", now);
    rival.unique = Some(orcs_core::Unique::new("k", orcs_core::UniqueUntil::Started));
    assert_eq!(
        driver.push(vec![rival]).await.expect("push"),
        [PushOutcome::Duplicate { id: "01J00000000000000000000001".to_owned() }]
    );
    assert_eq!(run_all(&driver, "mail", now).await, ["01J00000000000000000000001"]);
    // The key of the completed job is free again.
    let mut keyed = NewJob::new(orcs_core::new_job_id(), "PlainJob", "mail", "{}", now);
    keyed.unique = Some(orcs_core::Unique::new("k", orcs_core::UniqueUntil::Finished));
    assert_eq!(driver.push(vec![keyed.clone()]).await.expect("push"), [PushOutcome::Stored]);
    // The expired lease is recovered, the failed job retried; the limited queue's claim (on
    // PostgreSQL the claim function, replaced by migration 4) returns the new columns.
    assert_eq!(driver.recover(&["mail".to_owned()], now).await.expect("recover"), 1);
    driver.retry_failed("01J00000000000000000000005", now).await.expect("retry_failed");
    assert_eq!(
        run_all(&driver, "mail", now).await,
        ["01J00000000000000000000003", "01J00000000000000000000005", keyed.id.as_str()]
    );
    assert_eq!(run_all(&driver, "limited", now).await, ["01J00000000000000000000004"]);
    assert_eq!(
        run_all(&driver, "mail", now + 3_600_000).await,
        ["01J00000000000000000000002"],
        "the delayed job runs when due"
    );
    let stats = driver.stats("mail", now).await.expect("stats");
    assert_eq!((stats.pending, stats.delayed, stats.reserved, stats.processed), (0, 0, 0, 5));
    assert_eq!(stats.failed, 0);
    // The triggers kept the backfilled sizes exact through the run.
    let sizes = target.sizes().await;
    assert!(sizes.iter().all(|(_, ready, delayed, reserved, failed)| {
        (*ready, *delayed, *reserved, *failed) == (0, 0, 0, 0)
    }));

    // The new tables work on the upgraded database.
    let mut batch = NewBatch::new(orcs_core::new_job_id(), now);
    batch.then = Some(NewJob::new(orcs_core::new_job_id(), "PlainJob", "mail", "{}", now));
    let child = NewJob::new(orcs_core::new_job_id(), "PlainJob", "mail", "{}", now);
    driver.push_batch(batch.clone(), vec![child.clone()]).await.expect("push_batch");
    let queues = vec!["mail".to_owned()];
    let claim = driver.claim(&ClaimRequest::new(&queues, 1, now)).await.expect("claim");
    assert_eq!(claim.jobs[0].record.batch.as_deref(), Some(batch.id.as_str()));
    driver.settle_one(Settle::complete(claim.jobs[0].lease.clone()), now).await.expect("complete");
    let info = driver.batch(&batch.id).await.expect("batch").expect("kept");
    assert_eq!(info.then.map(|then| then.state), Some(CallbackState::Dispatched));
}

/// A database for the upgrade: a SQLite file or a PostgreSQL schema of its own.
enum Target {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Target {
    fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite(_) => Dialect::Sqlite,
            Self::Postgres(_) => Dialect::Postgres,
        }
    }

    fn url(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(url) => url.clone(),
        }
    }

    async fn execute(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Sqlite(_) => {
                let url = format!("{}?mode=rwc", self.url());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open");
                sqlx::query(sql).execute(&mut conn).await.expect("execute");
            }
            Self::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
                sqlx::query(sql).execute(&mut conn).await.expect("execute");
            }
        }
    }

    /// The rows of `jobs_sizes` summed per queue: (queue, ready, delayed, reserved, failed).
    async fn sizes(&self) -> Vec<(String, i64, i64, i64, i64)> {
        let sql = "SELECT queue, CAST(SUM(ready) AS BIGINT), CAST(SUM(delayed) AS BIGINT), \
                   CAST(SUM(reserved) AS BIGINT), CAST(SUM(failed) AS BIGINT) FROM jobs_sizes \
                   GROUP BY queue ORDER BY queue";
        match self {
            Self::Sqlite(_) => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url()).await.expect("open");
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("sizes");
                rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect()
            }
            Self::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("sizes");
                rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect()
            }
        }
    }

    /// SQLite: `table`'s columns in order, each with whether it is `NOT NULL`.
    async fn not_null(&self, table: &str) -> Vec<(String, bool)> {
        let mut conn = sqlx::SqliteConnection::connect(&self.url()).await.expect("open");
        let sql =
            format!("SELECT name, \"notnull\" FROM pragma_table_info('{table}') ORDER BY cid");
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await.expect("columns");
        rows.iter().map(|r| (r.get(0), r.get::<i64, _>(1) == 1)).collect()
    }

    async fn versions(&self) -> Vec<i64> {
        let sql = "SELECT version FROM jobs_migrations ORDER BY version";
        match self {
            Self::Sqlite(_) => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url()).await.expect("open");
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("versions");
                rows.iter().map(|r| r.get::<i64, _>(0)).collect()
            }
            Self::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("versions");
                rows.iter().map(|r| r.get::<i64, _>(0)).collect()
            }
        }
    }
}

#[test]
fn sqlite_database_at_version_3_upgrades_and_its_jobs_run() {
    orcs_tests::run(async {
        let dir = std::env::temp_dir().join("orcs-database-tests");
        std::fs::create_dir_all(&dir).expect("the test directory");
        let path = dir.join(format!("{}.db", unique_name("upgrade")));
        // WAL first, as the driver's setup would have left the file.
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("create");
        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut conn).await.expect("wal");
        drop(conn);
        upgrade_keeps_the_jobs(Target::Sqlite(path)).await;
    });
}

#[test]
fn postgres_database_at_version_3_upgrades_and_its_jobs_run() {
    orcs_tests::run(async {
        let Some(url) = services::postgres::database_url_or_skip() else { return };
        let mut conn = match sqlx::PgConnection::connect(&url).await {
            Ok(conn) => conn,
            Err(e) => {
                return services::skip::<()>("PostgreSQL", &format!("cannot connect: {e}"))
                    .unwrap_or(());
            }
        };
        // The conformance suite's clean-up drops these schemas once stale.
        let schema = unique_name("orcs_test");
        let create = format!("CREATE SCHEMA \"{schema}\"");
        sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut conn).await.expect("schema");
        drop(conn);
        let url = services::postgres::with_search_path(&url, &schema);
        tokio::time::timeout(
            Duration::from_secs(30),
            upgrade_keeps_the_jobs(Target::Postgres(url)),
        )
        .await
        .expect("the upgrade case finished");
    });
}
