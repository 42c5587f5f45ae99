//! `orcs bench` prints one JSON line with the peer harnesses' keys, and refuses bad arguments.

use std::process::Command;

use serde_json::Value;

fn orcs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_orcs"))
        .args(args)
        .env_remove("QUEUE_DRIVER")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("the orcs binary runs")
}

#[test]
fn bench_on_the_memory_driver_prints_the_peer_keys() {
    let out =
        orcs(&["--driver", "memory", "bench", "--n", "2000", "--phases", "single,bulk,drain"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(line["impl"], "orcs");
    assert_eq!(line["driver"], "memory");
    assert_eq!(line["n"], 2000);
    for key in ["enqueue_single_jps", "enqueue_bulk_jps", "drain_jps", "drain_secs"] {
        assert!(line[key].as_f64().is_some_and(|v| v > 0.0), "{key} missing in {line}");
    }
    assert!(line.get("drain_error").is_none(), "{line}");
    // The payload is padded to exactly 102 bytes (the workload's 101-103), whatever the digits of
    // its float timestamp and index.
    assert_eq!(line["payload_bytes"], 102, "{line}");
}

/// The flow-control phases run against their plain phases in alternating rounds: both rates,
/// every round's, and the median and worst of the rounds' ratios.
#[test]
fn bench_pairs_the_flow_control_phases_with_their_plain_ones() {
    let out = orcs(&[
        "--driver",
        "memory",
        "bench",
        "--n",
        "1000",
        "--phases",
        "single-unique,drain-limited",
    ]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    for key in ["enqueue_single_unique", "drain_limited"] {
        let mut counts = Vec::new();
        for rate in [format!("{key}_jps"), format!("{key}_plain_jps")] {
            assert!(line[&rate].as_f64().is_some_and(|v| v > 0.0), "{rate} missing in {line}");
            let rounds = line[format!("{rate}_rounds")].as_array().expect("every round's rate");
            // `PAIRED_ROUNDS` to `PAIRED_MAX_ROUNDS` in src/bench.rs: these short rounds run
            // more than the five.
            assert!((5..=25).contains(&rounds.len()), "{rate}: {line}");
            counts.push(rounds.len());
        }
        assert_eq!(counts[0], counts[1], "both modes run once a round: {line}");
        let ratio = line[format!("{key}_vs_plain")].as_f64().expect("the median ratio");
        let worst = line[format!("{key}_vs_plain_min")].as_f64().expect("the worst ratio");
        assert!(worst > 0.0 && worst <= ratio, "{key}: {line}");
    }
}

#[test]
fn bench_refuses_unknown_phases_and_zero_jobs() {
    let out = orcs(&["--driver", "memory", "bench", "--phases", "warp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warp"));
    let out = orcs(&["--driver", "memory", "bench", "--n", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--n"));
}

#[test]
fn bench_payload_size_does_not_depend_on_the_index_or_the_clock() {
    // Job 0's index prints one digit and job 99's two; the timestamp's float digits vary from
    // run to run. The payload is padded to the same 102 bytes whatever they print.
    for n in ["1", "100"] {
        let out = orcs(&["--driver", "memory", "bench", "--n", n, "--phases", "single"]);
        assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        let line: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
        assert_eq!(line["payload_bytes"], 102, "--n {n}: {line}");
    }
}

/// The drain-features phase on one driver: both drains' rates, their ratio and every round's.
fn drain_features_on(driver_args: &[&str]) -> Value {
    drain_features_phase(driver_args, "drain-features")
}

fn drain_features_phase(driver_args: &[&str], phase: &str) -> Value {
    let mut args = driver_args.to_vec();
    args.extend(["bench", "--n", "300", "--phases", phase]);
    let out = orcs(&args);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert!(line.get("drain_features_error").is_none(), "{line}");
    for key in ["drain_features_jps", "drain_features_plain_jps", "drain_features_vs_plain"] {
        assert!(line[key].as_f64().is_some_and(|v| v > 0.0), "{key} missing in {line}");
    }
    let rounds = line["drain_features_rounds"].as_u64().expect("rounds");
    for key in ["drain_features_jps_rounds", "drain_features_plain_jps_rounds"] {
        assert_eq!(line[key].as_array().map(Vec::len), Some(rounds as usize), "{key} in {line}");
    }
    let (median, worst) =
        (line["drain_features_vs_plain"].as_f64(), line["drain_features_vs_plain_min"].as_f64());
    assert!(worst <= median, "{line}");
    line
}

#[test]
fn bench_drain_features_on_the_memory_driver() {
    drain_features_on(&["--driver", "memory"]);
}

#[test]
fn bench_drain_features_each_reports_every_feature_alone() {
    let line = drain_features_phase(&["--driver", "memory"], "drain-features-each");
    for feature in ["unique", "limit", "ops"] {
        let key = format!("drain_features_{feature}_vs_plain");
        assert!(line[&key].as_f64().is_some_and(|v| v > 0.0), "{key} missing in {line}");
    }
}

#[test]
fn bench_drain_features_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("orcs-bench-features-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    let line = drain_features_on(&["--driver", "database", "--url", &url]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(line["driver"], "database", "{line}");
}
