//! Backends a test can break: a private `redis-server` and a private PostgreSQL cluster, each on a
//! free loopback port in a temporary directory, that the test can kill (`SIGKILL`), stop
//! gracefully and start again on the same port with the same data.
//!
//! The Redis server persists every write before it answers (`appendonly yes`,
//! `appendfsync always`), so a `kill -9` loses nothing a client was told had been stored. The
//! PostgreSQL cluster is made with `initdb` (trust authentication) and runs `postgres` directly;
//! when the tests run as root, both run as the `postgres` system user (PostgreSQL refuses root).
//!
//! Each server runs in a process group of its own, is stopped by pid (the whole group) when its
//! handle drops, and is watched by a small shell loop that kills it if the test process dies
//! first, so no server outlives the run. Nothing here touches the shared services on 6379 or 5432.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private `redis-server` that can be killed and started again with its data.
#[derive(Debug)]
pub struct RestartableRedis {
    dir: PathBuf,
    port: u16,
    password: Option<String>,
    child: Option<Child>,
}

impl RestartableRedis {
    /// A running server, or `None` after a loud skip (no `redis-server` on `PATH`).
    pub fn start_or_skip() -> Option<Self> {
        let mut server = Self::stopped_or_skip()?;
        match server.start() {
            Ok(()) => Some(server),
            Err(why) => super::skip("Redis (restartable)", &why),
        }
    }

    /// A server that is not started yet (its port answers nothing until [`Self::start`]), or
    /// `None` after a loud skip.
    pub fn stopped_or_skip() -> Option<Self> {
        match Self::prepare() {
            Ok(server) => Some(server),
            Err(why) => super::skip("Redis (restartable)", &why),
        }
    }

    fn prepare() -> Result<Self, String> {
        if !on_path("redis-server") {
            return Err("no redis-server on PATH; install it (apt-get install redis-server)".into());
        }
        let dir = temp_dir("orcs-redis-restartable")?;
        Ok(Self { dir, port: free_port()?, password: None, child: None })
    }

    /// Makes the server require `password` (`requirepass`) from its next start on; [`Self::url`]
    /// then carries it.
    #[must_use]
    pub fn with_password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// `redis://127.0.0.1:<port>`, or `redis://:<password>@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The loopback port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory with the data and `redis.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Starts the server (again) on its port with its data and waits until it answers `PING`
    /// with its data loaded.
    ///
    /// # Errors
    /// It could not be spawned or did not answer within 20 s.
    pub fn start(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Ok(());
        }
        let log = self.dir.join("redis.log");
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", path_str(&self.dir)?])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .args(["--logfile", path_str(&log)?])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        watch(child.id())?;
        self.child = Some(child);
        let (port, password) = (self.port, self.password.clone());
        wait_until(Duration::from_secs(20), || redis_ready(port, password.as_deref())).map_err(
            |()| format!("the redis-server on port {port} did not answer; see {}", log.display()),
        )
    }

    /// Kills the server with `SIGKILL` (no shutdown, the appendonly file is all that survives)
    /// and waits until it is gone.
    pub fn kill(&mut self) {
        stop_child(&mut self.child, "KILL");
    }

    /// Stops the server gracefully (`SIGTERM`) and waits until it is gone.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, "TERM");
    }

    /// Kills the server (`SIGKILL`), waits `down` and starts it again.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn restart(&mut self, down: Duration) -> Result<(), String> {
        self.kill();
        pause(down);
        self.start()
    }
}

impl Drop for RestartableRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private PostgreSQL cluster that can be killed and started again with its data.
#[derive(Debug)]
pub struct RestartablePostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// `setpriv` arguments that drop root for the `postgres` user, when running as root.
    as_user: Option<Vec<String>>,
    child: Option<Child>,
}

impl RestartablePostgres {
    /// A running cluster, or `None` after a loud skip (no PostgreSQL binaries found).
    pub fn start_or_skip() -> Option<Self> {
        let mut server = Self::stopped_or_skip()?;
        match server.start() {
            Ok(()) => Some(server),
            Err(why) => super::skip("PostgreSQL (restartable)", &why),
        }
    }

    /// An initialized cluster that is not started yet, or `None` after a loud skip.
    pub fn stopped_or_skip() -> Option<Self> {
        match Self::prepare() {
            Ok(server) => Some(server),
            Err(why) => super::skip("PostgreSQL (restartable)", &why),
        }
    }

    fn prepare() -> Result<Self, String> {
        let bin = postgres_bindir()?;
        let dir = temp_dir("orcs-pg-restartable")?;
        let as_user = if running_as_root() {
            let (uid, gid) = user_ids("postgres").ok_or(
                "running as root and there is no `postgres` user to run PostgreSQL as \
                 (it refuses to run as root)",
            )?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("cannot hand {} to the postgres user: {e}", dir.display()))?;
            Some(vec![
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--init-groups".to_owned(),
            ])
        } else {
            None
        };
        let server = Self { dir, bin, port: free_port()?, as_user, child: None };
        let data = server.data_dir();
        let out = server
            .command("initdb")
            .args(["-D", path_str(&data)?, "-A", "trust", "-U", "postgres", "--no-sync"])
            .args(["-E", "UTF8", "--locale", "C"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A command running the PostgreSQL program `program`, as the `postgres` user under root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match &self.as_user {
            Some(args) => {
                let mut cmd = Command::new("setpriv");
                cmd.args(args).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The loopback port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory with the cluster and `postgres.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True while the postmaster runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Starts the cluster (again) on its port and waits until it accepts connections. After a
    /// kill it runs crash recovery first, as a production server would.
    ///
    /// # Errors
    /// It could not be spawned or did not accept connections within 30 s.
    pub fn start(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Ok(());
        }
        let data = self.data_dir();
        let log_path = self.dir.join("postgres.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        // Right after a kill, the old postmaster's children may take a moment to go: retry.
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
            let mut child = self
                .command("postgres")
                .args(["-D", path_str(&data)?, "-p", &self.port.to_string()])
                .args(["-k", path_str(&self.dir)?])
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"])
                .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot start postgres: {e}"))?;
            watch(child.id())?;
            let port = self.port;
            let ready = wait_until(deadline.saturating_duration_since(Instant::now()), || {
                matches!(child.try_wait(), Ok(Some(_))) || pg_ready(port)
            });
            if ready.is_ok() && matches!(child.try_wait(), Ok(None)) {
                self.child = Some(child);
                return Ok(());
            }
            let _ = kill_group(child.id(), "KILL");
            let _ = child.wait();
            if Instant::now() >= deadline {
                return Err(format!(
                    "postgres on port {port} did not accept connections; see {}",
                    log_path.display()
                ));
            }
            pause(Duration::from_millis(300));
        }
    }

    /// Kills the postmaster and every backend (`SIGKILL` to its process group): the next start
    /// runs crash recovery.
    pub fn kill(&mut self) {
        stop_child(&mut self.child, "KILL");
    }

    /// Stops the cluster gracefully (`SIGINT`, PostgreSQL's fast shutdown: connections are
    /// closed, the data is checkpointed).
    pub fn stop(&mut self) {
        stop_child(&mut self.child, "INT");
    }

    /// Kills the cluster (`SIGKILL`), waits `down` and starts it again.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn restart(&mut self, down: Duration) -> Result<(), String> {
        self.kill();
        pause(down);
        self.start()
    }
}

impl Drop for RestartablePostgres {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Signals the child's process group and waits until the child is gone (escalating to `KILL`
/// after 15 s).
fn stop_child(child: &mut Option<Child>, signal: &str) {
    let Some(mut child) = child.take() else { return };
    if matches!(child.try_wait(), Ok(Some(_))) {
        let _ = kill_group(child.id(), "KILL");
        return;
    }
    let _ = kill_group(child.id(), signal);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            // Children left in the group (PostgreSQL backends) go too.
            let _ = kill_group(child.id(), "KILL");
            return;
        }
        pause(Duration::from_millis(20));
    }
    let _ = kill_group(child.id(), "KILL");
    let _ = child.wait();
}

/// `kill -SIGNAL -- -PGID`: the process and everything it started in its group.
fn kill_group(pid: u32, signal: &str) -> std::io::Result<()> {
    Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(drop)
}

/// Starts a shell loop that kills the process group `pid` once this test process is gone, and
/// ends by itself once that process is.
fn watch(pid: u32) -> Result<(), String> {
    let script = format!(
        "while kill -0 {parent} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 0.5; done
         kill -9 -- -{pid} 2>/dev/null",
        parent = std::process::id(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot start the watchdog: {e}"))
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The directory of `initdb` and `postgres`: `ORCS_TEST_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`.
fn postgres_bindir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("ORCS_TEST_PG_BINDIR")
        && !dir.is_empty()
    {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    if let Ok(out) = out
        && out.status.success()
    {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if bin.join("initdb").exists() {
            return Ok(bin);
        }
    }
    Err("no PostgreSQL server binaries (initdb, postgres) found in /usr/lib/postgresql/*/bin or \
         by pg_config; install postgresql or set ORCS_TEST_PG_BINDIR"
        .to_owned())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn user_ids(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

fn temp_dir(prefix: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(super::unique_name(prefix));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str().ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

// These helpers run in test threads, outside any async runtime.
#[allow(clippy::disallowed_methods)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(());
        }
        pause(Duration::from_millis(25));
    }
}

/// `PING` answers `PONG` (not `-LOADING`): the server is up with its data loaded.
fn redis_ready(port: u16, password: Option<&str>) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if let Some(password) = password {
        let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len());
        let mut ok = [0u8; 5];
        if stream.write_all(auth.as_bytes()).is_err()
            || stream.read_exact(&mut ok).is_err()
            || &ok != b"+OK\r\n"
        {
            return false;
        }
    }
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// The server accepts a startup packet (a TCP connect alone succeeds during recovery too, so
/// this asks `pg_isready`-style: send SSLRequest-free startup and look for an authentication
/// reply).
fn pg_ready(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
    for (k, v) in [("user", "postgres"), ("database", "postgres")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    let mut packet = len.to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    if stream.write_all(&packet).is_err() {
        return false;
    }
    // Trust authentication answers 'R' (AuthenticationOk); a starting or recovering server
    // answers 'E' ("the database system is starting up").
    let mut tag = [0u8; 1];
    stream.read_exact(&mut tag).is_ok() && tag[0] == b'R'
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Write as _};

    use super::*;

    fn redis(port: u16, command: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("redis answers");
        stream.set_read_timeout(Some(Duration::from_secs(2))).expect("a timeout");
        let parts: Vec<&str> = command.split(' ').collect();
        let mut request = format!("*{}\r\n", parts.len());
        for part in parts {
            request.push_str(&format!("${}\r\n{part}\r\n", part.len()));
        }
        stream.write_all(request.as_bytes()).expect("written");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("a reply");
        if line.starts_with('$') && !line.starts_with("$-1") {
            line.clear();
            reader.read_line(&mut line).expect("a bulk reply");
        }
        line.trim().to_owned()
    }

    #[test]
    fn redis_keeps_its_data_across_a_kill() {
        let Some(mut server) = RestartableRedis::start_or_skip() else { return };
        let port = server.port();
        assert_eq!(redis(port, "SET orcs-restartable 42"), "+OK");
        server.kill();
        assert!(!server.is_running());
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the port is closed");
        server.start().expect("it starts again");
        assert_eq!(server.port(), port);
        assert_eq!(redis(port, "GET orcs-restartable"), "42");
        server.stop();
        server.start().expect("it starts after a graceful stop");
        assert_eq!(redis(port, "GET orcs-restartable"), "42");
    }

    #[test]
    fn postgres_starts_again_after_a_kill() {
        let Some(mut server) = RestartablePostgres::start_or_skip() else { return };
        let port = server.port();
        assert!(pg_ready(port));
        server.kill();
        assert!(!pg_ready(port), "the port is closed");
        server.restart(Duration::ZERO).expect("it starts again (after crash recovery)");
        assert!(pg_ready(port));
        server.stop();
        assert!(!server.is_running());
        server.start().expect("it starts after a graceful stop");
        assert!(pg_ready(port));
    }
}
