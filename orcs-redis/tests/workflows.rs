//! The Redis driver's own cases of batches, workflow metadata and schedules, beyond the shared
//! suite: the record format (old records still read, plain ones unchanged), the key layout,
//! batches pushed in several steps, batches whose callbacks and children span queues (the
//! scripts ask for the queues they need), and what a Redis Cluster refuses.

use orcs_core::{
    Admin, CallbackState, ClaimRequest, Clock, Driver, Error, Fire, JobState, ListRequest,
    NewBatch, NewJob, PushOutcome, ScheduleRecord, Settle, SystemClock, Unique, UniqueUntil,
};
use orcs_redis::{RedisConfig, RedisDriver};
use orcs_tests::services::{self, unique_name};
use redis::AsyncCommands;

/// A driver on a fresh prefix of the server at `url`, and the prefix.
async fn driver_at(url: &str) -> (RedisDriver, String) {
    let prefix = unique_name("orcs-test");
    let config = RedisConfig::from_url(url).expect("a valid test URL").with_prefix(prefix.clone());
    (RedisDriver::connect(config).await.expect("connect to the test Redis"), prefix)
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    let url = url.strip_prefix("redis+cluster://").map_or(url.to_owned(), |nodes| {
        format!("redis://{}", nodes.split(',').next().expect("a node"))
    });
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

fn job(queue: &str, tag: u64) -> NewJob {
    NewJob::new(
        orcs_core::new_job_id(),
        "PlainJob",
        queue,
        format!("{{\"tag\":{tag}}}"),
        SystemClock.now(),
    )
}

fn names(queues: &[&str]) -> Vec<String> {
    queues.iter().map(|q| (*q).to_owned()).collect()
}

async fn claim(driver: &RedisDriver, queue: &str, max: usize) -> Vec<orcs_core::Reserved> {
    let queues = names(&[queue]);
    driver.claim(&ClaimRequest::new(&queues, max, SystemClock.now())).await.expect("claim").jobs
}

async fn pending_ids(driver: &RedisDriver, queue: &str) -> Vec<String> {
    let listed = driver
        .list(&ListRequest::new(queue, JobState::Pending, 1_000), SystemClock.now())
        .await
        .expect("list");
    listed.into_iter().map(|info| info.job.id).collect()
}

/// A job with neither batch nor meta is stored byte for byte as before workflows (v2, v3 with a
/// key); one with meta, or a batch's child, as a v4 record that carries them; records written by
/// an older orcs (untagged, v2, v3) are claimed and settled as before.
#[test]
fn records_stay_as_they_were_and_workflow_jobs_carry_batch_and_meta() {
    orcs_tests::run(async {
        let Some(url) = services::redis::redis_url_or_skip() else { return };
        let (driver, prefix) = driver_at(&url).await;
        let mut conn = raw(&url).await;
        let tag = format!("{{{prefix}:rec}}");
        let plain = job("rec", 1);
        let mut keyed = job("rec", 2);
        keyed.unique = Some(Unique::new("k", UniqueUntil::Finished));
        let mut chained = job("rec", 3);
        chained.meta = Some(r#"{"steps":["a|b"]}"#.to_owned());
        let ids = [plain.id.clone(), keyed.id.clone(), chained.id.clone()];
        driver.push(vec![plain.clone(), keyed, chained]).await.expect("push");
        let records: Vec<String> = redis::cmd("HMGET")
            .arg(format!("{tag}:jobs"))
            .arg(&ids[..])
            .query_async(&mut conn)
            .await
            .expect("hmget the records");
        let expected_plain =
            format!("v2|0||0|0|{at}|{at}|8|PlainJob{{\"tag\":1}}", at = plain.dispatched_at);
        assert_eq!(records[0], expected_plain, "a plain record is unchanged");
        assert!(records[1].starts_with("v3|0||0|0|"), "{}", records[1]);
        assert!(records[2].starts_with("v4|0||0|0|"), "{}", records[2]);
        assert!(
            records[2].ends_with(r#"|-|0|0||17|8|{"steps":["a|b"]}PlainJob{"tag":3}"#),
            "{}",
            records[2]
        );
        let meta: Option<String> = conn.hget(format!("{tag}:meta"), "batched").await.expect("hget");
        assert_eq!(meta, None, "no batch child: nothing counted in the queue's meta");

        // Records an older orcs wrote: layout 1 (untagged) and a v3 keyed one.
        let now = SystemClock.now();
        let (old1, old3) = (orcs_core::new_job_id(), orcs_core::new_job_id());
        let _: () = conn
            .hset(format!("{tag}:jobs"), &old1, format!("0|7|0|0|{now}|4|Mailhi"))
            .await
            .expect("hset");
        let _: () = conn
            .hset(format!("{tag}:jobs"), &old3, format!("v3|0||0|0|{now}|{now}|f|0|2|4|okMailyo"))
            .await
            .expect("hset");
        let _: () = conn.hset(format!("{tag}:unique"), "ok", &old3).await.expect("hset");
        let _: () = conn.zadd(format!("{tag}:ready"), &old1, 0).await.expect("zadd");
        let _: () = conn.zadd(format!("{tag}:ready"), &old3, 0).await.expect("zadd");

        let claimed = claim(&driver, "rec", 10).await;
        assert_eq!(claimed.len(), 5);
        let by_id = |id: &str| claimed.iter().find(|r| r.record.id == id).expect("claimed");
        assert_eq!(by_id(&ids[2]).record.meta.as_deref(), Some(r#"{"steps":["a|b"]}"#));
        assert_eq!(
            (by_id(&ids[0]).record.meta.as_ref(), by_id(&ids[0]).record.batch.as_ref()),
            (None, None)
        );
        assert_eq!(
            (by_id(&old1).record.payload.as_str(), by_id(&old1).record.timeout_ms),
            ("hi", Some(7))
        );
        assert_eq!(by_id(&old3).record.name, "Mail");
        let now = SystemClock.now();
        for reserved in &claimed {
            driver
                .settle_one(Settle::complete(reserved.lease.clone()), now)
                .await
                .expect("complete");
        }
        let keys: Vec<String> = conn.hkeys(format!("{tag}:unique")).await.expect("hkeys");
        assert!(keys.is_empty(), "the old v3 job's key and the new one's freed: {keys:?}");
        assert_eq!(driver.stats("rec", now).await.expect("stats").processed, 5);
    });
}

/// The documented layout of batches on one server: the batch's fields in `{P}:batches`, its
/// children in `{P}:batch_children` until it finishes, each child's record marked as counted,
/// and the queue's `batched` count in its `meta`, gone when the last child ends.
#[test]
fn batches_follow_the_documented_layout() {
    orcs_tests::run(async {
        let Some(url) = services::redis::redis_url_or_skip() else { return };
        let (driver, prefix) = driver_at(&url).await;
        let mut conn = raw(&url).await;
        let id = orcs_core::new_job_id();
        let mut batch = NewBatch::new(id.clone(), SystemClock.now());
        batch.finally = Some(job("lay", 9));
        let children = vec![job("lay", 1), job("lay", 2)];
        let child_ids: Vec<String> = children.iter().map(|c| c.id.clone()).collect();
        driver.push_batch(batch, children).await.expect("push_batch");
        let home = format!("{{{prefix}}}");
        let state: String =
            conn.hget(format!("{home}:batches"), format!("k{id}")).await.expect("hget");
        assert_eq!(
            state, "--w0s",
            "then and catch absent, finally waiting, failures not allowed, sealed"
        );
        let members: Vec<String> =
            conn.zrange(format!("{home}:batch_children"), 0, -1).await.expect("zrange");
        let mut expected: Vec<String> =
            child_ids.iter().map(|c| format!("{}:{id}3:lay{c}", id.len())).collect();
        expected.sort();
        assert_eq!(members, expected);
        let record: String =
            conn.hget(format!("{{{prefix}:lay}}:jobs"), &child_ids[0]).await.expect("hget");
        assert!(record.contains(&format!("|0|+{}||8|{id}PlainJob", id.len())), "{record}");
        let batched: i64 =
            conn.hget(format!("{{{prefix}:lay}}:meta"), "batched").await.expect("hget");
        assert_eq!(batched, 2);

        let now = SystemClock.now();
        for reserved in claim(&driver, "lay", 2).await {
            driver.settle_one(Settle::complete(reserved.lease), now).await.expect("complete");
        }
        let info = driver.batch(&id).await.expect("batch").expect("kept after it finished");
        assert_eq!((info.processed, info.pending), (2, 0));
        assert_eq!(info.finally.map(|f| f.state), Some(CallbackState::Dispatched));
        let members: i64 = conn.zcard(format!("{home}:batch_children")).await.expect("zcard");
        assert_eq!(members, 0, "a finished batch's children leave the index");
        let meta: Option<String> =
            conn.hget(format!("{{{prefix}:lay}}:meta"), "batched").await.expect("hget");
        assert_eq!(meta, None, "no child left: the queue's count is gone");
        // A job naming the batch but pushed on its own is not counted in it.
        let mut stray = job("lay", 3);
        stray.batch = Some(id.clone());
        driver.push(vec![stray.clone()]).await.expect("push");
        let reserved = claim(&driver, "lay", 10).await;
        let stray_claim = reserved.iter().find(|r| r.record.id == stray.id).expect("claimed");
        assert_eq!(stray_claim.record.batch.as_deref(), Some(id.as_str()), "it shows its batch");
        for r in reserved {
            driver.settle_one(Settle::fail(r.lease, "boom"), now).await.expect("fail");
        }
        let after = driver.batch(&id).await.expect("batch").expect("exists");
        assert_eq!((after.total, after.processed, after.failed), (2, 2, 0), "not counted");
    });
}

/// A batch of more children than one script call stores is pushed in sealed steps: every child
/// is counted, and the callbacks wait for all of them.
async fn large_batch(url: Option<String>) {
    let Some(url) = url else { return };
    let (driver, _) = driver_at(&url).await;
    let id = orcs_core::new_job_id();
    let mut batch = NewBatch::new(id.clone(), SystemClock.now());
    batch.then = Some(job("big", 100_000));
    batch.finally = Some(job("big", 100_001));
    let mut children: Vec<NewJob> = (0..2_500).map(|tag| job("big", tag)).collect();
    children[2_000].id = children[10].id.clone();
    let outcomes = driver.push_batch(batch.clone(), children.clone()).await.expect("push_batch");
    assert_eq!(outcomes.len(), 2_500);
    assert_eq!(outcomes[2_000], PushOutcome::Duplicate { id: children[10].id.clone() });
    assert_eq!(outcomes.iter().filter(|o| **o == PushOutcome::Stored).count(), 2_499);
    let info = driver.batch(&id).await.expect("batch").expect("exists");
    assert_eq!((info.total, info.pending, info.finished_at), (2_499, 2_499, None));
    let again = driver.push_batch(batch, vec![job("big", 7)]).await;
    assert!(matches!(again, Err(Error::Invalid { .. })), "{again:?}");

    let mut done = 0;
    loop {
        let claimed = claim(&driver, "big", 500).await;
        if claimed.is_empty() {
            break;
        }
        let settles: Vec<Settle> = claimed.into_iter().map(|r| Settle::complete(r.lease)).collect();
        for result in driver.settle(&settles, SystemClock.now()).await {
            result.expect("complete");
        }
        done += settles.len();
    }
    // The children, then the two callbacks (claimed by the last rounds).
    assert_eq!(done, 2_501);
    let info = driver.batch(&id).await.expect("batch").expect("exists");
    assert_eq!((info.processed, info.pending), (2_499, 0));
    assert_eq!(
        (info.then.map(|c| c.state), info.finally.map(|c| c.state)),
        (Some(CallbackState::Dispatched), Some(CallbackState::Dispatched))
    );
    assert_eq!(driver.stats("big", SystemClock.now()).await.expect("stats").processed, 2_501);
}

#[test]
fn a_large_batch_is_pushed_in_sealed_steps_on_a_server() {
    orcs_tests::run(large_batch(services::redis::redis_url_or_skip()));
}

#[test]
fn a_large_batch_is_pushed_in_sealed_steps_on_a_cluster() {
    orcs_tests::run(large_batch(services::redis::redis_cluster_url_or_skip()));
}

/// On one server a batch may span queues: a child's end that dispatches callbacks or cancels
/// siblings on queues its settle did not name is carried out in one step all the same (the
/// script asks for those queues and the driver calls again), by a driver that never saw the
/// batch.
#[test]
fn a_batch_across_queues_is_counted_by_any_driver() {
    orcs_tests::run(async {
        let Some(url) = services::redis::redis_url_or_skip() else { return };
        let (pusher, prefix) = driver_at(&url).await;
        let config = RedisConfig::from_url(&url).expect("url").with_prefix(prefix);
        let worker = RedisDriver::connect(config).await.expect("connect");
        let id = orcs_core::new_job_id();
        let mut batch = NewBatch::new(id.clone(), SystemClock.now());
        batch.then = Some(job("x-then", 8));
        batch.catch = Some(job("x-catch", 9));
        batch.finally = Some(job("x-finally", 7));
        let (a, b, c) = (job("x-a", 1), job("x-b", 2), job("x-c", 3));
        let mut delayed = job("x-b", 4);
        delayed.available_at += 60_000;
        let (b_id, delayed_id) = (b.id.clone(), delayed.id.clone());
        pusher.push_batch(batch, vec![a, b, c, delayed]).await.expect("push_batch");

        // The worker claims a child on x-c and one on x-a, and fails the x-a one.
        let running = claim(&worker, "x-c", 1).await.pop().expect("x-c child");
        let failing = claim(&worker, "x-a", 1).await.pop().expect("x-a child");
        let now = SystemClock.now();
        worker.settle_one(Settle::fail(failing.lease, "boom"), now).await.expect("fail");
        let info = worker.batch(&id).await.expect("batch").expect("exists");
        assert_eq!(
            (info.total, info.pending, info.failed, info.cancelled),
            (4, 1, 1, 2),
            "the first failure cancelled the waiting children of x-b"
        );
        assert_eq!(info.cancelled_at, Some(now));
        assert_eq!(pending_ids(&worker, "x-catch").await.len(), 1, "catch dispatched");
        assert!(pending_ids(&worker, "x-b").await.is_empty());
        assert!(worker.get(&b_id, now).await.expect("get").is_none());
        assert!(worker.get(&delayed_id, now).await.expect("get").is_none());
        let cancel_asked =
            worker.get(&running.record.id, now).await.expect("get").expect("running");
        assert!(cancel_asked.cancel_requested);

        // A third driver ends the last child: `finally` goes to its own queue, `then` is skipped.
        let config =
            RedisConfig::from_url(&url).expect("url").with_prefix(worker.config().prefix());
        let third = RedisDriver::connect(config).await.expect("connect");
        third.settle_one(Settle::cancel(running.lease), now).await.expect("cancel");
        let info = third.batch(&id).await.expect("batch").expect("exists");
        assert_eq!((info.pending, info.cancelled, info.finished_at), (0, 3, Some(now)));
        assert_eq!(
            (
                info.then.map(|c| c.state),
                info.catch.map(|c| c.state),
                info.finally.map(|c| c.state)
            ),
            (
                Some(CallbackState::Skipped),
                Some(CallbackState::Dispatched),
                Some(CallbackState::Dispatched)
            )
        );
        assert_eq!(pending_ids(&third, "x-finally").await.len(), 1);
        assert!(pending_ids(&third, "x-then").await.is_empty());
        let mut queues = third.queues().await.expect("queues");
        queues.retain(|q| q.starts_with("x-"));
        assert_eq!(queues, ["x-a", "x-b", "x-c", "x-catch", "x-finally", "x-then"]);
    });
}

/// `clear` and `cancel` of the last children finish a batch whose callbacks go elsewhere, and
/// so does recovery of a cancelled child whose worker died.
#[test]
fn clear_cancel_and_recovery_finish_a_batch_with_callbacks_elsewhere() {
    orcs_tests::run(async {
        let Some(url) = services::redis::redis_url_or_skip() else { return };
        let (driver, _) = driver_at(&url).await;
        for end in ["clear", "cancel", "recover"] {
            let id = orcs_core::new_job_id();
            let mut batch = NewBatch::new(id.clone(), SystemClock.now());
            batch.finally = Some(job("y-done", 7));
            let child = job("y-work", 1);
            let child_id = child.id.clone();
            driver.push_batch(batch, vec![child]).await.expect("push_batch");
            let now = SystemClock.now();
            match end {
                "clear" => assert_eq!(driver.clear("y-work", now).await.expect("clear"), 1),
                "cancel" => {
                    driver.cancel(&child_id, now).await.expect("cancel");
                }
                _ => {
                    let lost = claim(&driver, "y-work", 1).await.pop().expect("the child");
                    driver.cancel(&child_id, now).await.expect("cancel");
                    let later = lost.lease.expires_at;
                    assert_eq!(
                        driver.recover(&names(&["y-work"]), later).await.expect("recover"),
                        1
                    );
                }
            }
            let info = driver.batch(&id).await.expect("batch").expect("exists");
            assert_eq!((info.pending, info.cancelled), (0, 1), "{end}");
            assert_eq!(info.finally.map(|c| c.state), Some(CallbackState::Dispatched), "{end}");
        }
        assert_eq!(pending_ids(&driver, "y-done").await.len(), 3);
    });
}

/// On a cluster a batch's callbacks must share its children's slot, and a schedule's jobs its
/// queue's: anything else is refused as unsupported and stores nothing. Schedules work there,
/// each in its queue's slot, and follow their queue when it changes.
#[test]
fn a_cluster_keeps_batches_and_schedules_in_one_slot() {
    orcs_tests::run(async {
        let Some(url) = services::redis::redis_cluster_url_or_skip() else { return };
        let (driver, prefix) = driver_at(&url).await;
        let slot =
            |q: &str| redis::cluster_routing::Slot::for_key(format!("{{{prefix}:{q}}}:ready"));
        let other = (0..100)
            .map(|n| format!("other{n}"))
            .find(|q| slot(q) != slot("home"))
            .expect("a queue in another slot");
        let id = orcs_core::new_job_id();
        let mut batch = NewBatch::new(id.clone(), SystemClock.now());
        batch.finally = Some(job(&other, 7));
        let refused = driver.push_batch(batch, vec![job("home", 1)]).await;
        match refused {
            Err(Error::Unsupported { what, .. }) => assert!(what.contains("one queue"), "{what}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        assert!(driver.batch(&id).await.expect("batch").is_none(), "nothing stored");
        assert_eq!(driver.stats("home", SystemClock.now()).await.expect("stats").pending, 0);

        let now = SystemClock.now();
        let record = ScheduleRecord::new("tick", "home", "{}", now);
        driver.register_schedule(&record).await.expect("register");
        let fire = Fire::new("tick", now, now + 1_000, vec![job(&other, 1)]);
        let refused = driver.fire_schedule(&fire, now).await;
        assert!(matches!(refused, Err(Error::Unsupported { .. })), "{refused:?}");
        let fire = Fire::new("tick", now, now + 1_000, vec![job("home", 1)]);
        assert!(driver.fire_schedule(&fire, now).await.expect("fire"));
        assert_eq!(driver.stats("home", now).await.expect("stats").pending, 1);

        // The schedule moves to another queue (another slot): its cursor goes with it.
        let moved = ScheduleRecord::new("tick", other.clone(), "{\"v\":2}", now + 5);
        let stored = driver.register_schedule(&moved).await.expect("register");
        assert_eq!((stored.cursor, stored.queue.as_str()), (now + 1_000, other.as_str()));
        let listed = driver.schedules().await.expect("schedules");
        assert_eq!(listed, std::slice::from_ref(&stored));
        let fire = Fire::new("tick", now + 1_000, now + 2_000, vec![job(&other, 2)]);
        assert!(driver.fire_schedule(&fire, now).await.expect("fire"));
        assert!(driver.forget_schedule("tick").await.expect("forget"));
        assert!(!driver.forget_schedule("tick").await.expect("forget"));
        assert!(driver.schedules().await.expect("schedules").is_empty());
    });
}
