//! Who may look and who may act: tokens, sessions, CSRF tokens and the origin check.
//!
//! A browser signs in once with a token (the login form) and gets a session cookie:
//! `role.expires.nonce.mac`, HttpOnly and SameSite=Strict, where `mac` is an HMAC-SHA256 of the
//! rest keyed with that role's token. Sessions are stateless: nothing is stored on the server,
//! any replica behind a load balancer accepts them, and changing a token ends every session
//! made with it. A script sends `Authorization: Bearer TOKEN` instead and needs no cookie.
//!
//! Every POST made with a cookie carries the session's CSRF token (an HMAC of the session's mac,
//! so it differs per session) in a hidden form field, and must come from the dashboard's own
//! origin (`Origin`, else `Sec-Fetch-Site`). Bearer requests need neither: browsers never add an
//! `Authorization` header on their own.
//!
//! Without any token the dashboard is open, but only to loopback peers, and still uses a session
//! cookie (keyed with a random per-process key) so that its forms carry CSRF tokens as well.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::text::hex;

/// The admin token's environment variable.
pub const TOKEN_VAR: &str = "ORCS_DASHBOARD_TOKEN";
/// The read-only token's environment variable.
pub const READONLY_TOKEN_VAR: &str = "ORCS_DASHBOARD_READONLY_TOKEN";
/// The shortest token accepted: 16 characters of a random token are out of reach of guessing
/// over HTTP.
pub const MIN_TOKEN_LEN: usize = 16;

pub(crate) const SESSION_COOKIE: &str = "orcs_dashboard_session";
pub(crate) const FLASH_COOKIE: &str = "orcs_dashboard_flash";
const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

type HmacSha256 = Hmac<Sha256>;

/// What a signed-in user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Sees everything and may act (retry, forget, cancel, pause, ...).
    Admin,
    /// Sees everything; every action answers 403.
    Viewer,
}

impl Role {
    /// `admin` or `viewer`, as the audit log and the session cookie spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Self::Admin),
            "viewer" => Some(Self::Viewer),
            _ => None,
        }
    }
}

/// Bytes that never show in `Debug` output.
#[derive(Clone)]
struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The dashboard's access rules: an admin token, a read-only token, or neither (open, loopback
/// only). Build it with [`Auth::from_env`], [`Auth::tokens`] or [`Auth::open`].
#[derive(Clone, Debug)]
pub struct Auth {
    admin: Option<Secret>,
    viewer: Option<Secret>,
    /// Keys the sessions of an open dashboard (random per process).
    open_key: Secret,
    session_ttl: Duration,
    secure_cookies: bool,
    trusted_origins: Vec<String>,
}

/// Why the dashboard's configuration or its listener was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A token is shorter than [`MIN_TOKEN_LEN`].
    #[error(
        "{which} is too short ({len} characters): use at least 16 random characters, e.g. the \
         output of `openssl rand -hex 32`"
    )]
    WeakToken {
        /// Which token (and its variable).
        which: &'static str,
        /// Its length.
        len: usize,
    },
    /// Both tokens are the same.
    #[error(
        "the admin token ({TOKEN_VAR}) and the read-only token ({READONLY_TOKEN_VAR}) are the \
         same, so a viewer would be an admin; give the read-only token a value of its own"
    )]
    SameTokens,
    /// A dashboard without a token was to listen beyond loopback.
    #[error(
        "refusing to serve the dashboard on {addr} without a token: anyone who reaches it could \
         retry, delete and pause jobs; set {TOKEN_VAR} (admin) and/or {READONLY_TOKEN_VAR} \
         (read-only), or bind to a loopback address such as 127.0.0.1:{port}",
        port = addr.port()
    )]
    OpenBind {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The listener could not be opened.
    #[error("cannot listen on {addr}: {source}; pick a free port or another address")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Auth {
    /// No token: every loopback peer is an admin, any other peer is refused, and
    /// [`crate::bind`] refuses to listen beyond loopback. For a developer's machine.
    ///
    /// # Panics
    /// If the operating system's random source fails (the session key is random).
    pub fn open() -> Self {
        Self {
            admin: None,
            viewer: None,
            open_key: Secret(random::<32>().to_vec()),
            session_ttl: DEFAULT_SESSION_TTL,
            secure_cookies: false,
            trusted_origins: Vec::new(),
        }
    }

    /// An admin token, a read-only token, or both (`None` or an empty string: not set). With
    /// neither, the dashboard is [`Auth::open`].
    ///
    /// # Errors
    /// [`Error::WeakToken`] for a token under [`MIN_TOKEN_LEN`] characters, [`Error::SameTokens`]
    /// when both are the same.
    ///
    /// # Panics
    /// As [`Auth::open`].
    pub fn tokens(admin: Option<&str>, readonly: Option<&str>) -> Result<Self, Error> {
        let admin = admin.map(str::trim).filter(|t| !t.is_empty());
        let readonly = readonly.map(str::trim).filter(|t| !t.is_empty());
        for (token, which) in [
            (admin, "the admin token (ORCS_DASHBOARD_TOKEN)"),
            (readonly, "the read-only token (ORCS_DASHBOARD_READONLY_TOKEN)"),
        ] {
            if let Some(token) = token
                && token.chars().count() < MIN_TOKEN_LEN
            {
                return Err(Error::WeakToken { which, len: token.chars().count() });
            }
        }
        if admin.is_some() && admin == readonly {
            return Err(Error::SameTokens);
        }
        let mut auth = Self::open();
        auth.admin = admin.map(|t| Secret(t.as_bytes().to_vec()));
        auth.viewer = readonly.map(|t| Secret(t.as_bytes().to_vec()));
        Ok(auth)
    }

    /// The tokens of `ORCS_DASHBOARD_TOKEN` (admin) and `ORCS_DASHBOARD_READONLY_TOKEN`
    /// (viewer); see [`Auth::tokens`].
    ///
    /// # Errors
    /// As [`Auth::tokens`].
    pub fn from_env() -> Result<Self, Error> {
        let admin = std::env::var(TOKEN_VAR).ok();
        let readonly = std::env::var(READONLY_TOKEN_VAR).ok();
        Self::tokens(admin.as_deref(), readonly.as_deref())
    }

    /// How long a session cookie lasts (default 12 hours); the user signs in again after it.
    #[must_use]
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// Marks the cookies `Secure` (sent over HTTPS only). Turn it on when users reach the
    /// dashboard through HTTPS, e.g. behind a TLS-terminating proxy.
    #[must_use]
    pub fn secure_cookies(mut self, on: bool) -> Self {
        self.secure_cookies = on;
        self
    }

    /// Also accepts POSTs whose `Origin` is `origin` (e.g. `https://admin.example.com`), for a
    /// proxy that does not pass the browser's `Host` through. By default a POST's origin must
    /// name the request's own `Host`.
    #[must_use]
    pub fn trust_origin(mut self, origin: impl Into<String>) -> Self {
        self.trusted_origins.push(origin.into().trim_end_matches('/').to_ascii_lowercase());
        self
    }

    /// True when no token is set: open to loopback peers only.
    pub fn is_open(&self) -> bool {
        self.admin.is_none() && self.viewer.is_none()
    }

    /// The role a presented token grants, compared in constant time.
    pub(crate) fn role_of_token(&self, presented: &str) -> Option<Role> {
        let presented = Sha256::digest(presented.trim().as_bytes());
        let matches = |secret: &Option<Secret>| {
            secret.as_ref().is_some_and(|s| same(&Sha256::digest(&s.0), &presented))
        };
        // Both are compared whatever the first answers, so timing tells nothing either.
        let (admin, viewer) = (matches(&self.admin), matches(&self.viewer));
        if admin {
            Some(Role::Admin)
        } else if viewer {
            Some(Role::Viewer)
        } else {
            None
        }
    }

    /// The key that signs `role`'s sessions: its token, or the random key of an open dashboard.
    fn key(&self, role: Role) -> Option<&[u8]> {
        if self.is_open() {
            return (role == Role::Admin).then_some(self.open_key.0.as_slice());
        }
        match role {
            Role::Admin => self.admin.as_ref(),
            Role::Viewer => self.viewer.as_ref(),
        }
        .map(|s| s.0.as_slice())
    }

    /// A new session cookie value for `role`, valid from now for the session's time to live.
    pub(crate) fn issue(&self, role: Role) -> Option<String> {
        let key = self.key(role)?;
        let expires = unix_now().saturating_add(self.session_ttl.as_secs());
        let claims = format!("{}.{expires}.{}", role.as_str(), hex(&random::<16>()));
        let mac = hex(&sign(key, "session", &claims));
        Some(format!("{claims}.{mac}"))
    }

    /// The role of a session cookie whose signature holds and that has not expired, with the
    /// session's mac (its identity).
    pub(crate) fn verify(&self, cookie: &str) -> Option<(Role, String)> {
        let (claims, mac) = cookie.rsplit_once('.')?;
        let mut parts = claims.split('.');
        let role = Role::parse(parts.next()?)?;
        let expires: u64 = parts.next()?.parse().ok()?;
        let key = self.key(role)?;
        let expected = hex(&sign(key, "session", claims));
        (same(expected.as_bytes(), mac.as_bytes()) && expires > unix_now())
            .then(|| (role, mac.to_owned()))
    }

    /// The CSRF token of the session whose mac is `session_mac`.
    pub(crate) fn csrf(&self, role: Role, session_mac: &str) -> String {
        let key = self.key(role).unwrap_or_default();
        hex(&sign(key, "csrf", session_mac)[..16])
    }

    /// `Set-Cookie` for the session cookie (or, with `None`, one that removes it). No `Path`: the
    /// browser scopes the cookie to the folder of the URL that set it, which is the router's
    /// mount point, since the login form and every page live at its top level.
    pub(crate) fn session_cookie(&self, value: Option<&str>) -> HeaderValue {
        let (value, max_age) = match value {
            Some(v) => (v, self.session_ttl.as_secs()),
            None => ("", 0),
        };
        self.cookie(SESSION_COOKIE, value, max_age)
    }

    /// `Set-Cookie` for the one-shot notice shown after an action (`None` removes it).
    pub(crate) fn flash_cookie(&self, text: Option<&str>) -> HeaderValue {
        match text {
            Some(text) => {
                let encoded: String = form_urlencoded::byte_serialize(text.as_bytes()).collect();
                self.cookie(FLASH_COOKIE, &encoded, 60)
            }
            None => self.cookie(FLASH_COOKIE, "", 0),
        }
    }

    fn cookie(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        let text = format!("{name}={value}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Whether a POST comes from the dashboard's own pages: its `Origin` names the request's
    /// `Host` (or a trusted origin); without `Origin`, `Sec-Fetch-Site` says `same-origin`.
    /// `Ok(false)` when the browser sent neither (only acceptable for bearer requests).
    pub(crate) fn same_origin(&self, headers: &HeaderMap) -> Result<bool, String> {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("").trim_end_matches('/').to_ascii_lowercase();
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
            if (!host.is_empty() && authority == host) || self.trusted_origins.contains(&origin) {
                return Ok(true);
            }
            return Err(format!(
                "the request came from {origin}, not from this dashboard ({host}); if a proxy \
                 changes the Host header, pass it through or trust the origin with \
                 Auth::trust_origin"
            ));
        }
        match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
            Some("same-origin") => Ok(true),
            Some(other) => {
                Err(format!("the request came from another site (Sec-Fetch-Site: {other})"))
            }
            None => Ok(false),
        }
    }
}

/// HMAC-SHA256 of `message` under `key`, separated by `purpose` so a session mac never
/// doubles as a CSRF token.
fn sign(key: &[u8], purpose: &str, message: &str) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(b"orcs-dashboard/v1/");
    mac.update(purpose.as_bytes());
    mac.update(b"\n");
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Equality that takes the same time wherever the first difference is.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `N` bytes from the operating system's random source.
fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    bytes
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The bearer token of an `Authorization` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-token-0123456789";
    const VIEWER: &str = "viewer-token-0123456789";

    #[test]
    fn tokens_are_checked() {
        assert!(matches!(Auth::tokens(Some("short"), None), Err(Error::WeakToken { len: 5, .. })));
        assert!(matches!(Auth::tokens(Some(ADMIN), Some(ADMIN)), Err(Error::SameTokens)));
        assert!(Auth::tokens(Some(" "), None).unwrap().is_open());
        let auth = Auth::tokens(Some(ADMIN), Some(VIEWER)).unwrap();
        assert_eq!(auth.role_of_token(ADMIN), Some(Role::Admin));
        assert_eq!(auth.role_of_token(VIEWER), Some(Role::Viewer));
        assert_eq!(auth.role_of_token("admin-token-012345678"), None);
        assert!(!format!("{auth:?}").contains(ADMIN));
    }

    #[test]
    fn sessions_are_signed_per_role_and_token() {
        let auth = Auth::tokens(Some(ADMIN), Some(VIEWER)).unwrap();
        let cookie = auth.issue(Role::Viewer).unwrap();
        let (role, mac) = auth.verify(&cookie).unwrap();
        assert_eq!(role, Role::Viewer);
        // Claiming another role breaks the signature.
        assert_eq!(auth.verify(&cookie.replacen("viewer", "admin", 1)), None);
        // A changed token ends the sessions made with it.
        let rotated = Auth::tokens(Some(ADMIN), Some("another-viewer-token-42")).unwrap();
        assert_eq!(rotated.verify(&cookie), None);
        // Each session has a CSRF token of its own.
        let other = auth.issue(Role::Viewer).unwrap();
        let (_, other_mac) = auth.verify(&other).unwrap();
        assert_ne!(auth.csrf(role, &mac), auth.csrf(role, &other_mac));
        // An expired session is refused.
        let expired = Auth::tokens(Some(ADMIN), None).unwrap().session_ttl(Duration::ZERO);
        assert_eq!(expired.verify(&expired.issue(Role::Admin).unwrap()), None);
        // An open dashboard has no viewers.
        assert_eq!(Auth::open().issue(Role::Viewer), None);
    }

    #[test]
    fn origins_must_be_the_dashboards_own() {
        let auth = Auth::open().trust_origin("https://admin.example.com/");
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(auth.same_origin(&headers), Ok(false));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert_eq!(auth.same_origin(&headers), Ok(true));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://admin.example.com"));
        assert_eq!(auth.same_origin(&headers), Ok(true));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(auth.same_origin(&headers).unwrap_err().contains("evil.example"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(auth.same_origin(&headers).is_err());
        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(auth.same_origin(&headers).is_err());
    }

    #[test]
    fn cookies_and_bearer_tokens_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; orcs_dashboard_session=x.y"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc "));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("x.y"));
        assert_eq!(cookie(&headers, "b"), None);
        assert_eq!(bearer(&headers), Some("abc"));
    }
}
