//! The HTTP side of the distribution API: TLS with the system roots (plus
//! `certs.d` directories), the auth flow (anonymous, bearer tokens, basic),
//! redirects handled by hand (bounded, credentials never follow to another
//! host), size limits and timeouts on everything read.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::{Response, StatusCode};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body, SendBody};

use super::auth::{self, Challenge, Credentials};
use super::RegistryError;

/// Redirects followed for one request before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// Largest token-server answer read.
const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// Largest error body read (for the message).
const MAX_ERROR_BYTES: u64 = 64 << 10;

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Verify the registry's TLS certificate (`--tls-verify`). When false,
    /// plain HTTP is also tried (as podman does).
    pub tls_verify: bool,
    /// Extra directories of `*.crt` CA certificates (`--cert-dir`), on top
    /// of the system roots and `/etc/containers/certs.d/HOST/`.
    pub cert_dirs: Vec<PathBuf>,
    /// Credentials given on the command line (`--creds`); else the files.
    pub credentials: Option<Credentials>,
    /// Credential files searched in order (see `auth::auth_files`).
    pub auth_files: Vec<PathBuf>,
    /// Longest wait for connecting and for any single read.
    pub timeout: Duration,
    /// Parallel blob transfers.
    pub parallel: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            tls_verify: true,
            cert_dirs: Vec::new(),
            credentials: None,
            auth_files: auth::auth_files(),
            timeout: Duration::from_secs(30),
            parallel: 4,
        }
    }
}

/// System CA bundles, first existing one wins.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn read_pem_certs(path: &Path, out: &mut Vec<Certificate<'static>>) -> Result<(), RegistryError> {
    let bytes = fs::read(path).map_err(|source| RegistryError::Certs {
        path: path.to_path_buf(),
        source,
    })?;
    for item in ureq::tls::parse_pem(&bytes).flatten() {
        if let PemItem::Certificate(c) = item {
            out.push(c.to_owned());
        }
    }
    Ok(())
}

fn root_certs(host: &str, extra: &[PathBuf]) -> Result<Vec<Certificate<'static>>, RegistryError> {
    let mut certs = Vec::new();
    if let Some(b) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
        read_pem_certs(b, &mut certs)?;
    }
    let mut dirs: Vec<PathBuf> = ["/etc/containers/certs.d", "/etc/docker/certs.d"]
        .iter()
        .map(|d| Path::new(d).join(host))
        .collect();
    dirs.extend(extra.iter().cloned());
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "crt"))
            .collect();
        files.sort();
        for f in files {
            read_pem_certs(&f, &mut certs)?;
        }
    }
    Ok(certs)
}

/// Host part (without port, brackets kept) of `host[:port]`.
fn host_only(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    }
}

/// Whether a token server at `realm_host` may receive this registry's
/// credentials: the same host, or (for DNS names) the same parent domain,
/// as Docker Hub's `auth.docker.io` for `registry-1.docker.io`.
pub(crate) fn realm_allowed(registry_authority: &str, realm_authority: &str) -> bool {
    let a = host_only(registry_authority).to_ascii_lowercase();
    let b = host_only(realm_authority).to_ascii_lowercase();
    if a == b {
        return true;
    }
    let is_ip = |h: &str| h.starts_with('[') || h.parse::<std::net::IpAddr>().is_ok();
    if is_ip(&a) || is_ip(&b) {
        return false;
    }
    let parent = |h: &str| -> Option<String> {
        let labels: Vec<&str> = h.split('.').collect();
        (labels.len() >= 2).then(|| labels[labels.len() - 2..].join("."))
    };
    parent(&a).is_some() && parent(&a) == parent(&b)
}

/// `scheme://authority` and the rest of an absolute URL.
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((scheme, &rest[..end], &rest[end..]))
}

/// One registry connection for one repository.
pub(crate) struct Client {
    agent: Agent,
    /// `https://host[:port]` (or `http://` when TLS is off and HTTPS failed).
    base: String,
    authority: String,
    repository: String,
    /// For errors: the reference the user gave.
    reference: String,
    /// `pull` or `pull,push`.
    actions: &'static str,
    credentials: Option<Credentials>,
    /// The `Authorization` header value in force.
    authorization: Mutex<Option<String>>,
    tls_verify: bool,
    timeout: std::time::Duration,
}

/// Whether an error from reading a body is ureq's timeout.
pub(crate) fn is_timeout(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|i| i.downcast_ref::<ureq::Error>())
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)))
}

pub(crate) struct Reply {
    pub status: StatusCode,
    pub response: Response<Body>,
}

impl Client {
    pub fn connect(
        authority: &str,
        repository: &str,
        reference: &str,
        actions: &'static str,
        opts: &ClientOptions,
    ) -> Result<Client, RegistryError> {
        let tls = if opts.tls_verify {
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&root_certs(
                    authority,
                    &opts.cert_dirs,
                )?))
                .build()
        } else {
            TlsConfig::builder().disable_verification(true).build()
        };
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(opts.timeout))
            .timeout_per_read(Some(opts.timeout))
            .timeout_recv_response(Some(opts.timeout))
            .timeout_per_write(Some(opts.timeout))
            .user_agent(concat!("moat/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into();
        let credentials = match &opts.credentials {
            Some(c) => Some(c.clone()),
            None => {
                let registry = if authority == super::reference::DOCKER_HUB_API {
                    super::reference::DOCKER_HUB
                } else {
                    authority
                };
                auth::lookup(&opts.auth_files, registry, repository).map_err(|source| {
                    RegistryError::Auth {
                        reference: reference.to_string(),
                        source,
                    }
                })?
            }
        };
        let mut client = Client {
            agent,
            base: format!("https://{authority}"),
            authority: authority.to_string(),
            repository: repository.to_string(),
            reference: reference.to_string(),
            actions,
            credentials,
            authorization: Mutex::new(None),
            tls_verify: opts.tls_verify,
            timeout: opts.timeout,
        };
        client.ping()?;
        Ok(client)
    }

    /// Checks that the credentials work: `GET /v2/` must answer 200.
    pub fn check_login(&self) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base);
        let reply = self.send("GET", &url, &[], None)?;
        match reply.status.as_u16() {
            200 => Ok(()),
            _ => Err(self.status_error("the registry", reply.status, reply.response)),
        }
    }

    /// The error for a connection that sent nothing for the timeout.
    pub fn stalled(&self, what: &str) -> RegistryError {
        RegistryError::Stalled {
            reference: self.reference.clone(),
            what: what.to_string(),
            secs: self.timeout.as_secs(),
        }
    }

    /// The error for a body read that failed.
    pub fn read_error(&self, what: &str, source: std::io::Error) -> RegistryError {
        if is_timeout(&source) {
            return self.stalled(what);
        }
        RegistryError::Read {
            reference: self.reference.clone(),
            what: what.to_string(),
            source,
        }
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    pub fn repo_url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repository)
    }

    /// `GET /v2/`: settles the scheme and takes the auth challenge.
    fn ping(&mut self) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base);
        let resp = match self.agent.get(&url).call() {
            Ok(r) => r,
            Err(e) if !self.tls_verify && !matches!(e, ureq::Error::Timeout(_)) => {
                self.base = format!("http://{}", self.authority);
                let url = format!("{}/v2/", self.base);
                self.agent
                    .get(&url)
                    .call()
                    .map_err(|e| self.transport(&url, e))?
            }
            Err(e) => return Err(self.transport(&url, e)),
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.authenticate(&resp)?;
        }
        Ok(())
    }

    pub fn transport(&self, url: &str, source: ureq::Error) -> RegistryError {
        if matches!(source, ureq::Error::Timeout(_)) {
            return self.stalled(url);
        }
        RegistryError::Transport {
            reference: self.reference.clone(),
            url: url.to_string(),
            source: Box::new(source),
        }
    }

    /// Acts on a 401's challenge: a bearer token from the realm, or basic.
    fn authenticate(&self, resp: &Response<Body>) -> Result<(), RegistryError> {
        let header = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(auth::parse_challenge);
        let value = match header {
            Some(Challenge::Basic) => match &self.credentials {
                Some(c) => c.basic_header(),
                None => return Err(self.unauthorized()),
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope: _,
            }) => format!("Bearer {}", self.token(&realm, service.as_deref())?),
            None => return Err(self.unauthorized()),
        };
        *self.authorization.lock().expect("not poisoned") = Some(value);
        Ok(())
    }

    fn unauthorized(&self) -> RegistryError {
        RegistryError::Unauthorized {
            reference: self.reference.clone(),
            registry: self.authority.clone(),
            had_credentials: self.credentials.is_some(),
        }
    }

    /// The token flow: `GET realm?service=..&scope=repository:R:ACTIONS`.
    fn token(&self, realm: &str, service: Option<&str>) -> Result<String, RegistryError> {
        let bad_realm = |why: &'static str| RegistryError::TokenRealm {
            reference: self.reference.clone(),
            realm: realm.to_string(),
            why,
        };
        let (scheme, authority, _) =
            split_url(realm).ok_or_else(|| bad_realm("not an absolute URL"))?;
        if scheme != "https" && !(scheme == "http" && self.base.starts_with("http://")) {
            return Err(bad_realm("not https while the registry is"));
        }
        if !realm_allowed(&self.authority, authority) {
            return Err(bad_realm(
                "on another host than the registry; moat sends no credentials there",
            ));
        }
        let mut query = Vec::new();
        if !self.repository.is_empty() {
            query.push(format!(
                "scope=repository:{}:{}",
                self.repository, self.actions
            ));
        } else if let Some(c) = &self.credentials {
            query.push(format!("account={}", encode_query(&c.username)));
        }
        if let Some(s) = service {
            query.push(format!("service={}", encode_query(s)));
        }
        let sep = if realm.contains('?') { "&" } else { "?" };
        let url = format!("{realm}{sep}{}", query.join("&"));
        let mut req = self.agent.get(&url);
        if let Some(c) = &self.credentials {
            req = req.header("Authorization", c.basic_header());
        }
        let resp = req.call().map_err(|e| self.transport(&url, e))?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(self.unauthorized()),
            s => return Err(self.status_error("the token server", s, resp)),
        }
        let bytes = self.read_limited(resp, "the token server's answer", MAX_TOKEN_BYTES)?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&bytes).map_err(|_| RegistryError::Protocol {
            reference: self.reference.clone(),
            what: "the token server's answer is not JSON with a \"token\"".into(),
        })?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| RegistryError::Protocol {
                reference: self.reference.clone(),
                what: "the token server's answer has no usable \"token\"".into(),
            })
    }

    /// Sends a request to the registry, with auth (a 401 renews it once)
    /// and redirects followed by hand; the `Authorization` header only
    /// goes to the registry's own host.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        mut body: Option<&mut dyn FnMut() -> Result<SendBody<'static>, RegistryError>>,
    ) -> Result<Reply, RegistryError> {
        let mut url = url.to_string();
        let mut renewed = false;
        let mut hops = 0;
        loop {
            let same_host = split_url(&url).is_some_and(|(_, a, _)| a == self.authority);
            let mut b = ureq::http::Request::builder().method(method).uri(&url);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            if same_host {
                if let Some(a) = self.authorization.lock().expect("not poisoned").as_ref() {
                    b = b.header("Authorization", a);
                }
            }
            let sent = match body.as_mut() {
                Some(make) => {
                    let req = b.body(make()?).map_err(|_| self.bad_url(&url))?;
                    self.agent.run(req)
                }
                None => {
                    let req = b.body(()).map_err(|_| self.bad_url(&url))?;
                    self.agent.run(req)
                }
            };
            let resp = sent.map_err(|e| self.transport(&url, e))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_host && !renewed {
                renewed = true;
                self.authenticate(&resp)?;
                continue;
            }
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(RegistryError::RedirectLoop {
                        reference: self.reference.clone(),
                        url,
                        hops: MAX_REDIRECTS,
                    });
                }
                let location = resp
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| RegistryError::Protocol {
                        reference: self.reference.clone(),
                        what: format!("{url} redirects without a Location"),
                    })?;
                url = self.resolve(&url, location)?;
                continue;
            }
            return Ok(Reply {
                status,
                response: resp,
            });
        }
    }

    fn bad_url(&self, url: &str) -> RegistryError {
        RegistryError::Protocol {
            reference: self.reference.clone(),
            what: format!("{url:?} is not a URL moat can request"),
        }
    }

    /// A `Location` from the registry made absolute (relative ones are on
    /// the registry's own host).
    pub fn absolute(&self, location: &str) -> Result<String, RegistryError> {
        self.resolve(&format!("{}/v2/", self.base), location)
    }

    /// A redirect target: absolute (http(s) only; never from https down to
    /// http) or relative to the current URL's host.
    fn resolve(&self, current: &str, location: &str) -> Result<String, RegistryError> {
        let (scheme, authority, _) = split_url(current).expect("requests use absolute URLs");
        if let Some((s, _, _)) = split_url(location) {
            if s != "https" && !(s == "http" && scheme == "http") {
                return Err(RegistryError::Protocol {
                    reference: self.reference.clone(),
                    what: format!("{current} redirects to {location}, which is not https"),
                });
            }
            return Ok(location.to_string());
        }
        if location.starts_with('/') && !location.starts_with("//") {
            return Ok(format!("{scheme}://{authority}{location}"));
        }
        Err(RegistryError::Protocol {
            reference: self.reference.clone(),
            what: format!("{current} redirects to {location:?}, which moat does not follow"),
        })
    }

    /// Reads at most `limit` bytes of a body; more is an error.
    pub fn read_limited(
        &self,
        resp: Response<Body>,
        what: &str,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        if let Some(len) = resp.body().content_length() {
            if len > limit {
                return Err(self.too_big(what, limit));
            }
        }
        let mut out = Vec::new();
        resp.into_body()
            .into_reader()
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|source| self.read_error(what, source))?;
        if out.len() as u64 > limit {
            return Err(self.too_big(what, limit));
        }
        Ok(out)
    }

    pub fn too_big(&self, what: &str, limit: u64) -> RegistryError {
        RegistryError::TooBig {
            reference: self.reference.clone(),
            what: what.to_string(),
            limit,
        }
    }

    /// The error for an unexpected status, with the registry's own
    /// message when it sent one.
    pub fn status_error(
        &self,
        what: &str,
        status: StatusCode,
        resp: Response<Body>,
    ) -> RegistryError {
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return self.unauthorized();
        }
        let mut detail = String::new();
        let mut body = Vec::new();
        if resp
            .into_body()
            .into_reader()
            .take(MAX_ERROR_BYTES)
            .read_to_end(&mut body)
            .is_ok()
        {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                if let Some(m) = v.pointer("/errors/0/message").and_then(|m| m.as_str()) {
                    detail = format!(": {}", m.chars().take(200).collect::<String>());
                }
            }
        }
        RegistryError::Status {
            reference: self.reference.clone(),
            what: what.to_string(),
            status: status.as_u16(),
            detail,
        }
    }
}

/// Percent-encodes a query value.
fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_realms() {
        assert!(realm_allowed("registry-1.docker.io", "auth.docker.io"));
        assert!(realm_allowed("127.0.0.1:5000", "127.0.0.1:5001"));
        assert!(!realm_allowed("127.0.0.1:5000", "127.0.0.2:5000"));
        assert!(!realm_allowed("ghcr.io", "evil.io"));
        assert!(!realm_allowed("localhost:5000", "127.0.0.1:5000"));
        assert!(!realm_allowed("registry.example.com", "example.org"));
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("https://h:1/v2/x?y"),
            Some(("https", "h:1", "/v2/x?y"))
        );
        assert_eq!(encode_query("a b/c"), "a%20b%2Fc");
    }
}
