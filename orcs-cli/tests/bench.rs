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
