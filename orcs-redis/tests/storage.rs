//! The versioned storage layout: a prefix is marked with the layout that wrote it, and a driver
//! refuses a prefix marked with one it does not read; a layout-2 prefix keeps working until it is
//! upgraded explicitly.

use orcs_core::{
    Admin, ClaimRequest, Clock, Driver, Error, JobState, ListRequest, NewJob, PushOutcome, Settle,
    SystemClock, Unique, UniqueUntil,
};
use orcs_redis::{RedisConfig, RedisDriver};
use orcs_tests::services::{self, unique_name};
use redis::AsyncCommands;

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn set(url: &str, key: &str, value: &str) {
    let _: () = raw(url).await.set(key, value).await.expect("SET");
}

/// A driver on a prefix of its own, and the prefix.
async fn prefixed(url: &str) -> (String, RedisDriver) {
    let prefix = unique_name("orcs-test");
    let config = RedisConfig::from_url(url).expect("url").with_prefix(prefix.clone());
    (prefix, RedisDriver::connect(config).await.expect("connect"))
}

/// A driver on a prefix of its own, a connection of the test's own, and the name of `queue`'s
/// `unique` hash under that prefix; `None` after a loud skip.
async fn keyed_queue(
    queue: &str,
) -> Option<(RedisDriver, redis::aio::MultiplexedConnection, String)> {
    let url = services::redis::redis_url_or_skip()?;
    let (prefix, driver) = prefixed(&url).await;
    Some((driver, raw(&url).await, format!("{{{prefix}:{queue}}}:unique")))
}

fn keyed(queue: &str, key: &str, until: UniqueUntil) -> NewJob {
    let mut job = NewJob::new(orcs_core::new_job_id(), "PlainJob", queue, "{}", SystemClock.now());
    job.unique = Some(Unique::new(key, until));
    job
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
        [("4", "a newer orcs"), ("1", "an older orcs"), ("soup", "not written by orcs")]
    {
        set(&url, &format!("{{{prefix}}}:version"), found).await;
        let err = RedisDriver::connect(config.clone()).await.expect_err("another layout");
        let Error::Version { driver, message } = &err else { panic!("a version error: {err:?}") };
        assert_eq!(*driver, "redis");
        assert!(
            message.contains(&format!("{found:?}")) && message.contains("layouts 2 and 3"),
            "{message}"
        );
        assert!(
            message.contains(says) && message.contains("RedisConfig::with_prefix"),
            "{message}"
        );
        assert!(!message.contains("REDIS_PREFIX"), "{message}");
        assert!(!err.is_transient());
    }
}

/// A prefix marked with layout 2 keeps working: keyed jobs are written as layout 2 wrote them
/// (readable by an older orcs) until `upgrade_layout`; after it, new keyed jobs carry their key
/// in the record, and the keys of the jobs stored before are still freed when they end.
#[tokio::test]
async fn a_layout_2_prefix_keeps_working_until_upgraded() {
    let Some(url) = services::redis::redis_url_or_skip() else { return };
    let prefix = unique_name("orcs-test");
    let tag = format!("{{{prefix}:q}}");
    set(&url, &format!("{{{prefix}}}:version"), "2").await;
    let config = RedisConfig::from_url(&url).expect("url").with_prefix(prefix.clone());
    let driver = RedisDriver::connect(config.clone()).await.expect("a layout-2 prefix");
    assert_eq!(driver.storage_layout(), 2);
    let (old, started) =
        (keyed("q", "old-key", UniqueUntil::Finished), keyed("q", "s-key", UniqueUntil::Started));
    let old_id = old.id.clone();
    driver.push(vec![old, started]).await.expect("push");
    let mut conn = raw(&url).await;
    let spec: String = conn.hget(format!("{tag}:unique_of"), &old_id).await.expect("hget");
    assert_eq!(spec, "f|0|old-key");
    let record: String = conn.hget(format!("{tag}:jobs"), &old_id).await.expect("hget");
    assert!(record.starts_with("v2|"), "{record}");
    // A debounced push takes the v2 record apart: the holder gets the new payload, and its
    // spec stays as layout 2 wrote it.
    let mut newer = keyed("q", "old-key", UniqueUntil::Finished);
    newer.unique = newer.unique.map(Unique::debounced);
    newer.payload = r#"{"n":2}"#.to_owned();
    assert_eq!(
        driver.push(vec![newer]).await.expect("push"),
        [PushOutcome::Replaced { id: old_id.clone() }]
    );
    let info = driver.get(&old_id, SystemClock.now()).await.expect("get").expect("found");
    assert_eq!(info.job.payload, r#"{"n":2}"#);
    let spec: String = conn.hget(format!("{tag}:unique_of"), &old_id).await.expect("hget");
    assert_eq!(spec, "f|0|old-key");

    driver.upgrade_layout().await.expect("upgrade");
    let version: String = conn.get(format!("{{{prefix}}}:version")).await.expect("get");
    assert_eq!((version.as_str(), driver.storage_layout()), ("3", 3));
    driver.upgrade_layout().await.expect("upgrading again does nothing");
    let other = RedisDriver::connect(config).await.expect("connect after the upgrade");
    assert_eq!(other.storage_layout(), 3);
    let new = keyed("q", "new-key", UniqueUntil::Finished);
    let new_id = new.id.clone();
    assert_eq!(other.push(vec![new]).await.expect("push"), [PushOutcome::Stored]);
    let record: String = conn.hget(format!("{tag}:jobs"), &new_id).await.expect("hget");
    assert!(record.starts_with("v3|"), "{record}");
    let specs: i64 = conn.hlen(format!("{tag}:unique_of")).await.expect("hlen");
    assert_eq!(specs, 2, "only the layout-2 jobs have a spec");
    // A key held by a layout-2 job still holds.
    let again = keyed("q", "old-key", UniqueUntil::Finished);
    assert_eq!(
        other.push(vec![again]).await.expect("push"),
        [PushOutcome::Duplicate { id: old_id.clone() }]
    );
    let info = other.get(&old_id, SystemClock.now()).await.expect("get").expect("found");
    assert_eq!(info.job.unique, Some(Unique::new("old-key", UniqueUntil::Finished)));

    let queues = vec!["q".to_owned()];
    let claim =
        other.claim(&ClaimRequest::new(&queues, 10, SystemClock.now())).await.expect("claim");
    assert_eq!(claim.jobs.len(), 3);
    let mut held: Vec<String> = conn.hkeys(format!("{tag}:unique")).await.expect("hkeys");
    held.sort();
    assert_eq!(held, ["new-key", "old-key"], "the Started key freed on the claim");
    for reserved in claim.jobs {
        other.settle_one(Settle::complete(reserved.lease), SystemClock.now()).await.expect("done");
    }
    let held: i64 = conn.hlen(format!("{tag}:unique")).await.expect("hlen");
    let specs: i64 = conn.hlen(format!("{tag}:unique_of")).await.expect("hlen");
    assert_eq!((held, specs), (0, 0), "every key freed, every spec gone");
    assert_eq!(other.stats("q", SystemClock.now()).await.expect("stats").processed, 3);
}

/// An upgrade never overwrites a mark it does not know.
#[tokio::test]
async fn only_layout_2_is_upgraded() {
    let Some(url) = services::redis::redis_url_or_skip() else { return };
    let (prefix, driver) = prefixed(&url).await;
    set(&url, &format!("{{{prefix}}}:version"), "4").await;
    let err = driver.upgrade_layout().await.expect_err("a newer layout");
    assert!(matches!(err, Error::Version { .. }) && err.to_string().contains("\"4\""), "{err}");
    let version: String = raw(&url).await.get(format!("{{{prefix}}}:version")).await.expect("get");
    assert_eq!(version, "4");
}

/// When a later chunk of a large push fails, the chunks already stored are removed again and
/// the push returns the error (here a permanent one: a key of the layout holds a string).
#[tokio::test]
async fn a_failed_chunk_removes_the_stored_chunks() {
    let Some(url) = services::redis::redis_url_or_skip() else { return };
    let (prefix, driver) = prefixed(&url).await;
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

/// A claim keeps `attempts` and `tokens` hash tables and `reserved` a skip list (see "Why
/// `attempts`, `tokens` and `reserved` carry a wide entry" in the README): as listpacks, every
/// batch command compared each id with each entry. The wide entry is no running job.
#[tokio::test]
async fn a_claim_keeps_the_lease_keys_out_of_listpack_encoding() {
    let Some(url) = services::redis::redis_url_or_skip() else { return };
    let (prefix, driver) = prefixed(&url).await;
    let now = SystemClock.now();
    let jobs: Vec<NewJob> = (0..3)
        .map(|_| NewJob::new(orcs_core::new_job_id(), "PlainJob", "wide", "{}", now))
        .collect();
    driver.push(jobs).await.expect("push");
    let queues = vec!["wide".to_owned()];
    let claim = driver.claim(&ClaimRequest::new(&queues, 10, now)).await.expect("claim");
    assert_eq!(claim.jobs.len(), 3);
    let mut conn = raw(&url).await;
    for (name, expected) in
        [("attempts", "hashtable"), ("tokens", "hashtable"), ("reserved", "skiplist")]
    {
        let key = format!("{{{prefix}:wide}}:{name}");
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("OBJECT");
        assert_eq!(encoding, expected, "{key}");
        if name != "reserved" {
            let len: usize = conn.hlen(&key).await.expect("HLEN");
            assert_eq!(len, 4, "{key}: a field per claimed job and the wide one");
        }
    }
    let stats = Admin::stats(&driver, "wide", now).await.expect("stats");
    assert_eq!(stats.reserved, 3, "the wide entry is not counted");
    let listed = Admin::list(&driver, &ListRequest::new("wide", JobState::Reserved, 10), now)
        .await
        .expect("list");
    assert_eq!(listed.len(), 3, "nor listed");
    // The jobs still run and end as before.
    let settles: Vec<Settle> =
        claim.jobs.iter().map(|job| Settle::complete(job.lease.clone())).collect();
    for result in driver.settle(&settles, now).await {
        result.expect("settle");
    }
    let stats = Admin::stats(&driver, "wide", now).await.expect("stats");
    assert_eq!((stats.processed, stats.reserved), (3, 0));
    // A queue left with the wide entries only holds no job: it can be forgotten.
    assert!(Admin::forget_queue(&driver, "wide").await.expect("forget"), "forgotten");
}

/// The encoding of `key` (`OBJECT ENCODING`), or None for no key.
async fn encoding(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("OBJECT").arg("ENCODING").arg(key).query_async(conn).await.ok()
}

/// Pushes `n` jobs to queue `held` with the `Finished` keys `<prefix>0` to `<prefix>n-1`, then
/// completes `done` of them.
async fn hold_keys(driver: &RedisDriver, prefix: &str, n: usize, done: usize) {
    let jobs: Vec<NewJob> =
        (0..n).map(|i| keyed("held", &format!("{prefix}{i}"), UniqueUntil::Finished)).collect();
    driver.push(jobs).await.expect("push");
    assert_eq!(complete_some(driver, "held", done).await, done);
}

/// Claims up to `max` jobs of `queue` and completes them in one settle call; returns how many.
async fn complete_some(driver: &RedisDriver, queue: &str, max: usize) -> usize {
    let now = SystemClock.now();
    let queues = vec![queue.to_owned()];
    let claim = driver.claim(&ClaimRequest::new(&queues, max, now)).await.expect("claim");
    let settles: Vec<Settle> =
        claim.jobs.iter().map(|job| Settle::complete(job.lease.clone())).collect();
    for result in driver.settle(&settles, now).await {
        result.expect("complete");
    }
    claim.jobs.len()
}

/// Checks that `unique` (queue `queue`'s hash, keys `k0` to `k99` of kind `until` pushed, the
/// first 10 freed) is a hash table of the 90 held keys and the wide entry, that a held key still
/// holds, a freed one is free, and the wide entry is no key; `k0` is taken again.
async fn held_wide(
    driver: &RedisDriver,
    conn: &mut redis::aio::MultiplexedConnection,
    unique: &str,
    queue: &str,
    until: UniqueUntil,
) {
    assert_eq!(encoding(conn, unique).await.as_deref(), Some("hashtable"), "90 keys held");
    let len: usize = conn.hlen(unique).await.expect("HLEN");
    assert_eq!(len, 91, "a field per held key and the wide one");
    let again = driver
        .push(vec![keyed(queue, "k50", until), keyed(queue, "k0", until)])
        .await
        .expect("push again");
    assert!(matches!(again[0], PushOutcome::Duplicate { .. }), "k50 is held: {again:?}");
    assert_eq!(again[1], PushOutcome::Stored, "k0 was freed");
}

/// A completion keeps a queue's `unique` hash a hash table while it holds more than 64 keys
/// (see "Unique keys" in the README): as a listpack, every command on a key compared it with
/// each key held. The wide entry is no key, and goes with the last key a completion frees.
#[tokio::test]
async fn completions_keep_many_held_keys_out_of_listpack_encoding() {
    let Some((driver, mut conn, unique)) = keyed_queue("held").await else { return };
    hold_keys(&driver, "k", 100, 0).await;
    assert_eq!(encoding(&mut conn, &unique).await.as_deref(), Some("listpack"), "100 keys");

    assert_eq!(complete_some(&driver, "held", 10).await, 10);
    held_wide(&driver, &mut conn, &unique, "held", UniqueUntil::Finished).await;
    let stats = Admin::stats(&driver, "held", SystemClock.now()).await.expect("stats");
    assert_eq!((stats.pending, stats.processed), (91, 10));

    // Every key freed by completions: the hash goes, wide entry and all.
    let mut done = 10;
    while done < 101 {
        let n = complete_some(&driver, "held", 20).await;
        assert!(n > 0, "jobs left after {done}");
        done += n;
    }
    assert_eq!(encoding(&mut conn, &unique).await, None, "no key held, no unique hash");
    // Keys freed another way: `clear` takes the wide entry with the last of them.
    hold_keys(&driver, "c", 100, 10).await;
    assert_eq!(encoding(&mut conn, &unique).await.as_deref(), Some("hashtable"), "90 keys held");
    // A unique key spelled like the wide entry is a key as any other.
    let wide = "\0orcs: this entry is wider than a listpack holds, so this key stays a hash table \
                or skip list";
    let (first, second) =
        (keyed("held", wide, UniqueUntil::Finished), keyed("held", wide, UniqueUntil::Finished));
    let first_id = first.id.clone();
    let outcomes = driver.push(vec![first]).await.expect("push");
    assert_eq!(outcomes, vec![PushOutcome::Stored], "the wide entry is no holder");
    let outcomes = driver.push(vec![second]).await.expect("push");
    assert_eq!(outcomes, vec![PushOutcome::Duplicate { id: first_id }], "held by the first");
    assert_eq!(Admin::clear(&driver, "held", SystemClock.now()).await.expect("clear"), 91);
    assert_eq!(encoding(&mut conn, &unique).await, None, "cleared, no unique hash");
    // A queue below 64 keys keeps its listpack: small ones are cheap to scan.
    hold_keys(&driver, "s", 30, 5).await;
    assert_eq!(encoding(&mut conn, &unique).await.as_deref(), Some("listpack"), "25 keys");
}

/// A claim frees its jobs' `Started` keys together, as a settle frees its completions'
/// `Finished` ones: it keeps the queue's `unique` hash a hash table while more than 64 keys are
/// held (a push would otherwise search a listpack of them), and deletes it with the last key.
#[tokio::test]
async fn claims_keep_many_held_started_keys_out_of_listpack_encoding() {
    let Some((driver, mut conn, unique)) = keyed_queue("started").await else { return };
    let jobs: Vec<NewJob> =
        (0..100).map(|i| keyed("started", &format!("k{i}"), UniqueUntil::Started)).collect();
    driver.push(jobs).await.expect("push");
    assert_eq!(encoding(&mut conn, &unique).await.as_deref(), Some("listpack"), "100 keys");

    let queues = vec!["started".to_owned()];
    let claim = driver.claim(&ClaimRequest::new(&queues, 10, SystemClock.now())).await;
    assert_eq!(claim.expect("claim").jobs.len(), 10);
    held_wide(&driver, &mut conn, &unique, "started", UniqueUntil::Started).await;

    let mut claimed = 10;
    while claimed < 101 {
        let claim = driver.claim(&ClaimRequest::new(&queues, 40, SystemClock.now())).await;
        let n = claim.expect("claim").jobs.len();
        assert!(n > 0, "jobs left after {claimed}");
        claimed += n;
    }
    assert_eq!(encoding(&mut conn, &unique).await, None, "every job started, no unique hash");
}

/// The wide entry goes with the last key whatever frees it: here cancels and a failure, not
/// a completion (a wide entry left alone made claims and settles look for keys in a queue
/// that held none).
#[tokio::test]
async fn the_wide_entry_goes_with_the_last_key_however_it_is_freed() {
    let Some((driver, mut conn, unique)) = keyed_queue("held").await else { return };
    hold_keys(&driver, "k", 100, 10).await;
    assert_eq!(encoding(&mut conn, &unique).await.as_deref(), Some("hashtable"), "90 keys held");

    let now = SystemClock.now();
    let queues = vec!["held".to_owned()];
    let last = driver.claim(&ClaimRequest::new(&queues, 1, now)).await.expect("claim").jobs;
    let listed = Admin::list(&driver, &ListRequest::new("held", JobState::Pending, 100), now)
        .await
        .expect("list");
    assert_eq!(listed.len(), 89);
    for info in &listed {
        Admin::cancel(&driver, &info.job.id, now).await.expect("cancel");
    }
    let len: usize = conn.hlen(&unique).await.expect("HLEN");
    assert_eq!(len, 2, "the running job's key and the wide entry");
    let settles = vec![Settle::fail(last[0].lease.clone(), "gave up")];
    for result in driver.settle(&settles, now).await {
        result.expect("fail");
    }
    assert_eq!(encoding(&mut conn, &unique).await, None, "no key held, no unique hash");
}
