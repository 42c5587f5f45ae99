//! Embedding the driver in an application (issue 10): a driver built on the application's own
//! sqlx pool, its tables in a schema of their own, and jobs dispatched inside the application's
//! transactions, on SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use orcs_core::{
    Admin, CallbackState, ClaimRequest, Clock, DispatchOptions, Driver, Error, Job, JobContext,
    JobError, JobState, ListRequest, NewBatch, NewJob, PushOutcome, Queue, Settle, SystemClock,
    Unique, UniqueUntil,
};
use orcs_database::{DatabaseConfig, DatabaseDriver};
use orcs_tests::services::{self, unique_name};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// The welcome mail of a new user: the typed job the application dispatches with its insert.
#[derive(Debug, Serialize, Deserialize)]
struct SendWelcome {
    user_id: i64,
}

impl Job for SendWelcome {
    const NAME: &'static str = "SendWelcome";
    const QUEUE: &'static str = "mail";

    async fn handle(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn keyed(key: &str) -> NewJob {
    let mut job = NewJob::new(orcs_core::new_job_id(), "Report", "mail", "{}", SystemClock.now());
    job.unique = Some(Unique::new(key, UniqueUntil::Finished));
    job
}

/// The one waiting job of `queue` claimed and completed through `driver`, the `processed`-th.
async fn run_one(driver: &DatabaseDriver, queue: &str, processed: u64) {
    let queues = vec![queue.to_owned()];
    let claim =
        driver.claim(&ClaimRequest::new(&queues, 10, SystemClock.now())).await.expect("claim");
    assert_eq!(claim.jobs.len(), 1, "the dispatched job is claimed");
    let lease = claim.jobs[0].lease.clone();
    driver.settle_one(Settle::complete(lease), SystemClock.now()).await.expect("complete");
    let stats = driver.stats(queue, SystemClock.now()).await.expect("stats");
    assert_eq!((stats.pending, stats.reserved, stats.processed), (0, 0, processed));
}

/// The application's half of the transactional cases, written once for both backends: its own
/// table of users, and how to insert into it and count it.
trait App {
    async fn count_users(&self) -> i64;
}

/// Rollback and commit inside the application's transaction, and what an idle worker sees.
macro_rules! transactional_cases {
    ($pool:expr, $driver:expr, $begin:expr, $insert_user:literal) => {{
        let pool = $pool;
        let driver: DatabaseDriver = $driver;
        let queue = Queue::new(driver.clone());
        let now = SystemClock.now();

        // Rolled back: no user, no job, and the unique key taken inside is free again.
        let mut tx = $begin(&pool).await;
        sqlx::query($insert_user).bind("ann@example.com").execute(&mut *tx).await.expect("user");
        let outcomes = driver.push_in(&mut tx, vec![keyed("report-1")]).await.expect("push_in");
        assert_eq!(outcomes, [PushOutcome::Stored]);
        tx.rollback().await.expect("rollback");
        assert_eq!(pool.count_users().await, 0);
        let stats = driver.stats("mail", now).await.expect("stats");
        assert_eq!(stats.pending, 0, "a rolled-back dispatch leaves no job");
        let again = keyed("report-1");
        assert_eq!(driver.push(vec![again]).await.expect("push"), [PushOutcome::Stored]);
        run_one(&driver, "mail", 1).await;

        // The same answers as `push`: a duplicate key names its holder, a duplicate id itself.
        let mut tx = $begin(&pool).await;
        let (first, second) = (keyed("report-2"), keyed("report-2"));
        let first_id = first.id.clone();
        let outcomes =
            driver.push_in(&mut tx, vec![first.clone(), second, first]).await.expect("push_in");
        assert_eq!(
            outcomes,
            [
                PushOutcome::Stored,
                PushOutcome::Duplicate { id: first_id.clone() },
                PushOutcome::Duplicate { id: first_id.clone() }
            ]
        );
        tx.commit().await.expect("commit");
        assert_eq!(
            driver.push(vec![keyed("report-2")]).await.expect("push"),
            [PushOutcome::Duplicate { id: first_id }],
            "the committed key is held"
        );
        run_one(&driver, "mail", 2).await;

        // Committed: the user and the welcome job together, and an idle worker wakes promptly,
        // not before the commit.
        let waiting = driver.clone();
        let waiter = tokio::spawn(async move {
            let queues = vec!["mail".to_owned()];
            waiting.wait(&queues, SystemClock.now(), Duration::from_secs(10)).await.expect("wait");
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut tx = $begin(&pool).await;
        let row = sqlx::query(concat!($insert_user, " RETURNING id"))
            .bind("bob@example.com")
            .fetch_one(&mut *tx)
            .await
            .expect("user");
        let user_id: i64 = row.get(0);
        let job = queue.prepare(&SendWelcome { user_id }, &DispatchOptions::new()).expect("job");
        let job_id = job.id.clone();
        assert_eq!(
            driver.push_in(&mut tx, vec![job]).await.expect("push_in"),
            [PushOutcome::Stored]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "the worker woke before the transaction committed");
        let committed = Instant::now();
        tx.commit().await.expect("commit");
        let woke = waiter.await.expect("waiter");
        let took = woke.saturating_duration_since(committed).as_millis();
        assert!(took <= 1000, "the idle worker woke {took} ms after the commit");
        assert_eq!(pool.count_users().await, 1);
        let info = driver.get(&job_id, SystemClock.now()).await.expect("get").expect("the job");
        assert_eq!(info.job.name, "SendWelcome");
        assert_eq!(info.job.payload, format!("{{\"user_id\":{user_id}}}"));
        run_one(&driver, "mail", 3).await;

        // A batch inside the application's transaction: all of it or nothing, as a push.
        let report = |tag: u64| {
            let payload = format!("{{\"tag\":{tag}}}");
            NewJob::new(orcs_core::new_job_id(), "Report", "mail", payload, SystemClock.now())
        };
        let mut batch = NewBatch::new(orcs_core::new_job_id(), SystemClock.now());
        batch.then = Some(report(9));
        let mut tx = $begin(&pool).await;
        let outcomes = driver
            .push_batch_in(&mut tx, batch.clone(), vec![report(1), report(2)])
            .await
            .expect("push_batch_in");
        assert_eq!(outcomes, [PushOutcome::Stored, PushOutcome::Stored]);
        tx.rollback().await.expect("rollback");
        assert!(driver.batch(&batch.id).await.expect("batch").is_none(), "rolled back: no batch");
        assert_eq!(driver.stats("mail", now).await.expect("stats").pending, 0, "and no child");
        let mut tx = $begin(&pool).await;
        driver
            .push_batch_in(&mut tx, batch.clone(), vec![report(1), report(2)])
            .await
            .expect("push_batch_in");
        assert!(
            driver.batch(&batch.id).await.expect("batch").is_none(),
            "invisible before the commit"
        );
        tx.commit().await.expect("commit");
        let info = driver.batch(&batch.id).await.expect("batch").expect("committed");
        assert_eq!((info.total, info.pending), (2, 2));
        // An id that exists is refused before anything is written: the transaction goes on.
        let mut tx = $begin(&pool).await;
        let refused = driver.push_batch_in(&mut tx, batch.clone(), vec![report(3)]).await;
        assert!(matches!(refused, Err(Error::Invalid { .. })), "{refused:?}");
        sqlx::query($insert_user).bind("cy@example.com").execute(&mut *tx).await.expect("user");
        tx.commit().await.expect("commit");
        assert_eq!(pool.count_users().await, 2);
        let listed = driver
            .list(&ListRequest::new("mail", JobState::Pending, 10), SystemClock.now())
            .await
            .expect("list");
        assert_eq!(listed.len(), 2, "the two children, not the refused one");
        let queues = vec!["mail".to_owned()];
        let claim =
            driver.claim(&ClaimRequest::new(&queues, 10, SystemClock.now())).await.expect("claim");
        let settles: Vec<Settle> =
            claim.jobs.iter().map(|r| Settle::complete(r.lease.clone())).collect();
        for result in driver.settle(&settles, SystemClock.now()).await {
            result.expect("complete");
        }
        let info = driver.batch(&batch.id).await.expect("batch").expect("kept");
        assert_eq!((info.pending, info.processed), (0, 2));
        assert_eq!(info.then.map(|then| then.state), Some(CallbackState::Dispatched));
        assert_eq!(driver.stats("mail", now).await.expect("stats").pending, 1, "then waits");
    }};
}

mod sqlite {
    use super::*;

    struct Pool(sqlx::SqlitePool);

    impl std::ops::Deref for Pool {
        type Target = sqlx::SqlitePool;
        fn deref(&self) -> &sqlx::SqlitePool {
            &self.0
        }
    }

    impl App for Pool {
        async fn count_users(&self) -> i64 {
            sqlx::query("SELECT COUNT(*) FROM users")
                .fetch_one(&self.0)
                .await
                .expect("count")
                .get(0)
        }
    }

    fn path() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join("orcs-database-tests");
        std::fs::create_dir_all(&dir).expect("the test directory");
        dir.join(format!("{}.db", unique_name("embed")))
    }

    /// The application's pool on a new file in WAL mode, with its own table of users.
    async fn app_pool() -> Pool {
        let options = SqliteConnectOptions::new()
            .filename(path())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new().connect_with(options).await.expect("the app's pool");
        sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
            .execute(&pool)
            .await
            .expect("users");
        Pool(pool)
    }

    async fn begin(pool: &Pool) -> sqlx::Transaction<'static, sqlx::Sqlite> {
        pool.0.begin_with("BEGIN IMMEDIATE").await.expect("begin")
    }

    #[test]
    fn driver_on_an_existing_pool_runs_a_job() {
        orcs_tests::run(async {
            let pool = app_pool().await;
            let config = DatabaseConfig::default().with_table_prefix("orcs_");
            let driver =
                DatabaseDriver::from_sqlite_pool(pool.0.clone(), config).await.expect("driver");
            driver.push(vec![keyed("k")]).await.expect("push");
            run_one(&driver, "mail", 1).await;
            let tables: Vec<String> = sqlx::query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'orcs\\_%' \
                 ESCAPE '\\' ORDER BY name",
            )
            .fetch_all(&pool.0)
            .await
            .expect("tables")
            .iter()
            .map(|row| row.get(0))
            .collect();
            assert_eq!(
                tables,
                [
                    "orcs_failed_jobs",
                    "orcs_job_counters",
                    "orcs_jobs",
                    "orcs_jobs_batches",
                    "orcs_jobs_migrations",
                    "orcs_jobs_queues",
                    "orcs_jobs_schedules",
                    "orcs_jobs_sizes",
                    "orcs_jobs_starts",
                    "orcs_jobs_throughput",
                    "orcs_jobs_unique",
                    "orcs_jobs_workers"
                ]
            );
        });
    }

    /// The driver does not switch the application's file to WAL; it says what to do. A schema
    /// is refused on SQLite.
    #[test]
    fn a_file_not_in_wal_mode_and_a_schema_are_refused() {
        orcs_tests::run(async {
            let options = SqliteConnectOptions::new()
                .filename(path())
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Delete);
            let pool = SqlitePoolOptions::new().connect_with(options).await.expect("pool");
            let err = DatabaseDriver::from_sqlite_pool(pool.clone(), DatabaseConfig::default())
                .await
                .expect_err("not WAL");
            let text = err.to_string();
            assert!(text.contains("WAL") && text.contains("journal_mode"), "{text}");
            let mode: String =
                sqlx::query("PRAGMA journal_mode").fetch_one(&pool).await.expect("mode").get(0);
            assert_eq!(mode, "delete", "the application's file is left as it was");
            let config = DatabaseConfig::default().with_schema("orcs");
            let err = DatabaseDriver::from_sqlite_pool(pool, config).await.expect_err("schema");
            assert!(matches!(err, Error::Invalid { .. }), "{err}");
        });
    }

    #[test]
    fn dispatch_inside_the_applications_transaction() {
        orcs_tests::run(async {
            let pool = app_pool().await;
            let driver =
                DatabaseDriver::from_sqlite_pool(pool.0.clone(), DatabaseConfig::default())
                    .await
                    .expect("driver");
            transactional_cases!(pool, driver, begin, "INSERT INTO users (email) VALUES ($1)");
        });
    }
}

mod postgres {
    use super::*;

    struct Pool {
        pool: sqlx::PgPool,
        schema: String,
    }

    impl std::ops::Deref for Pool {
        type Target = sqlx::PgPool;
        fn deref(&self) -> &sqlx::PgPool {
            &self.pool
        }
    }

    impl Pool {
        /// A driver on the application's pool, with its tables in the pool's schema.
        async fn driver(&self) -> DatabaseDriver {
            let config = DatabaseConfig::default().with_schema(&self.schema);
            DatabaseDriver::from_pg_pool(self.pool.clone(), config).await.expect("driver")
        }
    }

    impl App for Pool {
        async fn count_users(&self) -> i64 {
            let count = format!("SELECT COUNT(*) FROM \"{}\".users", self.schema);
            sqlx::query(sqlx::AssertSqlSafe(count))
                .fetch_one(&self.pool)
                .await
                .expect("count")
                .get(0)
        }
    }

    /// The application's pool (its connections on the default `search_path`), and a schema name
    /// for orcs's tables that the conformance suite's clean-up drops once stale; the schema is
    /// not created: the driver does that.
    async fn app_pool(max: u32) -> Option<Pool> {
        let url = services::postgres::database_url_or_skip()?;
        let pool =
            match sqlx::postgres::PgPoolOptions::new().max_connections(max).connect(&url).await {
                Ok(pool) => pool,
                Err(e) => return services::skip("PostgreSQL", &format!("cannot connect: {e}")),
            };
        Some(Pool { pool, schema: unique_name("orcs_test") })
    }

    /// The tables land in the configured schema, created by the driver; a job runs end to end;
    /// the claims leave the application's connection settings as they were.
    #[test]
    fn driver_on_an_existing_pool_runs_a_job_in_its_schema() {
        orcs_tests::run(async {
            // One connection: the claims run on the very connection checked afterwards.
            let Some(app) = app_pool(1).await else { return };
            let driver = app.driver().await;
            let tables: Vec<String> = sqlx::query(
                "SELECT tablename::TEXT FROM pg_tables WHERE schemaname = $1 ORDER BY tablename",
            )
            .bind(&app.schema)
            .fetch_all(&app.pool)
            .await
            .expect("tables")
            .iter()
            .map(|row| row.get(0))
            .collect();
            assert_eq!(
                tables,
                [
                    "failed_jobs",
                    "job_counters",
                    "jobs",
                    "jobs_batches",
                    "jobs_migrations",
                    "jobs_queues",
                    "jobs_schedules",
                    "jobs_settled",
                    "jobs_sizes",
                    "jobs_starts",
                    "jobs_throughput",
                    "jobs_unique",
                    "jobs_workers"
                ]
            );
            // Another driver on the same schema finds the tables set up.
            drop(app.driver().await);
            driver.push(vec![keyed("k")]).await.expect("push");
            run_one(&driver, "mail", 1).await;
            let setting: String = sqlx::query("SHOW enable_bitmapscan")
                .fetch_one(&app.pool)
                .await
                .expect("show")
                .get(0);
            assert_eq!(setting, "on", "the claim's SET LOCAL ended with its transaction");
            // A SQLite transaction cannot hold this driver's jobs.
            let dir = std::env::temp_dir().join("orcs-database-tests");
            std::fs::create_dir_all(&dir).expect("dir");
            let lite = sqlx::SqlitePool::connect_with(
                SqliteConnectOptions::new()
                    .filename(dir.join(format!("{}.db", unique_name("other"))))
                    .create_if_missing(true),
            )
            .await
            .expect("sqlite");
            let mut tx = lite.begin().await.expect("begin");
            let err = driver.push_in(&mut tx, vec![keyed("x")]).await.expect_err("wrong backend");
            assert!(err.to_string().contains("from_sqlite_pool"), "{err}");
        });
    }

    /// A unique key taken inside an application's open transaction holds up the dispatches of
    /// that key until it ends, but not the other dispatches of the process: pushes are written
    /// in groups (`src/group.rs`), by a few writers, so one waiting on the key's lock does not
    /// stall the rest.
    #[test]
    fn a_key_held_by_an_open_transaction_holds_up_only_its_own_dispatches() {
        orcs_tests::run(async {
            let Some(app) = app_pool(8).await else { return };
            let driver = app.driver().await;
            let mut tx = app.pool.begin().await.expect("begin");
            let held = keyed("held");
            let held_id = held.id.clone();
            let outcomes = driver.push_in(&mut tx, vec![held]).await.expect("push_in");
            assert_eq!(outcomes, [PushOutcome::Stored]);
            let waiting = {
                let driver = driver.clone();
                tokio::spawn(async move { driver.push(vec![keyed("held")]).await })
            };
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!waiting.is_finished(), "a dispatch of the held key waits for the transaction");
            for key in ["free-1", "free-2"] {
                let other =
                    tokio::time::timeout(Duration::from_secs(5), driver.push(vec![keyed(key)]))
                        .await
                        .unwrap_or_else(|_| {
                            panic!("a dispatch of key {key} waited for another key's lock")
                        })
                        .expect("push");
                assert_eq!(other, [PushOutcome::Stored]);
            }
            tx.commit().await.expect("commit");
            let outcome = waiting.await.expect("task").expect("push");
            assert_eq!(outcome, [PushOutcome::Duplicate { id: held_id }]);
        });
    }

    /// Keys held by more open transactions than the driver has group writers, each with a
    /// dispatch waiting for it: the other dispatches of the process, some of them in groups
    /// with a waiting one, are still written at once. A group waits a short while for a lock
    /// (`GROUP_BEGIN` in `src/postgres.rs`), then writes its pushes again one by one and
    /// hands a push still waiting to a task of its own, which waits for as long as its key's
    /// holder keeps it. (Before, each waiting dispatch held a group writer until its key's
    /// holder ended, and two of them stalled every dispatch of the process.)
    #[test]
    fn keys_held_by_open_transactions_never_stall_the_other_dispatches() {
        orcs_tests::run(async {
            let Some(app) = app_pool(16).await else { return };
            let driver = app.driver().await;
            let mut holders = Vec::new();
            let mut waiting = Vec::new();
            for i in 0..4 {
                let key = format!("held-{i}");
                let mut tx = app.pool.begin().await.expect("begin");
                let held = keyed(&key);
                let held_id = held.id.clone();
                let outcomes = driver.push_in(&mut tx, vec![held]).await.expect("push_in");
                assert_eq!(outcomes, [PushOutcome::Stored]);
                holders.push(tx);
                let driver = driver.clone();
                let push = tokio::spawn(async move { driver.push(vec![keyed(&key)]).await });
                waiting.push((held_id, push));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            for (_, push) in &waiting {
                assert!(!push.is_finished(), "a dispatch of a held key waits for its holder");
            }
            // Free keys dispatched together with two more of the held ones, so that groups mix
            // them: every free one is answered while the holders still hold their keys.
            let mut more = tokio::task::JoinSet::new();
            for i in 0..20 {
                let driver = driver.clone();
                more.spawn(
                    async move { (i, driver.push(vec![keyed(&format!("free-{i}"))]).await) },
                );
            }
            let mut late = Vec::new();
            for key in ["held-0", "held-1"] {
                let driver = driver.clone();
                late.push(tokio::spawn(async move { driver.push(vec![keyed(key)]).await }));
            }
            tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(done) = more.join_next().await {
                    let (i, outcome) = done.expect("task");
                    assert_eq!(outcome.expect("push"), [PushOutcome::Stored], "free-{i}");
                }
            })
            .await
            .expect("dispatches of free keys waited for the held keys' transactions");
            // Held keys 0 and 2 are committed, 1 and 3 rolled back.
            for (i, tx) in holders.into_iter().enumerate() {
                if i % 2 == 0 {
                    tx.commit().await.expect("commit");
                } else {
                    tx.rollback().await.expect("rollback");
                }
            }
            let mut stored = Vec::new();
            for (i, (held_id, push)) in waiting.into_iter().enumerate() {
                let outcome = tokio::time::timeout(Duration::from_secs(10), push)
                    .await
                    .expect("a waiting dispatch ends with its key's holder")
                    .expect("task")
                    .expect("push");
                if i % 2 == 0 {
                    assert_eq!(outcome, [PushOutcome::Duplicate { id: held_id }], "held-{i}");
                } else {
                    // Rolled back: this dispatch or the later one of the same key takes it.
                    stored.push(outcome);
                }
            }
            let late_0 = late.remove(0).await.expect("task").expect("push");
            assert!(matches!(&late_0[..], [PushOutcome::Duplicate { .. }]), "held-0: {late_0:?}");
            let late_1 = late.remove(0).await.expect("task").expect("push");
            stored.push(late_1);
            let taken = stored.iter().filter(|o| o[..] == [PushOutcome::Stored]).count();
            assert_eq!(taken, 2, "held-1 and held-3, once each after their rollbacks: {stored:?}");
            let stats = driver.stats("mail", SystemClock.now()).await.expect("stats");
            assert_eq!(
                stats.pending,
                2 + 20 + 2,
                "held-0 and held-2, the free keys, held-1 and held-3"
            );
        });
    }

    #[test]
    fn dispatch_inside_the_applications_transaction() {
        orcs_tests::run(async {
            let Some(app) = app_pool(4).await else { return };
            let driver = app.driver().await;
            let users = format!(
                "CREATE TABLE \"{}\".users (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                 email TEXT NOT NULL)",
                app.schema
            );
            sqlx::query(sqlx::AssertSqlSafe(users)).execute(&app.pool).await.expect("users");
            // The application's transactions look for its own tables in its schema; the driver's
            // statements name theirs.
            let schema = app.schema.clone();
            let begin = move |pool: &Pool| {
                let set = format!("SET LOCAL search_path TO \"{schema}\"");
                let pool = pool.pool.clone();
                async move {
                    let mut tx = pool.begin().await.expect("begin");
                    sqlx::query(sqlx::AssertSqlSafe(set)).execute(&mut *tx).await.expect("set");
                    tx
                }
            };
            transactional_cases!(app, driver, begin, "INSERT INTO users (email) VALUES ($1)");
        });
    }
}
