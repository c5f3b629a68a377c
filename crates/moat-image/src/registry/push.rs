//! `Store::push`: an image from the store to a registry. Blobs the
//! registry already has (`HEAD`) are skipped; the others are uploaded in
//! parallel (monolithic `POST` + `PUT ?digest=`), each read from the store
//! with its digest verified first; the manifest goes last, byte for byte as
//! stored, so the pushed digest is the store's manifest digest.

use std::sync::atomic::AtomicBool;

use ureq::SendBody;

use super::client::{Client, ClientOptions};
use super::config::RegistriesConf;
use super::pull::parallel;
use super::reference::Reference;
use super::RegistryError;
use crate::digest::sha256_of;
use crate::oci;
use crate::store::Store;

#[derive(Debug)]
pub struct Pushed {
    /// The manifest digest now in the registry.
    pub digest: String,
    /// Blobs uploaded (the rest were already there).
    pub uploaded: usize,
    pub pinned: Reference,
}

impl Store {
    /// Pushes the stored image `name` to `reference`.
    pub fn push(
        &self,
        name: &str,
        reference: &Reference,
        opts: &ClientOptions,
        registries: &RegistriesConf,
    ) -> Result<Pushed, RegistryError> {
        let rstr = reference.to_string();
        let store_err = |source| RegistryError::Store {
            reference: rstr.clone(),
            source: Box::new(source),
        };
        let image = self.resolve(name).map_err(store_err)?;
        let manifest = self.read_blob(&image.manifest_digest).map_err(store_err)?;
        if let Some(d) = &reference.digest {
            if *d != image.manifest_digest {
                return Err(RegistryError::Protocol {
                    reference: rstr,
                    what: format!(
                        "the image's manifest is {}, not the digest the reference names",
                        image.manifest_digest
                    ),
                });
            }
        }
        #[derive(serde::Deserialize)]
        struct Sniff {
            #[serde(default, rename = "mediaType")]
            media_type: String,
        }
        let media_type = serde_json::from_slice::<Sniff>(&manifest)
            .ok()
            .map(|s| s.media_type)
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| oci::MEDIA_OCI_MANIFEST.to_string());
        let ep = registries
            .endpoints(reference, true)?
            .pop()
            .expect("endpoints end with the registry itself");
        let mut client_opts = opts.clone();
        client_opts.tls_verify &= !ep.insecure;
        let client = Client::connect(
            &ep.authority,
            &ep.repository,
            &rstr,
            "pull,push",
            &client_opts,
        )?;
        let parsed = oci::parse_manifest(&format!("manifest {}", image.manifest_digest), &manifest)
            .map_err(|source| RegistryError::Oci {
                reference: rstr.clone(),
                source,
            })?;
        let mut blobs: Vec<(String, u64)> = Vec::new();
        for d in std::iter::once(&parsed.config).chain(&parsed.layers) {
            if !blobs.iter().any(|(b, _)| *b == d.digest) {
                blobs.push((d.digest.to_string(), d.size));
            }
        }
        let uploaded = std::sync::atomic::AtomicUsize::new(0);
        parallel(
            &blobs,
            opts.parallel,
            &|(digest, size), _cancel: &AtomicBool| {
                let open = || {
                    let f =
                        self.open_verified_blob(digest)
                            .map_err(|source| RegistryError::Store {
                                reference: client.reference().to_string(),
                                source: Box::new(source),
                            })?;
                    Ok(SendBody::from_owned_reader(f))
                };
                if upload_blob(&client, digest, *size, &open)? {
                    uploaded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            },
        )?;
        let tag = reference
            .tag
            .clone()
            .unwrap_or_else(|| image.manifest_digest.clone());
        let url = client.repo_url(&format!("manifests/{tag}"));
        let body = manifest.clone();
        let reply = client.send(
            "PUT",
            &url,
            &[
                ("Content-Type", media_type.as_str()),
                ("Content-Length", &manifest.len().to_string()),
            ],
            Some(&mut || {
                Ok(SendBody::from_owned_reader(std::io::Cursor::new(
                    body.clone(),
                )))
            }),
        )?;
        if !reply.status.is_success() {
            return Err(client.status_error(
                "uploading the manifest",
                reply.status,
                reply.response,
            ));
        }
        let digest = sha256_of(&manifest);
        if let Some(said) = reply
            .response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if said != digest {
                return Err(RegistryError::Digest {
                    reference: rstr,
                    what: "the manifest as the registry stored it".into(),
                    expected: digest,
                    actual: said.to_string(),
                });
            }
        }
        Ok(Pushed {
            pinned: reference.with_digest(&digest),
            digest,
            uploaded: uploaded.into_inner(),
        })
    }
}

/// Uploads one blob unless the registry has it. Returns whether it uploaded.
pub(crate) fn upload_blob(
    client: &Client,
    digest: &str,
    size: u64,
    open: &dyn Fn() -> Result<SendBody<'static>, RegistryError>,
) -> Result<bool, RegistryError> {
    let what = format!("blob {digest}");
    let head = client.send(
        "HEAD",
        &client.repo_url(&format!("blobs/{digest}")),
        &[],
        None,
    )?;
    if head.status.is_success() {
        return Ok(false);
    }
    let reply = client.send(
        "POST",
        &client.repo_url("blobs/uploads/"),
        &[("Content-Length", "0")],
        Some(&mut || Ok(SendBody::from_owned_reader(std::io::empty()))),
    )?;
    if reply.status.as_u16() != 202 {
        return Err(client.status_error(
            &format!("starting the upload of {what}"),
            reply.status,
            reply.response,
        ));
    }
    let location = reply
        .response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .ok_or_else(|| RegistryError::Protocol {
            reference: client.reference().to_string(),
            what: format!("the upload of {what} started without a Location"),
        })?;
    let location = client.absolute(location)?;
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{sep}digest={digest}");
    let len = size.to_string();
    let reply = client.send(
        "PUT",
        &url,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", &len),
        ],
        Some(&mut || open()),
    )?;
    if reply.status.as_u16() != 201 {
        return Err(client.status_error(
            &format!("uploading {what}"),
            reply.status,
            reply.response,
        ));
    }
    Ok(true)
}

/// Uploads `bytes` as a blob (unless present); returns its digest.
pub(crate) fn upload_bytes(client: &Client, bytes: &[u8]) -> Result<String, RegistryError> {
    let digest = sha256_of(bytes);
    let owned = bytes.to_vec();
    upload_blob(client, &digest, bytes.len() as u64, &|| {
        Ok(SendBody::from_owned_reader(std::io::Cursor::new(
            owned.clone(),
        )))
    })?;
    Ok(digest)
}

/// `PUT /v2/<repo>/manifests/<tag>`.
pub(crate) fn put_manifest(
    client: &Client,
    tag: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<(), RegistryError> {
    let url = client.repo_url(&format!("manifests/{tag}"));
    let body = bytes.to_vec();
    let len = bytes.len().to_string();
    let reply = client.send(
        "PUT",
        &url,
        &[("Content-Type", media_type), ("Content-Length", &len)],
        Some(&mut || {
            Ok(SendBody::from_owned_reader(std::io::Cursor::new(
                body.clone(),
            )))
        }),
    )?;
    if !reply.status.is_success() {
        return Err(client.status_error(
            &format!("uploading manifest {tag}"),
            reply.status,
            reply.response,
        ));
    }
    Ok(())
}
