//! The image profile of a root filesystem directory (`moat run --rootfs`,
//! an OCI bundle's root), cached by a fingerprint of its files, and what
//! the `auto` policy is narrowed to for a profile. Shared by every front
//! end that runs a directory rather than a stored image.

use std::io::Write;
use std::path::Path;

use moat_policy::auto::ImageSyscalls;

use crate::image_profile::{self, ImageProfile};
use crate::rootfs::Root;

#[derive(Debug, thiserror::Error)]
pub enum RootfsProfileError {
    #[error("static analysis of {path}")]
    Analysis {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Analyses a root filesystem directory.
pub fn analyze_dir(rootfs: &Path) -> Result<ImageProfile, RootfsProfileError> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| RootfsProfileError::Analysis {
        path: rootfs.display().to_string(),
        source: e,
    };
    let root = Root::open(rootfs).map_err(|e| err(Box::new(e)))?;
    image_profile::analyze_image(&root).map_err(|e| err(Box::new(e)))
}

/// The profile of `rootfs`, cached in `cache_dir` by a fingerprint of the
/// files the analysis reads (see [`fingerprint`]): a directory is analysed
/// again whenever one of them changes. The cache can
/// only make `auto` narrower or different within baseline, never wider.
pub fn analyze_dir_cached(
    cache_dir: &Path,
    rootfs: &Path,
) -> Result<ImageProfile, RootfsProfileError> {
    let Some(fp) = fingerprint(rootfs) else {
        return analyze_dir(rootfs);
    };
    let path = cache_dir.join(format!("{fp}.json"));
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(p) = serde_json::from_slice::<ImageProfile>(&bytes) {
            if p.version == image_profile::VERSION {
                return Ok(p);
            }
        }
    }
    let profile = analyze_dir(rootfs)?;
    // A cache that cannot be written costs the next run an analysis, no more.
    if let Ok(bytes) = serde_json::to_vec(&profile) {
        let _ = std::fs::create_dir_all(cache_dir).and_then(|_| {
            let mut tmp = tempfile::NamedTempFile::new_in(cache_dir)?;
            tmp.write_all(&bytes)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
    }
    Ok(profile)
}

/// sha256 over what the analysis reads: each ELF object and script
/// (path relative to the root, inode, size, mode, modification and change
/// times) and each symbolic link (path and target, which library lookup
/// follows). Directories and other files are left out: a runtime's
/// per-container files (podman's `/etc/hostname`, `/run/.containerenv`, the
/// overlay's own directories) would otherwise make every container of one
/// image miss. `None` when the tree is too large to walk cheaply or cannot
/// be read.
fn fingerprint(rootfs: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut h = Sha256::new();
    let mut stack = vec![rootfs.to_path_buf()];
    let mut n = 0usize;
    h.update(image_profile::VERSION.to_le_bytes());
    while let Some(d) = stack.pop() {
        let mut ents: Vec<_> = std::fs::read_dir(&d).ok()?.flatten().collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            n += 1;
            if n > 200_000 {
                return None;
            }
            // lstat: a link is hashed as a link, never followed.
            let md = e.metadata().ok()?;
            let path = e.path();
            let rel = path
                .strip_prefix(rootfs)
                .ok()?
                .as_os_str()
                .as_encoded_bytes()
                .to_vec();
            let ft = md.file_type();
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            if ft.is_symlink() {
                h.update(b"l");
                h.update(&rel);
                h.update([0]);
                h.update(
                    std::fs::read_link(&path)
                        .ok()?
                        .as_os_str()
                        .as_encoded_bytes(),
                );
                h.update([0]);
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            // Only what the analysis reads: ELF objects and scripts.
            let mut head = [0u8; 4];
            let read = std::fs::File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
                .and_then(|mut f| f.read(&mut head));
            let Ok(got) = read else { return None };
            if !(got == 4 && &head == b"\x7fELF" || got >= 2 && head.starts_with(b"#!")) {
                continue;
            }
            h.update(b"f");
            h.update(&rel);
            h.update([0]);
            for v in [md.ino(), md.size(), md.mode() as u64] {
                h.update(v.to_le_bytes());
            }
            for v in [md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec()] {
                h.update(v.to_le_bytes());
            }
        }
    }
    Some(hex::encode(h.finalize()))
}

/// What the `auto` policy is narrowed to for `profile` (`label` names the
/// image in messages).
pub fn image_syscalls(label: &str, profile: &ImageProfile) -> ImageSyscalls {
    ImageSyscalls {
        image: label.to_string(),
        allow: profile.allowed(),
        fallbacks: profile.fallback_lines(),
    }
}

#[cfg(test)]
mod tests {
    use super::fingerprint;
    use std::path::Path;

    /// A root with an ELF object, a script, a link and a data file.
    fn root(dir: &Path) {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("bin/tool"), b"\x7fELF and the rest").unwrap();
        std::fs::write(dir.join("bin/run"), b"#!/bin/tool\n").unwrap();
        std::os::unix::fs::symlink("tool", dir.join("bin/alias")).unwrap();
        std::fs::write(dir.join("etc/hostname"), b"a\n").unwrap();
    }

    #[test]
    fn per_container_files_and_the_roots_path_do_not_change_the_fingerprint() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        root(&a);
        let fp = fingerprint(&a).unwrap();
        // What a runtime adds per container: data files and directories.
        std::fs::write(a.join("etc/hostname"), b"other\n").unwrap();
        std::fs::create_dir_all(a.join("run/secrets")).unwrap();
        std::fs::write(a.join("run/.containerenv"), b"").unwrap();
        assert_eq!(fingerprint(&a).unwrap(), fp);
        // The same tree under another path (a new overlay mount).
        let b = t.path().join("b");
        std::fs::rename(&a, &b).unwrap();
        assert_eq!(fingerprint(&b).unwrap(), fp);
    }

    #[test]
    fn what_the_analysis_reads_changes_the_fingerprint() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        root(&a);
        let fp = fingerprint(&a).unwrap();
        let changes: [&dyn Fn(&Path); 4] = [
            &|r| std::fs::write(r.join("bin/tool"), b"\x7fELF changed").unwrap(),
            &|r| std::fs::write(r.join("bin/run"), b"#!/bin/sh\n").unwrap(),
            &|r| {
                std::fs::remove_file(r.join("bin/alias")).unwrap();
                std::os::unix::fs::symlink("run", r.join("bin/alias")).unwrap();
            },
            &|r| std::fs::write(r.join("etc/new"), b"\x7fELF new object").unwrap(),
        ];
        let mut seen = vec![fp];
        for change in changes {
            change(&a);
            let now = fingerprint(&a).unwrap();
            assert!(
                !seen.contains(&now),
                "a change left the fingerprint as it was"
            );
            seen.push(now);
        }
    }
}
