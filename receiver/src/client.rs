//! HTTP(S) client of the repository: one `ureq` agent (a pool of keep-alive connections)
//! shared by every thread, rustls with the trust roots the firmware was built with, and a
//! translation of every failure into [`Error`] so callers can tell "offline" from
//! "refused" from "wrong password".

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use appliance::wire::{self, ApiError, LoginRequest, LoginResponse};
use appliance::PublicKey;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Largest manifest or API reply read (a sealed user-disk manifest of a 64 GiB disk at
/// 64 KiB chunks is about 120 MB of JSON).
pub const MAX_JSON: u64 = 144 << 20;
/// Largest stored chunk read (a sealed user chunk is a little larger than a `CK` chunk).
pub const MAX_STORED_CHUNK: u64 = appliance::sealed::MAX_SEALED_CHUNK as u64;

/// Days an offline login works after the last online login, unless configured.
pub const DEFAULT_OFFLINE_DAYS: u32 = 14;
/// Users kept for offline login on one terminal, unless configured.
pub const DEFAULT_OFFLINE_USERS: usize = 3;

/// What the firmware knows about its repository: built into the image (URL from the
/// kernel command line or DHCP, keys and CA at build time), never fetched.
#[derive(Clone, Debug)]
pub struct RepoConfig {
    /// Base URL, e.g. `https://repo.example/` (a missing trailing `/` is added).
    pub url: String,
    /// Publisher keys whose signatures are accepted.
    pub trusted_keys: Vec<PublicKey>,
    /// PEM file with the CA certificate(s) that HTTPS servers must chain to. `None`: the
    /// webpki (Mozilla) roots.
    pub ca_pem: Option<PathBuf>,
    /// Parallel connections used by the background fill.
    pub connections: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout for a whole request once connected (a stalled server counts as a failure
    /// and the request is retried).
    pub request_timeout: Duration,
    /// Attempts per chunk before a fill gives up on it (demand reads use the same).
    pub attempts: u32,
    /// First retry delay; doubles per attempt up to `max_backoff`.
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// How long a login waits out a busy repository (503, or 429 other than the failed-login
    /// limit) before it falls back to offline login, when the user has an offline record
    /// on this terminal. Without one it asks `attempts` times.
    pub busy_login_patience: Duration,
    /// argon2id parameters for a data key this terminal makes or re-wraps (a user from
    /// before sealing, a password change): [`appliance::KdfParams::DATA_KEY`].
    pub wrap_kdf: appliance::KdfParams,
    /// Days an offline login works after the user's last online login on this terminal
    /// (`collective.offline-days`, default 14); 0 turns offline login off. It bounds how
    /// long a password changed or a user removed elsewhere still opens this terminal's copy.
    pub offline_days: u32,
    /// Users whose offline record and user disks this terminal keeps once their data is
    /// written back (`collective.offline-users`, default 3); the least recently logged in
    /// beyond it lose both at a logout. Users with changes not yet written back are kept.
    pub offline_users: usize,
}

impl RepoConfig {
    /// Defaults suited to an office LAN: 4 connections, 5 s connect, 30 s per request,
    /// 8 attempts with backoff from 100 ms up to 5 s, 10 s of patience with a busy
    /// repository at login when offline login is possible.
    pub fn new(url: &str, trusted_keys: Vec<PublicKey>) -> RepoConfig {
        RepoConfig {
            url: url.to_owned(),
            trusted_keys,
            ca_pem: None,
            connections: 4,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            attempts: 8,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            busy_login_patience: Duration::from_secs(10),
            wrap_kdf: appliance::KdfParams::DATA_KEY,
            offline_days: DEFAULT_OFFLINE_DAYS,
            offline_users: DEFAULT_OFFLINE_USERS,
        }
    }

    /// Retry delay before attempt `attempt` (1-based; attempt 1 has none).
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (attempt - 2).min(16);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The wait before attempt `attempt` after `error`: the exponential backoff, or what a
    /// busy repository asked for (at most [`MAX_RETRY_AFTER`]) if that is longer, plus up
    /// to half as much again at random, so that a whole office of terminals turned away
    /// at the same moment does not come back at the same moment.
    pub fn retry_delay(&self, attempt: u32, error: &Error) -> Duration {
        let mut base = self.backoff_for(attempt);
        if let Error::Busy {
            retry_after_secs, ..
        } = error
        {
            base = base.max(Duration::from_secs(*retry_after_secs).min(MAX_RETRY_AFTER));
        }
        base + jitter(base / 2)
    }
}

/// Longest `Retry-After` honoured as asked (a longer one is cut to this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A random duration in `[0, max]`, from the standard library's per-process random hash
/// keys (good enough to spread retries; nothing secret depends on it).
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let nanos = max.as_nanos().min(u128::from(u64::MAX)) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(h.finish() % (nanos + 1))
}

/// A connection pool to one repository, optionally with a session token.
#[derive(Clone)]
pub struct RepoClient {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
    config: Arc<RepoConfig>,
    sealed: Option<Arc<crate::sealed::SealedChunks>>,
}

impl RepoClient {
    /// Builds the agent (and the TLS configuration, if a CA file is given).
    pub fn new(config: RepoConfig) -> Result<RepoClient> {
        let mut base = config.url.trim().to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "repository URL {base:?} must start with http:// or https://"
            )));
        }
        if !base.ends_with('/') {
            base.push('/');
        }
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(config.connect_timeout)
            .timeout(config.request_timeout)
            .max_idle_connections_per_host(config.connections.max(1) + 4)
            .user_agent(concat!("collective-receiver/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_pem {
            builder = builder.tls_config(Arc::new(tls_config(ca)?));
        }
        Ok(RepoClient {
            agent: builder.build(),
            base,
            token: None,
            config: Arc::new(config),
            sealed: None,
        })
    }

    /// The session's sealed user chunks: a [`crate::Fetcher`] made from this client
    /// fetches those sealed and opens them with the user's key.
    pub fn sealed(&self) -> Option<&Arc<crate::sealed::SealedChunks>> {
        self.sealed.as_ref()
    }

    /// Sets what [`RepoClient::sealed`] returns (done by the login).
    pub fn set_sealed(&mut self, sealed: Arc<crate::sealed::SealedChunks>) {
        self.sealed = Some(sealed);
    }

    /// The configuration.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The base URL (with trailing `/`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// True once [`RepoClient::login`] succeeded.
    pub fn has_session(&self) -> bool {
        self.token.is_some()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path.trim_start_matches('/'))
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> Error {
        Error::Unreachable {
            url: self.base.clone(),
            why: why.to_string(),
        }
    }

    /// Turns a ureq failure into an [`Error`]; `what` names the request for messages.
    fn map_err(&self, what: &str, e: ureq::Error) -> Error {
        match e {
            ureq::Error::Status(status, resp) => self.status_error(what, status, resp).1,
            ureq::Error::Transport(t) => self.unreachable(t),
        }
    }

    /// The error body of a refusal (if it is one) and the [`Error`] it means.
    fn status_error(
        &self,
        what: &str,
        status: u16,
        resp: ureq::Response,
    ) -> (Option<ApiError>, Error) {
        let retry_after = resp
            .header("Retry-After")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = resp.into_string().unwrap_or_default();
        let api: Option<ApiError> = serde_json::from_str(&body).ok();
        let error = match (status, api.as_ref()) {
            (401, Some(a)) if a.code == "bad_credentials" => Error::BadCredentials,
            (401, Some(a)) if a.code == "session_revoked" => Error::SessionRevoked,
            (429, Some(a)) if a.code == "rate_limited" => Error::RateLimited {
                retry_after_secs: a.retry_after_secs.or(retry_after).unwrap_or(60),
            },
            (429 | 503, a) => Error::Busy {
                url: self.base.clone(),
                what: a
                    .map(|a| a.message.clone())
                    .unwrap_or_else(|| format!("HTTP {status} for {what}")),
                retry_after_secs: retry_after.unwrap_or(1),
            },
            (_, Some(a)) => Error::Repository {
                what: what.into(),
                status,
                code: a.code.clone(),
                message: a.message.clone(),
            },
            (_, None) => Error::Repository {
                what: what.into(),
                status,
                code: String::new(),
                message: body.chars().take(200).collect(),
            },
        };
        (api, error)
    }

    fn read_body(&self, what: &str, resp: ureq::Response, limit: u64) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        resp.into_reader()
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.unreachable(format!("{what}: body cut short: {e}")))?;
        if body.len() as u64 > limit {
            return Err(Error::Protocol {
                what: what.into(),
                why: format!("larger than the {limit}-byte limit"),
            });
        }
        Ok(body)
    }

    /// GET of immutable content (`chunks/...`, `manifests/...`): the raw body.
    pub fn get(&self, path: &str, limit: u64) -> Result<Vec<u8>> {
        let resp = self
            .agent
            .get(&self.url(path))
            .call()
            .map_err(|e| self.map_err(path, e))?;
        self.read_body(path, resp, limit)
    }

    fn authed(&self, req: ureq::Request) -> Result<ureq::Request> {
        let token = self
            .token
            .as_deref()
            .ok_or_else(|| Error::Config("this call needs a login first".into()))?;
        Ok(req.set("Authorization", &format!("Bearer {token}")))
    }

    fn parse<T: DeserializeOwned>(&self, what: &str, body: &[u8]) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| Error::Protocol {
            what: what.into(),
            why: e.to_string(),
        })
    }

    /// POSTs the credentials; on success keeps the session token for later calls. A busy
    /// repository (503, which it answers before it looks at the password) is asked again
    /// after the time it says, up to `attempts` times; an unreachable one is not (the
    /// caller falls back to offline login at once).
    pub fn login(&mut self, user: &str, password: &str) -> Result<LoginResponse> {
        self.login_within(user, password, None)
    }

    /// [`RepoClient::login`], but a busy repository is waited for only while the waits fit
    /// in `patience` (if given): a caller with an offline record to fall back on should not
    /// keep a person at the login screen for `attempts` times a long `Retry-After`.
    pub fn login_within(
        &mut self,
        user: &str,
        password: &str,
        patience: Option<Duration>,
    ) -> Result<LoginResponse> {
        let started = std::time::Instant::now();
        let mut attempt = 1;
        loop {
            match self.login_once(user, password) {
                Err(e @ Error::Busy { .. }) if attempt < self.config.attempts => {
                    let wait = self.config.retry_delay(attempt + 1, &e);
                    if patience.is_some_and(|p| started.elapsed() + wait > p) {
                        return Err(e);
                    }
                    attempt += 1;
                    log::info!("login: {e}; asking again in {} ms", wait.as_millis());
                    std::thread::sleep(wait);
                }
                r => return r,
            }
        }
    }

    fn login_once(&mut self, user: &str, password: &str) -> Result<LoginResponse> {
        let body = serde_json::to_vec(&LoginRequest {
            user: user.into(),
            password: password.into(),
        })
        .map_err(|e| Error::Config(e.to_string()))?;
        let resp = self
            .agent
            .post(&self.url(wire::LOGIN_PATH))
            .set("Content-Type", "application/json")
            .send_bytes(&body)
            .map_err(|e| self.map_err("login", e))?;
        let body = self.read_body("login reply", resp, MAX_JSON)?;
        let reply: LoginResponse = self.parse("login reply", &body)?;
        if reply.format != wire::API_FORMAT {
            return Err(Error::Protocol {
                what: "login reply".into(),
                why: format!(
                    "API format {} (this terminal speaks {})",
                    reply.format,
                    wire::API_FORMAT
                ),
            });
        }
        self.token = Some(reply.token.clone());
        Ok(reply)
    }

    /// Ends the session (best effort: a session also expires by itself).
    pub fn logout(&mut self) {
        if let Ok(req) = self.authed(self.agent.post(&self.url(wire::LOGOUT_PATH))) {
            if let Err(e) = req.call() {
                log::info!("logout: {e}");
            }
        }
        self.token = None;
    }

    /// JSON call with the session token. `body` None sends a GET.
    pub fn api<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let req = self.authed(self.agent.request(method, &self.url(path)))?;
        let resp = match body {
            Some(b) => req.set("Content-Type", "application/json").send_bytes(&b),
            None => req.call(),
        }
        .map_err(|e| self.map_err(path, e))?;
        let body = self.read_body(path, resp, MAX_JSON)?;
        self.parse(path, &body)
    }

    /// PUT of one encoded chunk (user data upload). Ok for 200 (already there) and 201.
    pub fn put_chunk(&self, id: &appliance::ChunkId, encoded: &[u8]) -> Result<()> {
        let path = wire::chunk_upload_path(id);
        let req = self.authed(self.agent.put(&self.url(&path)))?;
        req.set("Content-Type", "application/octet-stream")
            .send_bytes(encoded)
            .map_err(|e| self.map_err(&path, e))?;
        Ok(())
    }

    /// A JSON call that keeps the HTTP status and the API error body, for callers that
    /// react to specific codes (409 conflict, 400 missing_chunks).
    pub fn api_raw(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::result::Result<Vec<u8>, Box<ApiFailure>> {
        let fail = |status, api, error| Box::new(ApiFailure { status, api, error });
        let req = self
            .authed(self.agent.request(method, &self.url(path)))
            .map_err(|e| fail(0, None, e))?;
        match req.set("Content-Type", "application/json").send_bytes(body) {
            Ok(resp) => self
                .read_body(path, resp, MAX_JSON)
                .map_err(|e| fail(0, None, e)),
            Err(ureq::Error::Status(status, resp)) => {
                let (api, err) = self.status_error(path, status, resp);
                Err(fail(status, api, err))
            }
            Err(e) => Err(fail(0, None, self.map_err(path, e))),
        }
    }
}

/// A failed [`RepoClient::api_raw`] call.
#[derive(Debug)]
pub struct ApiFailure {
    /// HTTP status, 0 if there was no reply.
    pub status: u16,
    /// The error body, if it was one.
    pub api: Option<ApiError>,
    /// The same as an [`Error`].
    pub error: Error,
}

/// rustls client configuration trusting exactly the certificates in `ca` (PEM).
fn tls_config(ca: &std::path::Path) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| Error::Config(format!("CA file {}: {e}", ca.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| Error::Config(format!("CA file {}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("CA file {}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(Error::Config(format!(
            "CA file {} holds no certificate",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let c = RepoConfig::new("http://x/", vec![]);
        assert_eq!(c.backoff_for(1), Duration::ZERO);
        assert_eq!(c.backoff_for(2), Duration::from_millis(100));
        assert_eq!(c.backoff_for(3), Duration::from_millis(200));
        assert_eq!(c.backoff_for(9), Duration::from_secs(5));
        assert_eq!(
            c.backoff_for(60),
            Duration::from_secs(5),
            "no overflow on huge attempt counts"
        );
    }

    #[test]
    fn retry_delay_honours_retry_after_with_jitter() {
        let c = RepoConfig::new("http://x/", vec![]);
        let busy = |s| Error::Busy {
            url: "http://x/".into(),
            what: "busy".into(),
            retry_after_secs: s,
        };
        let net = Error::Unreachable {
            url: "http://x/".into(),
            why: "reset".into(),
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let d = c.retry_delay(2, &busy(3));
            assert!(
                d >= Duration::from_secs(3) && d <= Duration::from_millis(4500),
                "{d:?}"
            );
            seen.insert(d);
            let d = c.retry_delay(3, &net);
            assert!(
                d >= Duration::from_millis(200) && d <= Duration::from_millis(300),
                "{d:?}"
            );
        }
        assert!(seen.len() > 10, "the delays are spread, not all alike");
        let d = c.retry_delay(2, &busy(100_000));
        assert!(d <= MAX_RETRY_AFTER * 3 / 2, "{d:?}");
    }

    #[test]
    fn urls_are_checked() {
        assert!(matches!(
            RepoClient::new(RepoConfig::new("ftp://x/", vec![])),
            Err(Error::Config(_))
        ));
        let c = RepoClient::new(RepoConfig::new("http://repo:8080", vec![])).unwrap();
        assert_eq!(c.base(), "http://repo:8080/");
        assert_eq!(c.url("/chunks/ab/cd"), "http://repo:8080/chunks/ab/cd");
    }
}
