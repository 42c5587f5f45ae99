//! `config/queue.toml` and the environment, as `Config::load` resolves them: any text gives a
//! configuration or an error that names the file or variable, never a panic.
//!
//! Input: the file's text, then a NUL byte, then `KEY=VALUE` lines for the environment.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use orcs_core::{Config, Error};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (file, env) = text.split_once('\0').unwrap_or((&text, ""));
    let vars: Vec<(&str, &str)> = env.lines().filter_map(|line| line.split_once('=')).collect();
    let lookup =
        |key: &str| vars.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_owned());
    match Config::from_sources(Some((Path::new("config/queue.toml"), file)), lookup) {
        Ok(config) => {
            assert!(config.worker.concurrency >= 1);
            assert!(config.max_payload_bytes >= 1);
            let _ = config.worker_queues();
        }
        Err(Error::Config { key, message }) => {
            assert!(!key.is_empty() && !message.is_empty());
        }
        Err(other) => panic!("not a configuration error: {other:?}"),
    }
});
