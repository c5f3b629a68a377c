//! Tar archives given to `moat image import`: which kind (OCI archive,
//! docker archive, rootfs tarball) and their members, extracted and hashed.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use crate::digest::Digest;
use crate::layer::Compression;
use crate::oci::{self};

use super::{create_staged, finish_staged, ImportError, MAX_META};

pub(super) struct OciMeta {
    pub(super) index: Vec<u8>,
}

pub(super) enum ArchiveKind {
    Oci(OciMeta),
    Docker(Vec<u8>),
    Rootfs,
}

/// `./a/b` -> `a/b`.
pub(super) fn clean_member(name: &str) -> String {
    let mut s = name;
    while let Some(r) = s.strip_prefix("./") {
        s = r;
    }
    s.trim_start_matches('/').to_string()
}

/// Decides what kind of tar file this is from its member names (one pass
/// over the headers, seeking over data). Compressed files are rootfs
/// tarballs: OCI and docker archives are plain tars.
pub(super) fn sniff_archive(f: &mut File, path: &Path) -> Result<ArchiveKind, ImportError> {
    let sp = path.to_path_buf();
    let read_err = |source| ImportError::Read {
        source_path: sp.clone(),
        what: "the archive".into(),
        source: crate::quote::clean_io(source),
    };
    let mut head = [0u8; 4];
    let n = f.read(&mut head).map_err(read_err)?;
    f.rewind().map_err(read_err)?;
    if Compression::sniff(&head[..n]) != Compression::None {
        return Ok(ArchiveKind::Rootfs);
    }
    let mut has_layout = false;
    let mut index = None;
    let mut docker = None;
    {
        let mut ar = tar::Archive::new(BufReader::new(&mut *f));
        let entries = ar.entries_with_seek().map_err(read_err)?;
        for e in entries {
            let mut e = match e {
                Ok(e) => e,
                // Not a tar at all, or damaged: the rootfs path reports it
                // with the entry.
                Err(_) => return Ok(ArchiveKind::Rootfs),
            };
            if !e.header().entry_type().is_file() {
                continue;
            }
            let name = clean_member(&String::from_utf8_lossy(&e.path_bytes()));
            let slot = match name.as_str() {
                "oci-layout" => {
                    has_layout = true;
                    continue;
                }
                "index.json" => &mut index,
                "manifest.json" => &mut docker,
                _ => continue,
            };
            if e.size() > MAX_META {
                return Err(ImportError::TooBig {
                    source_path: sp.clone(),
                    what: name,
                    limit: MAX_META,
                });
            }
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).map_err(read_err)?;
            *slot = Some(buf);
        }
    }
    f.rewind().map_err(read_err)?;
    Ok(match (has_layout, index, docker) {
        (true, Some(index), _) => ArchiveKind::Oci(OciMeta { index }),
        (_, _, Some(m)) if oci::parse_docker_manifest(&m).is_ok() => ArchiveKind::Docker(m),
        _ => ArchiveKind::Rootfs,
    })
}

/// Extracts the regular-file members for which `target` returns a file
/// name into `dir`, hashing each. Members named after a digest
/// (`blobs/sha256/<hex>`) must hash to it. Returns member -> (digest, size).
pub(super) fn extract_members(
    f: &mut File,
    path: &Path,
    dir: &Path,
    target: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<String, (Digest, u64)>, ImportError> {
    let sp = path.to_path_buf();
    let read_err = |source| ImportError::Read {
        source_path: sp.clone(),
        what: "the archive".into(),
        source: crate::quote::clean_io(source),
    };
    f.rewind().map_err(read_err)?;
    let mut found = HashMap::new();
    let mut ar = tar::Archive::new(BufReader::with_capacity(1 << 20, &mut *f));
    let mut links = Vec::new();
    for e in ar.entries_with_seek().map_err(read_err)? {
        let mut e = e.map_err(read_err)?;
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let name = clean_member(&raw);
        let kind = e.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Some(t) = e.link_name_bytes() {
                let t = String::from_utf8_lossy(&t).into_owned();
                links.push((name, t, kind.is_symlink()));
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let Some(file) = target(&name) else { continue };
        if name.split('/').any(|c| c == "..") {
            return Err(ImportError::BadMember {
                source_path: sp.clone(),
                entry: raw,
            });
        }
        let tmp = dir.join(format!("{file}.partial"));
        let mut w = create_staged(&tmp, &sp)?;
        io::copy(&mut e, &mut w).map_err(read_err)?;
        let (digest, size) = finish_staged(w, &sp)?;
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            if digest != format!("sha256:{hex}") {
                return Err(ImportError::MemberDigest {
                    source_path: sp.clone(),
                    entry: raw,
                    actual: digest.into(),
                });
            }
        }
        fs::rename(&tmp, dir.join(&file)).map_err(|source| ImportError::Write {
            source_path: sp.clone(),
            what: "staging".into(),
            source,
        })?;
        found.insert(name, (digest, size));
    }
    // docker save deduplicates layers with links between members.
    for (name, t, symlink) in links {
        let resolved = if symlink {
            let base = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let mut parts: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
            for c in t.split('/') {
                match c {
                    "" | "." => {}
                    ".." => {
                        parts.pop();
                    }
                    c => parts.push(c),
                }
            }
            parts.join("/")
        } else {
            clean_member(&t)
        };
        if let Some(v) = found.get(&resolved).cloned() {
            if target(&name).is_some() {
                let (src_file, dst_file) = (target(&resolved), target(&name));
                if let (Some(s), Some(d)) = (src_file, dst_file) {
                    let _ = fs::hard_link(dir.join(s), dir.join(d));
                }
            }
            found.insert(name, v);
        }
    }
    Ok(found)
}
