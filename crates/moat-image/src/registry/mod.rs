//! The OCI distribution client: `moat pull` and `moat push` against
//! registries. Downloads land in a staging OCI layout under the store's
//! `tmp/`, every blob checked against its digest, and enter the store only
//! through `Store::import` (atomic, hostile-input rules). See docs/registry.md.

pub mod auth;
mod client;
pub mod config;
mod download;
pub mod keys;
mod pull;
mod push;
pub mod reference;
pub mod sign;

use std::io;
use std::path::PathBuf;

pub use auth::Credentials;
pub use client::ClientOptions;
pub use config::RegistriesConf;
pub use pull::{PullOptions, Pulled, SignerGroup};
pub use push::Pushed;
pub use reference::{Reference, ReferenceError};

use crate::import::ImportError;
use crate::oci::OciError;
use crate::store::StoreError;
use client::Client;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{reference}: reading credentials")]
    Auth {
        reference: String,
        #[source]
        source: auth::AuthError,
    },
    #[error("{path}: reading CA certificates")]
    Certs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{reference}: blocked by [[registry]] {prefix:?} in {}", path.display())]
    Blocked {
        reference: String,
        prefix: String,
        path: PathBuf,
    },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{reference}: signature check of {digest} failed: {why}")]
    Signature {
        reference: String,
        digest: String,
        why: String,
    },
    /// Refused by a rule set; `why` starts with which (`the policy P: ...`).
    #[error("{reference}: refused by {why}")]
    Refused { reference: String, why: String },
    #[error("--platform {platform}: moat runs linux/amd64 images only")]
    Platform { platform: String },
    #[error("{reference}: {url}")]
    Transport {
        reference: String,
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{reference}: reading {what}")]
    Read {
        reference: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{reference}: reading {what}: no data for {secs} s; the connection stalled (raise --timeout for slow links)")]
    Stalled {
        reference: String,
        what: String,
        secs: u64,
    },
    #[error("{reference}: {registry} refused access{}", if *had_credentials { " with the credentials given (check them with moat login)" } else { "; log in first (moat login) or pass --creds USER:PASSWORD" })]
    Unauthorized {
        reference: String,
        registry: String,
        had_credentials: bool,
    },
    #[error("{reference}: token realm {realm:?} is {why}")]
    TokenRealm {
        reference: String,
        realm: String,
        why: &'static str,
    },
    #[error("{reference}: {url} redirects more than {hops} times (a redirect loop?)")]
    RedirectLoop {
        reference: String,
        url: String,
        hops: usize,
    },
    #[error("{reference}: {what} answered HTTP {status}{detail}")]
    Status {
        reference: String,
        what: String,
        status: u16,
        detail: String,
    },
    #[error("{reference}: not found in the registry (HTTP 404){detail}")]
    NotFound { reference: String, detail: String },
    #[error("{reference}: {what}")]
    Protocol { reference: String, what: String },
    #[error("{reference}: {what} is larger than {limit} bytes; refused")]
    TooBig {
        reference: String,
        what: String,
        limit: u64,
    },
    #[error("{reference}: {what} hashes to {actual}, not {expected}: the registry sent corrupt or tampered data")]
    Digest {
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{reference}: {what} is {actual} bytes, the manifest says {expected} (truncated or padded download)")]
    Size {
        reference: String,
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{reference}")]
    Oci {
        reference: String,
        #[source]
        source: OciError,
    },
    #[error("{reference}: writing {path}")]
    Write {
        reference: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{reference}")]
    Store {
        reference: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("{reference}")]
    Import {
        reference: String,
        #[source]
        source: Box<ImportError>,
    },
}

/// Checks `credentials` against the registry at `authority` (for `moat
/// login`): the token flow or basic auth must succeed and `/v2/` answer 200.
pub fn check_login(authority: &str, opts: &ClientOptions) -> Result<(), RegistryError> {
    let api = if authority == reference::DOCKER_HUB {
        reference::DOCKER_HUB_API
    } else {
        authority
    };
    Client::connect(api, "", authority, "pull", opts)?.check_login()
}
