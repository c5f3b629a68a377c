//! Registry credentials: the files podman and Docker write
//! (`$REGISTRY_AUTH_FILE`, `${XDG_RUNTIME_DIR}/containers/auth.json`,
//! `~/.docker/config.json`), and the `WWW-Authenticate` challenge.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: reading the credentials file")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a credentials file of the shape {{\"auths\": {{\"HOST\": {{\"auth\": \"BASE64(USER:PASSWORD)\"}}}}}}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: the entry for {registry} has an \"auth\" that is not base64 of USER:PASSWORD"
    )]
    BadEntry { path: PathBuf, registry: String },
    #[error("{path}: writing the credentials file")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no credentials file to write: set REGISTRY_AUTH_FILE or XDG_RUNTIME_DIR, or pass --authfile")]
    NoAuthFile,
}

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// `USER:PASSWORD` as `--creds` takes it.
    pub fn parse(s: &str) -> Option<Credentials> {
        let (u, p) = s.split_once(':')?;
        (!u.is_empty()).then(|| Credentials {
            username: u.to_string(),
            password: p.to_string(),
        })
    }

    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// The credential files read, first match wins: `$REGISTRY_AUTH_FILE`, then
/// `${XDG_RUNTIME_DIR}/containers/auth.json` (podman's, or
/// `/run/containers/<uid>/auth.json` without XDG_RUNTIME_DIR), then
/// `~/.docker/config.json`.
pub fn auth_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        v.push(PathBuf::from(p));
    }
    v.push(podman_auth_file());
    if let Some(h) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        v.push(Path::new(&h).join(".docker/config.json"));
    }
    v
}

fn podman_auth_file() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => Path::new(&d).join("containers/auth.json"),
        None => PathBuf::from(format!(
            "/run/containers/{}/auth.json",
            rustix::process::getuid().as_raw()
        )),
    }
}

/// Where `moat login` writes: `$REGISTRY_AUTH_FILE`, else podman's file.
pub fn default_write_file() -> PathBuf {
    match std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => podman_auth_file(),
    }
}

#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// Keys an auth file may use for a registry, most specific first.
fn keys_for(registry: &str, repository: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut path = format!("{registry}/{repository}");
    loop {
        keys.push(path.clone());
        match path.rfind('/') {
            Some(i) => path.truncate(i),
            None => break,
        }
    }
    keys.push(format!("https://{registry}"));
    keys.push(format!("http://{registry}"));
    if registry == super::reference::DOCKER_HUB {
        keys.extend(
            [
                "https://index.docker.io/v1/",
                "index.docker.io",
                "registry-1.docker.io",
            ]
            .map(String::from),
        );
    }
    keys
}

fn read_file(path: &Path) -> Result<Option<serde_json::Map<String, serde_json::Value>>, AuthError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Default::default()));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| AuthError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// The credentials for `registry`/`repository` from `files`, first match wins.
pub fn lookup(
    files: &[PathBuf],
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, AuthError> {
    for path in files {
        let Some(doc) = read_file(path)? else {
            continue;
        };
        let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
            continue;
        };
        for key in keys_for(registry, repository) {
            let Some(entry) = auths.get(&key) else {
                continue;
            };
            let entry: AuthEntry =
                serde_json::from_value(entry.clone()).map_err(|source| AuthError::Parse {
                    path: path.clone(),
                    source,
                })?;
            let Some(auth) = entry.auth.filter(|a| !a.is_empty()) else {
                continue;
            };
            let bad = || AuthError::BadEntry {
                path: path.clone(),
                registry: key.clone(),
            };
            let decoded = STANDARD.decode(auth.trim()).map_err(|_| bad())?;
            let text = String::from_utf8(decoded).map_err(|_| bad())?;
            return Credentials::parse(&text).map(Some).ok_or_else(bad);
        }
    }
    Ok(None)
}

/// Writes (or with `None`, removes) the entry for `registry` in `path`,
/// keeping every other entry; the file is created with mode 0600.
/// Returns whether an entry was there before.
pub fn store(path: &Path, registry: &str, creds: Option<&Credentials>) -> Result<bool, AuthError> {
    let mut doc = read_file(path)?.unwrap_or_default();
    let auths = doc
        .entry("auths")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    if !auths.is_object() {
        *auths = serde_json::Value::Object(Default::default());
    }
    let auths = auths.as_object_mut().expect("made an object above");
    let had = auths.remove(registry).is_some();
    if let Some(c) = creds {
        let auth = STANDARD.encode(format!("{}:{}", c.username, c.password));
        auths.insert(registry.to_string(), serde_json::json!({ "auth": auth }));
    }
    let werr = |source| AuthError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(werr)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr)?;
    let mut text = serde_json::to_vec_pretty(&doc).expect("JSON values serialise");
    text.push(b'\n');
    f.write_all(&text).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    fs::rename(&tmp, path).map_err(werr)?;
    Ok(had)
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm=...`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        s = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate x"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn files_round_trip_and_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a/auth.json");
        let b = dir.path().join("config.json");
        let c = Credentials::parse("alice:s3:cret").unwrap();
        assert!(!store(&a, "127.0.0.1:5000", Some(&c)).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(
            &b,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"Ym9iOnB3"}},"credsStore":"x"}"#,
        )
        .unwrap();
        let files = vec![a.clone(), b.clone()];
        assert_eq!(lookup(&files, "127.0.0.1:5000", "x/y").unwrap(), Some(c));
        assert_eq!(
            lookup(&files, "docker.io", "library/alpine").unwrap(),
            Some(Credentials {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        assert_eq!(lookup(&files, "quay.io", "a").unwrap(), None);
        assert!(store(&a, "127.0.0.1:5000", None).unwrap());
        assert_eq!(lookup(&files, "127.0.0.1:5000", "x/y").unwrap(), None);
        fs::write(&b, r#"{"auths":{"quay.io":{"auth":"!!"}}}"#).unwrap();
        assert_eq!(
            lookup(&files, "quay.io", "a").unwrap_err().to_string(),
            format!(
                "{}: the entry for quay.io has an \"auth\" that is not base64 of USER:PASSWORD",
                b.display()
            )
        );
    }
}
