//! `orcs demo`: dispatches a known mix of the example jobs, works them, and checks that the final
//! counters are exactly what the mix implies. On the memory driver (the default) everything runs
//! in this process, so it needs no service.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orcs_core::{DispatchOptions, FailedQuery, MAX_PAGE, Outcome, Queue, QueueStats, Worker};
use tokio::sync::Notify;

use crate::config::{Config, DriverKind};
use crate::connect;
use crate::examples::{
    GenerateReportJob, ImageOperation, ProcessImageJob, SendEmailJob, SendWelcomeEmailJob, Simulate,
};
use crate::output::{self, say};

/// The demo's queues, in the worker's order: its own, so that on a shared backend it never takes
/// or leaves jobs in an application's `emails` or `reports`.
const QUEUES: [&str; 4] = ["demo-high-priority", "demo-emails", "demo-images", "demo-reports"];
const HIGH: &str = QUEUES[0];
const EMAILS: &str = QUEUES[1];
const IMAGES: &str = QUEUES[2];
const REPORTS: &str = QUEUES[3];
/// Retries take milliseconds here, not the jobs' real minutes.
const RETRY_DELAY: Duration = Duration::from_millis(20);
/// The whole demo normally takes a second or two; past this something is wrong.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Jobs whose attempts fail more often than they are retried: these end in the failed set.
const ALWAYS: u32 = 100;

/// What the mix should leave in each queue's counters.
#[derive(Debug, Default)]
struct Expected {
    /// Queue -> (completed, failed for good).
    by_queue: BTreeMap<&'static str, (u64, u64)>,
    /// Attempts expected to be retried.
    retries: u64,
}

impl Expected {
    fn add(&mut self, queue: &'static str, done: u64, failed: u64, retries: u64) {
        let entry = self.by_queue.entry(queue).or_default();
        entry.0 += done;
        entry.1 += failed;
        self.retries += retries;
    }

    fn total(&self) -> u64 {
        self.by_queue.values().map(|(d, f)| d + f).sum()
    }
}

fn simulate(work_ms: u64, fail_attempts: u32, panic: bool) -> Option<Simulate> {
    Some(Simulate { work_ms, fail_attempts, panic, ..Simulate::default() })
}

/// Dispatches the mix and returns what it should lead to.
async fn dispatch_mix(queue: &Queue) -> Result<Expected> {
    let fast = DispatchOptions::new().retry_delay(RETRY_DELAY);
    let mut expected = Expected::default();

    // Plain emails: succeed at once.
    let emails = (0..10u64).map(|i| SendEmailJob {
        to: format!("user{i}@example.com"),
        subject: "Welcome!".into(),
        body: "Thanks for signing up".into(),
        simulate: simulate(20 + i * 7 % 60, 0, false),
    });
    queue.dispatch_many_with(emails, fast.clone().queue(EMAILS)).await?;
    expected.add(EMAILS, 10, 0, 0);

    // The seed's custom options: another queue, a higher priority.
    let urgent = (0..3).map(|i| SendEmailJob {
        to: format!("vip{i}@example.com"),
        subject: "Your order shipped".into(),
        body: String::new(),
        simulate: simulate(30, 0, false),
    });
    queue.dispatch_many_with(urgent, fast.clone().queue(HIGH).priority(20)).await?;
    expected.add(HIGH, 3, 0, 0);

    // Welcome emails that fail once or twice, then succeed.
    for i in 0..6u32 {
        let fails = 1 + i % 2;
        let job = SendWelcomeEmailJob {
            user_id: u64::from(i) + 1,
            email: format!("new{i}@example.com"),
            name: format!("User {i}"),
            simulate: simulate(15, fails, false),
        };
        queue.dispatch_with(job, fast.clone().queue(EMAILS)).await?;
        expected.add(EMAILS, 1, 0, u64::from(fails));
    }
    // Welcome emails that never get through: 4 attempts, then the failed set.
    for i in 0..2u32 {
        let job = SendWelcomeEmailJob {
            user_id: 100 + u64::from(i),
            email: format!("bounce{i}@invalid.example"),
            name: String::new(),
            simulate: simulate(10, ALWAYS, false),
        };
        queue.dispatch_with(job, fast.clone().queue(EMAILS)).await?;
        expected.add(EMAILS, 0, 1, 3);
    }

    // Images: slower work; one panics once, two panic on every attempt (3 attempts in all).
    let operations = vec![
        ImageOperation::Resize { width: 1920, height: 1080 },
        ImageOperation::Thumbnail { size: 200 },
        ImageOperation::Watermark { text: "(c) 2026".into() },
    ];
    for i in 0..9u64 {
        let (fails, done, failed, retries) = match i {
            0..6 => (0, 1, 0, 0),
            6 => (1, 1, 0, 1),
            _ => (ALWAYS, 0, 1, 2),
        };
        let job = ProcessImageJob {
            image_id: format!("img-{i}"),
            operations: operations.clone(),
            simulate: simulate(60 + i * 25, fails, fails > 0),
        };
        queue.dispatch_with(job, fast.clone().queue(IMAGES)).await?;
        expected.add(IMAGES, done, failed, retries);
    }

    // Reports, delayed; the last one also fails once.
    for (i, delay_ms) in [200u64, 400, 600, 800, 300].into_iter().enumerate() {
        let fails = u32::from(i == 4);
        let job = GenerateReportJob {
            report: "sales".into(),
            period: format!("2026-{:02}", i + 1),
            simulate: simulate(40, fails, false),
        };
        queue
            .dispatch_with(job, fast.clone().queue(REPORTS).delay(Duration::from_millis(delay_ms)))
            .await?;
        expected.add(REPORTS, 1, 0, u64::from(fails));
    }
    Ok(expected)
}

#[derive(Debug, Default)]
struct Counters {
    done: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn settled(&self) -> u64 {
        self.done.load(Ordering::SeqCst) + self.failed.load(Ordering::SeqCst)
    }

    fn message(&self) -> String {
        format!(
            "{} done, {} retried, {} failed",
            self.done.load(Ordering::SeqCst),
            self.retried.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst)
        )
    }
}

pub(crate) async fn run(config: &Config, driver: Option<DriverKind>) -> Result<()> {
    let mut config = config.clone();
    config.driver = driver.unwrap_or(DriverKind::Memory);
    let queue = connect(&config)
        .await
        .with_context(|| format!("demo: cannot start the {} driver", config.driver))?;

    // A shared backend may hold other counts: compare differences, on queues that start idle.
    let mut before = BTreeMap::new();
    for name in QUEUES {
        let stats = queue.stats(name).await?;
        if stats.pending + stats.delayed + stats.reserved > 0 {
            bail!(
                "demo: queue {name} on the {} driver already holds jobs; the demo needs its queues idle: \
                 clear it with `orcs queue:clear {name} --force`, or run the demo on the memory driver",
                config.driver
            );
        }
        before.insert(name, stats);
    }

    let started = Instant::now();
    let expected = dispatch_mix(&queue).await?;
    let total = expected.total();
    say!(
        "demo: dispatched {total} example jobs to {} on the {} driver (some fail then succeed, some fail for good, some delayed)",
        QUEUES.join(", "),
        config.driver
    );

    // The bar shares stdout with the demo's other lines, and only a terminal gets it.
    let target = if std::io::stdout().is_terminal() {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} settled  {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let counters = Arc::new(Counters::default());
    let settled = Arc::new(Notify::new());
    let worker = {
        let (counters, settled, bar) = (Arc::clone(&counters), Arc::clone(&settled), bar.clone());
        Worker::new(queue.clone(), crate::examples::registry())
            .queues(QUEUES)
            .concurrency(8)
            .sleep(Duration::from_millis(100))
            .on_event(move |event| {
                match event.outcome {
                    Outcome::Done => {
                        counters.done.fetch_add(1, Ordering::SeqCst);
                        bar.inc(1);
                    }
                    Outcome::Retry { .. } => {
                        counters.retried.fetch_add(1, Ordering::SeqCst);
                    }
                    Outcome::Failed { .. } => {
                        counters.failed.fetch_add(1, Ordering::SeqCst);
                        bar.inc(1);
                    }
                    _ => {}
                }
                bar.set_message(counters.message());
                settled.notify_one();
            })
            .spawn()
    };
    let wait = async {
        while counters.settled() < total {
            settled.notified().await;
        }
    };
    let finished = tokio::time::timeout(SETTLE_LIMIT, wait).await.is_ok();
    worker.shutdown().await.context("demo: the worker failed")?;
    bar.finish_and_clear();
    if !finished {
        bail!(
            "demo: only {} of {total} jobs settled within {} s ({}); run with RUST_LOG=info to see why",
            counters.settled(),
            SETTLE_LIMIT.as_secs(),
            counters.message()
        );
    }
    say!(
        "demo: {} in {:.2}s (expected {} retries)",
        counters.message(),
        started.elapsed().as_secs_f64(),
        expected.retries
    );

    let mut after = Vec::new();
    for name in QUEUES {
        after.push(queue.stats(name).await?);
    }
    output::write_stdout(&output::stats_table(&after));
    let problems = compare(&expected, &before, &after);
    let cleaned = clean_up(&queue).await;
    if !problems.is_empty() {
        bail!("demo: stats do not match the dispatched mix: {}", problems.join("; "));
    }
    say!("demo: stats match the dispatched mix");
    let forgot = cleaned.context("demo: cannot clean up after itself")?;
    if config.driver != DriverKind::Memory {
        say!(
            "demo: cleaned up: cleared its queues ({}) and forgot its {forgot} failed jobs; their \
             counters stay",
            QUEUES.join(", ")
        );
    }
    Ok(())
}

/// Leaves a shared backend as the demo found it, but for the counters: clears the demo's queues
/// and forgets the failed jobs it made on purpose. Returns how many were forgotten.
async fn clean_up(queue: &Queue) -> Result<u64> {
    let mut forgot = 0;
    for name in QUEUES {
        queue.clear(name).await?;
        loop {
            let page = queue.failed_jobs(&FailedQuery::new(MAX_PAGE).queue(name)).await?;
            if page.is_empty() {
                break;
            }
            for job in &page {
                match queue.driver().forget_failed(&job.id).await {
                    Ok(()) => forgot += 1,
                    // Forgotten meanwhile by someone else: gone either way.
                    Err(orcs_core::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(forgot)
}

/// Every difference between the counters and what the mix implies.
fn compare(
    expected: &Expected,
    before: &BTreeMap<&str, QueueStats>,
    after: &[QueueStats],
) -> Vec<String> {
    let mut problems = Vec::new();
    for stats in after {
        let base = before.get(stats.queue.as_str()).cloned().unwrap_or_default();
        let (done, failed) =
            expected.by_queue.get(stats.queue.as_str()).copied().unwrap_or_default();
        let checks = [
            ("pending", stats.pending, 0),
            ("delayed", stats.delayed, 0),
            ("reserved", stats.reserved, 0),
            ("processed", stats.processed - base.processed.min(stats.processed), done),
            ("failed", stats.failed - base.failed.min(stats.failed), failed),
            (
                "failed_total",
                stats.failed_total - base.failed_total.min(stats.failed_total),
                failed,
            ),
        ];
        for (what, got, want) in checks {
            if got != want {
                problems.push(format!("{} {what} is {got}, expected {want}", stats.queue));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_names_each_difference() {
        let mut expected = Expected::default();
        expected.add("emails", 2, 1, 0);
        let mut emails = QueueStats::new("emails");
        emails.processed = 2;
        emails.failed_total = 1;
        let after = [emails];
        let problems = compare(&expected, &BTreeMap::new(), &after);
        assert_eq!(problems, ["emails failed is 0, expected 1"]);
    }
}
