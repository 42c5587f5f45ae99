//! Security: the whole conformance suite as a Redis ACL user restricted to orcs's keys (with the
//! rule the README documents), over TLS with a certificate made for the test (the `tls`
//! feature), and errors that say what to do without showing the password.
//!
//! Each part runs on a private `redis-server` of its own, set up with `CONFIG SET` and
//! `ACL SETUSER`, so the shared test server keeps no password, user or TLS port.

use std::sync::OnceLock;

use orcs_core::{Driver, Error, NewJob};
use orcs_redis::{RedisConfig, RedisDriver};
use orcs_tests::services::{self, unique_name};

/// The password of every user made here; it must never appear in an error.
const SECRET: &str = "hunter2";

/// The ACL rule the README gives for the key prefix `prefix`.
fn acl_rule(prefix: &str) -> String {
    format!(
        "resetkeys ~{{{prefix}:* ~{{{prefix}}}:* resetchannels -@all +@read +@write +@scripting +@connection -@dangerous +time"
    )
}

/// Runs one command on the private server as the default user.
fn admin(url: &str, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn)
}

/// A private server with the user `worker` (password [`SECRET`]) allowed only the keys of
/// prefixes starting with `orcs-acl`: `host:port`, or `None` after a loud skip.
fn acl_server() -> Option<&'static str> {
    static SERVER: OnceLock<Option<String>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let url = services::redis::private_server_or_skip()?;
            // The README's rule, for the prefix family of this test: `{orcs-acl_<unique>:queue}`
            // and `{orcs-acl_<unique>}:queues` both match `~{orcs-acl*`.
            let rule = acl_rule("orcs-acl").replace("~{orcs-acl:* ~{orcs-acl}:*", "~{orcs-acl*");
            let mut args = vec!["ACL", "SETUSER", "worker", "on", ">hunter2"];
            args.extend(rule.split(' '));
            admin(&url, &args).expect("ACL SETUSER works on the private server");
            Some(url.trim_start_matches("redis://").to_owned())
        })
        .as_deref()
}

fn acl_config(prefix: &str) -> Option<RedisConfig> {
    let host = acl_server()?;
    let config = RedisConfig::from_url(&format!("redis://worker:{SECRET}@{host}"))
        .expect("a valid URL")
        .with_prefix(prefix);
    Some(config)
}

async fn acl_driver() -> Option<RedisDriver> {
    let config = acl_config(&unique_name("orcs-acl"))?;
    Some(RedisDriver::connect(config).await.expect("the ACL user connects"))
}

/// Every case of the suite (dispatch, claim, retries, failed set, stats, clear, recovery,
/// wake-ups) as the restricted user.
mod acl {
    use super::*;
    orcs_tests::conformance_tests!(acl_driver());
}

fn job(queue: &str) -> NewJob {
    let now = orcs_core::Clock::now(&orcs_core::SystemClock);
    let mut job = NewJob::new(orcs_core::new_job_id(), "PlainJob", queue, "{}", now);
    job.retry_delay_ms = 1000;
    job
}

#[tokio::test]
async fn the_acl_user_is_really_restricted() {
    let Some(host) = acl_server() else { return };
    let url = format!("redis://worker:{SECRET}@{host}");
    let denied = admin(&url, &["SET", "not-orcs", "1"]).expect_err("a key outside the pattern");
    assert_eq!(denied.code(), Some("NOPERM"), "{denied}");
    let denied = admin(&url, &["FLUSHALL"]).expect_err("a dangerous command");
    assert_eq!(denied.code(), Some("NOPERM"), "{denied}");

    // A prefix outside the pattern: the driver says what to do, without the password.
    let config = acl_config("elsewhere").expect("the server is up");
    let err = match RedisDriver::connect(config).await {
        Ok(driver) => {
            driver.push(vec![job("default")]).await.expect_err("keys outside the pattern")
        }
        Err(e) => e,
    };
    let text = format!("{err}");
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(!err.is_transient(), "a missing permission repeats until someone acts: {err:?}");
    assert!(text.contains("lacks a permission") && text.contains("ACL"), "{text}");
    assert!(!text.contains(SECRET), "the password leaked: {text}");
}

/// A denied command inside the driver's own use (here TIME, once the rule leaves it out) is a
/// permanent error too, as is a denied key on a working connection: the worker must not retry
/// it forever as if Redis were away.
#[tokio::test]
async fn denied_keys_and_commands_are_permanent_errors() {
    let Some(host) = acl_server() else { return };
    let url = format!("redis://{host}");
    let mut args = vec!["ACL", "SETUSER", "notime", "on", ">hunter2"];
    let rule = acl_rule("orcs-acl").replace("~{orcs-acl:* ~{orcs-acl}:*", "~{orcs-acl*");
    let rule = rule.replace(" +time", " -time");
    args.extend(rule.split(' '));
    admin(&url, &args).expect("ACL SETUSER");
    let config = RedisConfig::from_url(&format!("redis://notime:{SECRET}@{host}"))
        .expect("a valid URL")
        .with_prefix(unique_name("orcs-acl"));
    let driver = RedisDriver::connect(config).await.expect("the restricted user connects");
    driver.push(vec![job("default")]).await.expect("its own keys are allowed");
    let err = driver.server_time().await.expect_err("TIME is denied");
    assert!(matches!(err, Error::Backend { transient: false, .. }), "{err:?}");
    assert!(err.to_string().contains("lacks a permission"), "{err}");
}

#[test]
fn the_readme_documents_the_tested_rule() {
    let readme = include_str!("../README.md");
    let rule = acl_rule("orcs");
    assert!(readme.contains(&rule), "README.md should give the ACL rule `{rule}`");
}

#[tokio::test]
async fn wrong_credentials_say_what_to_do_without_the_password() {
    let Some(host) = acl_server() else { return };
    for url in
        [format!("redis://worker:{SECRET}x@{host}"), format!("redis://nobody:{SECRET}@{host}")]
    {
        let config = RedisConfig::from_url(&url).expect("a valid URL");
        assert!(!format!("{config:?} {config}").contains(SECRET), "{config:?}");
        let err = RedisDriver::connect(config).await.expect_err("wrong credentials");
        let text = format!("{err} {err:?}");
        assert!(text.contains("refused the user name or password"), "{text}");
        assert!(text.contains("the Redis URL") && !text.contains("REDIS_URL"), "{text}");
        assert!(!text.contains(SECRET), "the password leaked: {text}");
    }
}

#[cfg(feature = "tls")]
mod tls {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use super::*;

    struct Tls {
        /// `host:port` of the TLS port.
        addr: String,
        /// The CA that signed the server's certificate.
        ca: PathBuf,
        /// A certificate from another CA.
        stranger: PathBuf,
    }

    fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("openssl could not be run: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// A CA, a server certificate for 127.0.0.1 and localhost signed by it, and an unrelated
    /// self-signed certificate, made with the openssl command.
    fn make_certs(dir: &Path) -> Result<(), String> {
        let req = ["req", "-newkey", "rsa:2048", "-nodes", "-days", "2"];
        openssl(
            dir,
            &[
                &req[..],
                &["-x509", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=orcs test CA"],
            ]
            .concat(),
        )?;
        openssl(
            dir,
            &[
                &req[..],
                &["-x509", "-keyout", "other.key", "-out", "other.pem", "-subj", "/CN=another CA"],
            ]
            .concat(),
        )?;
        openssl(
            dir,
            &[&req[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]]
                .concat(),
        )?;
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
            .map_err(|e| e.to_string())?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        )
    }

    fn tls_server() -> Option<&'static Tls> {
        static SERVER: OnceLock<Option<Tls>> = OnceLock::new();
        SERVER
            .get_or_init(|| {
                let url = services::redis::private_server_or_skip()?;
                let dir = std::env::temp_dir().join(unique_name("orcs-tls"));
                std::fs::create_dir_all(&dir).expect("the temp dir is writable");
                if let Err(why) = make_certs(&dir) {
                    return services::skip("openssl (to make a test certificate)", &why);
                }
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port()
                    .to_string();
                let path = |name: &str| dir.join(name).display().to_string();
                let set = admin(
                    &url,
                    &[
                        "CONFIG",
                        "SET",
                        "tls-cert-file",
                        &path("server.pem"),
                        "tls-key-file",
                        &path("server.key"),
                        "tls-ca-cert-file",
                        &path("ca.pem"),
                        "tls-auth-clients",
                        "no",
                        "tls-port",
                        &port,
                    ],
                );
                if let Err(e) = set {
                    return services::skip(
                        "Redis with TLS",
                        &format!("the redis-server on PATH would not open a TLS port: {e}"),
                    );
                }
                Some(Tls {
                    addr: format!("127.0.0.1:{port}"),
                    ca: dir.join("ca.pem"),
                    stranger: dir.join("other.pem"),
                })
            })
            .as_ref()
    }

    async fn tls_driver() -> Option<RedisDriver> {
        let tls = tls_server()?;
        let config = RedisConfig::from_url(&format!("rediss://{}", tls.addr))
            .expect("rediss:// is accepted with the tls feature")
            .with_ca_cert_file(&tls.ca)
            .expect("the CA file is readable")
            .with_prefix(unique_name("orcs-tls"));
        assert!(config.is_tls());
        Some(RedisDriver::connect(config).await.expect("connect over TLS"))
    }

    /// Every case of the suite over TLS, trusting the test's own CA.
    mod suite {
        use super::*;
        orcs_tests::conformance_tests!(tls_driver());
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_refused_with_advice() {
        let Some(tls) = tls_server() else { return };
        let url = format!("rediss://:{SECRET}@{}", tls.addr);
        for config in [
            // The system's roots, then a CA that did not sign the server's certificate.
            RedisConfig::from_url(&url).expect("valid"),
            RedisConfig::from_url(&url)
                .expect("valid")
                .with_ca_cert_file(&tls.stranger)
                .expect("a PEM file"),
        ] {
            let err = RedisDriver::connect(config).await.expect_err("an unknown issuer");
            let text = err.to_string();
            assert!(
                text.contains("RedisConfig::with_ca_cert_file") && text.contains("#insecure"),
                "{text}"
            );
            assert!(!text.contains("REDIS_CA_CERT"), "{text}");
            assert!(!text.contains(SECRET), "the password leaked: {text}");
        }
    }

    #[tokio::test]
    async fn insecure_skips_the_check() {
        let Some(tls) = tls_server() else { return };
        let config = RedisConfig::from_url(&format!("rediss://{}/#insecure", tls.addr))
            .expect("valid")
            .with_prefix(unique_name("orcs-tls"));
        let driver = RedisDriver::connect(config).await.expect("connect without checking");
        driver.push(vec![job("default")]).await.expect("a dispatch over TLS");
        assert_eq!(orcs_core::Admin::stats(&driver, "default", 0).await.expect("stats").pending, 1);
    }

    #[test]
    fn a_ca_certificate_needs_a_tls_url_and_a_pem_file() {
        let err =
            RedisConfig::from_url("redis://127.0.0.1").unwrap().with_ca_cert("x").unwrap_err();
        assert!(
            err.to_string().contains("configuration error in RedisConfig::with_ca_cert: ")
                && err.to_string().contains("rediss://")
                && !err.to_string().contains("REDIS_CA_CERT"),
            "{err}"
        );
        let err =
            RedisConfig::from_url("rediss://127.0.0.1").unwrap().with_ca_cert("x").unwrap_err();
        assert!(err.to_string().contains("holds no PEM certificate"), "{err}");
        let err = RedisConfig::from_url("rediss://127.0.0.1")
            .unwrap()
            .with_ca_cert_file("/nonexistent/ca.pem")
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "configuration error in RedisConfig::with_ca_cert_file: cannot read the CA \
                 certificate /nonexistent/ca.pem"
            ),
            "{err}"
        );
    }
}
