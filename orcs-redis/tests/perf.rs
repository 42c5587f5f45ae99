//! The cost of flow control and batches on the hot paths, against a Redis server of the test's
//! own: enqueue one by one with unique keys against plain, a drain under a concurrency limit
//! equal to the claimer's slots against an unlimited one, and the drain of a batch's children
//! against plain jobs, and the drain of jobs holding a unique key against plain jobs (also in
//! Redis's own instructions, under callgrind). Ignored by default (timing on a shared
//! machine is noisy); run with
//! `cargo test -p orcs-redis --release --test perf -- --ignored --nocapture`
//! (`ORCS_PERF_ROUNDS=n` for more or fewer alternating rounds; medians count).

use std::time::Instant;

use futures_util::StreamExt;
use orcs_core::{
    Admin, ClaimRequest, Clock, Driver, NewBatch, NewJob, QueueLimits, Settle, SystemClock, Unique,
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

/// A driver on `url` under a prefix of its own.
async fn connect(url: &str) -> RedisDriver {
    let config = RedisConfig::from_url(url).expect("url").with_prefix(unique_name("orcs-perf"));
    RedisDriver::connect(config).await.expect("connect")
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

/// `ORCS_PERF_ROUNDS` (default 7): alternating rounds of each measurement.
fn rounds() -> usize {
    std::env::var("ORCS_PERF_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(7).max(1)
}

/// The median of each column (rate, script µs/job).
fn median(samples: &[(f64, f64)]) -> (f64, f64) {
    let mid = |mut column: Vec<f64>| {
        column.sort_by(f64::total_cmp);
        let n = column.len();
        if n % 2 == 1 { column[n / 2] } else { (column[n / 2 - 1] + column[n / 2]) / 2.0 }
    };
    (mid(samples.iter().map(|s| s.0).collect()), mid(samples.iter().map(|s| s.1).collect()))
}

#[test]
#[ignore = "a timing measurement; run it by hand"]
fn flow_control_keeps_the_hot_paths_fast() {
    orcs_tests::run(async {
        let Some(url) = services::redis::private_server_or_skip() else { return };
        let driver = connect(&url).await;
        // Warm up the scripts and connections.
        enqueue(&driver, &url, "warm", true).await;

        // Alternating rounds, each starting with the other kind, so the machine's noise (it is
        // shared) falls on both; the medians count.
        let rounds = rounds();
        let (mut plain, mut keyed) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (p, k) = if round % 2 == 0 {
                let p = enqueue(&driver, &url, &format!("plain{round}"), false).await;
                (p, enqueue(&driver, &url, &format!("keyed{round}"), true).await)
            } else {
                let k = enqueue(&driver, &url, &format!("keyed{round}"), true).await;
                (enqueue(&driver, &url, &format!("plain{round}"), false).await, k)
            };
            println!("enqueue round {round}: plain {p:.1?}, keyed {k:.1?}");
            plain.push(p);
            keyed.push(k);
        }
        let (plain, keyed) = (median(&plain), median(&keyed));
        let enqueue_ratio = keyed.0 / plain.0;
        println!(
            "enqueue one by one, medians of {rounds}: plain {plain:.1?}, unique keys {keyed:.1?} \
             (jobs/s, script µs/job): {:.1}%",
            100.0 * enqueue_ratio
        );

        for round in 0..rounds {
            let queue = format!("limited{round}");
            enqueue(&driver, &url, &queue, false).await;
            driver
                .set_limits(&queue, &QueueLimits::none().concurrency(IN_FLIGHT as u32))
                .await
                .expect("limit");
        }
        let (mut unlimited, mut limited, mut keyed_drain) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let u = drain(&driver, &url, &format!("plain{round}")).await;
            let l = drain(&driver, &url, &format!("limited{round}")).await;
            let k = drain(&driver, &url, &format!("keyed{round}")).await;
            println!("drain round {round}: unlimited {u:.1?}, limited {l:.1?}, keyed {k:.1?}");
            unlimited.push(u);
            limited.push(l);
            keyed_drain.push(k);
        }
        let (unlimited, limited, keyed_drain) =
            (median(&unlimited), median(&limited), median(&keyed_drain));
        println!(
            "drain, medians of {rounds}: unlimited {unlimited:.1?}, concurrency {IN_FLIGHT} \
             {limited:.1?}, unique keys {keyed_drain:.1?} (jobs/s, script µs/job): {:.1}% and \
             {:.1}% of unlimited",
            100.0 * limited.0 / unlimited.0,
            100.0 * keyed_drain.0 / unlimited.0
        );
        let stats = driver.stats("limited0", SystemClock.now()).await.expect("stats");
        assert_eq!(stats.processed, N as u64);
        assert!(
            enqueue_ratio >= 0.85,
            "enqueue with keys at {:.0}% of plain",
            100.0 * enqueue_ratio
        );
        assert!(
            limited.0 >= 0.9 * unlimited.0,
            "limited drain at {:.0}% of unlimited",
            100.0 * limited.0 / unlimited.0
        );
    });
}

/// Jobs of a batch of N children (`push_batch`, stored in steps of 1000) on `queue`.
async fn push_batch_of(driver: &RedisDriver, queue: &str) -> String {
    let id = orcs_core::new_job_id();
    let mut batch = NewBatch::new(id.clone(), SystemClock.now());
    batch.finally = Some(job(queue, false));
    let children: Vec<NewJob> = (0..N).map(|_| job(queue, false)).collect();
    driver.push_batch(batch, children).await.expect("push_batch");
    id
}

/// Script microseconds per job of claiming every job of `queue` (64 at a time), then of settling
/// them all (64 per call): the two halves of a drain, apart.
async fn claim_then_settle(driver: &RedisDriver, url: &str, queue: &str) -> (f64, f64) {
    let queues = vec![queue.to_owned()];
    let before = script_usec(url).await;
    let mut leases = Vec::with_capacity(N);
    while leases.len() < N {
        let claim = driver
            .claim(&ClaimRequest::new(&queues, IN_FLIGHT, SystemClock.now()))
            .await
            .expect("claim");
        assert!(!claim.jobs.is_empty(), "jobs left after {}", leases.len());
        leases.extend(claim.jobs.into_iter().map(|r| r.lease));
    }
    let claimed = script_usec(url).await;
    for chunk in leases.chunks(IN_FLIGHT) {
        let settles: Vec<Settle> = chunk.iter().cloned().map(Settle::complete).collect();
        for result in driver.settle(&settles, SystemClock.now()).await {
            result.expect("complete");
        }
    }
    let settled = script_usec(url).await;
    ((claimed - before) as f64 / N as f64, (settled - claimed) as f64 / N as f64)
}

/// A batch's children drain at >= 70% of the rate of plain jobs: each child's end costs a few
/// hash commands more (its record read, the batch's counters read and written, its index entry
/// removed), and a plain job's none.
#[test]
#[ignore = "a timing measurement; run it by hand"]
fn batch_children_drain_near_plain() {
    orcs_tests::run(async {
        let Some(url) = services::redis::private_server_or_skip() else { return };
        let driver = connect(&url).await;
        enqueue(&driver, &url, "warm", false).await;
        drain(&driver, &url, "warm").await;
        let rounds = rounds();
        let (mut plain, mut children) = (Vec::new(), Vec::new());
        let mut batches = Vec::new();
        for round in 0..rounds {
            let plain_queue = format!("plain{round}");
            let batch_queue = format!("batch{round}");
            let started = Instant::now();
            push_n(&driver, &plain_queue, false).await;
            let plain_push = N as f64 / started.elapsed().as_secs_f64();
            let started = Instant::now();
            batches.push(push_batch_of(&driver, &batch_queue).await);
            let batch_push = N as f64 / started.elapsed().as_secs_f64();
            let (p, c) = if round % 2 == 0 {
                let p = drain(&driver, &url, &plain_queue).await;
                (p, drain(&driver, &url, &batch_queue).await)
            } else {
                let c = drain(&driver, &url, &batch_queue).await;
                (drain(&driver, &url, &plain_queue).await, c)
            };
            println!(
                "round {round}: push {plain_push:.0} / batch {batch_push:.0} jobs/s; drain plain \
                 {p:.1?}, children {c:.1?}"
            );
            plain.push(p);
            children.push(c);
        }
        // The claim and the settle apart, in script time (less noisy than the wall clock).
        let (mut plain_halves, mut child_halves) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (plain_queue, batch_queue) = (format!("plain-s{round}"), format!("batch-s{round}"));
            push_n(&driver, &plain_queue, false).await;
            batches.push(push_batch_of(&driver, &batch_queue).await);
            plain_halves.push(claim_then_settle(&driver, &url, &plain_queue).await);
            child_halves.push(claim_then_settle(&driver, &url, &batch_queue).await);
        }
        println!(
            "script µs per job (claim, settle), medians of {rounds}: plain {:.2?}, batch \
             children {:.2?}",
            median(&plain_halves),
            median(&child_halves)
        );
        // Cancelling a batch of N waiting children: one script over all of them.
        let id = push_batch_of(&driver, "cancelled").await;
        let before = script_usec(&url).await;
        let info = driver.cancel_batch(&id, SystemClock.now()).await.expect("cancel_batch");
        let per_child = (script_usec(&url).await - before) as f64 / N as f64;
        assert_eq!((info.cancelled, info.pending), (N as u64, 0));
        println!("cancel_batch of {N} waiting children: {per_child:.2} script µs per child");
        let (plain, children) = (median(&plain), median(&children));
        let ratio = children.0 / plain.0;
        println!(
            "drain, medians of {rounds}: plain {plain:.1?}, batch children {children:.1?} \
             (jobs/s, script µs/job): {:.1}% of plain",
            100.0 * ratio
        );
        for id in &batches {
            let info = driver.batch(id).await.expect("batch").expect("the batch exists");
            assert_eq!((info.processed, info.pending), (N as u64, 0), "every child counted");
            assert!(info.finished_at.is_some(), "the batch finished");
        }
        assert!(ratio >= 0.7, "batch children drain at {:.0}% of plain", 100.0 * ratio);
    });
}

/// `INFO commandstats` as command -> (calls, usec), and the server's CPU time (`INFO cpu`, user
/// and system, µs).
async fn server_stats(url: &str) -> (std::collections::BTreeMap<String, (u64, u64)>, f64) {
    let mut conn = redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    let mut cpu = 0.0;
    let mut commands = std::collections::BTreeMap::new();
    for line in info.lines() {
        if let Some(v) =
            line.strip_prefix("used_cpu_user:").or_else(|| line.strip_prefix("used_cpu_sys:"))
        {
            cpu += v.trim().parse::<f64>().unwrap_or(0.0) * 1e6;
        }
        let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |f: &str| -> Option<u64> {
            rest.split(',').find_map(|kv| kv.strip_prefix(f)?.strip_prefix('=')?.parse().ok())
        };
        if let (Some(calls), Some(usec)) = (field("calls"), field("usec")) {
            commands.insert(name.to_owned(), (calls, usec));
        }
    }
    (commands, cpu)
}

/// This process's CPU time so far, µs (every thread's, from /proc; 0 where there is none).
fn client_cpu() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e3
}

/// Pushes N jobs to `queue` in pushes of 1000, keyed (`Finished`) or not.
async fn push_n(driver: &RedisDriver, queue: &str, keyed: bool) {
    let jobs: Vec<NewJob> = (0..N).map(|_| job(queue, keyed)).collect();
    for chunk in jobs.chunks(1000) {
        driver.push(chunk.to_vec()).await.expect("push");
    }
}

/// `rounds` rounds, each pushing N plain and N keyed jobs to queues `plain<label><round>` and
/// `keyed<label><round>` and measuring both with `measure`, the other kind first every other
/// round so the machine's noise falls on both; answers (plain, keyed).
async fn keyed_rounds<T, F: Future<Output = T>>(
    driver: &RedisDriver,
    rounds: usize,
    label: &str,
    measure: impl Fn(String) -> F,
) -> (Vec<T>, Vec<T>) {
    let (mut plain, mut keyed) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (p, k) = (format!("plain{label}{round}"), format!("keyed{label}{round}"));
        push_n(driver, &p, false).await;
        push_n(driver, &k, true).await;
        if round % 2 == 0 {
            plain.push(measure(p).await);
            keyed.push(measure(k).await);
        } else {
            keyed.push(measure(k).await);
            plain.push(measure(p).await);
        }
    }
    (plain, keyed)
}

/// One drain's figures per job: script µs of the claims and of the settles, the server's CPU µs,
/// this process's CPU µs, and the commands the scripts ran (calls, µs).
struct Costs {
    claim: f64,
    settle: f64,
    server: f64,
    client: f64,
    commands: Vec<(String, f64, f64)>,
}

/// Claims every job of `queue` 64 at a time and completes each claim's jobs in one settle, as a
/// worker does, measuring [`Costs`].
async fn measured_drain(driver: &RedisDriver, url: &str, queue: &str) -> Costs {
    let queues = vec![queue.to_owned()];
    let (before, server_before) = server_stats(url).await;
    let client_before = client_cpu();
    let (mut claim_usec, mut settle_usec) = (0, 0);
    let mut done = 0;
    let mut last = script_usec(url).await;
    while done < N {
        let claim = driver
            .claim(&ClaimRequest::new(&queues, IN_FLIGHT, SystemClock.now()))
            .await
            .expect("claim");
        assert!(!claim.jobs.is_empty(), "jobs left after {done}");
        let settles: Vec<Settle> =
            claim.jobs.into_iter().map(|r| Settle::complete(r.lease)).collect();
        done += settles.len();
        let claimed = script_usec(url).await;
        for result in driver.settle(&settles, SystemClock.now()).await {
            result.expect("complete");
        }
        let settled = script_usec(url).await;
        claim_usec += claimed - last;
        settle_usec += settled - claimed;
        last = settled;
    }
    let client = client_cpu() - client_before;
    let (after, server_after) = server_stats(url).await;
    let n = N as f64;
    let commands = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .filter_map(|(name, (calls, usec))| {
            let (was, was_usec) = before.get(name).copied().unwrap_or((0, 0));
            (calls > &was)
                .then(|| (name.clone(), (calls - was) as f64 / n, (usec - was_usec) as f64 / n))
        })
        .collect();
    Costs {
        claim: claim_usec as f64 / n,
        settle: settle_usec as f64 / n,
        server: (server_after - server_before) / n,
        client,
        commands,
    }
}

/// The drain of jobs that hold a unique key until they finish, against plain jobs, in
/// alternating rounds: per job, the script time of the claims and of the settles, the server's
/// CPU time (scripts, commands, network), and the commands the scripts ran (their counts are
/// exact, so they compare across runs on a loaded machine); then the wall-clock rates.
#[test]
#[ignore = "a timing measurement; run it by hand"]
fn keyed_drain_near_plain() {
    orcs_tests::run(async {
        let Some(url) = services::redis::private_server_or_skip() else { return };
        let driver = connect(&url).await;
        push_n(&driver, "warm", true).await;
        drain(&driver, &url, "warm").await;
        let rounds = rounds();
        let (driver, url) = (&driver, url.as_str());
        let (plain, keyed) = keyed_rounds(driver, rounds, "-s", |queue| async move {
            measured_drain(driver, url, &queue).await
        })
        .await;
        for (what, costs) in [("plain", &plain), ("keyed", &keyed)] {
            let mid = |f: fn(&Costs) -> f64| {
                let mut v: Vec<f64> = costs.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            println!(
                "{what}: µs per job, medians of {rounds}: claim script {:.2}, settle script {:.2}, \
                 server CPU {:.2}, client CPU {:.2}",
                mid(|c| c.claim),
                mid(|c| c.settle),
                mid(|c| c.server),
                mid(|c| c.client / N as f64),
            );
            println!("{what}: commands per job (calls, µs): {:.3?}", costs[0].commands);
        }
        let (plain, keyed) =
            keyed_rounds(
                driver,
                rounds,
                "",
                |queue| async move { drain(driver, url, &queue).await },
            )
            .await;
        let (plain, keyed) = (median(&plain), median(&keyed));
        println!(
            "drain, medians of {rounds}: plain {plain:.1?}, keyed {keyed:.1?} (jobs/s, script \
             µs/job): {:.1}% of plain",
            100.0 * keyed.0 / plain.0
        );
    });
}

/// Runs `callgrind_control` with `args` on process `pid` (a redis-server under callgrind).
fn callgrind(args: &[&str], pid: &str) {
    let status = std::process::Command::new("callgrind_control")
        .args(args)
        .arg(pid)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("callgrind_control");
    assert!(status.success(), "callgrind_control {args:?}");
}

/// The instructions a redis-server spends per drained job, plain and keyed: with
/// `ORCS_PERF_REDIS_URL` naming a server run under
/// `valgrind --tool=callgrind --instr-atstart=no` and `ORCS_PERF_CALLGRIND_PID` its pid, each
/// drain (one call at a time, so the server does the
/// same work on every run) is instrumented alone: its claims (64 at a time) dumped as
/// `plain<round>-claim`, `keyed<round>-claim` or `batch<round>-claim` (the children of one
/// batch), then its settles (64 per call) as `...-settle`.
/// Read the totals with `callgrind_annotate <file> | head`.
#[test]
#[ignore = "a measurement under callgrind; run it by hand"]
fn keyed_drain_instructions() {
    let (Ok(url), Ok(pid)) =
        (std::env::var("ORCS_PERF_REDIS_URL"), std::env::var("ORCS_PERF_CALLGRIND_PID"))
    else {
        eprintln!("set ORCS_PERF_REDIS_URL and ORCS_PERF_CALLGRIND_PID");
        return;
    };
    orcs_tests::run(async move {
        let config =
            RedisConfig::from_url(&url).expect("url").with_prefix(unique_name("orcs-perf"));
        let driver = RedisDriver::connect(config).await.expect("connect");
        push_n(&driver, "warm", true).await;
        drain(&driver, &url, "warm").await;
        for round in 0..rounds().min(2) {
            for kind in ["plain", "keyed", "batch"] {
                let queue = format!("{kind}{round}");
                match kind {
                    "batch" => {
                        push_batch_of(&driver, &queue).await;
                    }
                    _ => push_n(&driver, &queue, kind == "keyed").await,
                }
                // The claims, then the settles, each dumped on its own.
                callgrind(&["-z"], &pid);
                callgrind(&["-i", "on"], &pid);
                let queues = vec![queue.clone()];
                let mut leases = Vec::with_capacity(N);
                while leases.len() < N {
                    let claim = driver
                        .claim(&ClaimRequest::new(&queues, IN_FLIGHT, SystemClock.now()))
                        .await
                        .expect("claim");
                    assert!(!claim.jobs.is_empty(), "jobs left after {}", leases.len());
                    leases.extend(claim.jobs.into_iter().map(|r| r.lease));
                }
                callgrind(&["-i", "off"], &pid);
                callgrind(&["-d", &format!("{queue}-claim")], &pid);
                callgrind(&["-z"], &pid);
                callgrind(&["-i", "on"], &pid);
                for chunk in leases.chunks(IN_FLIGHT) {
                    let settles: Vec<Settle> =
                        chunk.iter().cloned().map(Settle::complete).collect();
                    for result in driver.settle(&settles, SystemClock.now()).await {
                        result.expect("complete");
                    }
                }
                callgrind(&["-i", "off"], &pid);
                callgrind(&["-d", &format!("{queue}-settle")], &pid);
            }
        }
    });
}

/// Keys held while the steady-state test runs: above 64, where a completion makes `unique` a
/// hash table, and below `hash-max-listpack-entries` (512 on Debian's build), where Redis alone
/// would keep it a listpack.
const HELD: usize = 300;

/// Script µs per job of a keyed queue in a steady state: `HELD` keys held while jobs are claimed
/// 64 at a time, completed, and as many keyed jobs pushed one by one.
async fn steady_keyed(driver: &RedisDriver, url: &str, queue: &str, until: UniqueUntil) -> f64 {
    let job = |queue: &str| {
        let mut job = job(queue, false);
        job.unique = Some(Unique::new(format!("key-{}", job.id), until));
        job
    };
    let queues = vec![queue.to_owned()];
    let jobs: Vec<NewJob> = (0..HELD).map(|_| job(queue)).collect();
    driver.push(jobs).await.expect("push");
    let before = script_usec(url).await;
    let mut done = 0;
    while done < N {
        let now = SystemClock.now();
        let claim = driver.claim(&ClaimRequest::new(&queues, IN_FLIGHT, now)).await.expect("claim");
        let settles: Vec<Settle> =
            claim.jobs.iter().map(|job| Settle::complete(job.lease.clone())).collect();
        for result in driver.settle(&settles, now).await {
            result.expect("complete");
        }
        futures_util::stream::iter(0..settles.len())
            .for_each_concurrent(IN_FLIGHT, |_| async move {
                driver.push(vec![job(queue)]).await.expect("push");
            })
            .await;
        done += settles.len();
    }
    (script_usec(url).await - before) as f64 / N as f64
}

/// A keyed queue holding a few hundred keys: each job's push, claim and completion, in script
/// µs (the commands on `unique` compared each key with every key held while it was a listpack,
/// see "Unique keys" in the README).
#[test]
#[ignore = "a timing measurement; run it by hand"]
fn held_keys_keep_keyed_jobs_cheap() {
    orcs_tests::run(held_keys_cost(UniqueUntil::Finished));
}

/// [`held_keys_keep_keyed_jobs_cheap`] with `Started` keys, which the claim frees.
#[test]
#[ignore = "a timing measurement; run it by hand"]
fn held_started_keys_keep_keyed_jobs_cheap() {
    orcs_tests::run(held_keys_cost(UniqueUntil::Started));
}

async fn held_keys_cost(until: UniqueUntil) {
    let Some(url) = services::redis::private_server_or_skip() else { return };
    let driver = connect(&url).await;
    let mut costs: Vec<f64> = Vec::new();
    for round in 0..rounds() {
        let usec = steady_keyed(&driver, &url, &format!("held{round}"), until).await;
        println!("round {round}: {usec:.2} script µs per keyed job with {HELD} keys held");
        costs.push(usec);
    }
    costs.sort_by(f64::total_cmp);
    println!("median: {:.2} script µs per keyed job ({until:?} keys)", costs[costs.len() / 2]);
}
