//! PostgreSQL keeps a generic plan of a prepared statement per connection once it has run a few
//! times, and keeps it until the table's statistics change. A plan made while the jobs table
//! was empty must still walk the indexes once the table holds a backlog: these tests make
//! that plan on a connection with the driver's settings, fill the table, and read the plan.

use std::time::Duration;

use orcs_tests::services::{self, unique_name};
use sqlx::{Connection, PgConnection, Row};

use crate::postgres::connect_options;
use crate::sql::{Dialect, Sql};
use crate::{DatabaseConfig, DatabaseDriver};

/// Runs `statement` (with `args`) often enough on the empty table for a generic plan, fills
/// the table with 20,000 ready jobs without an ANALYZE, and answers `EXPLAIN` of the statement.
async fn plan_after_growth(
    conn: &mut PgConnection,
    types: &str,
    statement: &str,
    args: &str,
) -> String {
    let prepare = format!("PREPARE probe ({types}) AS {statement}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *conn).await.expect("prepare");
    for _ in 0..8 {
        let run = format!("EXECUTE probe ({args})");
        sqlx::raw_sql(sqlx::AssertSqlSafe(run)).execute(&mut *conn).await.expect("execute");
    }
    sqlx::raw_sql(
        "INSERT INTO jobs (id, queue, name, payload, priority, attempts, max_retries, \
         retry_delay_ms, dispatched_at, available_at, state) \
         SELECT lpad(i::TEXT, 26, '0'), 'default', 'PlainJob', '{}', 0, 0, 3, 1000, 0, 0, 0 \
         FROM generate_series(1, 20000) AS i",
    )
    .execute(&mut *conn)
    .await
    .expect("fill");
    let explain = format!("EXPLAIN EXECUTE probe ({args})");
    let rows =
        sqlx::raw_sql(sqlx::AssertSqlSafe(explain)).fetch_all(&mut *conn).await.expect("explain");
    sqlx::raw_sql("DEALLOCATE probe; TRUNCATE jobs").execute(&mut *conn).await.expect("reset");
    rows.iter().map(|row| row.get::<String, _>(0)).collect::<Vec<_>>().join("\n")
}

/// The driver's statements for the default tables.
fn default_sql(dialect: Dialect) -> Sql {
    let config = DatabaseConfig::default();
    Sql::new(dialect, None, &config.jobs_table, &config.failed_table, &config.counters_table)
}

#[test]
fn postgres_plans_made_on_an_empty_table_use_the_indexes_once_it_fills() {
    orcs_tests::run(async {
        let Some(url) = services::postgres::database_url_or_skip() else { return };
        let mut admin = match PgConnection::connect(&url).await {
            Ok(conn) => conn,
            Err(e) => {
                return services::skip::<()>("PostgreSQL", &format!("cannot connect: {e}"))
                    .unwrap_or(());
            }
        };
        // The conformance suite's clean-up drops these schemas once stale.
        let schema = unique_name("orcs_test");
        let create = format!("CREATE SCHEMA \"{schema}\"");
        sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&mut admin).await.expect("schema");
        let url = services::postgres::with_search_path(&url, &schema);
        let driver = DatabaseDriver::connect(&url).await.expect("the setup");
        let mut conn = PgConnection::connect_with(&connect_options(&url).expect("options"))
            .await
            .expect("a connection like the driver's");
        let sql = default_sql(Dialect::Postgres);
        let checks = [
            (
                "the claim",
                "TEXT, BIGINT, BIGINT, BIGINT, TEXT, BIGINT",
                &sql.claim,
                "'default', 1, 1000, 1000, 't:', 30",
            ),
            (
                "the claim that promotes",
                "TEXT, BIGINT, BIGINT, BIGINT, TEXT, BIGINT",
                &sql.claim_promoting,
                "'default', 1, 1000, 1000, 't:', 30",
            ),
            (
                "the completion",
                "TEXT[], TEXT[], TEXT, TEXT[], BIGINT[], BIGINT",
                &sql.complete_many_pg,
                "ARRAY['x'], ARRAY['t:x'], 'c', ARRAY['w'], ARRAY[1::BIGINT], 1",
            ),
            (
                "the completion of batch children",
                "TEXT[], TEXT[], TEXT, TEXT[], BIGINT[], BIGINT",
                &sql.complete_children_pg,
                "ARRAY['x'], ARRAY['bt:x'], 'c', ARRAY['w'], ARRAY[1::BIGINT], 1",
            ),
        ];
        for (what, types, statement, args) in checks {
            let plan = tokio::time::timeout(
                Duration::from_secs(30),
                plan_after_growth(&mut conn, types, statement, args),
            )
            .await
            .expect("the plan within 30 s");
            assert!(
                !plan.contains("Seq Scan on jobs"),
                "{what} reads the whole jobs table with the plan made while it was empty:\n{plan}"
            );
            assert!(plan.contains("Index"), "{what} uses no index:\n{plan}");
        }
        // With sequential scans off, a statement that has no index to use (the workers'
        // listing, over a table of a few rows) is costed at 10^10, far above `jit_above_cost`:
        // the server compiled it with LLVM every time, 45-130 ms a call under load.
        let jit: String =
            sqlx::query("SHOW jit").fetch_one(&mut conn).await.expect("show jit").get(0);
        assert_eq!(jit, "off", "the driver's connections compile no statement");
        let explain = format!("EXPLAIN (ANALYZE) {}", sql.workers_list.replace("$1", "0"));
        let plan = sqlx::raw_sql(sqlx::AssertSqlSafe(explain))
            .fetch_all(&mut conn)
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!plan.contains("JIT"), "the workers' listing was compiled:\n{plan}");
        drop(driver);
        let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await.expect("drop");
    });
}

/// SQLite's count of a limited claim's settling jobs looks each token up by primary key: joined
/// the other way round, its planner walked the token list once for every reserved job of the
/// queue, and a limited drain ran slower with the count than without it.
#[test]
fn sqlite_settling_count_looks_tokens_up_by_primary_key() {
    orcs_tests::run(async {
        let dir = std::env::temp_dir().join("orcs-database-tests");
        std::fs::create_dir_all(&dir).expect("the test directory");
        let path = dir.join(format!("{}.db", unique_name("plan")));
        let url = format!("sqlite://{}", path.display());
        let driver = DatabaseDriver::connect(&url).await.expect("the setup");
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open");
        let sql = default_sql(Dialect::Sqlite);
        let explain = format!("EXPLAIN QUERY PLAN {}", sql.room);
        let plan = sqlx::query(sqlx::AssertSqlSafe(explain))
            .bind("default")
            .bind(66_i64)
            .bind(0_i64)
            .bind(r#"["p:a","p:b"]"#)
            .bind(64_i64)
            .bind(64_i64)
            .fetch_all(&mut conn)
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get::<String, _>(3))
            .collect::<Vec<_>>();
        let tokens = plan.iter().position(|step| step.contains("VIRTUAL TABLE"));
        let by_id = plan.iter().position(|step| step.contains("(id=?)"));
        assert!(
            matches!((tokens, by_id), (Some(t), Some(i)) if t < i),
            "the tokens are walked once, each looked up by id:\n{}",
            plan.join("\n")
        );
        drop((conn, driver));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    });
}
