//! The PostgreSQL outbox relayed to Redis: a rollback leaves nothing, a commit runs the job once,
//! a row pushed again after its job ran stores nothing, `run_relay` wakes on the commit, and
//! 1,000 rows relayed by a process killed with SIGKILL again and again run exactly once.
//!
//! PostgreSQL: a schema per test; Redis: a private `redis-server` per test. The kill test runs
//! `examples/outbox_relay`, which `cargo test` builds beside this test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use orcs::outbox::{KEY_PREFIX, Outbox, OutboxConfig};
use orcs::prelude::*;
use orcs::sqlx::PgPool;
use orcs_tests::services::redis::private_server_or_skip;
use serde::{Deserialize, Serialize};

mod common;

const QUEUE: &str = "outbox";

/// Marks its number as run, once per run.
#[derive(Serialize, Deserialize)]
struct Tick {
    n: usize,
}

/// How many times each `Tick` ran, by number.
struct Runs(Mutex<Vec<u32>>);

impl Runs {
    fn new(jobs: usize) -> Arc<Self> {
        Arc::new(Self(Mutex::new(vec![0; jobs])))
    }

    fn counts(&self) -> Vec<u32> {
        self.0.lock().expect("runs").clone()
    }
}

impl Job for Tick {
    const NAME: &'static str = "Tick";
    const QUEUE: &'static str = QUEUE;

    fn needs(needs: &mut orcs::Needs) {
        needs.state::<Arc<Runs>>();
    }

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        let runs = ctx.state::<Arc<Runs>>()?;
        let mut counts = runs.0.lock().expect("runs");
        counts[self.n] += 1;
        Ok(())
    }
}

/// PostgreSQL in a schema of its own, a private Redis, and an outbox between them.
struct World {
    database_url: String,
    redis_url: String,
    pool: PgPool,
    outbox: Outbox,
    queue: Queue,
}

impl World {
    async fn new(config: OutboxConfig) -> Option<Self> {
        let database_url = common::schema_url("orcs_outbox").await?;
        let redis_url = private_server_or_skip()?;
        let pool = PgPool::connect(&database_url).await.expect("connect to PostgreSQL");
        let outbox = Outbox::new(pool.clone(), config).expect("an outbox");
        outbox.setup().await.expect("create the outbox table");
        let queue = Queue::connect(&redis_url).await.expect("connect to Redis");
        Some(Self { database_url, redis_url, pool, outbox, queue })
    }

    async fn stats(&self) -> orcs::QueueStats {
        self.queue.stats(QUEUE).await.expect("stats")
    }

    /// Runs what the queue holds with a worker that stops when it is empty.
    async fn work(&self, runs: &Arc<Runs>) -> WorkerSummary {
        let registry = Registry::new().register::<Tick>().state(runs.clone());
        Worker::new(self.queue.clone(), registry)
            .queues([QUEUE])
            .stop_when_empty(true)
            .run()
            .await
            .expect("work")
    }
}

/// Bounds a test: each is well under a minute.
async fn bounded<F: Future<Output = ()>>(within: Duration, test: F) {
    tokio::time::timeout(within, test).await.expect("the test finished in time");
}

#[tokio::test]
async fn a_rollback_leaves_no_row_and_dispatches_nothing() {
    let Some(world) = World::new(OutboxConfig::new()).await else { return };
    bounded(Duration::from_secs(30), async {
        let mut tx = world.pool.begin().await.expect("begin");
        world
            .outbox
            .dispatch_in(&world.queue, &mut tx, &Tick { n: 0 }, &DispatchOptions::new())
            .await
            .expect("write the job");
        tx.rollback().await.expect("roll back");
        assert_eq!(world.outbox.pending().await.expect("count"), 0, "no row");
        assert_eq!(world.outbox.relay_once(&world.queue).await.expect("relay"), 0);
        let stats = world.stats().await;
        assert_eq!((stats.pending, stats.delayed), (0, 0), "nothing dispatched");
    })
    .await;
}

#[tokio::test]
async fn a_commit_is_relayed_and_runs_once_even_when_its_row_is_pushed_again() {
    let Some(world) = World::new(OutboxConfig::new()).await else { return };
    bounded(Duration::from_secs(30), async {
        let job = world.queue.prepare(&Tick { n: 0 }, &DispatchOptions::new()).expect("prepare");
        let mut tx = world.pool.begin().await.expect("begin");
        world.outbox.push_in(&mut tx, vec![job.clone()]).await.expect("write the job");
        tx.commit().await.expect("commit");
        assert_eq!(world.outbox.pending().await.expect("count"), 1);

        assert_eq!(world.outbox.relay_once(&world.queue).await.expect("relay"), 1);
        assert_eq!(world.outbox.pending().await.expect("count"), 0, "relayed rows are deleted");
        let info = world.queue.driver().get(&job.id, world.queue.now()).await.expect("get");
        let stored = info.expect("the job is in Redis under its own id").job;
        let key = stored.unique.expect("the relay gave it a key").key;
        assert_eq!(key, format!("{KEY_PREFIX}{}", job.id));

        let runs = Runs::new(1);
        assert_eq!(world.work(&runs).await.done, 1);
        assert_eq!(world.stats().await.processed, 1);

        // What a relay that died after its push and before its delete leaves: the row again,
        // while its job has already run and left Redis.
        let mut tx = world.pool.begin().await.expect("begin");
        world.outbox.push_in(&mut tx, vec![job]).await.expect("write the row again");
        tx.commit().await.expect("commit");
        assert_eq!(world.outbox.relay_once(&world.queue).await.expect("relay"), 1);
        assert_eq!(world.outbox.pending().await.expect("count"), 0);
        assert_eq!(world.work(&runs).await.done, 0, "the second push stored nothing");
        let stats = world.stats().await;
        assert_eq!((stats.processed, stats.pending, stats.delayed), (1, 0, 0));
        assert_eq!(runs.counts(), [1]);
    })
    .await;
}

#[tokio::test]
async fn jobs_with_keys_of_their_own_and_bad_names_are_refused() {
    let Some(world) = World::new(OutboxConfig::new()).await else { return };
    bounded(Duration::from_secs(30), async {
        let mut tx = world.pool.begin().await.expect("begin");
        let keyed = DispatchOptions::new().unique("user-7", orcs::UniqueUntil::Finished);
        let err = world
            .outbox
            .dispatch_in(&world.queue, &mut tx, &Tick { n: 0 }, &keyed)
            .await
            .expect_err("a keyed job is refused")
            .to_string();
        assert!(err.contains("unique key of its own") && err.contains("user-7"), "{err}");
        tx.rollback().await.expect("roll back");

        let err = Outbox::new(world.pool.clone(), OutboxConfig::new().with_table("jobs; DROP"))
            .expect_err("not an identifier")
            .to_string();
        assert!(err.contains("not a plain identifier"), "{err}");
        let short = OutboxConfig::new().with_dedupe_window(Duration::from_secs(60));
        let err = Outbox::new(world.pool.clone(), short).expect_err("too short").to_string();
        assert!(err.contains("shorter than 10 claim timeouts"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn the_relay_wakes_on_the_commit_and_stops_on_shutdown() {
    // A poll a minute away: only the notification can relay the job in time.
    let config = OutboxConfig::new().with_poll_interval(Duration::from_secs(60));
    let Some(world) = World::new(config).await else { return };
    bounded(Duration::from_secs(30), async {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn({
            let outbox = world.outbox.clone();
            let queue = world.queue.clone();
            async move { outbox.run_relay(queue, async { drop(stopped.await) }).await }
        });
        // Let the relay listen and go idle first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut tx = world.pool.begin().await.expect("begin");
        world
            .outbox
            .dispatch_in(&world.queue, &mut tx, &Tick { n: 0 }, &DispatchOptions::new())
            .await
            .expect("write the job");
        tx.commit().await.expect("commit");
        let relayed = tokio::time::timeout(Duration::from_secs(10), async {
            while world.stats().await.pending == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(relayed.is_ok(), "the commit's NOTIFY woke the relay");
        stop.send(()).expect("the relay runs");
        assert_eq!(relay.await.expect("join").expect("relay"), 1);
        assert_eq!(world.outbox.pending().await.expect("count"), 0);
    })
    .await;
}

#[cfg(unix)]
mod killed {
    use super::*;
    use std::path::PathBuf;
    use std::process::Stdio;
    use tokio::process::{Child, Command};

    const JOBS: usize = 1_000;

    /// `examples/outbox_relay`, built by `cargo test` beside this test's binary.
    fn relay_binary() -> PathBuf {
        let exe = std::env::current_exe().expect("the test's path");
        // target/<profile>/deps/outbox-HASH
        let profile = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
        let binary = profile.join("examples").join("outbox_relay");
        assert!(
            binary.exists(),
            "{} is missing: run `cargo test -p orcs --all-features` (which builds the examples) \
             or `cargo build -p orcs --example outbox_relay --features postgres,redis` first",
            binary.display()
        );
        // `cargo test --test outbox` does not rebuild examples: refuse to test a stale relay.
        let modified = |path: &std::path::Path| {
            std::fs::metadata(path)
                .and_then(|meta| meta.modified())
                .unwrap_or_else(|e| panic!("cannot read the time of {}: {e}", path.display()))
        };
        let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for source in ["examples/outbox_relay.rs", "src/outbox.rs"] {
            assert!(
                modified(&binary) >= modified(&crate_dir.join(source)),
                "{} is older than {source}: run `cargo build -p orcs --example outbox_relay \
                 --features postgres,redis`, or `cargo test -p orcs --all-features` without \
                 naming a test",
                binary.display()
            );
        }
        binary
    }

    fn start_relay(world: &World) -> Child {
        Command::new(relay_binary())
            .env("DATABASE_URL", &world.database_url)
            .env("REDIS_URL", &world.redis_url)
            // Small batches: many transactions to be killed in the middle of.
            .env("OUTBOX_BATCH_SIZE", "10")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the relay example")
    }

    /// Jobs the queue holds or held: every push that stored one.
    async fn in_redis(world: &World) -> u64 {
        let s = world.stats().await;
        s.pending + s.delayed + s.reserved + s.processed + s.failed
    }

    #[tokio::test]
    async fn a_relay_killed_mid_relay_again_and_again_delivers_every_row_exactly_once() {
        let Some(world) = World::new(OutboxConfig::new()).await else { return };
        bounded(Duration::from_secs(50), async {
            for chunk in 0..10 {
                let mut tx = world.pool.begin().await.expect("begin");
                let jobs = (chunk * 100..(chunk + 1) * 100)
                    .map(|n| world.queue.prepare(&Tick { n }, &DispatchOptions::new()))
                    .collect::<orcs::Result<Vec<_>>>()
                    .expect("prepare");
                world.outbox.push_in(&mut tx, jobs).await.expect("write the jobs");
                tx.commit().await.expect("commit");
            }
            assert_eq!(world.outbox.pending().await.expect("count"), JOBS as u64);

            let runs = Runs::new(JOBS);
            let worker = Worker::new(
                world.queue.clone(),
                Registry::new().register::<Tick>().state(runs.clone()),
            )
            .queues([QUEUE])
            .concurrency(8)
            .spawn();

            // Kill the relay each time it has made some progress, until it was killed at least
            // twice and once caught between its push and its delete (rows both in Redis and
            // still in the outbox: about every other kill lands there), at most 20 times.
            let mut kills = 0;
            let mut caught = 0;
            let mut remaining = JOBS as u64;
            while kills < 20 && (kills < 2 || caught == 0) {
                let mut relay = start_relay(&world);
                let target = remaining.saturating_sub(20);
                loop {
                    let now = world.outbox.pending().await.expect("count");
                    if now <= target || now == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                relay.start_kill().expect("SIGKILL the relay");
                relay.wait().await.expect("reap the relay");
                kills += 1;
                // Dead relay, no change to the outbox until the next one: a row pushed and not
                // deleted is counted on both sides.
                remaining = world.outbox.pending().await.expect("count");
                let both = (remaining + in_redis(&world).await).saturating_sub(JOBS as u64);
                if both > 0 {
                    caught += 1;
                }
                println!("kill {kills}: {remaining} rows left, {both} of them already in Redis");
                // The hard case: let the worker run those jobs and delete them from Redis before
                // the next relay pushes their rows again.
                loop {
                    let s = world.stats().await;
                    if s.pending + s.delayed + s.reserved == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if remaining == 0 {
                    break;
                }
            }
            assert!(kills >= 2, "the relay was killed at least twice mid-relay");
            assert!(caught > 0, "no kill fell between a push and its delete in {kills} tries");

            // The last relay, left to finish.
            let mut relay = start_relay(&world);
            while world.outbox.pending().await.expect("count") > 0
                || world.stats().await.processed < JOBS as u64
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            relay.start_kill().expect("stop the relay");
            relay.wait().await.expect("reap the relay");
            let summary = worker.shutdown().await.expect("the worker stops");

            let stats = world.stats().await;
            println!("{kills} kills, {caught} between a push and its delete; {stats:?}");
            assert_eq!(stats.processed, JOBS as u64, "processed == 1,000 exactly");
            assert_eq!(summary.done, JOBS as u64);
            assert_eq!(
                (stats.pending, stats.delayed, stats.reserved, stats.failed),
                (0, 0, 0, 0),
                "nothing pending or failed"
            );
            assert_eq!(world.outbox.pending().await.expect("count"), 0, "the outbox is empty");
            let counts = runs.counts();
            let wrong: Vec<_> = (0..JOBS).filter(|&n| counts[n] != 1).collect();
            assert!(wrong.is_empty(), "jobs not run exactly once: {wrong:?}");
        })
        .await;
    }
}
