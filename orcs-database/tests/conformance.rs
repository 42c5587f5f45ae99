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
