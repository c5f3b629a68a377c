//! Package inventories read from image layers (in order, honouring
//! whiteouts) or from a root filesystem directory, without running anything
//! from the image.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use moat_image::layer::{self, LayerTar, Node, Whiteout};
use serde::{Deserialize, Serialize};

pub mod binary;
pub mod lang;
pub mod os;

pub use os::OsRelease;

/// Errors while building an inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read layer {layer}")]
    ReadLayer {
        layer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    ReadRootfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a directory: --rootfs needs an unpacked root filesystem", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot read the rpm database {path}")]
    RpmDb {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the rpm database {path} took longer than {secs} s to read and was abandoned (a crafted database?): its packages were not checked")]
    RpmTimeout { path: String, secs: f64 },
    #[error("the rpm database {path} has no `Packages` table (found: {found}); refused: its packages were not checked")]
    RpmNotATable { path: String, found: String },
    #[error("the rpm database {path} has more than {max} packages; refused: its packages were not checked")]
    RpmTooManyRows { path: String, max: usize },
    #[error("the image's package metadata (lockfiles, package databases) goes past {limit} bytes at {path}: the inventory was refused, its packages were not checked")]
    MetadataBudget { path: String, limit: u64 },
    #[error("cannot stage the rpm database {path} in a temporary file")]
    StageRpmDb {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// Where it came from: dpkg, apk, rpm, cargo, go, npm, python.
    pub kind: String,
    /// OSV ecosystem key (`Debian:12`, `npm`, ...); empty when no advisory
    /// source covers it (an OS moat does not know).
    pub ecosystem: String,
    /// Source package and version (dpkg `Source:`, apk origin, rpm SRPM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    /// Digest of the layer that installed it; `None` for a rootfs scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// File the package was read from.
    pub path: String,
}

/// Everything known about the software in an image or rootfs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsRelease>,
    pub packages: Vec<Package>,
    /// Plain statements about what could not be checked.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Inventory {
    /// Packages that can be matched against advisories.
    pub fn checkable(&self) -> usize {
        self.packages
            .iter()
            .filter(|p| !p.ecosystem.is_empty())
            .count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interest {
    DpkgStatus,
    DpkgStatusD,
    Apk,
    Rpm,
    OsRelease,
    CargoLock,
    PackageLock,
    NodePackageJson,
    YarnLock,
    PyMetadata,
    Requirements,
    PoetryLock,
}

fn classify(path: &str) -> Option<Interest> {
    let base = path.rsplit('/').next().unwrap_or(path);
    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
    Some(match path {
        "var/lib/dpkg/status" => Interest::DpkgStatus,
        "lib/apk/db/installed" => Interest::Apk,
        "var/lib/rpm/rpmdb.sqlite" | "usr/lib/sysimage/rpm/rpmdb.sqlite" => Interest::Rpm,
        "etc/os-release" | "usr/lib/os-release" => Interest::OsRelease,
        _ if parent == "var/lib/dpkg/status.d" && !base.contains('.') => Interest::DpkgStatusD,
        _ if base == "Cargo.lock" => Interest::CargoLock,
        _ if base == "package-lock.json" && !path.contains("node_modules/") => {
            Interest::PackageLock
        }
        _ if base == "package.json" && is_node_module_dir(parent) => Interest::NodePackageJson,
        _ if base == "yarn.lock" => Interest::YarnLock,
        _ if base == "METADATA" && parent.ends_with(".dist-info") => Interest::PyMetadata,
        _ if base == "PKG-INFO" && parent.ends_with(".egg-info") => Interest::PyMetadata,
        _ if base == "requirements.txt" => Interest::Requirements,
        _ if base == "poetry.lock" => Interest::PoetryLock,
        _ => return None,
    })
}

/// `.../node_modules/name` or `.../node_modules/@scope/name`.
fn is_node_module_dir(dir: &str) -> bool {
    let mut parts = dir.rsplit('/');
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return false;
    };
    if b == "node_modules" {
        return !a.starts_with('.') && !a.starts_with('@');
    }
    b.starts_with('@') && parts.next() == Some("node_modules")
}

/// Largest manifest read into memory; larger files are skipped with a note.
const MAX_MANIFEST: u64 = 64 << 20;
/// Most manifest bytes read into memory for one image (or rootfs), over all
/// its files and layers: past it the inventory fails instead of growing.
pub const MAX_METADATA_TOTAL: u64 = 256 << 20;
/// Largest executable inspected for build metadata.
const MAX_BINARY: u64 = 512 << 20;

enum Content {
    Raw(Interest, Vec<u8>),
    Packages(Vec<Package>),
    /// A symlink (only tracked for os-release).
    Link(String),
}

struct Entry {
    layer_index: usize,
    layer: Option<String>,
    content: Content,
}

/// Accumulates the files of interest, layer over layer.
#[derive(Default)]
pub struct Collector {
    files: BTreeMap<String, Entry>,
    notes: Vec<String>,
    layer_index: usize,
    /// Manifest bytes read so far, against [`MAX_METADATA_TOTAL`].
    metadata_read: u64,
    /// The file that would have gone past the budget.
    over_budget: Option<String>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn normalize(path: &str) -> Option<String> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None, // hostile; never followed
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

impl Collector {
    pub fn new() -> Collector {
        Collector::default()
    }

    fn remove_tree(&mut self, path: &str, below_layer: Option<usize>) {
        let prefix = format!("{path}/");
        self.files.retain(|k, e| {
            let hit = k == path || k.starts_with(&prefix) || path.is_empty();
            !(hit && below_layer.is_none_or(|l| e.layer_index < l))
        });
    }

    /// Feed one layer (an uncompressed tar stream). Layers must be fed
    /// bottom first.
    pub fn add_layer<R: Read>(&mut self, digest: &str, reader: R) -> Result<(), InventoryError> {
        let err = |source| InventoryError::ReadLayer {
            layer: digest.to_string(),
            source,
        };
        self.layer_index += 1;
        let idx = self.layer_index;
        let mut tar = LayerTar::new(reader);
        for entry in tar.entries().map_err(err)? {
            let mut entry = entry.map_err(err)?;
            let raw = entry.path_bytes().into_owned();
            // What the unpacker refuses (`..`, absolute paths, bad
            // whiteouts) is passed over: no image in the store has it.
            let path = match layer::classify(&raw) {
                Ok(Node::Path(p)) => lossy(&p.joined()),
                Ok(Node::Whiteout { dir, target }) => {
                    let dir = lossy(&dir.join(&b'/'));
                    match target {
                        // Opaque directory: hide what lower layers put under it.
                        Whiteout::Opaque => self.files.retain(|k, e| {
                            !(e.layer_index < idx
                                && (dir.is_empty() || k.starts_with(&format!("{dir}/"))))
                        }),
                        Whiteout::Name(name) => {
                            let name = lossy(name);
                            let target = if dir.is_empty() {
                                name
                            } else {
                                format!("{dir}/{name}")
                            };
                            self.remove_tree(&target, None);
                        }
                        Whiteout::Invalid => {}
                    }
                    continue;
                }
                Ok(Node::Root) | Err(_) => continue,
            };
            let ty = entry.header().entry_type();
            if ty.is_dir() {
                // A directory replacing a file of a lower layer.
                self.files.remove(&path);
                continue;
            }
            // Anything else at this path replaces what lower layers had,
            // including everything below it if it was a directory.
            self.remove_tree(&path, Some(idx));
            let content = if ty.is_symlink() {
                match classify(&path) {
                    Some(Interest::OsRelease) => entry
                        .link_name()
                        .map_err(err)?
                        .map(|l| Content::Link(l.to_string_lossy().into_owned())),
                    _ => None,
                }
            } else if ty.is_file() {
                let size = entry.header().size().unwrap_or(0);
                let mode = entry.header().mode().unwrap_or(0);
                let c = self
                    .read_content(&path, size, mode, &mut entry)
                    .map_err(err)?;
                self.check_budget()?;
                c
            } else {
                None
            };
            if let Some(content) = content {
                self.files.insert(
                    path,
                    Entry {
                        layer_index: idx,
                        layer: Some(digest.to_string()),
                        content,
                    },
                );
            }
        }
        Ok(())
    }

    fn read_content(
        &mut self,
        path: &str,
        size: u64,
        mode: u32,
        r: &mut dyn Read,
    ) -> std::io::Result<Option<Content>> {
        if let Some(interest) = classify(path) {
            if size > MAX_MANIFEST {
                self.notes.push(format!(
                    "/{path} is larger than {MAX_MANIFEST} bytes and was not read"
                ));
                return Ok(None);
            }
            if self.metadata_read + size > MAX_METADATA_TOTAL {
                self.over_budget = Some(path.to_string());
                return Ok(None);
            }
            self.metadata_read += size;
            let mut buf = Vec::with_capacity(size as usize);
            r.take(MAX_MANIFEST).read_to_end(&mut buf)?;
            return Ok(Some(Content::Raw(interest, buf)));
        }
        if mode & 0o111 == 0 || !(64..=MAX_BINARY).contains(&size) {
            return Ok(None);
        }
        let mut head = [0u8; 4];
        if r.read_exact(&mut head).is_err() || &head != b"\x7fELF" {
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(size as usize);
        buf.extend_from_slice(&head);
        r.take(MAX_BINARY).read_to_end(&mut buf)?;
        let shown = format!("/{path}");
        let mut pkgs = binary::go_packages(&buf, &shown);
        pkgs.extend(binary::auditable_packages(&buf, &shown));
        Ok((!pkgs.is_empty()).then_some(Content::Packages(pkgs)))
    }

    /// Feed an unpacked root filesystem (symlinks are never followed).
    pub fn add_rootfs(&mut self, root: &Path) -> Result<(), InventoryError> {
        let meta = fs::metadata(root).map_err(|source| InventoryError::ReadRootfs {
            path: root.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(InventoryError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        self.layer_index += 1;
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else {
                self.notes.push(format!("/{rel} could not be listed"));
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let relp = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    if rel.is_empty() && matches!(name.as_str(), "proc" | "sys" | "dev") {
                        continue;
                    }
                    stack.push((e.path(), relp));
                } else if ft.is_symlink() {
                    if classify(&relp) == Some(Interest::OsRelease) {
                        if let Ok(t) = fs::read_link(e.path()) {
                            self.insert(
                                relp,
                                None,
                                Content::Link(t.to_string_lossy().into_owned()),
                            );
                        }
                    }
                } else if ft.is_file() {
                    let Ok(m) = e.metadata() else { continue };
                    use std::os::unix::fs::PermissionsExt;
                    if classify(&relp).is_none()
                        && (m.permissions().mode() & 0o111 == 0 || m.len() < 64)
                    {
                        continue;
                    }
                    let Ok(mut f) = fs::File::open(e.path()) else {
                        self.notes.push(format!("/{relp} could not be read"));
                        continue;
                    };
                    let content = self
                        .read_content(&relp, m.len(), m.permissions().mode(), &mut f)
                        .map_err(|source| InventoryError::ReadRootfs {
                            path: e.path(),
                            source,
                        })?;
                    self.check_budget()?;
                    if let Some(c) = content {
                        self.insert(relp, None, c);
                    }
                }
            }
        }
        Ok(())
    }

    fn check_budget(&self) -> Result<(), InventoryError> {
        match &self.over_budget {
            Some(path) => Err(InventoryError::MetadataBudget {
                path: format!("/{path}"),
                limit: MAX_METADATA_TOTAL,
            }),
            None => Ok(()),
        }
    }

    fn insert(&mut self, path: String, layer: Option<String>, content: Content) {
        let layer_index = self.layer_index;
        self.files.insert(
            path,
            Entry {
                layer_index,
                layer,
                content,
            },
        );
    }

    /// Parse what was collected into an inventory.
    pub fn finish(self) -> Result<Inventory, InventoryError> {
        let mut inv = Inventory {
            notes: self.notes,
            ..Inventory::default()
        };
        // os-release: /etc/os-release, possibly a link to ../usr/lib/os-release.
        let mut os_entry = self.files.get("etc/os-release");
        for _ in 0..4 {
            match os_entry.map(|e| &e.content) {
                Some(Content::Link(t)) => {
                    let joined = if t.starts_with('/') {
                        t.clone()
                    } else {
                        format!("etc/{t}")
                    };
                    os_entry = normalize(&joined).and_then(|p| self.files.get(&p));
                }
                _ => break,
            }
        }
        if os_entry.is_none() {
            os_entry = self.files.get("usr/lib/os-release");
        }
        if let Some(Entry {
            content: Content::Raw(_, b),
            ..
        }) = os_entry
        {
            inv.os = Some(os::parse_os_release(&String::from_utf8_lossy(b)));
        }
        let mut os_pkgs = 0usize;
        let mut rpm_tmp_err = None;
        for (path, e) in &self.files {
            let shown = format!("/{path}");
            let mut pkgs = match &e.content {
                Content::Packages(p) => p.clone(),
                Content::Link(_) => continue,
                Content::Raw(interest, bytes) => {
                    let text = || String::from_utf8_lossy(bytes);
                    match interest {
                        Interest::OsRelease => continue,
                        Interest::DpkgStatus => os::parse_dpkg(&text(), &shown, true),
                        Interest::DpkgStatusD => os::parse_dpkg(&text(), &shown, false),
                        Interest::Apk => os::parse_apk(&text(), &shown),
                        Interest::Rpm => match stage_rpm(bytes, &shown) {
                            Ok(p) => p,
                            Err(err) => {
                                rpm_tmp_err = Some(err);
                                continue;
                            }
                        },
                        Interest::CargoLock => lang::parse_cargo_lock(&text(), &shown),
                        Interest::PoetryLock => lang::parse_poetry_lock(&text(), &shown),
                        Interest::PackageLock => match lang::parse_package_lock(&text(), &shown) {
                            Some(p) => p,
                            None => {
                                inv.notes
                                    .push(format!("{shown} is not valid JSON and was skipped"));
                                continue;
                            }
                        },
                        Interest::NodePackageJson => lang::parse_node_package_json(&text(), &shown)
                            .into_iter()
                            .collect(),
                        Interest::YarnLock => lang::parse_yarn_lock(&text(), &shown),
                        Interest::PyMetadata => lang::parse_python_metadata(&text(), &shown)
                            .into_iter()
                            .collect(),
                        Interest::Requirements => lang::parse_requirements(&text(), &shown),
                    }
                }
            };
            for p in &mut pkgs {
                p.layer.clone_from(&e.layer);
            }
            os_pkgs += pkgs
                .iter()
                .filter(|p| matches!(p.kind.as_str(), "dpkg" | "apk" | "rpm"))
                .count();
            inv.packages.extend(pkgs);
        }
        if let Some(err) = rpm_tmp_err {
            return Err(err);
        }
        // OS packages get the OS's advisory ecosystem.
        let os_eco = inv
            .os
            .as_ref()
            .and_then(|o| crate::ecosystem::from_os_release(&o.id, &o.version_id));
        match (&inv.os, &os_eco) {
            (_, Some(eco)) => {
                for p in inv.packages.iter_mut().filter(|p| matches!(p.kind.as_str(), "dpkg" | "apk" | "rpm")) {
                    p.ecosystem = eco.clone();
                }
            }
            (Some(os), None) if os_pkgs > 0 => inv.notes.push(format!(
                "the OS {} (ID={}) is not covered by any advisory source moat knows: its {os_pkgs} OS packages were not checked",
                if os.pretty_name.is_empty() { &os.id } else { &os.pretty_name },
                os.id
            )),
            (None, None) if os_pkgs > 0 => inv.notes.push(format!(
                "no /etc/os-release: the distribution of {os_pkgs} OS packages is unknown and they were not checked"
            )),
            _ => {}
        }
        if os_pkgs == 0 {
            let what = match &inv.os {
                Some(os) if !os.pretty_name.is_empty() => format!("{} image", os.pretty_name),
                Some(os) => format!("{} image", os.id),
                None => "image".to_string(),
            };
            inv.notes.push(format!(
                "no OS package database found (dpkg, apk or rpm) in this {what}: OS packages were not checked"
            ));
        }
        // Same package found twice (a lockfile and node_modules): keep one.
        let mut seen = HashSet::new();
        inv.packages.retain(|p| {
            seen.insert((
                p.kind.clone(),
                p.ecosystem.clone(),
                p.name.clone(),
                p.version.clone(),
            ))
        });
        Ok(inv)
    }
}

fn stage_rpm(bytes: &[u8], shown: &str) -> Result<Vec<Package>, InventoryError> {
    let err = |source| InventoryError::StageRpmDb {
        path: shown.to_string(),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new().map_err(err)?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(err)?;
    os::read_rpm_sqlite(tmp.path(), shown)
}

/// Inventory of image layers, given bottom first as `(digest, tar stream)`.
pub fn from_layers<R: Read>(
    layers: impl IntoIterator<Item = (String, R)>,
) -> Result<Inventory, InventoryError> {
    let mut c = Collector::new();
    for (digest, r) in layers {
        c.add_layer(&digest, r)?;
    }
    c.finish()
}

/// Inventory of an unpacked root filesystem.
pub fn from_rootfs(root: &Path) -> Result<Inventory, InventoryError> {
    let mut c = Collector::new();
    c.add_rootfs(root)?;
    c.finish()
}
