//! `RedisConfig`: where Redis is and how the driver uses it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use orcs_core::{Error, Result};
use redis::IntoConnectionInfo;

/// The setting named in errors about the URL ([`RedisConfig::from_url`]). The driver names its
/// settings as a library user gives them, in code: an application that reads the URL from an
/// environment variable or a file says so itself (the `orcs` crate re-keys these errors to
/// `REDIS_URL` or its config-file key).
pub(crate) const URL_SETTING: &str = "the Redis URL";

/// The setting named in errors about a CA certificate given as PEM text.
const CA_CERT_SETTING: &str = "RedisConfig::with_ca_cert";

/// The setting named in errors about a CA certificate given as a file.
const CA_CERT_FILE_SETTING: &str = "RedisConfig::with_ca_cert_file";

const ACCEPTED: &str = "use redis://[user:password@]host[:port][/db] (rediss:// for TLS), \
     redis+unix:///path/to/redis.sock, or redis+cluster://[user:password@]host:port,host:port,... \
     for a Redis Cluster";

/// How to reach Redis and how to lay out the queues in it.
///
/// Built from a URL ([`RedisConfig::from_url`], also [`FromStr`]) or from a `redis::Client` the
/// application already has ([`RedisConfig::from_client`]), and adjusted with the `with_*`
/// setters. `Debug` and `Display` show the URL with its password replaced by `***`.
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// One `redis://` URL per node: one for a single server, the seed nodes for a cluster. For a
    /// configuration from a client, the client's address as a URL without its password (for
    /// messages only).
    nodes: Vec<String>,
    /// Where and how to connect, taken from an application's `redis::Client` (instead of
    /// `nodes`).
    client: Option<ClientInfo>,
    cluster: bool,
    /// `rediss://`: TLS.
    tls: bool,
    /// PEM certificates that the server's certificate must chain to (instead of the system's).
    ca_cert: Option<Vec<u8>>,
    prefix: String,
    pool_size: usize,
    response_timeout: Duration,
    connect_timeout: Duration,
}

impl Default for RedisConfig {
    /// `redis://127.0.0.1:6379`, prefix `orcs`.
    fn default() -> Self {
        Self {
            nodes: vec!["redis://127.0.0.1:6379".to_owned()],
            client: None,
            cluster: false,
            tls: false,
            ca_cert: None,
            prefix: "orcs".to_owned(),
            pool_size: 4,
            response_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl RedisConfig {
    /// Parses a connection URL.
    ///
    /// Accepted: `redis://[user:password@]host[:port][/db]` (a single server; ACL user and
    /// password, database number), `redis+unix:///path/to/socket` and
    /// `redis+cluster://[user:password@]host:port,host:port,...` (a Redis Cluster, given by one or
    /// more seed nodes; no database number, a cluster has only database 0).
    ///
    /// With the `tls` feature, `rediss://[user:password@]host[:port][/db]` connects to a single
    /// server over TLS, checking its certificate against the system's roots or the one given with
    /// [`RedisConfig::with_ca_cert`]; `rediss://...#insecure` skips the check (tests only).
    ///
    /// # Errors
    /// [`Error::Config`] keyed "the Redis URL", saying what is accepted; the message never
    /// contains the password. `rediss://` is refused without the `tls` feature, and
    /// `rediss+cluster://` always (TLS to a cluster is not supported yet).
    pub fn from_url(url: &str) -> Result<Self> {
        let url = url.trim();
        let invalid =
            |why: &str| Error::config(URL_SETTING, format!("{} {why}; {ACCEPTED}", redact(url)));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("has no scheme"))?;
        let mut config = Self::default();
        match scheme.to_ascii_lowercase().as_str() {
            "redis" | "redis+unix" | "unix" => {
                check_node(url).map_err(&invalid)?;
                config.nodes = vec![url.to_owned()];
            }
            "redis+cluster" => {
                let (userinfo, hosts) = match rest.rsplit_once('@') {
                    Some((userinfo, hosts)) => (Some(userinfo), hosts),
                    None => (None, rest),
                };
                let hosts = hosts.trim_end_matches('/');
                if hosts.contains('/') {
                    return Err(invalid(
                        "names a database or path, which a Redis Cluster does not have",
                    ));
                }
                let mut nodes = Vec::new();
                for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                    let node = match userinfo {
                        Some(userinfo) => format!("redis://{userinfo}@{host}"),
                        None => format!("redis://{host}"),
                    };
                    check_node(&node).map_err(&invalid)?;
                    nodes.push(node);
                }
                if nodes.is_empty() {
                    return Err(invalid("names no node"));
                }
                config.nodes = nodes;
                config.cluster = true;
            }
            #[cfg(feature = "tls")]
            "rediss" => {
                check_node(url).map_err(&invalid)?;
                config.nodes = vec![url.to_owned()];
                config.tls = true;
            }
            #[cfg(not(feature = "tls"))]
            "rediss" => {
                return Err(Error::config(
                    URL_SETTING,
                    format!(
                        "{} asks for TLS (rediss://), which this build does not include: rebuild \
                         with the `tls` feature of orcs-redis (or of the orcs crate), or \
                         connect through a TLS tunnel (e.g. stunnel) with redis://",
                        redact(url)
                    ),
                ));
            }
            "rediss+cluster" => {
                return Err(Error::config(
                    URL_SETTING,
                    format!(
                        "{} asks for TLS to a Redis Cluster, which orcs-redis does not support \
                         yet; use redis+cluster:// through a TLS tunnel (e.g. stunnel), or \
                         rediss:// to a single server",
                        redact(url)
                    ),
                ));
            }
            _ => return Err(invalid("has an unknown scheme")),
        }
        Ok(config)
    }

    /// Connects where and as the application's `client` does: its address (TCP, TLS or a Unix
    /// socket), database, user and password, and TLS settings. The orcs settings (the key prefix
    /// above all, so that orcs's keys stay apart from the application's) come from the `with_*`
    /// setters, as for a URL. The client is not kept: the driver opens connections of its own
    /// from the same details (a pool of shared ones, and one per blocking wait).
    ///
    /// `client` must come from the `redis` crate version this crate uses, re-exported as
    /// [`orcs_redis::redis`](crate::redis). A Redis Cluster is given by URL
    /// (`redis+cluster://`), not by client.
    #[must_use]
    pub fn from_client(client: &redis::Client) -> Self {
        let info = client.get_connection_info();
        let settings = info.redis_settings();
        let userinfo = match (settings.username(), settings.password()) {
            (Some(user), Some(_)) => format!("{user}:***@"),
            (Some(user), None) => format!("{user}@"),
            (None, Some(_)) => ":***@".to_owned(),
            (None, None) => String::new(),
        };
        let (scheme, tls) = match info.addr() {
            redis::ConnectionAddr::TcpTls { .. } => ("rediss", true),
            redis::ConnectionAddr::Unix(_) => ("redis+unix", false),
            _ => ("redis", false),
        };
        let shown = match info.addr() {
            redis::ConnectionAddr::Unix(path) => format!("{scheme}://{}", path.display()),
            addr => format!("{scheme}://{userinfo}{addr}/{}", settings.db()),
        };
        Self {
            nodes: vec![shown],
            client: Some(ClientInfo(Box::new(info.clone()))),
            tls,
            ..Self::default()
        }
    }

    /// Trusts the PEM certificate(s) in `pem` (a private CA, or a self-signed server certificate)
    /// instead of the system's roots, for a `rediss://` URL.
    ///
    /// # Errors
    /// [`Error::Config`] keyed `RedisConfig::with_ca_cert` when the URL is not `rediss://` (the certificate
    /// would be ignored) or when `pem` holds no PEM certificate.
    pub fn with_ca_cert(mut self, pem: impl Into<Vec<u8>>) -> Result<Self> {
        let pem = pem.into();
        if self.client.is_some() {
            return Err(Error::config(
                CA_CERT_SETTING,
                "a CA certificate is set for a configuration made from a redis::Client, which \
                 brings its own TLS settings: give the certificate to the client \
                 (redis::Client::build_with_tls), or unset it here",
            ));
        }
        if !self.tls {
            return Err(Error::config(
                CA_CERT_SETTING,
                format!(
                    "a CA certificate is set but {} does not use TLS: use a rediss:// URL, or \
                     leave the CA certificate out",
                    self.redacted_url()
                ),
            ));
        }
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(Error::config(
                CA_CERT_SETTING,
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA's (or the \
                 self-signed server's) certificate in PEM form",
            ));
        }
        self.ca_cert = Some(pem);
        Ok(self)
    }

    /// Reads the PEM certificate(s) to trust from a file: [`RedisConfig::with_ca_cert`].
    ///
    /// # Errors
    /// As [`RedisConfig::with_ca_cert`], and [`Error::Config`] when the file cannot be read; these
    /// are keyed `RedisConfig::with_ca_cert_file` and name the file.
    pub fn with_ca_cert_file(self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            Error::config(
                CA_CERT_FILE_SETTING,
                format!("cannot read the CA certificate {}: {e}; check the path", path.display()),
            )
        })?;
        self.with_ca_cert(pem).map_err(|e| match e {
            Error::Config { message, .. } => {
                Error::config(CA_CERT_FILE_SETTING, format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// True for a `rediss://` URL.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    #[cfg(feature = "tls")]
    pub(crate) fn ca_cert(&self) -> Option<&[u8]> {
        self.ca_cert.as_deref()
    }

    /// Sets the key prefix (default `orcs`): every key lives under the hash tag `{prefix:queue}`.
    ///
    /// The prefix may not contain `{` or `}`, which would break the hash tags; such characters
    /// are replaced by `_`.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().replace(['{', '}'], "_");
        self
    }

    /// Sets how many command connections are kept open (default 4). Each one is multiplexed, so a
    /// few carry many concurrent calls.
    #[must_use]
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Sets how long a command may take before it fails as a transient backend error (default
    /// 5 s). Blocking waits use their own dedicated connections without this limit.
    #[must_use]
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets how long connecting may take (default 2 s).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// True for a Redis Cluster (`redis+cluster://`).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The most command connections kept open.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    pub(crate) fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The connection details of the application's client, for [`RedisConfig::from_client`].
    pub(crate) fn client_info(&self) -> Option<&redis::ConnectionInfo> {
        self.client.as_ref().map(|c| &*c.0)
    }

    pub(crate) fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The URL as given, with the password replaced by `***` (for logs and errors).
    pub fn redacted_url(&self) -> String {
        if self.cluster {
            let hosts: Vec<&str> = self
                .nodes
                .iter()
                .map(|n| n.rsplit_once('@').map_or(&n["redis://".len()..], |(_, host)| host))
                .collect();
            let userinfo = self.nodes[0]
                .strip_prefix("redis://")
                .and_then(|rest| rest.rsplit_once('@'))
                .map(|(userinfo, _)| format!("{}@", redact_userinfo(userinfo)))
                .unwrap_or_default();
            format!("redis+cluster://{userinfo}{}", hosts.join(","))
        } else {
            redact(&self.nodes[0])
        }
    }
}

impl FromStr for RedisConfig {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        Self::from_url(url)
    }
}

impl fmt::Display for RedisConfig {
    /// The URL with its password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_url())
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("ca_cert", &self.ca_cert.as_ref().map(|_| "(set)"))
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A client's connection details. `redis::ConnectionInfo` has no `PartialEq`: two are equal when
/// they reach the same address, database and user with the same password.
#[derive(Clone)]
struct ClientInfo(Box<redis::ConnectionInfo>);

impl PartialEq for ClientInfo {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.redis_settings(), other.0.redis_settings());
        format!("{:?}", self.0.addr()) == format!("{:?}", other.0.addr())
            && a.db() == b.db()
            && a.username() == b.username()
            && a.password() == b.password()
    }
}

impl Eq for ClientInfo {}

/// Checks one node URL with redis-rs's own parser; the reason never repeats the URL (it may
/// hold a password).
fn check_node(url: &str) -> std::result::Result<(), &'static str> {
    match url.into_connection_info() {
        Ok(_) => Ok(()),
        Err(_) => Err("is not a valid Redis URL"),
    }
}

/// `url` with the password (or a bare userinfo, which may be one) replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Without a scheme there is no telling where a password would be: show nothing of it.
        return "the URL".to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            format!("{scheme}://{}@{host}{path}", redact_userinfo(userinfo))
        }
        None => url.to_owned(),
    }
}

fn redact_userinfo(userinfo: &str) -> String {
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(url: &str) -> String {
        match RedisConfig::from_url(url) {
            Err(e @ Error::Config { .. }) => {
                let text = e.to_string();
                assert!(text.contains("configuration error in the Redis URL: "), "{text}");
                assert!(!text.contains("REDIS_"), "names an environment variable: {text}");
                assert!(!text.contains("hunter2"), "the password leaked: {text}");
                text
            }
            other => panic!("expected a configuration error for {url}, got {other:?}"),
        }
    }

    #[test]
    fn parses_single_server_urls() {
        let config = RedisConfig::from_url("redis://app:hunter2@10.0.0.5:6380/3").expect("valid");
        assert!(!config.is_cluster());
        assert_eq!(config.nodes(), ["redis://app:hunter2@10.0.0.5:6380/3"]);
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redis://app:***@10.0.0.5:6380/3"), "{debug}");
        assert_eq!(RedisConfig::default().redacted_url(), "redis://127.0.0.1:6379");
        let parsed: RedisConfig = "redis://localhost".parse().expect("valid");
        assert_eq!(parsed.prefix(), "orcs");
    }

    #[test]
    fn takes_the_connection_from_a_client() {
        let client = redis::Client::open("redis://app:hunter2@10.0.0.5:6380/3").expect("client");
        let config = RedisConfig::from_client(&client).with_prefix("myapp");
        assert_eq!(config.prefix(), "myapp");
        assert!(!config.is_cluster() && !config.is_tls());
        assert_eq!(config.redacted_url(), "redis://app:***@10.0.0.5:6380/3");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2") && debug.contains("myapp"), "{debug}");
        assert_eq!(config.client_info().expect("from a client").redis_settings().db(), 3);
        assert_eq!(config, RedisConfig::from_client(&client).with_prefix("myapp"));
        let other = redis::Client::open("redis://app:other@10.0.0.5:6380/3").expect("client");
        assert_ne!(config, RedisConfig::from_client(&other).with_prefix("myapp"));
        let err = config.with_ca_cert("-----BEGIN CERTIFICATE-----").expect_err("refused");
        assert!(err.to_string().contains("redis::Client::build_with_tls"), "{err}");
    }

    #[test]
    fn parses_cluster_urls() {
        let config =
            RedisConfig::from_url("redis+cluster://:hunter2@127.0.0.1:7000,127.0.0.1:7001")
                .expect("valid");
        assert!(config.is_cluster());
        assert_eq!(
            config.nodes(),
            ["redis://:hunter2@127.0.0.1:7000", "redis://:hunter2@127.0.0.1:7001"]
        );
        assert_eq!(config.redacted_url(), "redis+cluster://:***@127.0.0.1:7000,127.0.0.1:7001");
        config_error("redis+cluster://:hunter2@127.0.0.1:7000/2");
        config_error("redis+cluster://");
    }

    #[test]
    fn rejects_bad_urls_without_showing_the_password() {
        if cfg!(feature = "tls") {
            let config = RedisConfig::from_url("rediss://u:hunter2@host:6380/2").expect("TLS");
            assert!(config.is_tls());
            assert_eq!(config.to_string(), "rediss://u:***@host:6380/2");
        } else {
            let text = config_error("rediss://u:hunter2@host:6380");
            assert!(text.contains("TLS") && text.contains("`tls` feature"), "{text}");
        }
        let text = config_error("rediss+cluster://u:hunter2@host:6380,host:6381");
        assert!(text.contains("TLS to a Redis Cluster") && text.contains("tunnel"), "{text}");
        let text = config_error("http://u:hunter2@host");
        assert!(text.contains("redis://") && text.contains("redis+cluster://"), "{text}");
        config_error("redis://u:hunter2@host:notaport");
        config_error("hunter2");
        config_error("redis://hunter2@host:99999999");
    }

    #[test]
    fn debug_and_display_never_show_the_password() {
        for (url, shown) in [
            ("redis://app:hunter2@10.0.0.5:6380/3", "redis://app:***@10.0.0.5:6380/3"),
            ("redis://:hunter2@h", "redis://:***@h"),
            ("redis://hunter2@h", "redis://***@h"),
            ("redis://app:p@ss:hunter2@h/0", "redis://app:***@h/0"),
            ("redis+cluster://app:hunter2@a:1,b:2", "redis+cluster://app:***@a:1,b:2"),
        ] {
            let config = RedisConfig::from_url(url).expect("valid");
            assert_eq!(config.to_string(), shown);
            let debug = format!("{config:?} {config:#?}");
            assert!(debug.contains(shown), "{debug}");
            assert!(!debug.contains("hunter2"), "{debug}");
        }
    }

    #[test]
    fn connection_errors_never_show_the_password() {
        // Built without connecting: a bad node inside a valid-looking cluster URL, and the
        // errors of every config setter that names the URL.
        let text = config_error("redis+cluster://app:hunter2@a:1,b:notaport");
        assert!(text.contains("redis+cluster://app:***@"), "{text}");
        let err = RedisConfig::from_url("redis://app:hunter2@h")
            .expect("valid")
            .with_ca_cert("-----BEGIN CERTIFICATE-----")
            .expect_err("not TLS");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("redis://app:***@h"), "{err}");
    }

    #[test]
    fn setters_adjust_the_config() {
        let config = RedisConfig::default().with_prefix("a{b}").with_pool_size(0);
        assert_eq!((config.prefix(), config.pool_size()), ("a_b_", 1));
    }
}
