//! The versioned storage layout: a prefix is marked with the layout that wrote it, and a driver
//! refuses a prefix marked with another one.

use orcs_core::Error;
use orcs_redis::{RedisConfig, RedisDriver};
use orcs_tests::services::{self, unique_name};

async fn set(url: &str, key: &str, value: &str) {
    let mut conn = redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("SET").arg(key).arg(value).query_async(&mut conn).await.expect("SET");
}

#[tokio::test]
async fn a_prefix_of_another_layout_version_is_refused() {
    let Some(url) = services::redis::redis_url_or_skip() else { return };
    let prefix = unique_name("orcs-test");
    let config = RedisConfig::from_url(&url).expect("url").with_prefix(prefix.clone());
    // A new prefix is marked, and the mark is accepted again.
    RedisDriver::connect(config.clone()).await.expect("a new prefix");
    RedisDriver::connect(config.clone()).await.expect("a prefix of this layout");

    for (found, says) in
        [("3", "a newer orcs"), ("1", "an older orcs"), ("soup", "not written by orcs")]
    {
        set(&url, &format!("{{{prefix}}}:version"), found).await;
        let err = RedisDriver::connect(config.clone()).await.expect_err("another layout");
        let Error::Version { driver, message } = &err else { panic!("a version error: {err:?}") };
        assert_eq!(*driver, "redis");
        assert!(
            message.contains(&format!("{found:?}")) && message.contains("layout 2"),
            "{message}"
        );
        assert!(message.contains(says) && message.contains("REDIS_PREFIX"), "{message}");
        assert!(!err.is_transient());
    }
}

/// When a later chunk of a large push fails, the chunks already stored are removed again and
/// the push returns the error (here a permanent one: a key of the layout holds a string).
#[tokio::test]
async fn a_failed_chunk_removes_the_stored_chunks() {
    let Some(url) = services::redis::redis_url_or_skip() else { return };
    let prefix = unique_name("orcs-test");
    let config = RedisConfig::from_url(&url).expect("url").with_prefix(prefix.clone());
    let driver = RedisDriver::connect(config).await.expect("connect");
    set(&url, &format!("{{{prefix}:broken}}:jobs"), "not a hash").await;
    let now = orcs_core::Clock::now(&orcs_core::SystemClock);
    let job =
        |queue: &str| orcs_core::NewJob::new(orcs_core::new_job_id(), "PlainJob", queue, "{}", now);
    let mut jobs: Vec<_> = (0..1_000).map(|_| job("fine")).collect();
    jobs.extend((0..10).map(|_| job("broken")));
    let err = orcs_core::Driver::push(&driver, jobs).await.expect_err("the second chunk fails");
    assert!(
        matches!(err, Error::Backend { transient: false, .. }),
        "WRONGTYPE is permanent: {err:?}"
    );
    let stats = orcs_core::Admin::stats(&driver, "fine", now).await.expect("stats");
    assert_eq!(stats.pending, 0, "the first chunk was removed again");
}
