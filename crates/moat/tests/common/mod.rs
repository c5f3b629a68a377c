//! Helpers shared by the image integration tests: run the built `moat`
//! binary against a temporary state root, and build tar streams and OCI
//! layouts byte by byte (hostile ones included, which the tar crate's safe
//! builders refuse to write).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub fn moat(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("MOAT_ROOT")
        .env_remove("MOAT_RUN_ROOT")
        .output()
        .expect("run moat")
}

pub fn ok(root: &Path, args: &[&str]) -> String {
    let out = moat(root, args);
    assert!(
        out.status.success(),
        "moat {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs moat expecting failure; returns stderr.
pub fn fails(root: &Path, args: &[&str]) -> String {
    let out = moat(root, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "moat {args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Every path under `dir` with its size and mode (to show a store did not
/// change).
pub fn snapshot(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if rel.ends_with(".lock") {
                continue;
            }
            use std::os::unix::fs::MetadataExt;
            out.insert(format!(
                "{rel} {} {:o}",
                if m.is_dir() { 0 } else { m.len() },
                m.mode()
            ));
            if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Char(u32, u32),
    Fifo,
}

/// One tar entry, written with raw header bytes.
pub struct E {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

pub fn file(name: &str, data: &[u8]) -> E {
    E {
        name: name.as_bytes().to_vec(),
        kind: Kind::File(data.to_vec()),
        mode: 0o644,
        uid: 0,
        gid: 0,
        xattrs: vec![],
    }
}
pub fn dir(name: &str) -> E {
    E {
        name: name.as_bytes().to_vec(),
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        xattrs: vec![],
    }
}
pub fn symlink(name: &str, target: &str) -> E {
    E {
        name: name.as_bytes().to_vec(),
        kind: Kind::Symlink(target.as_bytes().to_vec()),
        mode: 0o777,
        uid: 0,
        gid: 0,
        xattrs: vec![],
    }
}
pub fn hardlink(name: &str, target: &str) -> E {
    E {
        name: name.as_bytes().to_vec(),
        kind: Kind::Hardlink(target.as_bytes().to_vec()),
        mode: 0o644,
        uid: 0,
        gid: 0,
        xattrs: vec![],
    }
}

/// An uncompressed tar of `entries`.
pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (kind, data): (tar::EntryType, &[u8]) = match &e.kind {
            Kind::File(d) => (tar::EntryType::Regular, d),
            Kind::Dir => (tar::EntryType::Directory, &[]),
            Kind::Symlink(_) => (tar::EntryType::Symlink, &[]),
            Kind::Hardlink(_) => (tar::EntryType::Link, &[]),
            Kind::Char(..) => (tar::EntryType::Char, &[]),
            Kind::Fifo => (tar::EntryType::Fifo, &[]),
        };
        h.set_entry_type(kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        if let Kind::Char(maj, min) = e.kind {
            h.set_device_major(maj).unwrap();
            h.set_device_minor(min).unwrap();
        }
        if !e.xattrs.is_empty() {
            let pax: Vec<(String, Vec<u8>)> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone()))
                .collect();
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        assert!(e.name.len() < 100, "test names stay short");
        h.as_old_mut().name[..e.name.len()].copy_from_slice(&e.name);
        if let Kind::Symlink(t) | Kind::Hardlink(t) = &e.kind {
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// A layout with one image of the given layer blobs (compressed or not)
/// and their uncompressed tars (for diff IDs). Returns manifest digest.
pub struct Layout {
    pub dir: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
}

pub fn write_blob(dir: &Path, data: &[u8]) -> String {
    let d = sha256(data);
    let p = dir.join("blobs/sha256");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(&d[7..]), data).unwrap();
    d
}

pub fn layout(dir: &Path, layers: &[(Vec<u8>, Vec<u8>)], platform: Option<(&str, &str)>) -> Layout {
    std::fs::create_dir_all(dir).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    for (blob, raw) in layers {
        let d = write_blob(dir, blob);
        descs.push(format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{}}}"#, blob.len()));
        diff_ids.push(format!("\"{}\"", sha256(raw)));
        layer_digests.push(d);
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/bin/true"],"Env":["A=1"],"WorkingDir":"/w"}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let cd = write_blob(dir, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    );
    let md = write_blob(dir, manifest.as_bytes());
    let plat = platform
        .map(|(os, arch)| format!(r#","platform":{{"os":"{os}","architecture":"{arch}"}}"#))
        .unwrap_or_default();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{}{plat},"annotations":{{"org.opencontainers.image.ref.name":"test:1"}}}}]}}"#,
        manifest.len()
    );
    std::fs::write(dir.join("index.json"), index).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Layout {
        dir: dir.to_path_buf(),
        manifest_digest: md,
        config_digest: cd,
        layer_digests,
    }
}

/// Tars a directory tree (an OCI layout) into an archive file.
pub fn tar_dir(dir: &Path, out: &Path) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
