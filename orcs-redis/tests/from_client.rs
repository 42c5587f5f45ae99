//! Bringing your own connection: a driver built from the application's `redis::Client`, with
//! orcs's keys under a prefix of its own.

use orcs_core::{
    Admin, ClaimRequest, Clock, Driver, Error, NewJob, PushOutcome, Settle, SystemClock, Unique,
    UniqueUntil,
};
use orcs_redis::{RedisConfig, RedisDriver};
use orcs_tests::services::{self, unique_name};
use redis::AsyncCommands;

fn job(key: Option<&str>) -> NewJob {
    let mut job =
        NewJob::new(orcs_core::new_job_id(), "PlainJob", "default", "{}", SystemClock.now());
    job.unique = key.map(|k| Unique::new(k, UniqueUntil::Finished));
    job
}

/// A driver made from a client the application already uses runs a job end to end, keeps its
/// keys under its prefix, and leaves the application's keys alone.
#[tokio::test]
async fn a_driver_from_an_existing_client_runs_a_job() {
    let Some(url) = services::redis::redis_url_or_skip() else { return };
    let client = orcs_redis::redis::Client::open(url.as_str()).expect("the application's client");
    let mut app = client.get_multiplexed_async_connection().await.expect("connect");
    let app_key = unique_name("app-key");
    let _: () = app.set(&app_key, "the application's").await.expect("SET");

    let prefix = unique_name("myapp-jobs");
    let config = RedisConfig::from_client(&client).with_prefix(prefix.clone());
    assert_eq!(config.prefix(), prefix);
    let driver = RedisDriver::connect(config).await.expect("a driver from the client");
    let job = job(None);
    let id = job.id.clone();
    assert_eq!(driver.push(vec![job]).await.expect("push"), [PushOutcome::Stored]);
    let queues = vec!["default".to_owned()];
    let claim =
        driver.claim(&ClaimRequest::new(&queues, 8, SystemClock.now())).await.expect("claim");
    assert_eq!(claim.jobs.len(), 1);
    assert_eq!(claim.jobs[0].record.id, id);
    let lease = claim.jobs.into_iter().next().expect("one").lease;
    driver.settle_one(Settle::complete(lease), SystemClock.now()).await.expect("complete");
    let stats = driver.stats("default", SystemClock.now()).await.expect("stats");
    assert_eq!((stats.processed, stats.pending), (1, 0));

    let version: String = app.get(format!("{{{prefix}}}:version")).await.expect("GET");
    assert_eq!(version, "3", "orcs's keys live under the prefix");
    let mine: String = app.get(&app_key).await.expect("GET");
    assert_eq!(mine, "the application's");
}

/// Two prefixes on one server are two separate sets of queues: jobs, unique keys, the queue
/// registry, `get` and `cancel` stay within their prefix.
#[tokio::test]
async fn two_prefixes_on_one_server_do_not_see_each_others_jobs() {
    let Some(url) = services::redis::redis_url_or_skip() else { return };
    let client = redis::Client::open(url.as_str()).expect("client");
    let connect = |prefix: String| {
        RedisDriver::connect(RedisConfig::from_client(&client).with_prefix(prefix))
    };
    let a = connect(unique_name("orcs-a")).await.expect("connect a");
    let b = connect(unique_name("orcs-b")).await.expect("connect b");
    let (plain, keyed) = (job(None), job(Some("k")));
    let (plain_id, keyed_id) = (plain.id.clone(), keyed.id.clone());
    assert_eq!(
        a.push(vec![plain, keyed]).await.expect("push"),
        [PushOutcome::Stored, PushOutcome::Stored]
    );

    let now = SystemClock.now();
    assert_eq!(b.stats("default", now).await.expect("stats").pending, 0);
    assert!(b.queues().await.expect("queues").is_empty());
    assert!(b.get(&plain_id, now).await.expect("get").is_none());
    assert!(matches!(b.cancel(&keyed_id, now).await, Err(Error::NotFound { .. })));
    // The same unique key is free under the other prefix.
    assert_eq!(b.push(vec![job(Some("k"))]).await.expect("push"), [PushOutcome::Stored]);

    let queues = vec!["default".to_owned()];
    let claim = a.claim(&ClaimRequest::new(&queues, 10, now)).await.expect("claim");
    let mut ids: Vec<String> = claim.jobs.iter().map(|r| r.record.id.clone()).collect();
    ids.sort();
    let mut expected = vec![plain_id, keyed_id];
    expected.sort();
    assert_eq!(ids, expected, "a claims its own two jobs and not b's");
    assert_eq!(b.stats("default", now).await.expect("stats").pending, 1);
}
