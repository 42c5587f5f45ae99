//! Finding the Redis server (and Redis Cluster) the Redis driver's tests use.
//!
//! A single server: `ORCS_TEST_REDIS_URL` if set; otherwise, under `ORCS_TEST_DOCKER=1`, a Redis
//! container started once per test process (see [`super::docker`]); otherwise a `redis-server`
//! from `PATH` started once per test process on a free loopback port. Either way every case works
//! under a key prefix of its own. A cluster: `ORCS_TEST_REDIS_CLUSTER_URL`
//! (`redis+cluster://host:port,...`) if set; otherwise three `redis-server`s started once per
//! test process and joined into a 3-master cluster with `redis-cli --cluster create`. Otherwise
//! the tests skip loudly (a failure under `ORCS_TEST_REQUIRE_SERVICES=1`). The cluster and the
//! private servers ([`private_server_or_skip`]: ACL, TLS, dropped connections) are always local
//! `redis-server` processes, containers or not.
//!
//! Every server started here is watched by a shell loop that stops it as soon as the test
//! process is gone, so no server outlives the run, even after a crash or a kill.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The variable that names a single test server (`redis://...`).
pub const URL_VAR: &str = "ORCS_TEST_REDIS_URL";

/// The variable that names a test cluster (`redis+cluster://host:port,...`).
pub const CLUSTER_URL_VAR: &str = "ORCS_TEST_REDIS_CLUSTER_URL";

/// The URL of the test server, or `None` after a loud skip.
pub fn redis_url_or_skip() -> Option<String> {
    static LOCAL: OnceLock<Result<String, String>> = OnceLock::new();
    if let Some(url) = from_env(URL_VAR) {
        return Some(url);
    }
    if super::docker::docker_requested() {
        return match super::docker::redis_url() {
            Ok(url) => Some(url),
            Err(why) => super::skip("Redis (Docker)", &why),
        };
    }
    match LOCAL.get_or_init(|| start_single(&[])) {
        Ok(url) => Some(url.clone()),
        Err(why) => super::skip("Redis", why),
    }
}

/// The URL of the test cluster, or `None` after a loud skip.
pub fn redis_cluster_url_or_skip() -> Option<String> {
    static LOCAL: OnceLock<Result<String, String>> = OnceLock::new();
    if let Some(url) = from_env(CLUSTER_URL_VAR) {
        return Some(url);
    }
    match LOCAL.get_or_init(start_cluster) {
        Ok(url) => Some(url.clone()),
        Err(why) => super::skip("Redis Cluster", why),
    }
}

fn from_env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|url| !url.is_empty())
}

fn start_single(args: &[&str]) -> Result<String, String> {
    let dir = work_dir()?;
    let port = free_port(false)?;
    spawn_watched(&dir, port, args)?;
    wait_until(Duration::from_secs(10), || ping(port)).map_err(|()| {
        format!("the redis-server started on port {port} did not answer; see {}", dir.display())
    })?;
    Ok(format!("redis://127.0.0.1:{port}"))
}

fn start_cluster() -> Result<String, String> {
    let dir = work_dir()?;
    let mut ports = Vec::new();
    for _ in 0..3 {
        let port = free_port(true)?;
        let config = dir.join(format!("nodes-{port}.conf"));
        let config = config.to_str().ok_or("the temporary directory is not UTF-8")?.to_owned();
        spawn_watched(&dir, port, &["--cluster-enabled", "yes", "--cluster-config-file", &config])?;
        ports.push(port);
    }
    for &port in &ports {
        wait_until(Duration::from_secs(10), || ping(port))
            .map_err(|()| format!("cluster node on port {port} did not answer"))?;
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&nodes)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("redis-cli could not be run: {e}"))?;
    if !created.status.success() {
        return Err(format!(
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stderr).trim()
        ));
    }
    for &port in &ports {
        wait_until(Duration::from_secs(20), || {
            command(port, &["CLUSTER", "INFO"])
                .is_some_and(|info| info.contains("cluster_state:ok"))
        })
        .map_err(|()| format!("the cluster node on port {port} never reached cluster_state:ok"))?;
    }
    Ok(format!("redis+cluster://{}", nodes.join(",")))
}

/// A fresh directory for the servers' files.
fn work_dir() -> Result<PathBuf, String> {
    let which = Command::new("sh").args(["-c", "command -v redis-server"]).output();
    if !which.is_ok_and(|out| out.status.success()) {
        return Err(format!(
            "{URL_VAR} is unset and no redis-server is on PATH; install it (apt-get install \
             redis-server) or run scripts/redis.sh"
        ));
    }
    let dir = std::env::temp_dir().join(super::unique_name("orcs-redis-test"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Starts `redis-server` on `port` under a shell loop that kills it once this process is gone.
fn spawn_watched(dir: &Path, port: u16, extra: &[&str]) -> Result<(), String> {
    let quoted: Vec<String> = extra.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no \
         --dir '{dir}' {extra} >'{dir}/redis-{port}.log' 2>&1 &
         server=$!
         while kill -0 {parent} 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 0.5; done
         kill $server 2>/dev/null",
        dir = dir.display(),
        extra = quoted.join(" "),
        parent = std::process::id(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot start redis-server: {e}"))
}

/// A loopback port nobody listens on (and, for a cluster node, its bus port + 10000 too).
fn free_port(with_bus: bool) -> Result<u16, String> {
    for _ in 0..50 {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        if !with_bus {
            return Ok(port);
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free loopback port found".to_owned())
}

// Blocking is fine here: this runs once per test process while a case's factory waits for
// the server anyway.
#[allow(clippy::disallowed_methods)]
fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(())
}

fn ping(port: u16) -> bool {
    command(port, &["PING"]).is_some_and(|reply| reply.starts_with("+PONG"))
}

/// Sends one command in RESP and returns the raw reply (enough for PING and CLUSTER INFO).
fn command(port: u16, args: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).ok()?;
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    if let Some(len) = first.strip_prefix('$') {
        let len: usize = len.trim().parse().ok()?;
        let mut body = vec![0; len + 2];
        std::io::Read::read_exact(&mut reader, &mut body).ok()?;
        return Some(String::from_utf8_lossy(&body).into_owned());
    }
    Some(first)
}

/// Starts a new `redis-server` of its own for one test (e.g. to drop its connections or
/// restart it without disturbing other tests); `None` after a loud skip. It stops with the
/// test process.
pub fn private_server_or_skip() -> Option<String> {
    private_server_with_or_skip(&[])
}

/// [`private_server_or_skip`] with more `redis-server` arguments (`--maxmemory-policy`,
/// `allkeys-lru`, say).
pub fn private_server_with_or_skip(args: &[&str]) -> Option<String> {
    match start_single(args) {
        Ok(url) => Some(url),
        Err(why) => super::skip("Redis", &why),
    }
}
