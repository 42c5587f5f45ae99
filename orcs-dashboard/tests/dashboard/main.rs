//! The dashboard's tests: HTTP-level checks of auth, CSRF, the CSP and the pages on the memory
//! driver (`http`), and a real browser (Debian's chromium through chromedriver) clicking
//! through the pages and saving a screenshot of each (`browser`).

mod browser;
mod http;

use orcs_core::{ClaimRequest, Millis, NewJob, Queue, Settle, new_job_id};

/// An admin token for the tests.
pub(crate) const ADMIN: &str = "admin-token-for-tests-0123";
/// A read-only token for the tests.
pub(crate) const VIEWER: &str = "viewer-token-for-tests-0123";

/// Stores `n` jobs named `name` on `queue`, ready now; returns their ids.
pub(crate) async fn push(queue: &Queue, queue_name: &str, name: &str, n: usize) -> Vec<String> {
    let now = queue.now();
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| NewJob::new(new_job_id(), name, queue_name, format!("{{\"n\":{i}}}"), now))
        .collect();
    queue.dispatch_records(jobs).await.expect("push jobs")
}

/// Stores a job and fails it for good with `error`; returns its id.
pub(crate) async fn failed_job(queue: &Queue, queue_name: &str, error: &str) -> String {
    let mut job = NewJob::new(
        new_job_id(),
        "BuildReport",
        queue_name,
        "{\"month\":\"2026-11\"}",
        queue.now(),
    );
    // First in line, whatever else waits in the queue.
    job.priority = i32::MAX;
    let id = queue.dispatch_records(vec![job]).await.expect("push the job").remove(0);
    let names = vec![queue_name.to_owned()];
    let now: Millis = queue.now();
    let claim = queue.driver().claim(&ClaimRequest::new(&names, 1, now)).await.expect("claim");
    let reserved = claim.jobs.into_iter().next().expect("the job just pushed is claimable");
    assert_eq!(reserved.record.id, id);
    queue.driver().settle_one(Settle::fail(reserved.lease, error), now).await.expect("fail it");
    id
}
