//! Helpers shared by this crate's integration tests.
// Each test file includes this module and uses what it needs.
#![allow(dead_code)]

/// A PostgreSQL URL whose connections work in a new schema of their own, named after `prefix`;
/// `None` (said loudly, or a failure under ORCS_TEST_REQUIRE_SERVICES=1) without PostgreSQL.
#[cfg(feature = "postgres")]
pub(crate) async fn schema_url(prefix: &str) -> Option<String> {
    use orcs::sqlx::{self, Connection as _};
    use orcs_tests::services::{self, postgres::with_search_path, unique_name};

    let url = services::postgres::database_url_or_skip()?;
    let mut conn = match sqlx::PgConnection::connect(&url).await {
        Ok(conn) => conn,
        Err(e) => return services::skip("PostgreSQL", &format!("cannot connect: {e}")),
    };
    let schema = unique_name(prefix);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&mut conn)
        .await
        .expect("create a schema");
    let _ = conn.close().await;
    Some(with_search_path(&url, &schema))
}
