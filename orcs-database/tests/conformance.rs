//! The conformance suite on SQLite (a fresh temporary file per case) and on PostgreSQL (a fresh
//! schema per case), plus the database driver's own cases.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use orcs_database::DatabaseDriver;
use orcs_tests::services::{self, postgres::created_at, unique_name};

/// Test artefacts older than this belong to finished runs (a case is cut off after 60 s).
const STALE_AFTER: Duration = Duration::from_secs(600);

fn sqlite_dir() -> PathBuf {
    std::env::temp_dir().join("orcs-database-tests")
}

/// A path for a new SQLite file; removes the files of earlier runs.
fn fresh_sqlite_path() -> PathBuf {
    let dir = sqlite_dir();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|at| SystemTime::now().duration_since(at).ok())
                .is_some_and(|age| age > STALE_AFTER);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    dir.join(format!("{}.db", unique_name("case")))
}

async fn sqlite_driver() -> DatabaseDriver {
    let url = format!("sqlite://{}", fresh_sqlite_path().display());
    DatabaseDriver::connect(&url).await.expect("open a fresh SQLite file")
}

/// A URL whose connections work in a new schema of their own; drops the schemas of earlier runs.
async fn postgres_url() -> Option<String> {
    use sqlx::{Connection, Row};
    let url = services::postgres::database_url_or_skip()?;
    let mut conn = match sqlx::PgConnection::connect(&url).await {
        Ok(conn) => conn,
        Err(e) => return services::skip("PostgreSQL", &format!("cannot connect: {e}")),
    };
    let now = orcs_core::Clock::now(&orcs_core::SystemClock);
    let stale = i64::try_from(STALE_AFTER.as_millis()).expect("small");
    let schemas = sqlx::query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'orcs_test_%'")
        .fetch_all(&mut conn)
        .await
        .expect("list schemas");
    for row in schemas {
        let name: String = row.get(0);
        if created_at(&name).is_some_and(|at| now - at > stale) {
            let drop = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
        }
    }
    let schema = unique_name("orcs_test");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&mut conn)
        .await
        .expect("create a schema");
    let _ = conn.close().await;
    Some(services::postgres::with_search_path(&url, &schema))
}

async fn postgres_driver() -> Option<DatabaseDriver> {
    let url = postgres_url().await?;
    Some(DatabaseDriver::connect(&url).await.expect("connect to PostgreSQL"))
}

mod sqlite {
    use super::*;
    orcs_tests::conformance_tests!(async { Some(sqlite_driver().await) });
}

mod postgres {
    use super::*;
    orcs_tests::conformance_tests!(postgres_driver());
}

/// The database driver's own cases, beyond the shared suite: several drivers on one database
/// (as several processes would be), wake-ups across them, bad rows, setup and configuration.
mod database {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Instant;

    use orcs_core::{
        Admin, CallbackState, ClaimRequest, Clock, Driver, Error, FailedQuery, NewBatch, NewJob,
        QueueLimits, RateLimit, Settle, SystemClock, Touch,
    };
    use orcs_database::DatabaseConfig;
    use sqlx::Connection;

    use super::*;

    /// For each case `name` (an async fn taking a [`Target`]), a module `name` with its test on
    /// SQLite (`sqlite`, a fresh file) and on PostgreSQL (`postgres`, a fresh schema; skipped
    /// when there is no server).
    macro_rules! on_both {
        ($($case:ident),+ $(,)?) => {$(
            mod $case {
                use super::*;

                #[test]
                fn sqlite() {
                    orcs_tests::run(super::$case(Target::sqlite()));
                }

                #[test]
                fn postgres() {
                    orcs_tests::run(async {
                        let Some(target) = Target::postgres().await else { return };
                        super::$case(target).await;
                    });
                }
            }
        )+};
    }

    /// One database, reachable by any number of independent drivers.
    enum Target {
        Sqlite(PathBuf),
        Postgres(String),
    }

    impl Target {
        fn sqlite() -> Self {
            Self::Sqlite(fresh_sqlite_path())
        }

        async fn postgres() -> Option<Self> {
            Some(Self::Postgres(postgres_url().await?))
        }

        fn url(&self) -> String {
            match self {
                Self::Sqlite(path) => format!("sqlite://{}", path.display()),
                Self::Postgres(url) => url.clone(),
            }
        }

        /// A driver of its own, as another process would have.
        async fn driver(&self) -> DatabaseDriver {
            DatabaseDriver::connect(&self.url()).await.expect("connect")
        }

        /// Runs raw SQL beside the driver (to damage a row, as an operator might).
        async fn execute(&self, sql: &str) {
            let sql = sqlx::AssertSqlSafe(sql.to_owned());
            match self {
                Self::Sqlite(path) => {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir).expect("the test directory");
                    }
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

        /// The first column of every row of `sql`, integers, read beside the driver.
        async fn integers(&self, sql: &str) -> Vec<i64> {
            use sqlx::Row;
            let sql = sqlx::AssertSqlSafe(sql.to_owned());
            match self {
                Self::Sqlite(_) => {
                    let mut conn =
                        sqlx::SqliteConnection::connect(&self.url()).await.expect("open");
                    let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("query");
                    rows.iter().map(|row| row.get(0)).collect()
                }
                Self::Postgres(url) => {
                    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
                    let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("query");
                    rows.iter().map(|row| row.get(0)).collect()
                }
            }
        }

        /// The integer `sql` answers (a count), read beside the driver.
        async fn count(&self, sql: &str) -> i64 {
            self.integers(sql).await[0]
        }
    }

    /// Recovery deletes the `Period` keys that expired (migration 12's index finds them) and
    /// keeps the others: a key whose period is over is free anyway, and while the keys table
    /// holds any row PostgreSQL's keyed pushes look for `Period` holders. The freed key is taken
    /// by the next push, and a held one still refuses.
    async fn recovery_sweeps_expired_period_keys(target: Target) {
        use orcs_core::{PushOutcome, Unique, UniqueUntil};
        let driver = target.driver().await;
        let now = SystemClock.now();
        let mut old = job("default", 0);
        old.dispatched_at = now - 10_000;
        old.available_at = old.dispatched_at;
        old.unique = Some(Unique::new("old", UniqueUntil::Period(1_000)));
        let mut live = job("default", 1);
        live.unique = Some(Unique::new("live", UniqueUntil::Period(3_600_000)));
        let mut elsewhere = job("other", 2);
        elsewhere.dispatched_at = now - 10_000;
        elsewhere.available_at = elsewhere.dispatched_at;
        elsewhere.unique = Some(Unique::new("old", UniqueUntil::Period(1_000)));
        let outcomes = driver.push(vec![old, live.clone(), elsewhere]).await.expect("push");
        assert_eq!(outcomes, [PushOutcome::Stored, PushOutcome::Stored, PushOutcome::Stored]);
        let keys = "SELECT COUNT(*) FROM jobs_unique";
        assert_eq!(target.count(keys).await, 3);
        driver.recover(&["default".to_owned()], SystemClock.now()).await.expect("recover");
        // The expired key of the queue recovered is gone; the other queue's waits for its own.
        assert_eq!(target.count(keys).await, 2);
        assert_eq!(
            target
                .count("SELECT COUNT(*) FROM jobs_unique WHERE queue = 'default' AND unique_key = 'live'")
                .await,
            1
        );
        let mut again = job("default", 3);
        again.unique = Some(Unique::new("old", UniqueUntil::Period(1_000)));
        let mut refused = job("default", 4);
        refused.unique = Some(Unique::new("live", UniqueUntil::Finished));
        assert_eq!(
            driver.push(vec![again, refused]).await.expect("push"),
            [PushOutcome::Stored, PushOutcome::Duplicate { id: live.id.clone() }]
        );
    }

    fn job(queue: &str, tag: u64) -> NewJob {
        let mut job = NewJob::new(
            orcs_core::new_job_id(),
            "PlainJob",
            queue,
            format!("{{\"tag\":{tag}}}"),
            SystemClock.now(),
        );
        job.max_retries = 3;
        job.retry_delay_ms = 1000;
        job
    }

    fn request(queues: &[String], max: usize) -> ClaimRequest<'_> {
        ClaimRequest::new(queues, max, SystemClock.now())
    }

    /// Workers in separate processes drain one queue together: every job runs once, no
    /// "database is locked", and `processed` is exact.
    async fn drivers_share_one_queue(target: Target) {
        let first = target.driver().await;
        first.push((0..400).map(|i| job("default", i)).collect()).await.expect("push");
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let driver = target.driver().await;
            workers.spawn(async move {
                let queues = vec!["default".to_owned()];
                let mut done = Vec::new();
                loop {
                    let claim = driver.claim(&request(&queues, 8)).await.expect("claim");
                    if claim.jobs.is_empty() {
                        return done;
                    }
                    for reserved in claim.jobs {
                        driver
                            .settle_one(Settle::complete(reserved.lease), SystemClock.now())
                            .await
                            .expect("complete");
                        done.push(reserved.record.id);
                    }
                }
            });
        }
        let mut seen = HashSet::new();
        while let Some(done) = workers.join_next().await {
            for id in done.expect("worker") {
                assert!(seen.insert(id), "a job ran twice");
            }
        }
        assert_eq!(seen.len(), 400);
        let stats = first.stats("default", SystemClock.now()).await.expect("stats");
        assert_eq!((stats.pending, stats.reserved, stats.processed), (0, 0, 400));
    }

    /// A job dispatched by another process wakes an idle worker: at once through NOTIFY on
    /// PostgreSQL, within the 50 ms poll on SQLite.
    async fn dispatch_in_another_process_wakes_a_waiting_worker(target: Target, limit_ms: u128) {
        let waiting = target.driver().await;
        let dispatcher = target.driver().await;
        let queues = vec!["default".to_owned()];
        // A first wait opens the waiter's listener (a new connection, which took over 600 ms once
        // under CI's load): the timing below is of the wake-up, not of connecting.
        let opened = waiting.wait(&queues, SystemClock.now(), Duration::from_millis(100)).await;
        opened.expect("first wait");
        let waiter = tokio::spawn(async move {
            waiting.wait(&queues, SystemClock.now(), Duration::from_secs(10)).await.expect("wait");
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = Instant::now();
        dispatcher.push(vec![job("default", 0)]).await.expect("push");
        let woke = waiter.await.expect("waiter");
        let took = woke.saturating_duration_since(sent).as_millis();
        assert!(took <= limit_ms, "the waiting worker woke {took} ms after the dispatch");
    }

    /// Limits hold across drivers claiming at once (separate connections, as separate
    /// processes): the claims of a limited queue take turns inside the backend.
    async fn limits_hold_across_concurrent_drivers(target: Target) {
        let target = Arc::new(target);
        let admin = target.driver().await;
        let now = SystemClock.now();
        admin.push((0..40).map(|i| job("capped", i)).collect()).await.expect("push");
        admin.push((0..40).map(|i| job("metered", i)).collect()).await.expect("push");
        admin.set_limits("capped", &QueueLimits::none().concurrency(3)).await.expect("limits");
        admin
            .set_limits("metered", &QueueLimits::none().rate(RateLimit::new(5, 60_000)))
            .await
            .expect("limits");
        let mut claims = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let target = Arc::clone(&target);
            claims.spawn(async move {
                let driver = target.driver().await;
                let queues = vec!["capped".to_owned(), "metered".to_owned()];
                let mut got = Vec::new();
                for _ in 0..5 {
                    let claim =
                        driver.claim(&ClaimRequest::new(&queues, 4, now)).await.expect("claim");
                    got.extend(claim.jobs.into_iter().map(|r| r.lease.queue));
                }
                got
            });
        }
        let taken: Vec<String> = claims.join_all().await.into_iter().flatten().collect();
        let of = |q: &str| taken.iter().filter(|t| t.as_str() == q).count();
        assert_eq!((of("capped"), of("metered")), (3, 5), "{taken:?}");
        let stats = admin.stats("capped", now).await.expect("stats");
        assert_eq!(stats.limits, QueueLimits::none().concurrency(3));
        // Blocked by the rate: the claim says when the window reopens.
        let queues = vec!["metered".to_owned()];
        let claim = admin.claim(&ClaimRequest::new(&queues, 1, now + 1)).await.expect("claim");
        assert!(claim.jobs.is_empty());
        assert_eq!(claim.next_due, Some(now + 60_000));
    }

    /// `touch` stores progress and reports cancel requests for current leases only.
    async fn touch_checks_the_token(target: Target) {
        let driver = target.driver().await;
        driver.push(vec![job("default", 0), job("default", 1)]).await.expect("push");
        let queues = vec!["default".to_owned()];
        let claim = driver.claim(&request(&queues, 2)).await.expect("claim");
        let (a, b) = (claim.jobs[0].lease.clone(), claim.jobs[1].lease.clone());
        let mut stale = b.clone();
        stale.token.push('x');
        let now = SystemClock.now();
        assert_eq!(
            driver.cancel(&a.id, now).await.expect("cancel"),
            orcs_core::CancelOutcome::Requested
        );
        driver.cancel(&b.id, now).await.expect("cancel");
        let touches = vec![
            Touch::new(a.clone(), Some("{\"done\":1}".to_owned())),
            Touch::new(stale, Some("{\"done\":2}".to_owned())),
        ];
        assert_eq!(driver.touch(&touches, now).await.expect("touch"), vec![a.id.clone()]);
        let info = driver.get(&a.id, now).await.expect("get").expect("a");
        assert_eq!(info.progress.as_deref(), Some("{\"done\":1}"));
        assert!(info.cancel_requested);
        let info = driver.get(&b.id, now).await.expect("get").expect("b");
        assert_eq!(info.progress, None, "a stale touch stores nothing");
    }

    /// A row that cannot be read (here: a negative attempt count) goes to the failed set with
    /// the reason; the job behind it is claimed normally.
    async fn unreadable_row_goes_to_the_failed_set(target: Target) {
        let driver = target.driver().await;
        let bad = job("default", 0);
        let good = job("default", 1);
        let (bad_id, good_id) = (bad.id.clone(), good.id.clone());
        driver.push(vec![bad, good]).await.expect("push");
        target.execute(&format!("UPDATE jobs SET attempts = -5 WHERE id = '{bad_id}'")).await;
        let queues = vec!["default".to_owned()];
        let claim = driver.claim(&request(&queues, 10)).await.expect("claim");
        let ids: Vec<&str> = claim.jobs.iter().map(|r| r.record.id.as_str()).collect();
        assert_eq!(ids, [good_id.as_str()]);
        let failed = driver.failed(&FailedQuery::new(10)).await.expect("failed");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].id, bad_id);
        assert!(
            failed[0].error.starts_with("unreadable job record: column attempts holds -4"),
            "{}",
            failed[0].error
        );
        let stats = driver.stats("default", SystemClock.now()).await.expect("stats");
        assert_eq!((stats.failed, stats.failed_total, stats.reserved), (1, 1, 1));
    }

    /// Workers starting together on a new database all set it up without tripping over each
    /// other, and jobs survive every driver going away.
    async fn setup_is_concurrent_and_jobs_persist(target: Target) {
        let target = Arc::new(target);
        let mut starting = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let target = Arc::clone(&target);
            starting.spawn(async move { target.driver().await });
        }
        let drivers: Vec<DatabaseDriver> =
            starting.join_all().await.into_iter().collect::<Vec<_>>();
        drivers[0].push((0..5).map(|i| job("mail", i)).collect()).await.expect("push");
        drop(drivers);
        let again = target.driver().await;
        let stats = again.stats("mail", SystemClock.now()).await.expect("stats");
        assert_eq!(stats.pending, 5, "the jobs outlived every driver");
        assert_eq!(again.queues().await.expect("queues"), ["mail"]);
    }

    /// The previous release's tables, as it created them (no migrations table).
    fn legacy_schema(postgres: bool) -> Vec<String> {
        let (text_c, int) =
            if postgres { ("TEXT COLLATE \"C\"", "BIGINT") } else { ("TEXT", "INTEGER") };
        let seq = if postgres {
            "seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        } else {
            "seq INTEGER PRIMARY KEY"
        };
        vec![
            format!(
                "CREATE TABLE jobs (id {text_c} NOT NULL PRIMARY KEY, queue {text_c} NOT NULL, \
                 name TEXT NOT NULL, payload TEXT NOT NULL, priority INTEGER NOT NULL, \
                 attempts {int} NOT NULL DEFAULT 0, max_retries {int} NOT NULL, \
                 retry_delay_ms {int} NOT NULL, timeout_ms {int}, dispatched_at {int} NOT NULL, \
                 available_at {int} NOT NULL, reserved_until {int}, token TEXT, last_error TEXT)"
            ),
            "CREATE INDEX jobs_ready ON jobs (queue, priority DESC, id) WHERE token IS NULL"
                .to_owned(),
            "CREATE INDEX jobs_due ON jobs (queue, available_at) WHERE reserved_until IS NULL"
                .to_owned(),
            "CREATE INDEX jobs_leased ON jobs (queue, reserved_until) \
             WHERE reserved_until IS NOT NULL"
                .to_owned(),
            format!(
                "CREATE TABLE failed_jobs ({seq}, id {text_c} NOT NULL UNIQUE, \
                 queue {text_c} NOT NULL, name TEXT NOT NULL, payload TEXT NOT NULL, \
                 priority INTEGER NOT NULL, attempts {int} NOT NULL, max_retries {int} NOT NULL, \
                 retry_delay_ms {int} NOT NULL, timeout_ms {int}, dispatched_at {int} NOT NULL, \
                 error TEXT NOT NULL, failed_at {int} NOT NULL)"
            ),
            format!(
                "CREATE TABLE job_counters (queue {text_c} NOT NULL PRIMARY KEY, \
                 processed {int} NOT NULL DEFAULT 0, failed_total {int} NOT NULL DEFAULT 0)"
            ),
        ]
    }

    /// A database made by the previous release (tables, no migrations table) is upgraded in
    /// place: its ready, delayed and running jobs keep their states.
    async fn previous_release_tables_are_upgraded(target: Target) {
        let postgres = matches!(target, Target::Postgres(_));
        for statement in legacy_schema(postgres) {
            target.execute(&statement).await;
        }
        let now = SystemClock.now();
        let insert = "INSERT INTO jobs (id, queue, name, payload, priority, attempts, \
                      max_retries, retry_delay_ms, dispatched_at, available_at, reserved_until, \
                      token) VALUES ";
        target
            .execute(&format!(
                "{insert} ('01J00000000000000000000001', 'mail', 'PlainJob', '{{}}', 0, 0, 3, \
                 1000, {now}, {now}, NULL, NULL), \
                 ('01J00000000000000000000002', 'mail', 'PlainJob', '{{}}', 9, 0, 3, 1000, \
                 {now}, {}, NULL, NULL), \
                 ('01J00000000000000000000003', 'mail', 'PlainJob', '{{}}', 0, 1, 3, 1000, \
                 {now}, {now}, {}, 'tok')",
                now + 3_600_000,
                now + 60_000
            ))
            .await;
        let driver = target.driver().await;
        let stats = driver.stats("mail", now).await.expect("stats");
        assert_eq!((stats.pending, stats.delayed, stats.reserved), (1, 1, 1));
        let queues = vec!["mail".to_owned()];
        let claim = driver.claim(&ClaimRequest::new(&queues, 10, now)).await.expect("claim");
        let ids: Vec<&str> = claim.jobs.iter().map(|r| r.record.id.as_str()).collect();
        assert_eq!(ids, ["01J00000000000000000000001"], "the delayed job still waits");
        assert_eq!(claim.next_due, Some(now + 3_600_000));
        // The upgrade is recorded: a second driver finds nothing to do.
        drop(target.driver().await);
        assert_eq!(
            migration_versions(&target).await,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
        );
    }

    /// The versions recorded in the migrations table, each once.
    async fn migration_versions(target: &Target) -> Vec<i64> {
        target.integers("SELECT version FROM jobs_migrations ORDER BY version").await
    }

    /// Tables at a version this build does not know, or a `jobs` table that is not orcs's, are
    /// refused with a version error instead of being used or altered.
    async fn unknown_storage_is_refused(target: Target, foreign: Target) {
        drop(target.driver().await);
        target.execute("INSERT INTO jobs_migrations (version, applied_at) VALUES (99, 0)").await;
        match DatabaseDriver::connect(&target.url()).await {
            Err(Error::Version { message, .. }) => {
                assert!(message.contains("99") && message.contains("newer"), "{message}");
            }
            other => panic!("expected a version error, got {other:?}"),
        }
        // Laravel's `jobs` table: the same name, other columns (issue 15).
        foreign
            .execute(
                "CREATE TABLE jobs (id BIGINT PRIMARY KEY, queue VARCHAR(255) NOT NULL, \
                 payload TEXT NOT NULL, attempts SMALLINT NOT NULL, reserved_at INTEGER, \
                 available_at INTEGER NOT NULL, created_at INTEGER NOT NULL)",
            )
            .await;
        match DatabaseDriver::connect(&foreign.url()).await {
            Err(Error::Version { message, .. }) => {
                for part in [
                    "\"jobs\" already exists with another shape",
                    "reserved_at",
                    "DatabaseConfig::with_jobs_table",
                    "[database] table in config/queue.toml",
                ] {
                    assert!(message.contains(part), "{part:?} in {message}");
                }
                // No server internals (PostgreSQL's errors name a source line).
                assert!(!message.contains(" at line "), "{message}");
            }
            other => panic!("expected a version error, got {other:?}"),
        }
        // Nothing was changed: a driver on other tables of the same database works, and the
        // foreign table has no orcs columns.
        let driver = DatabaseDriver::connect_with(
            DatabaseConfig::new(foreign.url())
                .with_jobs_table("orcs_jobs")
                .with_failed_table("orcs_failed_jobs")
                .with_counters_table("orcs_job_counters"),
        )
        .await
        .expect("other table names work beside the foreign table");
        driver.push(vec![job("default", 0)]).await.expect("push");
        drop(driver);
        // Laravel's failed_jobs table too: its own name and remedy.
        let other = match &foreign {
            Target::Sqlite(_) => Target::sqlite(),
            Target::Postgres(_) => Target::postgres().await.expect("PostgreSQL"),
        };
        other
            .execute(
                "CREATE TABLE failed_jobs (id BIGINT PRIMARY KEY, uuid VARCHAR(255) NOT NULL, \
                 connection TEXT NOT NULL, queue TEXT NOT NULL, payload TEXT NOT NULL, \
                 exception TEXT NOT NULL, failed_at TIMESTAMP)",
            )
            .await;
        match DatabaseDriver::connect(&other.url()).await {
            Err(Error::Version { message, .. }) => {
                assert!(message.contains("\"failed_jobs\" already exists"), "{message}");
                assert!(message.contains("with_failed_table"), "{message}");
            }
            other => panic!("expected a version error, got {other:?}"),
        }
    }

    /// A pushed job whose id is in the failed set is a duplicate and takes no unique key: the
    /// next job of the push with that key takes it, and a push of that id alone takes nothing
    /// (on PostgreSQL the failed-set look and the key upsert are then one statement).
    async fn a_failed_id_takes_no_key(target: Target) {
        use orcs_core::{PushOutcome, Unique, UniqueUntil};
        let driver = target.driver().await;
        let failed = job("default", 0);
        driver.push(vec![failed.clone()]).await.expect("push");
        let queues = vec!["default".to_owned()];
        let claim = driver.claim(&request(&queues, 1)).await.expect("claim");
        let lease = claim.jobs[0].lease.clone();
        driver.settle_one(Settle::fail(lease, "boom"), SystemClock.now()).await.expect("fail");
        let mut again = failed.clone();
        again.unique = Some(Unique::new("k", UniqueUntil::Finished));
        let mut next = job("default", 1);
        next.unique = again.unique.clone();
        let mut third = job("default", 2);
        third.unique = again.unique.clone();
        let outcomes = driver.push(vec![again, next.clone(), third]).await.expect("push with keys");
        assert_eq!(
            outcomes,
            [
                PushOutcome::Duplicate { id: failed.id.clone() },
                PushOutcome::Stored,
                PushOutcome::Duplicate { id: next.id.clone() }
            ]
        );
        let mut alone = failed.clone();
        alone.unique = Some(Unique::new("alone", UniqueUntil::Finished));
        assert_eq!(
            driver.push(vec![alone]).await.expect("push"),
            [PushOutcome::Duplicate { id: failed.id.clone() }]
        );
        let mut free = job("default", 3);
        free.unique = Some(Unique::new("alone", UniqueUntil::Finished));
        assert_eq!(driver.push(vec![free]).await.expect("push"), [PushOutcome::Stored]);
        let info = driver.get(&next.id, SystemClock.now()).await.expect("get").expect("next");
        assert_eq!(info.job.unique.map(|u| u.key), Some("k".to_owned()));
        let stats = driver.stats("default", SystemClock.now()).await.expect("stats");
        assert_eq!((stats.pending, stats.failed), (2, 1));
    }

    /// Two jobs tables in one database share the default failed-jobs table: the second table's
    /// migrations do not add that table's columns again, and both fail jobs into it.
    async fn two_jobs_tables_share_the_failed_table(target: Target) {
        let mut drivers = Vec::new();
        for table in ["first_jobs", "second_jobs"] {
            let driver = DatabaseDriver::connect_with(
                DatabaseConfig::new(target.url()).with_jobs_table(table),
            )
            .await
            .unwrap_or_else(|e| panic!("a driver on {table} beside the other: {e}"));
            drivers.push(driver);
        }
        let now = SystemClock.now();
        for (i, driver) in drivers.iter().enumerate() {
            driver.push(vec![job("default", i as u64)]).await.expect("push");
            let queues = vec!["default".to_owned()];
            let claim = driver.claim(&ClaimRequest::new(&queues, 1, now)).await.expect("claim");
            let lease = claim.jobs[0].lease.clone();
            driver.settle_one(Settle::fail(lease, "boom"), now).await.expect("fail");
        }
        let failed = drivers[0].failed(&FailedQuery::new(10)).await.expect("failed");
        assert_eq!(failed.len(), 2, "both tables' failures are in the shared table");
    }

    /// Children of one batch end at once on several drivers (separate connections, as
    /// separate processes), in settle calls mixed with jobs outside the batch: every end is
    /// counted once (no lost update of the batch row), and `then` and `finally` run once.
    async fn children_ending_at_once_are_counted_once(target: Target) {
        let admin = target.driver().await;
        let now = SystemClock.now();
        let id = orcs_core::new_job_id();
        let mut batch = NewBatch::new(id.clone(), now);
        batch.then = Some(job("default", 900));
        batch.finally = Some(job("default", 901));
        let children: Vec<NewJob> = (0..48).map(|i| job("default", i)).collect();
        admin.push_batch(batch, children).await.expect("push_batch");
        admin.push((0..48).map(|i| job("default", 100 + i)).collect()).await.expect("push");
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let driver = target.driver().await;
            workers.spawn(async move {
                let queues = vec!["default".to_owned()];
                let mut ended = 0;
                loop {
                    let claim = driver.claim(&request(&queues, 6)).await.expect("claim");
                    if claim.jobs.is_empty() {
                        return ended;
                    }
                    let settles: Vec<Settle> =
                        claim.jobs.iter().map(|r| Settle::complete(r.lease.clone())).collect();
                    for result in driver.settle(&settles, SystemClock.now()).await {
                        result.expect("complete");
                    }
                    ended += settles.len();
                }
            });
        }
        let ended: usize = workers.join_all().await.into_iter().sum();
        assert_eq!(ended, 98, "48 children, 48 other jobs, then and finally");
        let info = admin.batch(&id).await.expect("batch").expect("kept");
        assert_eq!((info.total, info.pending, info.processed), (48, 0, 48));
        let states = (info.then.map(|c| c.state), info.finally.map(|c| c.state));
        assert_eq!(states, (Some(CallbackState::Dispatched), Some(CallbackState::Dispatched)));
        let stats = admin.stats("default", SystemClock.now()).await.expect("stats");
        assert_eq!((stats.pending, stats.reserved, stats.processed), (0, 0, 98));
    }

    /// A batch cancel races with its running children's ends (completions and failures, on
    /// several drivers): no deadlock, no end lost, and every child is counted once, however it
    /// ended. The waiting children are removed by whichever comes first: the cancel, or the
    /// first failure.
    async fn batch_cancel_races_with_children_ending(target: Target) {
        let admin = target.driver().await;
        let now = SystemClock.now();
        let id = orcs_core::new_job_id();
        let mut batch = NewBatch::new(id.clone(), now);
        batch.then = Some(job("callbacks", 7));
        batch.catch = Some(job("callbacks", 8));
        batch.finally = Some(job("callbacks", 9));
        admin
            .push_batch(batch, (0..60).map(|i| job("default", i)).collect())
            .await
            .expect("push_batch");
        let queues = vec!["default".to_owned()];
        // Every driver takes its children before any ends, so that thirty wait.
        let mut held = Vec::new();
        for _ in 0..3 {
            let driver = target.driver().await;
            let jobs = driver.claim(&request(&queues, 10)).await.expect("claim").jobs;
            assert_eq!(jobs.len(), 10);
            held.push((driver, jobs));
        }
        let mut ends = tokio::task::JoinSet::new();
        for (worker, (driver, held)) in held.into_iter().enumerate() {
            ends.spawn(async move {
                let settles: Vec<Settle> = held
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        if (i + worker) % 4 == 0 {
                            Settle::fail(r.lease.clone(), "boom")
                        } else {
                            Settle::complete(r.lease.clone())
                        }
                    })
                    .collect();
                let mut results = driver.settle(&settles[..5], SystemClock.now()).await;
                results.extend(driver.settle(&settles[5..], SystemClock.now()).await);
                results
            });
        }
        let canceller = target.driver().await;
        let cancel_id = id.clone();
        let cancel =
            tokio::spawn(
                async move { canceller.cancel_batch(&cancel_id, SystemClock.now()).await },
            );
        for results in ends.join_all().await {
            for result in results {
                result.expect("every end is recorded");
            }
        }
        cancel.await.expect("the cancel's task").expect("cancel_batch");
        let info = admin.batch(&id).await.expect("batch").expect("kept");
        assert_eq!((info.total, info.pending, info.cancelled), (60, 0, 30), "{info:?}");
        assert_eq!(info.processed + info.failed, 30, "{info:?}");
        assert!(info.failed > 0 && info.cancelled_at.is_some() && info.finished_at.is_some());
        let states = (
            info.then.map(|c| c.state),
            info.catch.map(|c| c.state),
            info.finally.map(|c| c.state),
        );
        let (dispatched, skipped) = (CallbackState::Dispatched, CallbackState::Skipped);
        assert_eq!(states, (Some(skipped), Some(dispatched), Some(dispatched)));
        let stats = admin.stats("callbacks", SystemClock.now()).await.expect("stats");
        assert_eq!(stats.pending, 2, "catch and finally, once each");
        let stats = admin.stats("default", SystemClock.now()).await.expect("stats");
        assert_eq!((stats.pending, stats.delayed, stats.reserved, stats.cancelled), (0, 0, 0, 30));
    }

    on_both!(
        children_ending_at_once_are_counted_once,
        batch_cancel_races_with_children_ending,
        two_jobs_tables_share_the_failed_table,
        a_failed_id_takes_no_key,
        limits_hold_across_concurrent_drivers,
        touch_checks_the_token,
        previous_release_tables_are_upgraded,
        recovery_sweeps_expired_period_keys,
    );

    #[test]
    fn sqlite_unknown_storage_is_refused() {
        orcs_tests::run(unknown_storage_is_refused(Target::sqlite(), Target::sqlite()));
    }

    #[test]
    fn postgres_unknown_storage_is_refused() {
        orcs_tests::run(async {
            let Some(target) = Target::postgres().await else { return };
            let Some(foreign) = Target::postgres().await else { return };
            unknown_storage_is_refused(target, foreign).await;
        });
    }

    /// PostgreSQL: a claim of a concurrency-limited queue leaves the claiming worker's settling
    /// jobs out of the count (by token), so a worker whose settles are still being written
    /// refills its slots at once; another worker's claim still counts them.
    #[test]
    fn postgres_settling_jobs_leave_the_limit_count() {
        orcs_tests::run(async {
            let Some(target) = Target::postgres().await else { return };
            let driver = target.driver().await;
            driver.push((0..6).map(|i| job("capped", i)).collect()).await.expect("push");
            driver.set_limits("capped", &QueueLimits::none().concurrency(2)).await.expect("limit");
            let queues = vec!["capped".to_owned()];
            let first = driver.claim(&request(&queues, 4)).await.expect("claim").jobs;
            assert_eq!(first.len(), 2, "the limit");
            let settling: Vec<String> = first.iter().map(|r| r.lease.token.clone()).collect();
            assert!(driver.claim(&request(&queues, 4)).await.expect("claim").jobs.is_empty());
            let mut req = request(&queues, 4);
            req.settling = Some(&settling);
            let refill = driver.claim(&req).await.expect("claim").jobs;
            assert_eq!(refill.len(), 2, "both settling jobs' slots");
            for reserved in first {
                driver
                    .settle_one(Settle::complete(reserved.lease), SystemClock.now())
                    .await
                    .expect("complete");
            }
            assert!(
                driver.claim(&request(&queues, 4)).await.expect("claim").jobs.is_empty(),
                "the refill holds the limit"
            );
        });
    }

    /// With a rate of 1 per second on `queue` and its lock held by another connection until
    /// `release` lets it go (about 400 ms), a claim sent before the lock is free (with the
    /// worker's clock, as a worker sends it) takes a job, and the next claim's window runs from
    /// the time the claim took effect, not from the `now` it was sent with.
    async fn a_claim_after_a_held_lock_logs_its_start_late<T>(
        driver: &DatabaseDriver,
        queue: &str,
        release: tokio::task::JoinHandle<T>,
    ) {
        let queues = vec![queue.to_owned()];
        let sent = SystemClock.now();
        let mut req = ClaimRequest::new(&queues, 1, sent);
        req.clock = Some(&SystemClock);
        let first = driver.claim(&req).await.expect("claim");
        assert_eq!(first.jobs.len(), 1, "the window was empty");
        let waited = SystemClock.now() - sent;
        assert!(waited >= 380, "the claim waited for the lock: {waited} ms");
        drop(release.await.expect("the lock holder"));
        let next = driver.claim(&request(&queues, 1)).await.expect("claim");
        assert!(next.jobs.is_empty(), "one start per second");
        let due = next.next_due.expect("a rate-limited claim says when to come back");
        assert!(
            due >= sent + 1_380,
            "the window runs from the start after the wait ({waited} ms after `now`), not from \
             `now`: due {} ms after `now`",
            due - sent
        );
    }

    /// `queue` on a fresh driver of `target` with two jobs and a rate of 1 per second.
    async fn rated_queue(target: &Target, queue: &str) -> DatabaseDriver {
        let driver = target.driver().await;
        driver.push((0..2).map(|i| job(queue, i)).collect()).await.expect("push");
        driver
            .set_limits(queue, &QueueLimits::none().rate(RateLimit::new(1, 1_000)))
            .await
            .expect("limit");
        driver
    }

    /// SQLite: a claim of a rate-limited queue that waited for the write lock (held here by
    /// another connection, as another process's write would hold it) logs its start when it got
    /// the lock: the driver reads the worker's clock after `BEGIN IMMEDIATE`. Logged at the `now`
    /// it was sent with, the window would have reopened 400 ms early.
    #[test]
    fn sqlite_a_claim_that_waited_for_the_write_lock_logs_its_start_late() {
        orcs_tests::run(async {
            let target = Target::sqlite();
            let driver = rated_queue(&target, "rated").await;
            let mut locker = sqlx::SqliteConnection::connect(&target.url()).await.expect("open");
            sqlx::query("BEGIN IMMEDIATE").execute(&mut locker).await.expect("take the lock");
            let release = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                sqlx::query("COMMIT").execute(&mut locker).await.expect("release the lock");
                locker
            });
            a_claim_after_a_held_lock_logs_its_start_late(&driver, "rated", release).await;
        });
    }

    /// PostgreSQL: a claim of a rate-limited queue that waited for the queue's advisory lock
    /// (held here by another connection, as a claim of another worker would hold it) adds the
    /// wait to its time, in the claim function. Logged at the `now` it was sent with, the
    /// window would have reopened 400 ms early.
    #[test]
    fn postgres_a_claim_that_waited_for_the_queue_lock_logs_its_start_late() {
        orcs_tests::run(async {
            let Some(target) = Target::postgres().await else { return };
            let Target::Postgres(url) = &target else { unreachable!() };
            // Advisory locks span the database: a queue name no other test uses.
            let queue = format!("rated-{}", orcs_core::new_job_id());
            let driver = rated_queue(&target, &queue).await;
            let mut locker = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query("SELECT pg_advisory_lock(hashtextextended('jobs:' || $1, 0))")
                .bind(&queue)
                .execute(&mut locker)
                .await
                .expect("take the queue's lock");
            let release = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                sqlx::query("SELECT pg_advisory_unlock_all()")
                    .execute(&mut locker)
                    .await
                    .expect("release the lock");
                locker
            });
            a_claim_after_a_held_lock_logs_its_start_late(&driver, &queue, release).await;
        });
    }

    /// PostgreSQL: a keyed push whose insert met the key's holder, and whose holder then ended
    /// before the push asked who holds the key, is neither stored nor refused by that first
    /// round: the push inserts it again in its transaction and stores it. The test holds the
    /// push between its insert and its next statement (a lock on the failed table, which that
    /// statement reads) while the holder completes.
    #[test]
    fn postgres_a_push_whose_key_holder_ends_meanwhile_is_stored() {
        orcs_tests::run(async {
            use orcs_core::{PushOutcome, Unique, UniqueUntil};
            use sqlx::Connection as _;
            let Some(target) = Target::postgres().await else { return };
            let Target::Postgres(url) = &target else { unreachable!() };
            let driver = target.driver().await;
            let mut holder = job("default", 0);
            holder.unique = Some(Unique::new("k", UniqueUntil::Finished));
            driver.push(vec![holder.clone()]).await.expect("push the holder");
            let queues = vec!["default".to_owned()];
            let claimed = driver.claim(&request(&queues, 1)).await.expect("claim").jobs.remove(0);
            assert_eq!(claimed.record.id, holder.id);

            let mut locker = sqlx::PgConnection::connect(url).await.expect("connect");
            let mut lock = locker.begin().await.expect("begin");
            sqlx::query("LOCK TABLE failed_jobs IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *lock)
                .await
                .expect("lock the failed table");
            let mut next = job("default", 1);
            next.unique = holder.unique.clone();
            let pushing = {
                let (driver, next) = (driver.clone(), next.clone());
                tokio::spawn(async move { driver.push(vec![next]).await })
            };
            // The push's insert is done (the key held, the job left out) once its next
            // statement waits for the lock.
            let mut watcher = sqlx::PgConnection::connect(url).await.expect("connect");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pg_locks WHERE relation = 'failed_jobs'::regclass \
                     AND NOT granted",
                )
                .fetch_one(&mut watcher)
                .await
                .expect("read the locks");
                if waiting > 0 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the push never waited");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            driver
                .settle_one(Settle::complete(claimed.lease), SystemClock.now())
                .await
                .expect("the holder completes meanwhile");
            lock.commit().await.expect("release the failed table");
            let outcome = tokio::time::timeout(Duration::from_secs(10), pushing)
                .await
                .expect("the push ends")
                .expect("the push task")
                .expect("the push");
            assert_eq!(outcome, [PushOutcome::Stored]);
            let info = driver.get(&next.id, SystemClock.now()).await.expect("get").expect("stored");
            assert_eq!(info.job.unique.map(|u| u.key), Some("k".to_owned()));
            let mut third = job("default", 2);
            third.unique = holder.unique.clone();
            assert_eq!(
                driver.push(vec![third]).await.expect("push"),
                [PushOutcome::Duplicate { id: next.id.clone() }],
                "the job pushed again holds the key"
            );
        });
    }

    /// PostgreSQL: two children of one batch completing at once wait for the batch row (here
    /// held by another transaction) and then take turns on it: both are counted, the batch
    /// finishes once, and `then` is stored once.
    #[test]
    fn postgres_children_ending_at_once_take_turns_on_the_batch_row() {
        orcs_tests::run(async {
            use sqlx::Connection as _;
            let Some(target) = Target::postgres().await else { return };
            let Target::Postgres(url) = &target else { unreachable!() };
            let (one, two) = (target.driver().await, target.driver().await);
            let now = SystemClock.now();
            let id = orcs_core::new_job_id();
            let mut batch = NewBatch::new(id.clone(), now);
            batch.then = Some(job("callbacks", 9));
            let children = vec![job("default", 1), job("default", 2)];
            one.push_batch(batch, children).await.expect("push_batch");
            let queues = vec!["default".to_owned()];
            let first = one.claim(&request(&queues, 1)).await.expect("claim").jobs.remove(0);
            let second = two.claim(&request(&queues, 1)).await.expect("claim").jobs.remove(0);
            let mut holder = sqlx::PgConnection::connect(url).await.expect("connect");
            let mut held = holder.begin().await.expect("begin");
            sqlx::query("SELECT id FROM jobs_batches WHERE id = $1 FOR UPDATE")
                .bind(&id)
                .fetch_one(&mut *held)
                .await
                .expect("lock the batch row");
            let ends = [(one.clone(), first), (two, second)].map(|(driver, reserved)| {
                tokio::spawn(async move {
                    driver.settle_one(Settle::complete(reserved.lease), SystemClock.now()).await
                })
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(ends.iter().all(|end| !end.is_finished()), "both ends wait for the batch row");
            held.commit().await.expect("release the row");
            for end in ends {
                end.await.expect("the end's task").expect("complete");
            }
            let info = one.batch(&id).await.expect("batch").expect("kept");
            assert_eq!((info.total, info.pending, info.processed), (2, 0, 2));
            assert!(info.finished_at.is_some());
            assert_eq!(info.then.map(|c| c.state), Some(CallbackState::Dispatched));
            let stats = one.stats("callbacks", SystemClock.now()).await.expect("stats");
            assert_eq!(stats.pending, 1, "then, once");
            let stats = one.stats("default", SystemClock.now()).await.expect("stats");
            assert_eq!((stats.reserved, stats.processed), (0, 2));
        });
    }

    /// Many drivers starting together on a fresh schema: every one connects, and each migration
    /// is recorded once.
    #[test]
    fn postgres_concurrent_setup_applies_each_migration_once() {
        orcs_tests::run(async {
            let Some(target) = Target::postgres().await else { return };
            let target = Arc::new(target);
            let mut starting = tokio::task::JoinSet::new();
            for _ in 0..12 {
                let target = Arc::clone(&target);
                starting.spawn(async move { DatabaseDriver::connect(&target.url()).await });
            }
            for started in starting.join_all().await {
                started.expect("every driver sets up");
            }
            assert_eq!(
                migration_versions(&target).await,
                [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
            );
        });
    }

    /// The wake-up is part of the write: a queue name too long for a `NOTIFY` payload still
    /// dispatches (stored once, reported Ok, listeners woken); before, the notification was sent
    /// after the commit and its failure reported a stored job as an error.
    #[test]
    fn postgres_notify_is_sent_with_the_write() {
        orcs_tests::run(async {
            use sqlx::Row;
            let Some(target) = Target::postgres().await else { return };
            let Target::Postgres(url) = &target else { unreachable!() };
            let driver = target.driver().await;
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            let schema: String = sqlx::query("SELECT current_schema()")
                .fetch_one(&mut conn)
                .await
                .expect("schema")
                .get(0);
            let mut channel = format!("orcs:{schema}.jobs");
            channel.truncate(63);
            let mut listener = sqlx::postgres::PgListener::connect(url).await.expect("listen");
            listener.listen(&channel).await.expect("listen");

            let queue = "q".repeat(9_000);
            let outcomes = driver.push(vec![job(&queue, 1)]).await.expect("push");
            assert_eq!(outcomes, [orcs_core::PushOutcome::Stored]);
            let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv())
                .await
                .expect("a notification within 5 s")
                .expect("a notification");
            assert!(
                queue.starts_with(heard.payload()),
                "the payload is the queue's name, cut short"
            );
            // Delivered on commit: the job is visible by the time anyone hears of it.
            let stored: i64 = sqlx::query("SELECT COUNT(*) FROM jobs")
                .fetch_one(&mut conn)
                .await
                .expect("count")
                .get(0);
            assert_eq!(stored, 1);
        });
    }

    /// Errors that repeat until someone acts (a missing table, a missing privilege) are
    /// permanent, so a worker reports them instead of retrying forever.
    #[test]
    fn postgres_schema_and_permission_errors_are_permanent() {
        orcs_tests::run(async {
            let Some(target) = Target::postgres().await else { return };
            let driver = target.driver().await;
            target.execute("DROP TABLE jobs CASCADE").await;
            match driver.stats("default", SystemClock.now()).await {
                Err(e @ Error::Backend { .. }) => {
                    assert!(!e.is_transient(), "an undefined table is permanent: {e}");
                }
                other => panic!("expected a backend error, got {other:?}"),
            }
            let Target::Postgres(url) = &target else { unreachable!() };
            let Some(rest) = url.strip_prefix("postgres://postgres@") else { return };
            target
                .execute(
                    "DO $$ BEGIN CREATE ROLE orcs_test_noperm LOGIN; \
                     EXCEPTION WHEN duplicate_object THEN NULL; END $$",
                )
                .await;
            // It may look at the schema, not at the tables in it.
            target
                .execute(
                    "DO $$ BEGIN EXECUTE format('GRANT USAGE ON SCHEMA %I TO orcs_test_noperm', \
                     current_schema()); END $$",
                )
                .await;
            let unprivileged = format!("postgres://orcs_test_noperm@{rest}");
            match DatabaseDriver::connect(&unprivileged).await {
                Err(e @ Error::Backend { .. }) => {
                    assert!(!e.is_transient(), "a missing privilege is permanent: {e}");
                    assert!(e.to_string().contains("permission denied"), "{e}");
                }
                other => panic!("expected a permission error, got {other:?}"),
            }
        });
    }

    on_both!(drivers_share_one_queue);

    /// One settle call ending children of two batches, a job outside batches and a stale lease
    /// (the children's plain completions are one statement and one count per batch): each
    /// batch counts each child once and stores `then` once, the stale lease is answered as lost
    /// and changes nothing, the unique keys of the completed jobs are free again, and the
    /// queue counters are exact.
    async fn one_settle_call_ends_children_of_several_batches(target: Target) {
        use orcs_core::{PushOutcome, Unique, UniqueUntil};
        let keyed = |mut job: NewJob, key: &str| {
            job.unique = Some(Unique::new(key, UniqueUntil::Finished));
            job
        };
        let driver = target.driver().await;
        let now = SystemClock.now();
        let mut ids = Vec::new();
        for (tag, size) in [(100, 3), (200, 2)] {
            let id = orcs_core::new_job_id();
            let mut batch = NewBatch::new(id.clone(), now);
            batch.then = Some(job("callbacks", tag));
            let children = (0..size)
                .map(|i| keyed(job("default", tag + 1 + i), &format!("child-{tag}-{i}")))
                .collect();
            driver.push_batch(batch, children).await.expect("push_batch");
            ids.push(id);
        }
        driver.push(vec![keyed(job("default", 1), "plain")]).await.expect("push");
        let queues = vec!["default".to_owned()];
        let held = driver.claim(&request(&queues, 10)).await.expect("claim").jobs;
        assert_eq!(held.len(), 6);
        let mut settles: Vec<Settle> =
            held.iter().map(|r| Settle::complete(r.lease.clone())).collect();
        let mut stale = held[0].lease.clone();
        stale.token.push_str("-stale");
        settles.insert(2, Settle::complete(stale));
        let results = driver.settle(&settles, SystemClock.now()).await;
        assert!(matches!(results[2], Err(Error::LeaseLost { .. })), "{:?}", results[2]);
        for (i, result) in results.iter().enumerate().filter(|(i, _)| *i != 2) {
            assert!(result.is_ok(), "settle {i}: {result:?}");
        }
        for (id, size) in ids.iter().zip([3, 2]) {
            let info = driver.batch(id).await.expect("batch").expect("kept");
            assert_eq!((info.total, info.pending, info.processed), (size, 0, size));
            assert_eq!(info.then.map(|c| c.state), Some(CallbackState::Dispatched));
        }
        let stats = driver.stats("callbacks", SystemClock.now()).await.expect("stats");
        assert_eq!(stats.pending, 2, "each batch's then, once");
        let stats = driver.stats("default", SystemClock.now()).await.expect("stats");
        assert_eq!((stats.pending, stats.reserved, stats.processed), (0, 0, 6));
        let again = vec![
            keyed(job("default", 2), "child-100-0"),
            keyed(job("default", 3), "child-200-1"),
            keyed(job("default", 4), "plain"),
        ];
        let outcomes = driver.push(again).await.expect("push with the freed keys");
        assert_eq!(outcomes, [PushOutcome::Stored, PushOutcome::Stored, PushOutcome::Stored]);
    }

    on_both!(one_settle_call_ends_children_of_several_batches);

    #[test]
    fn sqlite_dispatch_in_another_process_wakes_a_waiting_worker() {
        orcs_tests::run(dispatch_in_another_process_wakes_a_waiting_worker(Target::sqlite(), 120));
    }

    #[test]
    fn postgres_dispatch_in_another_process_wakes_a_waiting_worker() {
        orcs_tests::run(async {
            let Some(target) = Target::postgres().await else { return };
            dispatch_in_another_process_wakes_a_waiting_worker(target, 50).await;
        });
    }

    on_both!(unreadable_row_goes_to_the_failed_set, setup_is_concurrent_and_jobs_persist,);

    #[test]
    fn sqlite_creates_the_file_and_its_directory() {
        orcs_tests::run(async {
            let dir = sqlite_dir().join(unique_name("dir"));
            let path = dir.join("nested").join("queue.db");
            let driver = DatabaseDriver::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("open");
            assert!(path.exists(), "the file was created");
            assert_eq!(driver.backend_name(), "sqlite");
            drop(driver);
            let _ = std::fs::remove_dir_all(dir);
        });
    }

    /// A file the worker may not write to is reported as read-only, not as a connection
    /// problem (issue 15). Opened with `mode=ro`, as root ignores file permissions.
    #[test]
    fn sqlite_read_only_file_is_reported_as_such() {
        orcs_tests::run(async {
            let path = fresh_sqlite_path();
            drop(
                DatabaseDriver::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .expect("open"),
            );
            let text = config_error(
                DatabaseDriver::connect(&format!("sqlite://{}?mode=ro", path.display())).await,
            );
            assert!(
                text.contains("read-only") && text.contains(&path.display().to_string()),
                "{text}"
            );
        });
    }

    fn config_error(result: orcs_core::Result<DatabaseDriver>) -> String {
        match result {
            Err(e @ Error::Config { .. }) => {
                let Error::Config { key, .. } = &e else { unreachable!() };
                // The driver's own setting; the CLI adds the environment variable's name.
                assert_eq!(key, "the database URL");
                e.to_string()
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn bad_urls_are_configuration_errors_that_hide_the_password() {
        orcs_tests::run(async {
            let text = config_error(DatabaseDriver::connect("mysql://u:hunter2@h/db").await);
            assert!(text.contains("sqlite://") && text.contains("postgres://"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
            let text =
                config_error(DatabaseDriver::connect("postgres://u:hunter2@h:notaport/db").await);
            assert!(!text.contains("hunter2"), "{text}");
            let text = config_error(DatabaseDriver::connect("sqlite::memory:").await);
            assert!(text.contains("memory driver"), "{text}");
            assert!(!text.contains("QUEUE_DRIVER"), "{text}");
            config_error(DatabaseDriver::connect("localhost/db").await);
        });
    }
}
