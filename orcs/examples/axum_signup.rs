//! An axum service that dispatches a job in the same transaction as its own insert, and runs the
//! job in the same process with the application's pool.
//!
//! - `POST /signup` with `{"email": "ada@example.com"}` inserts a user and dispatches
//!   `WelcomeJob` in one PostgreSQL transaction: the job exists if and only if the user does.
//!   201 with the user's id and the job's id; 409 if the email is taken.
//! - `GET /users/{id}`: the user, and whether the welcome job has run.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run -p orcs --example axum_signup --features postgres
//! curl -d '{"email":"ada@example.com"}' -H 'content-type: application/json' localhost:3000/signup
//! ```
//!
//! `BIND` sets the address (default `127.0.0.1:3000`; port 0 picks a free one, printed at
//! start). `WORKER=0` leaves the jobs to a separate worker (`examples/worker.rs`) instead.

mod signup;

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use orcs::database::{DatabaseConfig, DatabaseDriver};
use orcs::prelude::*;
use orcs::sqlx::postgres::PgPoolOptions;
use orcs::sqlx::{self, PgPool, Row as _};
use serde::Deserialize;
use serde_json::{Value, json};

use signup::WelcomeJob;

/// What every handler gets: the application's pool, the queue to prepare jobs with, and the
/// database driver that stores them in the handler's transaction.
#[derive(Clone)]
struct App {
    pool: PgPool,
    queue: Queue,
    jobs: DatabaseDriver,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| {
        "DATABASE_URL is not set; set it to a PostgreSQL database, e.g. \
         DATABASE_URL=postgres://postgres@127.0.0.1:5432/test"
    })?;
    let bind: SocketAddr = std::env::var("BIND")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()
        .map_err(|e| format!("BIND is not an address such as 127.0.0.1:3000: {e}"))?;

    let pool = PgPoolOptions::new().max_connections(8).connect(&url).await?;
    signup::create_tables(&pool).await?;
    // The queue lives in the application's database, on its pool: a handler's transaction
    // covers the application's rows and the jobs alike. The tables are created if missing.
    let jobs = DatabaseDriver::from_pg_pool(pool.clone(), DatabaseConfig::new(&url)).await?;
    let queue = Queue::new(jobs.clone());

    // The worker runs beside the server and gets the application's pool as job state.
    let worker = (std::env::var("WORKER").as_deref() != Ok("0"))
        .then(|| Worker::new(queue.clone(), signup::registry(pool.clone())).queues(["emails"]))
        .map(Worker::spawn);

    let app = Router::new()
        .route("/signup", post(signup))
        .route("/users/{id}", get(user))
        .with_state(App { pool, queue, jobs });
    let listener = tokio::net::TcpListener::bind(bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).with_graceful_shutdown(orcs::shutdown_signal()).await?;

    if let Some(worker) = worker {
        let summary = worker.shutdown().await?;
        println!("worker stopped after {} jobs", summary.done);
    }
    Ok(())
}

#[derive(Deserialize)]
struct SignupForm {
    email: String,
}

/// A handler's failure: the status and a message for the client.
type Failure = (StatusCode, String);

fn internal(error: impl std::fmt::Display) -> Failure {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

async fn signup(
    State(app): State<App>,
    Json(form): Json<SignupForm>,
) -> Result<(StatusCode, Json<Value>), Failure> {
    let mut tx = app.pool.begin().await.map_err(internal)?;
    let inserted = sqlx::query(
        "INSERT INTO users (email) VALUES ($1) ON CONFLICT (email) DO NOTHING RETURNING id",
    )
    .bind(&form.email)
    .fetch_optional(&mut *tx)
    .await
    .map_err(internal)?;
    let Some(row) = inserted else {
        return Err((StatusCode::CONFLICT, format!("{} has already signed up", form.email)));
    };
    let user_id: i64 = row.try_get(0).map_err(internal)?;

    // The job is stored by the insert's transaction: a rollback (or a crash before the commit)
    // drops both, and workers see the job only once the user is committed.
    let job =
        app.queue.prepare(&WelcomeJob { user_id }, &DispatchOptions::new()).map_err(internal)?;
    let job_id = job.id.clone();
    app.jobs.push_in(&mut tx, vec![job]).await.map_err(internal)?;
    tx.commit().await.map_err(internal)?;

    Ok((StatusCode::CREATED, Json(json!({ "id": user_id, "welcome_job": job_id }))))
}

async fn user(State(app): State<App>, Path(id): Path<i64>) -> Result<Json<Value>, Failure> {
    let row = sqlx::query("SELECT email, welcomed_at IS NOT NULL FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.pool)
        .await
        .map_err(internal)?
        .ok_or((StatusCode::NOT_FOUND, format!("no user {id}")))?;
    let email: String = row.try_get(0).map_err(internal)?;
    let welcomed: bool = row.try_get(1).map_err(internal)?;
    Ok(Json(json!({ "id": id, "email": email, "welcomed": welcomed })))
}
