//! Image signatures as sigstore/cosign keep them in a registry: for an
//! image with manifest digest `sha256:H`, the tag `sha256-H.sig` holds an
//! OCI manifest whose layers are simple-signing payloads
//! (`application/vnd.dev.cosign.simplesigning.v1+json`) with the base64
//! ECDSA signature in the `dev.cosignproject.cosign/signature` annotation.
//! Verification is offline against a public key: no transparency log.

use p256::ecdsa::{SigningKey, VerifyingKey};
use serde_json::json;

use super::client::{Client, ClientOptions};
use super::pull::fetch_manifest;
use super::push::{put_manifest, upload_bytes};
use super::reference::Reference;
use super::RegistryError;
use crate::digest::{sha256_hex, sha256_of};
use crate::oci;

pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Largest signature payload read.
const MAX_PAYLOAD: u64 = 64 << 10;

fn sig_tag(digest: &str) -> String {
    format!(
        "sha256-{}.sig",
        sha256_hex(digest).expect("digests are checked")
    )
}

/// The reference without tag or digest, and with its tag when it has one:
/// what a signature's `docker-reference` names.
fn identity(r: &Reference) -> String {
    match &r.tag {
        Some(t) => format!("{}:{t}", r.name()),
        None => r.name(),
    }
}

/// The simple-signing payload for `digest` under `r`'s name.
pub fn payload(r: &Reference, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": { "docker-reference": identity(r) },
            "image": { "docker-manifest-digest": digest },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .expect("JSON serialises")
}

/// The digest `r` names in its registry (pinned digest, or what the tag
/// resolves to now).
fn resolve(client: &Client, r: &Reference) -> Result<String, RegistryError> {
    if let Some(d) = &r.digest {
        return Ok(d.clone());
    }
    Ok(
        fetch_manifest(client, "the manifest", r.manifest_ref(), None)?
            .digest
            .into(),
    )
}

/// Signs the image `r` names with `key` and stores the signature in the
/// registry (added to any signatures already there). Returns the digest.
pub fn sign(
    r: &Reference,
    key: &SigningKey,
    opts: &ClientOptions,
) -> Result<String, RegistryError> {
    let rstr = r.to_string();
    let client = Client::connect(r.api_host(), &r.repository, &rstr, "pull,push", opts)?;
    let digest = resolve(&client, r)?;
    let body = payload(r, &digest);
    let sig = super::keys::sign(key, &body);
    use base64::Engine;
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(&sig);
    let payload_digest = upload_bytes(&client, &body)?;
    let mut layers: Vec<serde_json::Value> = match existing(&client, &digest)? {
        Some(m) => m
            .layers
            .iter()
            .map(|l| serde_json::to_value(l).expect("serialises"))
            .collect(),
        None => Vec::new(),
    };
    layers.retain(|l| {
        l["digest"] != json!(payload_digest)
            || l["annotations"][SIGNATURE_ANNOTATION] != json!(sig_b64)
    });
    layers.push(json!({
        "mediaType": PAYLOAD_MEDIA_TYPE,
        "size": body.len(),
        "digest": payload_digest,
        "annotations": { SIGNATURE_ANNOTATION: sig_b64 },
    }));
    let diff_ids: Vec<&serde_json::Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("JSON serialises");
    let config_digest = upload_bytes(&client, &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::MEDIA_OCI_MANIFEST,
        "config": { "mediaType": oci::MEDIA_OCI_CONFIG, "size": config.len(), "digest": config_digest },
        "layers": layers,
    }))
    .expect("JSON serialises");
    put_manifest(
        &client,
        &sig_tag(&digest),
        oci::MEDIA_OCI_MANIFEST,
        &manifest,
    )?;
    Ok(digest)
}

/// The `.sig` manifest for `digest`, if the registry has one.
fn existing(client: &Client, digest: &str) -> Result<Option<oci::Manifest>, RegistryError> {
    match fetch_manifest(client, "the signature manifest", &sig_tag(digest), None) {
        Ok(f) => oci::parse_manifest("the signature manifest", &f.bytes)
            .map(Some)
            .map_err(|source| RegistryError::Oci {
                reference: client.reference().to_string(),
                source,
            }),
        Err(RegistryError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub digest: String,
    /// The `docker-reference` the accepted signature names.
    pub identity: String,
    /// The accepted signature, kept with a pulled image so that `moat run`
    /// can check it again offline.
    pub evidence: StoredSignature,
}

/// A simple-signing payload and its signature, as the store keeps them
/// (`images/<hex>.signatures.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredSignature {
    /// The payload, base64.
    pub payload: String,
    /// The ECDSA signature, base64 (as in the cosign annotation).
    pub signature: String,
}

/// Checks that the image `r` names carries a signature by `key` whose
/// payload names its digest and repository. Returns the verified digest.
pub fn verify(
    r: &Reference,
    key: &VerifyingKey,
    opts: &ClientOptions,
) -> Result<Verified, RegistryError> {
    let rstr = r.to_string();
    let client = Client::connect(r.api_host(), &r.repository, &rstr, "pull", opts)?;
    let digest = resolve(&client, r)?;
    verify_digest(&client, r, &digest, key)
}

pub(crate) fn verify_digest(
    client: &Client,
    r: &Reference,
    digest: &str,
    key: &VerifyingKey,
) -> Result<Verified, RegistryError> {
    let rstr = r.to_string();
    let fail = |why: String| RegistryError::Signature {
        reference: rstr.clone(),
        digest: digest.to_string(),
        why,
    };
    let Some(m) = existing(client, digest)? else {
        return Err(fail(format!(
            "no signatures (no {} in the registry)",
            sig_tag(digest)
        )));
    };
    let mut reasons = Vec::new();
    for l in m
        .layers
        .iter()
        .filter(|l| l.media_type == PAYLOAD_MEDIA_TYPE)
    {
        let Some(sig_b64) = l.annotations.get(SIGNATURE_ANNOTATION) else {
            reasons.push(format!("{}: no signature annotation", l.digest));
            continue;
        };
        if l.size > MAX_PAYLOAD {
            reasons.push(format!(
                "{}: payload larger than {MAX_PAYLOAD} bytes",
                l.digest
            ));
            continue;
        }
        let body = fetch_small_blob(client, &l.digest, l.size)?;
        use base64::Engine;
        let stored = StoredSignature {
            payload: base64::engine::general_purpose::STANDARD.encode(&body),
            signature: sig_b64.clone(),
        };
        match check_signature(&r.name(), digest, key, &stored) {
            Ok(v) => return Ok(v),
            Err(why) => reasons.push(format!("{}: {why}", l.digest)),
        }
    }
    if reasons.is_empty() {
        reasons.push("the signature manifest has no simple-signing layers".into());
    }
    Err(fail(reasons.join("; ")))
}

/// Checks, offline, that one of `stored` is a signature by `key` of
/// `digest` under the repository `repo` (`host/path`, no tag). The error
/// gives each signature's reason.
pub fn verify_stored(
    repo: &str,
    digest: &str,
    key: &VerifyingKey,
    stored: &[StoredSignature],
) -> Result<Verified, String> {
    if stored.is_empty() {
        return Err("no signature is stored with the image".into());
    }
    let mut reasons = Vec::new();
    for (i, s) in stored.iter().enumerate() {
        match check_signature(repo, digest, key, s) {
            Ok(v) => return Ok(v),
            Err(why) => reasons.push(format!("stored signature {}: {why}", i + 1)),
        }
    }
    Err(reasons.join("; "))
}

/// One signature: by `key`, over a payload that names `digest` and `repo`.
fn check_signature(
    repo: &str,
    digest: &str,
    key: &VerifyingKey,
    s: &StoredSignature,
) -> Result<Verified, String> {
    use base64::Engine;
    let b64 = &base64::engine::general_purpose::STANDARD;
    let sig = b64
        .decode(&s.signature)
        .map_err(|_| "the signature is not base64".to_string())?;
    let body = b64
        .decode(&s.payload)
        .map_err(|_| "the payload is not base64".to_string())?;
    if body.len() as u64 > MAX_PAYLOAD {
        return Err(format!("payload larger than {MAX_PAYLOAD} bytes"));
    }
    if !super::keys::verify(key, &body, &sig) {
        return Err("not signed by this key".into());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| "payload is not JSON".to_string())?;
    let named = v["critical"]["image"]["docker-manifest-digest"]
        .as_str()
        .unwrap_or("");
    if named != digest {
        return Err(format!("signs {named:?}, another image"));
    }
    let ident = v["critical"]["identity"]["docker-reference"]
        .as_str()
        .unwrap_or("");
    let repo_of = |s: &str| -> String { Reference::parse(s).map(|p| p.name()).unwrap_or_default() };
    if repo_of(ident) != repo {
        return Err(format!("signs it as {ident:?}, not as {repo}"));
    }
    Ok(Verified {
        digest: digest.to_string(),
        identity: ident.to_string(),
        evidence: s.clone(),
    })
}

fn fetch_small_blob(client: &Client, digest: &str, size: u64) -> Result<Vec<u8>, RegistryError> {
    let what = format!("blob {digest}");
    let url = client.repo_url(&format!("blobs/{digest}"));
    let reply = client.send("GET", &url, &[], None)?;
    if reply.status.as_u16() != 200 {
        return Err(client.status_error(&what, reply.status, reply.response));
    }
    let bytes = client.read_limited(reply.response, &what, size)?;
    let actual = sha256_of(&bytes);
    if actual != digest {
        return Err(RegistryError::Digest {
            reference: client.reference().to_string(),
            what,
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(bytes)
}
