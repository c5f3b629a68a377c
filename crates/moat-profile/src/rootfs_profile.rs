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

/// The profile of `rootfs`, cached in `cache_dir` by a fingerprint of its
/// files (path, inode, size, mode, modification and change times): a
/// directory is analysed again whenever any file changes. The cache can
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

/// sha256 over every entry's path, inode, size, mode and times; `None`
/// when the tree is too large to walk cheaply or cannot be read.
fn fingerprint(rootfs: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
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
            let md = e.metadata().ok()?;
            h.update(e.path().as_os_str().as_encoded_bytes());
            for v in [md.ino(), md.size(), md.mode() as u64] {
                h.update(v.to_le_bytes());
            }
            for v in [md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec()] {
                h.update(v.to_le_bytes());
            }
            if md.is_dir() {
                stack.push(e.path());
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
