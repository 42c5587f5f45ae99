//! The signup service's table and job, shared by the `axum_signup` and `worker` examples: the
//! web process and a standalone worker run the same job type with the same state.

use orcs::prelude::*;
use orcs::sqlx::{self, PgPool};
use serde::{Deserialize, Serialize};

/// The application's own table. The example creates it at start; a real service has migrations.
pub(crate) async fn create_tables(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (
            id BIGSERIAL PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            welcomed_at TIMESTAMPTZ
        )",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Welcomes a new user. Dispatched by `POST /signup` in the transaction that inserts the user, so
/// it exists exactly when the user does.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WelcomeJob {
    /// The `users.id` of the new user: jobs carry references, not copies of rows.
    pub(crate) user_id: i64,
}

impl Job for WelcomeJob {
    const NAME: &'static str = "WelcomeJob";
    const QUEUE: &'static str = "emails";

    fn needs(needs: &mut orcs::Needs) {
        needs.state::<PgPool>();
    }

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        let pool = ctx.state::<PgPool>()?;
        // Stands in for sending the mail; `welcomed_at IS NULL` keeps a retried attempt from
        // welcoming twice.
        sqlx::query("UPDATE users SET welcomed_at = now() WHERE id = $1 AND welcomed_at IS NULL")
            .bind(self.user_id)
            .execute(pool)
            .await?;
        println!("welcomed user {} (job {}, attempt {})", self.user_id, ctx.id(), ctx.attempt());
        Ok(())
    }
}

/// The jobs this service runs, with the state they need: the application's pool.
pub(crate) fn registry(pool: PgPool) -> Registry {
    Registry::new().register::<WelcomeJob>().state(pool)
}
