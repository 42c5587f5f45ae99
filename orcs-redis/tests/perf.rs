//! The cost of flow control on the hot paths, against a Redis server of the test's own:
//! enqueue one by one with unique keys against plain, and a drain under a concurrency limit
//! equal to the claimer's slots against an unlimited one. Ignored by default (timing on a shared
//! machine is noisy); run with
//! `cargo test -p orcs-redis --release --test perf -- --ignored --nocapture`.

use std::time::Instant;

use futures_util::StreamExt;
use orcs_core::{
    Admin, ClaimRequest, Clock, Driver, NewJob, QueueLimits, Settle, SystemClock, Unique,
    UniqueUntil,
};
use orcs_redis::{RedisConfig, RedisDriver};
use orcs_tests::services::{self, unique_name};

const N: usize = 20_000;
const IN_FLIGHT: usize = 64;

fn job(queue: &str, keyed: bool) -> NewJob {
    let id = orcs_core::new_job_id();
    let mut job = NewJob::new(id.clone(), "PlainJob", queue, r#"{"n":1}"#, SystemClock.now());
    if keyed {
        job.unique = Some(Unique::new(format!("key-{id}"), UniqueUntil::Finished));
    }
    job
}

/// Microseconds Redis spent in scripts so far (`INFO commandstats`).
async fn script_usec(url: &str) -> u64 {
    let mut conn = redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String =
        redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.expect("INFO");
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split("usec=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// Jobs per second of the wall clock and script microseconds per job.
async fn enqueue(driver: &RedisDriver, url: &str, queue: &str, keyed: bool) -> (f64, f64) {
    let before = script_usec(url).await;
    let started = Instant::now();
    futures_util::stream::iter(0..N)
        .for_each_concurrent(IN_FLIGHT, |_| async move {
            driver.push(vec![job(queue, keyed)]).await.expect("push");
        })
        .await;
    let rate = N as f64 / started.elapsed().as_secs_f64();
    (rate, (script_usec(url).await - before) as f64 / N as f64)
}

async fn drain(driver: &RedisDriver, url: &str, queue: &str) -> (f64, f64) {
    let queues = vec![queue.to_owned()];
    let before = script_usec(url).await;
    let started = Instant::now();
    let mut done = 0;
    while done < N {
        let claim = driver
            .claim(&ClaimRequest::new(&queues, IN_FLIGHT, SystemClock.now()))
            .await
            .expect("claim");
        assert!(!claim.jobs.is_empty(), "jobs left after {done}");
        let settles: Vec<Settle> =
            claim.jobs.into_iter().map(|r| Settle::complete(r.lease)).collect();
        done += settles.len();
        for result in driver.settle(&settles, SystemClock.now()).await {
            result.expect("complete");
        }
    }
    let rate = N as f64 / started.elapsed().as_secs_f64();
    (rate, (script_usec(url).await - before) as f64 / N as f64)
}

#[test]
#[ignore = "a timing measurement; run it by hand"]
fn flow_control_keeps_the_hot_paths_fast() {
    orcs_tests::run(async {
        let Some(url) = services::redis::private_server_or_skip() else { return };
        let config =
            RedisConfig::from_url(&url).expect("url").with_prefix(unique_name("orcs-perf"));
        let driver = RedisDriver::connect(config).await.expect("connect");
        // Warm up the scripts and connections.
        enqueue(&driver, &url, "warm", true).await;

        // Alternating rounds, so the machine's noise falls on both; the best of each counts.
        let (mut plain, mut keyed) = ((0.0, 0.0), (0.0, 0.0));
        for round in 0..3 {
            let p = enqueue(&driver, &url, &format!("plain{round}"), false).await;
            let k = enqueue(&driver, &url, &format!("keyed{round}"), true).await;
            println!("round {round}: plain {p:.1?}, keyed {k:.1?}");
            if p.0 > plain.0 {
                plain = p;
            }
            if k.0 > keyed.0 {
                keyed = k;
            }
        }
        println!(
            "enqueue one by one: plain {plain:.1?}, unique keys {keyed:.1?} (jobs/s, script µs/job)"
        );

        enqueue(&driver, &url, "limited", false).await;
        driver
            .set_limits("limited", &QueueLimits::none().concurrency(IN_FLIGHT as u32))
            .await
            .expect("limit");
        let unlimited = drain(&driver, &url, "plain0").await;
        let limited = drain(&driver, &url, "limited").await;
        let keyed_drain = drain(&driver, &url, "keyed0").await;
        println!(
            "drain: unlimited {unlimited:.1?}, concurrency {IN_FLIGHT} {limited:.1?}, unique keys \
             {keyed_drain:.1?} (jobs/s, script µs/job)"
        );
        let stats = driver.stats("limited", SystemClock.now()).await.expect("stats");
        assert_eq!(stats.processed, N as u64);
        assert!(
            keyed.0 >= 0.85 * plain.0,
            "enqueue with keys at {:.0}% of plain",
            100.0 * keyed.0 / plain.0
        );
        assert!(
            limited.0 >= 0.9 * unlimited.0,
            "limited drain at {:.0}% of unlimited",
            100.0 * limited.0 / unlimited.0
        );
    });
}
