//! `Store::pull`: resolve a reference (index → linux/amd64 manifest), fetch
//! config and layers in parallel into a staging OCI layout, each checked
//! against its digest and size as it streams, then `Store::import` it.

use std::fs;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::client::{Client, ClientOptions};
use super::config::{Endpoint, RegistriesConf};
use super::reference::Reference;
use super::RegistryError;
use crate::digest::{sha256_of, Digest};
use crate::import::{ImportOptions, NoProgress, Progress};
use crate::oci::{self, Descriptor};
use crate::store::Store;
use crate::{Image, UnpackOptions};

/// What `Accept` lists for manifests.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// A policy check of the digests a reference resolved to.
pub type DigestCheck<'a> = dyn Fn(&[&str]) -> Result<(), String> + Sync + 'a;

pub struct PullOptions<'a> {
    pub client: ClientOptions,
    /// `os/arch`; moat runs `linux/amd64` only.
    pub platform: String,
    pub unpack: UnpackOptions,
    pub progress: &'a (dyn Progress + Sync),
    /// Mirrors, locations, insecure and blocked registries.
    pub registries: RegistriesConf,
    /// Called with the resolved digests (the reference's, then the
    /// manifest's) before any blob is downloaded; an error refuses the pull.
    pub check: Option<&'a DigestCheck<'a>>,
    /// Signature requirements, each a set of public keys (with a label for
    /// messages) of which at least one must have signed the image, and a
    /// name for the rule set (`the policy P`); every requirement must be
    /// met. Empty: no signature required.
    pub signers: Vec<SignerGroup>,
    /// Unpack the root file system now; else at first use (see
    /// [`ImportOptions::materialise`]).
    pub materialise: bool,
}

/// One signature requirement of [`PullOptions::signers`].
#[derive(Debug, Clone)]
pub struct SignerGroup {
    /// Whose requirement it is, for messages (`the policy P`).
    pub by: String,
    pub keys: Vec<(String, p256::ecdsa::VerifyingKey)>,
}

impl Default for PullOptions<'_> {
    fn default() -> Self {
        Self {
            client: ClientOptions::default(),
            platform: "linux/amd64".into(),
            unpack: UnpackOptions::default(),
            progress: &NoProgress,
            registries: RegistriesConf::default(),
            check: None,
            signers: Vec::new(),
            materialise: true,
        }
    }
}

#[derive(Debug)]
pub struct Pulled {
    pub image: Image,
    /// The digest the reference resolved to (the index's when it named an
    /// index): what `name@digest` pins.
    pub digest: String,
    /// The reference pinned to that digest.
    pub pinned: Reference,
}

/// A manifest or index fetched from the registry, digest checked.
pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// `GET /v2/<repo>/manifests/<ref>`; with `expect` (a digest) the bytes
/// must hash to it.
pub(crate) fn fetch_manifest(
    client: &Client,
    what: &str,
    reference: &str,
    expect: Option<&str>,
) -> Result<Fetched, RegistryError> {
    let url = client.repo_url(&format!("manifests/{reference}"));
    let reply = client.send("GET", &url, &[("Accept", MANIFEST_ACCEPT)], None)?;
    match reply.status.as_u16() {
        200 => {}
        404 => {
            return Err(RegistryError::NotFound {
                reference: client.reference().to_string(),
                detail: String::new(),
            })
        }
        _ => return Err(client.status_error(what, reply.status, reply.response)),
    }
    let header_type = reply
        .response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let bytes = client.read_limited(reply.response, what, oci::MAX_JSON_BYTES)?;
    let digest = Digest::of(&bytes);
    if let Some(e) = expect {
        if e != digest {
            return Err(RegistryError::Digest {
                reference: client.reference().to_string(),
                what: what.to_string(),
                expected: e.to_string(),
                actual: digest.into(),
            });
        }
    }
    #[derive(serde::Deserialize)]
    struct Sniff {
        #[serde(default, rename = "mediaType")]
        media_type: String,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let sniff: Sniff = serde_json::from_slice(&bytes).map_err(|_| RegistryError::Protocol {
        reference: client.reference().to_string(),
        what: format!("{what} is not JSON"),
    })?;
    let media_type = if !sniff.media_type.is_empty() {
        sniff.media_type
    } else if sniff.manifests.is_some() {
        oci::MEDIA_OCI_INDEX.to_string()
    } else if !header_type.is_empty() && header_type != "application/json" {
        header_type
    } else {
        oci::MEDIA_OCI_MANIFEST.to_string()
    };
    Ok(Fetched {
        bytes,
        media_type,
        digest,
    })
}

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == oci::MEDIA_OCI_INDEX || media_type == oci::MEDIA_DOCKER_LIST
}

/// Runs `f` over `items` on up to `workers` threads; the first error
/// cancels the rest and is returned.
pub(crate) fn parallel<T: Sync>(
    items: &[T],
    workers: usize,
    f: &(dyn Fn(&T, &AtomicBool) -> Result<(), RegistryError> + Sync),
) -> Result<(), RegistryError> {
    let next = Mutex::new(0usize);
    let cancel = AtomicBool::new(false);
    let first_err: Mutex<Option<RegistryError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                let i = {
                    let mut n = next.lock().expect("not poisoned");
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(item) = items.get(i) else { return };
                if let Err(e) = f(item, &cancel) {
                    cancel.store(true, Ordering::Relaxed);
                    let mut slot = first_err.lock().expect("not poisoned");
                    // A cancellation is a consequence, not the cause.
                    if slot.is_none() {
                        *slot = Some(e);
                    }
                    return;
                }
            });
        }
    });
    match first_err.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl Store {
    /// Pulls `reference` from its registry into the store and names it
    /// `registry/repo:tag`; the resolved digest is recorded as a second
    /// name `registry/repo@sha256:...`.
    pub fn pull(
        &self,
        reference: &Reference,
        opts: &PullOptions<'_>,
    ) -> Result<Pulled, RegistryError> {
        if opts.platform != "linux/amd64" {
            return Err(RegistryError::Platform {
                platform: opts.platform.clone(),
            });
        }
        let mut last = None;
        for ep in opts.registries.endpoints(reference, false)? {
            match self.pull_from(reference, &ep, opts) {
                Ok(p) => return Ok(p),
                // A failing mirror falls back to the next one, then the registry.
                Err(e) if ep.mirror => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("endpoints end with the registry itself"))
    }

    fn pull_from(
        &self,
        reference: &Reference,
        ep: &Endpoint,
        opts: &PullOptions<'_>,
    ) -> Result<Pulled, RegistryError> {
        let rstr = reference.to_string();
        let mut client_opts = opts.client.clone();
        client_opts.tls_verify &= !ep.insecure;
        let client = Client::connect(&ep.authority, &ep.repository, &rstr, "pull", &client_opts)?;
        let top = fetch_manifest(
            &client,
            "the manifest",
            reference.manifest_ref(),
            reference.digest.as_deref(),
        )?;
        let oci_err = |source| RegistryError::Oci {
            reference: rstr.clone(),
            source,
        };
        let (manifest_desc, manifest_bytes) = if is_index(&top.media_type) {
            let index = oci::parse_index("the index", &top.bytes).map_err(oci_err)?;
            let mut fetched: Option<Vec<u8>> = None;
            let mut inner_err: Option<RegistryError> = None;
            let chosen =
                oci::select_manifest(&format!("the index {}", top.digest), &index, &mut |d| {
                    match fetch_manifest(
                        &client,
                        &format!("manifest {}", d.digest),
                        &d.digest,
                        Some(&d.digest),
                    ) {
                        Ok(f) => {
                            fetched = Some(f.bytes.clone());
                            Ok(f.bytes)
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            inner_err = Some(e);
                            Err(oci::OciError::ReadBlob {
                                what: "the index".into(),
                                digest: d.digest.to_string(),
                                source: msg.into(),
                            })
                        }
                    }
                });
            let (desc, _) = match chosen {
                Ok(c) => c,
                Err(_) if inner_err.is_some() => return Err(inner_err.expect("checked")),
                Err(e) => return Err(oci_err(e)),
            };
            let bytes = match fetched {
                Some(b) if sha256_of(&b) == desc.digest => b,
                _ => {
                    fetch_manifest(
                        &client,
                        &format!("manifest {}", desc.digest),
                        &desc.digest,
                        Some(&desc.digest),
                    )?
                    .bytes
                }
            };
            (desc, bytes)
        } else {
            let desc = Descriptor {
                media_type: top.media_type.clone(),
                digest: top.digest.clone(),
                size: top.bytes.len() as u64,
                annotations: Default::default(),
                platform: None,
            };
            (desc, top.bytes.clone())
        };
        let manifest = oci::parse_manifest(
            &format!("manifest {}", manifest_desc.digest),
            &manifest_bytes,
        )
        .map_err(oci_err)?;

        // Each requirement keeps the signature that met it: `moat run`
        // checks the same rules again, offline, against them.
        let mut evidence = Vec::new();
        for group in &opts.signers {
            let mut reasons = Vec::new();
            let mut ok = false;
            for (label, key) in &group.keys {
                match super::sign::verify_digest(&client, reference, &top.digest, key) {
                    Ok(v) => {
                        evidence.push(v.evidence);
                        ok = true;
                        break;
                    }
                    Err(RegistryError::Signature { why, .. }) => {
                        reasons.push(format!("{label}: {why}"))
                    }
                    Err(e) => return Err(e),
                }
            }
            if !ok {
                return Err(RegistryError::Refused {
                    reference: rstr.clone(),
                    why: format!(
                        "{}: signers: a signature of {} is required: {}",
                        group.by,
                        top.digest,
                        reasons.join("; ")
                    ),
                });
            }
        }
        if let Some(check) = opts.check {
            check(&[&top.digest, &manifest_desc.digest]).map_err(|why| RegistryError::Refused {
                reference: rstr.clone(),
                why,
            })?;
        }
        let store_err = |source| RegistryError::Store {
            reference: rstr.clone(),
            source: Box::new(source),
        };
        let staging = self.staging("pull").map_err(store_err)?;
        // Verified blobs land here, named by hex digest, and move into the
        // store from here.
        let blobs = staging.path().join("blobs");
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            let reference = rstr.clone();
            move |source| RegistryError::Write {
                reference,
                path,
                source,
            }
        };
        fs::create_dir_all(&blobs).map_err(werr(&blobs))?;
        let mhex = manifest_desc.digest.hex();
        fs::write(blobs.join(mhex), &manifest_bytes).map_err(werr(&blobs))?;

        // Config and layers, skipping blobs the store already holds.
        let mut wanted: Vec<Descriptor> = Vec::new();
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if wanted.iter().any(|w| w.digest == d.digest) {
                continue;
            }
            let have = self
                .blob_path(&d.digest)
                .ok()
                .and_then(|p| fs::metadata(p).ok())
                .is_some_and(|m| m.len() == d.size);
            if !have {
                wanted.push(d.clone());
            }
        }
        if d_too_big(&manifest.config) {
            return Err(client.too_big(
                &format!("config {}", manifest.config.digest),
                oci::MAX_JSON_BYTES,
            ));
        }
        let downloads = super::download::dir(self, &rstr)?;
        opts.progress
            .phase("downloading", wanted.iter().map(|d| d.size).sum());
        parallel(&wanted, opts.client.parallel, &|d, cancel| {
            let hex = d.digest.hex();
            super::download::fetch_blob(
                &client,
                d,
                &downloads,
                &blobs.join(hex),
                opts.progress,
                cancel,
            )
        })?;

        let pinned = reference.with_digest(&top.digest);
        let import = ImportOptions {
            name: Some(reference.store_name()),
            unpack: opts.unpack,
            progress: opts.progress,
            source: Some(format!("docker://{pinned}")),
            materialise: opts.materialise,
        };
        let image = self
            .import_downloaded(staging.path(), &blobs, manifest_desc, &import)
            .map_err(|source| RegistryError::Import {
                reference: rstr.clone(),
                source: Box::new(source),
            })?;
        drop(staging);
        let digest_name = format!("{}@{}", reference.name(), top.digest);
        {
            let _meta = self.lock_meta().map_err(store_err)?;
            let mut names = self.read_names().map_err(store_err)?;
            names
                .names
                .insert(digest_name, image.manifest_digest.clone());
            self.write_names(&names).map_err(store_err)?;
        }
        let image = self.resolve(&reference.store_name()).map_err(store_err)?;
        // The accepted signature stays with the image: `moat run` checks
        // the policy's signers again, offline, against it.
        for sig in evidence {
            self.add_signature(&image, sig).map_err(store_err)?;
        }
        Ok(Pulled {
            image,
            digest: top.digest.into(),
            pinned,
        })
    }
}

fn d_too_big(d: &Descriptor) -> bool {
    d.size > oci::MAX_JSON_BYTES
}
