//! Redis and PostgreSQL in Docker containers, for `ORCS_TEST_DOCKER=1` (the `docker` feature).
//!
//! The images are `orcs-test-redis:local` and `orcs-test-postgres:local`, built from this machine's
//! own binaries by `scripts/docker-images.sh` (no registry needed); `ORCS_TEST_REDIS_IMAGE` and
//! `ORCS_TEST_POSTGRES_IMAGE` name others, e.g. the official `redis:7` and `postgres:16`. Each
//! container is started with testcontainers once per test process, on the first call, and shared
//! by every case of that process (cases keep apart as with local servers: a key prefix each on
//! Redis, a schema each on PostgreSQL). Its port is published on `127.0.0.1` only, on a port
//! Docker picks; the URL handed out is `127.0.0.1:<that port>`, so the Docker daemon must run on
//! this machine.
//!
//! Cleanup: Rust never drops statics, so the containers are removed by a watcher, a small shell
//! loop in a process group of its own that runs `docker rm -f` once the test process is gone,
//! however it ends (even `kill -9`). Only if the watcher is killed too, or there is no `docker`
//! command for it, does a container outlive the run; every container carries the labels
//! `orcs.test=1` and `orcs.test.pid=<test process id>`, and `scripts/docker-conformance.sh`
//! removes those whose process is gone (by hand: `docker rm -f $(docker ps -aq --filter
//! label=orcs.test)`). The containers are also started with `--rm`, so a stopped one is removed.

/// The variable that turns containers on (`1` or `true`).
pub const DOCKER_VAR: &str = "ORCS_TEST_DOCKER";

/// The variable that names the Redis image (default [`DEFAULT_REDIS_IMAGE`]).
pub const REDIS_IMAGE_VAR: &str = "ORCS_TEST_REDIS_IMAGE";

/// The variable that names the PostgreSQL image (default [`DEFAULT_POSTGRES_IMAGE`]).
pub const POSTGRES_IMAGE_VAR: &str = "ORCS_TEST_POSTGRES_IMAGE";

/// The Redis image `scripts/docker-images.sh` builds.
pub const DEFAULT_REDIS_IMAGE: &str = "orcs-test-redis:local";

/// The PostgreSQL image `scripts/docker-images.sh` builds.
pub const DEFAULT_POSTGRES_IMAGE: &str = "orcs-test-postgres:local";

/// True when the tests are to use containers (`ORCS_TEST_DOCKER=1`).
pub fn docker_requested() -> bool {
    std::env::var(DOCKER_VAR).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The image named by `var`, else `default`.
pub fn image(var: &str, default: &str) -> String {
    std::env::var(var).ok().filter(|name| !name.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// `name[:tag]` split into name and tag (`latest` when there is none); a `:` before the last
/// `/` belongs to a registry's port.
pub fn split_image(image: &str) -> (&str, &str) {
    let last_part = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[last_part..].rfind(':') {
        Some(colon) => (&image[..last_part + colon], &image[last_part + colon + 1..]),
        None => (image, "latest"),
    }
}

/// The URL of the shared Redis container (started on the first call), or why there is none.
pub fn redis_url() -> Result<String, String> {
    imp::redis_url()
}

/// The URL of the shared PostgreSQL container (started on the first call), or why there is none.
pub fn postgres_url() -> Result<String, String> {
    imp::postgres_url()
}

#[cfg(not(feature = "docker"))]
mod imp {
    const WHY: &str = "ORCS_TEST_DOCKER=1 but orcs-tests was built without its `docker` feature; \
                       add `--features orcs-tests/docker` to the cargo command";

    pub(super) fn redis_url() -> Result<String, String> {
        Err(WHY.to_owned())
    }

    pub(super) fn postgres_url() -> Result<String, String> {
        Err(WHY.to_owned())
    }
}

#[cfg(feature = "docker")]
mod imp {
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use testcontainers::bollard::models::{HostConfig, PortBinding};
    use testcontainers::core::IntoContainerPort as _;
    use testcontainers::runners::SyncRunner as _;
    use testcontainers::{Container, GenericImage, ImageExt as _};

    use super::{
        DEFAULT_POSTGRES_IMAGE, DEFAULT_REDIS_IMAGE, POSTGRES_IMAGE_VAR, REDIS_IMAGE_VAR, image,
        split_image,
    };

    /// A running container, kept for the whole test process (statics are never dropped; the
    /// watcher removes it).
    #[derive(Debug)]
    struct Running {
        #[allow(dead_code)] // held so the container and testcontainers' runtime stay alive
        container: Container<GenericImage>,
        url: String,
    }

    struct Spec {
        service: &'static str,
        image: String,
        port: u16,
        env: &'static [(&'static str, &'static str)],
        url: fn(u16) -> String,
        ready: fn(u16) -> bool,
        within: Duration,
    }

    pub(super) fn redis_url() -> Result<String, String> {
        static RUNNING: OnceLock<Result<Running, String>> = OnceLock::new();
        let spec = Spec {
            service: "Redis",
            image: image(REDIS_IMAGE_VAR, DEFAULT_REDIS_IMAGE),
            port: 6379,
            env: &[],
            url: |port| format!("redis://127.0.0.1:{port}"),
            ready: redis_ready,
            within: Duration::from_secs(30),
        };
        RUNNING
            .get_or_init(|| start_on_own_thread(spec))
            .as_ref()
            .map(|r| r.url.clone())
            .map_err(Clone::clone)
    }

    pub(super) fn postgres_url() -> Result<String, String> {
        static RUNNING: OnceLock<Result<Running, String>> = OnceLock::new();
        let spec = Spec {
            service: "PostgreSQL",
            image: image(POSTGRES_IMAGE_VAR, DEFAULT_POSTGRES_IMAGE),
            port: 5432,
            // For the official image; the local one is made with these settings already.
            env: &[("POSTGRES_HOST_AUTH_METHOD", "trust"), ("POSTGRES_DB", "test")],
            url: |port| format!("postgres://postgres@127.0.0.1:{port}/test"),
            ready: postgres_ready,
            // The official image runs initdb first.
            within: Duration::from_secs(60),
        };
        RUNNING
            .get_or_init(|| start_on_own_thread(spec))
            .as_ref()
            .map(|r| r.url.clone())
            .map_err(Clone::clone)
    }

    /// Starts the container on a thread of its own: the callers run inside a tokio runtime, where
    /// testcontainers' blocking runner (a runtime of its own) cannot be entered.
    fn start_on_own_thread(spec: Spec) -> Result<Running, String> {
        let service = spec.service;
        std::thread::Builder::new()
            .name(format!("orcs-docker-{service}"))
            .spawn(move || start(&spec))
            .map_err(|e| format!("cannot spawn a thread: {e}"))?
            .join()
            .unwrap_or_else(|_| Err(format!("starting the {service} container panicked")))
    }

    fn start(spec: &Spec) -> Result<Running, String> {
        let started = Instant::now();
        let (name, tag) = split_image(&spec.image);
        let internal = spec.port.tcp();
        let binding = format!("{}/tcp", spec.port);
        let mut request = GenericImage::new(name, tag)
            .with_exposed_port(internal)
            .with_label("orcs.test", "1")
            .with_label("orcs.test.pid", std::process::id().to_string())
            .with_startup_timeout(spec.within)
            // Published on loopback only, on a port Docker picks; removed once stopped.
            .with_host_config_modifier(move |config: &mut HostConfig| {
                config.publish_all_ports = Some(false);
                config.port_bindings = Some(HashMap::from([(
                    binding.clone(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".to_owned()),
                        host_port: Some(String::new()),
                    }]),
                )]));
                config.auto_remove = Some(true);
            });
        for (key, value) in spec.env {
            request = request.with_env_var(*key, *value);
        }
        let container = request.start().map_err(|e| {
            format!(
                "cannot start a {} container from image {} ({e}); is dockerd running, and was \
                 the image built (scripts/docker-images.sh) or can it be pulled?",
                spec.service, spec.image
            )
        })?;
        watch(container.id());
        let port = container
            .get_host_port_ipv4(internal)
            .map_err(|e| format!("the {} container has no published port: {e}", spec.service))?;
        let deadline = started + spec.within;
        while !(spec.ready)(port) {
            if Instant::now() >= deadline {
                let logs = container.stderr_to_vec().unwrap_or_default();
                let out = container.stdout_to_vec().unwrap_or_default();
                return Err(format!(
                    "the {} container ({}) did not get ready on 127.0.0.1:{port} within {:?}; its \
                     output: {}{}",
                    spec.service,
                    spec.image,
                    spec.within,
                    String::from_utf8_lossy(&out).trim(),
                    String::from_utf8_lossy(&logs).trim()
                ));
            }
            // Blocking is fine: this thread only starts the container.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(50));
        }
        let url = (spec.url)(port);
        eprintln!(
            "orcs-tests: {} container {} ({}) ready at {url} in {:.1} s",
            spec.service,
            &container.id()[..12.min(container.id().len())],
            spec.image,
            started.elapsed().as_secs_f64()
        );
        Ok(Running { container, url })
    }

    /// Removes the container once this process is gone: a shell loop in a process group of its
    /// own, deaf to the terminal's signals, so that a Ctrl-C or a `timeout` that ends the tests
    /// does not end it first.
    fn watch(id: &str) {
        let script = format!(
            "trap '' INT HUP TERM
             while kill -0 {parent} 2>/dev/null; do sleep 1; done
             docker rm -f -v {id} >/dev/null 2>&1",
            parent = std::process::id(),
        );
        let spawned = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        if spawned.is_err() || !on_path("docker") {
            eprintln!(
                "orcs-tests: WARNING: no `docker` command to remove container {id} after the \
                 tests; remove it with `docker rm -f {id}`"
            );
        }
    }

    fn on_path(program: &str) -> bool {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Docker's proxy accepts connections before the server listens, so readiness is a real
    /// answer: `+PONG`.
    fn redis_ready(port: u16) -> bool {
        exchange(port, b"*1\r\n$4\r\nPING\r\n", 5).is_some_and(|reply| reply.starts_with(b"+PONG"))
    }

    /// A startup message for user `postgres`, database `test`: ready when the server answers
    /// with an authentication request (`R`), not an error (`E`, e.g. "starting up").
    fn postgres_ready(port: u16) -> bool {
        let mut body = Vec::new();
        body.extend_from_slice(&196_608_i32.to_be_bytes()); // protocol 3.0
        for part in ["user", "postgres", "database", "test"] {
            body.extend_from_slice(part.as_bytes());
            body.push(0);
        }
        body.push(0);
        let length = i32::try_from(body.len() + 4).expect("a short message");
        let mut message = length.to_be_bytes().to_vec();
        message.extend_from_slice(&body);
        exchange(port, &message, 1).is_some_and(|reply| reply.first() == Some(&b'R'))
    }

    /// Sends `request` to `127.0.0.1:port` and reads up to `want` bytes of the answer.
    fn exchange(port: u16, request: &[u8], want: usize) -> Option<Vec<u8>> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(request).ok()?;
        let mut reply = vec![0; want];
        let read = stream.read(&mut reply).ok()?;
        (read > 0).then(|| {
            reply.truncate(read);
            reply
        })
    }
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn splits_image_names() {
        assert_eq!(split_image("redis"), ("redis", "latest"));
        assert_eq!(split_image("redis:7"), ("redis", "7"));
        assert_eq!(split_image("orcs-test-postgres:local"), ("orcs-test-postgres", "local"));
        assert_eq!(split_image("registry:5000/postgres"), ("registry:5000/postgres", "latest"));
        assert_eq!(
            split_image("registry:5000/lib/postgres:16"),
            ("registry:5000/lib/postgres", "16")
        );
    }
}
