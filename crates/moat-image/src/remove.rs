//! `Store::remove`, `Store::prune` and `Store::export`.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::digest::{sha256_hex, Digest, HashingReader};
use crate::oci::{self, Descriptor};
use crate::store::{
    io_read, io_write, normalize_name, ContainerUse, Image, RemoveOptions, Removed, Store,
    StoreError,
};
use crate::testimage::OCI_LAYOUT;

impl Store {
    /// Removes an image, or only the name `reference` when the image has
    /// other names. Refuses while a container uses it, unless forced.
    pub fn remove(&self, reference: &str, opts: &RemoveOptions) -> Result<Removed, StoreError> {
        let _excl = self.lock_exclusive()?;
        let image = self.resolve(reference)?;
        let _meta = self.lock_meta()?;
        let mut names = self.read_names()?;
        let as_name = [
            reference.to_string(),
            normalize_name(reference).unwrap_or_default(),
        ]
        .into_iter()
        .find(|n| names.names.get(n) == Some(&image.manifest_digest));
        let mut removed = Removed::default();
        if let Some(n) = as_name {
            if image.names.len() > 1 {
                names.names.remove(&n);
                self.write_names(&names)?;
                removed.untagged.push(n);
                return Ok(removed);
            }
        }
        self.check_unused(&image, opts)?;
        self.remove_image(&image, &mut names, &mut removed)?;
        self.write_names(&names)?;
        self.remove_unreferenced_blobs(&mut removed)?;
        Ok(removed)
    }

    fn check_unused(&self, image: &Image, opts: &RemoveOptions) -> Result<(), StoreError> {
        if opts.force {
            return Ok(());
        }
        if let Some(containers) = &opts.containers {
            if let Some(u) = containers
                .iter()
                .find(|c| c.image_id == image.config_digest)
            {
                return Err(StoreError::InUse {
                    image: image
                        .names
                        .first()
                        .cloned()
                        .unwrap_or_else(|| image.config_digest.clone()),
                    container: u.container.clone(),
                    state: u.state.clone(),
                });
            }
        }
        Ok(())
    }

    /// Record first (the image disappears at once), then names and rootfs.
    fn remove_image(
        &self,
        image: &Image,
        names: &mut crate::store::Names,
        removed: &mut Removed,
    ) -> Result<(), StoreError> {
        let hex = sha256_hex(&image.manifest_digest).expect("stored digests are valid");
        let record = self.images_dir().join(format!("{hex}.json"));
        fs::remove_file(&record).map_err(io_write(&record))?;
        // Metadata derived from it (`<hex>.<kind>.json`, e.g. its profile).
        if let Ok(rd) = fs::read_dir(self.images_dir()) {
            let prefix = format!("{hex}.");
            for ent in rd.flatten() {
                let name = ent.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&prefix) && name.ends_with(".json") {
                    let _ = fs::remove_file(ent.path());
                }
            }
        }
        names.names.retain(|n, d| {
            if *d == image.manifest_digest {
                removed.untagged.push(n.clone());
                false
            } else {
                true
            }
        });
        let rootfs = self.rootfs_path(&image.manifest_digest)?;
        if rootfs.exists() {
            fs::remove_dir_all(&rootfs).map_err(io_write(&rootfs))?;
        }
        // The VM's root image of this image ID, unless another record
        // (another manifest of the same config) still needs it. A running
        // VM keeps its open descriptor.
        let shared = self
            .records()?
            .iter()
            .any(|r| r.config_digest == image.config_digest);
        if !shared {
            let hex = sha256_hex(&image.config_digest).expect("stored digests are valid");
            let vm = self.vm_cache_dir().join(hex);
            if vm.exists() {
                fs::remove_dir_all(&vm).map_err(io_write(&vm))?;
            }
        }
        removed.images.push(image.config_digest.clone());
        Ok(())
    }

    /// Deletes blobs no record references, and rootfs dirs without record.
    /// Caller holds the exclusive store lock.
    fn remove_unreferenced_blobs(&self, removed: &mut Removed) -> Result<(), StoreError> {
        let mut keep = HashSet::new();
        let mut keep_rootfs = HashSet::new();
        let mut keep_configs = HashSet::new();
        for r in self.records()? {
            for d in [&r.manifest_digest, &r.config_digest]
                .into_iter()
                .chain(r.layers.iter().map(|l| &l.digest))
            {
                keep.insert(sha256_hex(d).unwrap_or_default().to_string());
            }
            keep_rootfs.insert(
                sha256_hex(&r.manifest_digest)
                    .unwrap_or_default()
                    .to_string(),
            );
            keep_configs.insert(sha256_hex(&r.config_digest).unwrap_or_default().to_string());
        }
        let dir = self.blob_dir();
        for ent in fs::read_dir(&dir).map_err(io_read(&dir))? {
            let ent = ent.map_err(io_read(&dir))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                removed.bytes += ent.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(ent.path()).map_err(io_write(&ent.path()))?;
                removed.blobs += 1;
            }
        }
        let dir = self.rootfs_dir();
        for ent in fs::read_dir(&dir).map_err(io_read(&dir))? {
            let ent = ent.map_err(io_read(&dir))?;
            if !keep_rootfs.contains(&*ent.file_name().to_string_lossy()) {
                fs::remove_dir_all(ent.path()).map_err(io_write(&ent.path()))?;
            }
        }
        // VM root images whose image ID no record has (images removed by
        // an older moat, which left them behind).
        let dir = self.vm_cache_dir();
        if let Ok(rd) = fs::read_dir(&dir) {
            for ent in rd {
                let ent = ent.map_err(io_read(&dir))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                let is_cache = sha256_hex(&format!("sha256:{name}")).is_some();
                if is_cache && !keep_configs.contains(&name) {
                    removed.bytes += dir_size(&ent.path());
                    fs::remove_dir_all(ent.path()).map_err(io_write(&ent.path()))?;
                }
            }
        }
        Ok(())
    }

    /// Removes images without a name (not in use), unreferenced blobs and
    /// rootfs directories, and abandoned staging directories.
    pub fn prune(&self, containers: Option<&[ContainerUse]>) -> Result<Removed, StoreError> {
        let _excl = self.lock_exclusive()?;
        let mut removed = Removed {
            staging: crate::lock::clean_stale(&self.tmp_dir())
                .map_err(io_write(&self.tmp_dir()))?,
            ..Default::default()
        };
        let _meta = self.lock_meta()?;
        let mut names = self.read_names()?;
        let opts = RemoveOptions {
            force: false,
            containers: containers.map(<[ContainerUse]>::to_vec),
        };
        for image in self.list()? {
            if image.names.is_empty() && self.check_unused(&image, &opts).is_ok() {
                self.remove_image(&image, &mut names, &mut removed)?;
            }
        }
        self.write_names(&names)?;
        self.remove_unreferenced_blobs(&mut removed)?;
        Ok(removed)
    }

    /// Writes `image` as an OCI archive at `output` (via a temporary file
    /// and rename). Every blob is verified as it is copied.
    pub fn export(&self, image: &Image, output: &Path) -> Result<(), StoreError> {
        let _shared = self.lock_shared()?;
        let file_name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = output.with_file_name(format!(".{file_name}.partial-{}", std::process::id()));
        let result = self.write_export(image, &tmp);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
            return result;
        }
        fs::rename(&tmp, output).map_err(io_write(output))
    }

    fn write_export(&self, image: &Image, tmp: &Path) -> Result<(), StoreError> {
        let werr = io_write(tmp);
        let file = File::create(tmp).map_err(werr)?;
        let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        let header = |size: u64| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(size);
            h.set_mtime(0);
            h
        };
        let mut annotations = BTreeMap::new();
        if let Some(name) = image.names.first() {
            annotations.insert(oci::ANNOTATION_REF_NAME.to_string(), name.clone());
        }
        let manifest_size = fs::metadata(self.blob_path(&image.manifest_digest)?)
            .map_err(io_read(tmp))?
            .len();
        let index = oci::Index {
            schema_version: 2,
            media_type: oci::MEDIA_OCI_INDEX.into(),
            manifests: vec![Descriptor {
                media_type: oci::MEDIA_OCI_MANIFEST.into(),
                digest: Digest::parse(&image.manifest_digest).map_err(|_| {
                    StoreError::BadDigest {
                        digest: image.manifest_digest.clone(),
                    }
                })?,
                size: manifest_size,
                annotations,
                platform: Some(oci::Platform {
                    architecture: "amd64".into(),
                    os: "linux".into(),
                    variant: None,
                }),
            }],
            annotations: BTreeMap::new(),
        };
        let index_bytes = serde_json::to_vec(&index).expect("index serialises");
        tar.append_data(
            &mut header(OCI_LAYOUT.len() as u64),
            "oci-layout",
            OCI_LAYOUT,
        )
        .map_err(io_write(tmp))?;
        tar.append_data(
            &mut header(index_bytes.len() as u64),
            "index.json",
            &index_bytes[..],
        )
        .map_err(io_write(tmp))?;
        let mut digests = vec![image.manifest_digest.clone(), image.config_digest.clone()];
        digests.extend(image.layers.iter().map(|l| l.digest.to_string()));
        let mut seen = HashSet::new();
        for d in digests {
            if !seen.insert(d.clone()) {
                continue;
            }
            let path = self.blob_path(&d)?;
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::MissingBlob { digest: d })
                }
                Err(e) => return Err(io_read(&path)(e)),
            };
            let size = f.metadata().map_err(io_read(&path))?.len();
            let mut r = HashingReader::new(f);
            let name = format!("blobs/sha256/{}", sha256_hex(&d).expect("valid"));
            tar.append_data(&mut header(size), &name, &mut r)
                .map_err(io_write(tmp))?;
            let (actual, _) = r.finish().map_err(io_read(&path))?;
            if actual != d {
                return Err(StoreError::CorruptBlob {
                    digest: d,
                    actual: actual.into(),
                });
            }
        }
        let mut w = tar.into_inner().map_err(io_write(tmp))?;
        w.flush().map_err(io_write(tmp))?;
        w.into_inner()
            .map_err(|e| StoreError::Write {
                path: tmp.to_path_buf(),
                source: e.into_error(),
            })?
            .sync_all()
            .map_err(io_write(tmp))?;
        Ok(())
    }
}

/// Bytes of the regular files below `dir` (not following symlinks).
fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
