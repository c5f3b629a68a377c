//! The bundled test image: Debian's static busybox with its applet links,
//! built with no network as an OCI layout or OCI archive. Three gzip layers
//! (busybox and the directory skeleton; applet symlinks; /etc files) so that
//! tests, the demo and benchmarks exercise multi-layer images.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::write::GzEncoder;

use crate::digest::{sha256_of, Digest};
use crate::oci::{self, Descriptor};

/// Where Debian's busybox-static puts the binary.
pub const BUSYBOX: &str = "/bin/busybox";
/// The name the image carries (`org.opencontainers.image.ref.name`).
pub const NAME: &str = "busybox:latest";
/// Fixed timestamp so that the image is reproducible.
const MTIME: u64 = 1_700_000_000;
const CREATED: &str = "2023-11-14T22:13:20Z";

#[derive(Debug, thiserror::Error)]
pub enum TestImageError {
    #[error("{BUSYBOX} is missing or not executable; install Debian's busybox-static (scripts/bootstrap does)")]
    NoBusybox(#[source] io::Error),
    #[error("running `{BUSYBOX} --list-full` failed")]
    ListApplets(#[source] io::Error),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The blobs and index of the test image, in memory.
pub struct TestImage {
    pub blobs: Vec<(Digest, Vec<u8>)>,
    pub index: Vec<u8>,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
}

struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl LayerBuilder {
    fn new() -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        Self { tar }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }

    fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.tar
            .append_data(&mut h, format!("{path}/"), io::empty())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.tar.append_data(&mut h, path, data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target)
    }

    /// Finishes the tar; returns (gzip blob, diff ID).
    fn finish(self) -> io::Result<(Vec<u8>, String)> {
        let tar = self.tar.into_inner()?;
        let diff_id = sha256_of(&tar);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar)?;
        Ok((gz.finish()?, diff_id))
    }
}

fn applets() -> Result<Vec<String>, TestImageError> {
    let out = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .map_err(TestImageError::ListApplets)?;
    if !out.status.success() {
        return Err(TestImageError::ListApplets(io::Error::other(format!(
            "exit status {}",
            out.status
        ))));
    }
    let mut list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("..") && !l.starts_with('/'))
        .map(str::to_string)
        .collect();
    list.sort();
    list.dedup();
    Ok(list)
}

/// Builds the test image in memory.
pub fn build() -> Result<TestImage, TestImageError> {
    let busybox = fs::read(BUSYBOX).map_err(TestImageError::NoBusybox)?;
    let applets = applets()?;
    let io_err = |source| TestImageError::Write {
        path: PathBuf::from("(memory)"),
        source,
    };

    // Layer 1: directory skeleton and the binary.
    let mut l1 = LayerBuilder::new();
    for (d, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("run", 0o755),
        ("sbin", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("var", 0o755),
    ] {
        l1.dir(d, mode).map_err(io_err)?;
    }
    l1.file("bin/busybox", 0o755, &busybox).map_err(io_err)?;
    // Layer 2: one symlink per applet.
    let mut l2 = LayerBuilder::new();
    for a in &applets {
        if a != "bin/busybox" {
            l2.symlink(a, "/bin/busybox").map_err(io_err)?;
        }
    }
    // Layer 3: identity files.
    let mut l3 = LayerBuilder::new();
    l3.dir("etc", 0o755).map_err(io_err)?;
    l3.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .map_err(io_err)?;
    l3.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        .map_err(io_err)?;
    l3.file("etc/hostname", 0o644, b"moat\n").map_err(io_err)?;
    l3.file(
        "etc/os-release",
        0o644,
        b"NAME=\"moat test image\"\nID=moat-busybox\nPRETTY_NAME=\"moat busybox test image\"\n",
    )
    .map_err(io_err)?;

    let mut blobs = Vec::new();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (layer, by) in [
        (l1, "busybox binary"),
        (l2, "busybox applet links"),
        (l3, "etc files"),
    ] {
        let (gz, diff_id) = layer.finish().map_err(io_err)?;
        let digest = Digest::of(&gz);
        layers.push(Descriptor {
            media_type: oci::MEDIA_OCI_LAYER_GZIP.into(),
            digest: digest.clone(),
            size: gz.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        });
        diff_ids.push(diff_id);
        history.push(oci::History {
            created: Some(CREATED.into()),
            created_by: Some(format!("moat dev test-image: {by}")),
            empty_layer: false,
        });
        blobs.push((digest, gz));
    }
    let config = oci::ConfigFile {
        created: Some(CREATED.into()),
        architecture: "amd64".into(),
        os: "linux".into(),
        config: oci::RuntimeConfig {
            env: Some(vec![
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "MOAT_TEST_IMAGE=busybox".into(),
            ]),
            entrypoint: Some(vec!["/bin/busybox".into()]),
            cmd: Some(vec!["sh".into()]),
            working_dir: "/root".into(),
            labels: Some(BTreeMap::from([(
                "org.opencontainers.image.title".to_string(),
                "moat busybox test image".to_string(),
            )])),
            ..Default::default()
        },
        rootfs: oci::RootFs {
            kind: "layers".into(),
            diff_ids,
        },
        history,
    };
    let config_bytes = serde_json::to_vec(&config).expect("config serialises");
    let config_digest = Digest::of(&config_bytes);
    let manifest = oci::Manifest {
        schema_version: 2,
        media_type: oci::MEDIA_OCI_MANIFEST.into(),
        config: Descriptor {
            media_type: oci::MEDIA_OCI_CONFIG.into(),
            digest: config_digest.clone(),
            size: config_bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        },
        layers,
        annotations: BTreeMap::new(),
    };
    blobs.push((config_digest.clone(), config_bytes));
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
    let manifest_digest = Digest::of(&manifest_bytes);
    let index = oci::Index {
        schema_version: 2,
        media_type: oci::MEDIA_OCI_INDEX.into(),
        manifests: vec![Descriptor {
            media_type: oci::MEDIA_OCI_MANIFEST.into(),
            digest: manifest_digest.clone(),
            size: manifest_bytes.len() as u64,
            annotations: BTreeMap::from([(oci::ANNOTATION_REF_NAME.to_string(), NAME.to_string())]),
            platform: Some(oci::Platform {
                architecture: "amd64".into(),
                os: "linux".into(),
                variant: None,
            }),
        }],
        annotations: BTreeMap::new(),
    };
    blobs.push((manifest_digest.clone(), manifest_bytes));
    Ok(TestImage {
        blobs,
        index: serde_json::to_vec(&index).expect("index serialises"),
        manifest_digest,
        config_digest,
    })
}

pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes `image` as an OCI layout directory at `dir` (created if needed).
pub fn write_layout(image: &TestImage, dir: &Path) -> Result<(), TestImageError> {
    let w = |path: PathBuf, data: &[u8]| {
        fs::write(&path, data).map_err(|source| TestImageError::Write { path, source })
    };
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).map_err(|source| TestImageError::Write {
        path: blob_dir.clone(),
        source,
    })?;
    for (digest, data) in &image.blobs {
        w(blob_dir.join(digest.hex()), data)?;
    }
    w(dir.join("oci-layout"), OCI_LAYOUT)?;
    w(dir.join("index.json"), &image.index)
}

/// Writes `image` as an OCI archive (a tar of the layout) at `path`,
/// atomically.
pub fn write_archive(image: &TestImage, path: &Path) -> Result<(), TestImageError> {
    let tmp = path.with_extension(format!("partial-{}", std::process::id()));
    let werr = |source| TestImageError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::create(&tmp).map_err(werr)?;
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    let mut add = |name: &str, data: &[u8]| {
        let mut h = LayerBuilder::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        tar.append_data(&mut h, name, data)
    };
    add("oci-layout", OCI_LAYOUT).map_err(werr)?;
    add("index.json", &image.index).map_err(werr)?;
    for (digest, data) in &image.blobs {
        add(&format!("blobs/sha256/{}", digest.hex()), data).map_err(werr)?;
    }
    let mut w = tar.into_inner().map_err(werr)?;
    w.flush().map_err(werr)?;
    drop(w);
    fs::rename(&tmp, path).map_err(werr)
}

/// Builds the busybox test image and writes it as an OCI layout at `dir`.
pub fn write_busybox_layout(dir: &Path) -> Result<TestImage, TestImageError> {
    let image = build()?;
    write_layout(&image, dir)?;
    Ok(image)
}

/// Builds the busybox test image and writes it as an OCI archive at `path`.
pub fn write_busybox_oci_archive(path: &Path) -> Result<TestImage, TestImageError> {
    let image = build()?;
    write_archive(&image, path)?;
    Ok(image)
}
