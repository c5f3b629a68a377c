//! The image profile behind the `auto` policy: made when an image enters
//! the store, kept beside its record (`images/<hex>.profile.json`), read by
//! `moat run`, `moat image inspect`, `moat surface` and `moat policy explain`.

use std::path::Path;

use anyhow::Context;
use moat_image::{Image, Store};
use moat_policy::auto::ImageSyscalls;
use moat_profile::image_profile::{self, ImageProfile};
use moat_profile::rootfs::Root;

/// The kind of derived metadata the profile is stored as.
const KIND: &str = "profile";

/// Analyses a root filesystem directory.
pub fn analyze_dir(rootfs: &Path) -> anyhow::Result<ImageProfile> {
    let root = Root::open(rootfs)?;
    image_profile::analyze_image(&root)
        .with_context(|| format!("static analysis of {}", rootfs.display()))
}

/// The profile of a `--rootfs` directory, cached under the state root by
/// a fingerprint of its files (path, inode, size, modification and change
/// times): a directory is analysed again whenever any file changes. The
/// cache can only make `auto` narrower or different within baseline,
/// never wider than baseline.
pub fn analyze_dir_cached(state_root: &Path, rootfs: &Path) -> anyhow::Result<ImageProfile> {
    let Some(fp) = fingerprint(rootfs) else {
        return analyze_dir(rootfs);
    };
    let dir = state_root.join("cache").join("rootfs-profiles");
    let path = dir.join(format!("{fp}.json"));
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(p) = serde_json::from_slice::<ImageProfile>(&bytes) {
            if p.version == image_profile::VERSION {
                return Ok(p);
            }
        }
    }
    let profile = analyze_dir(rootfs)?;
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = crate::cmd::profile::write_atomically(&path, &serde_json::to_vec(&profile)?);
    }
    Ok(profile)
}

/// sha256 over every entry's path, inode, size and times; `None` when the
/// tree is too large to walk cheaply.
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

/// Analyses `image` and stores the result with it.
pub fn compute_and_store(store: &Store, image: &Image) -> anyhow::Result<ImageProfile> {
    let rootfs = store
        .rootfs(image)
        .with_context(|| format!("materialising the rootfs of image {}", image.short_id()))?;
    let profile = analyze_dir(&rootfs)?;
    let bytes = serde_json::to_vec_pretty(&profile)?;
    store
        .write_derived(image, KIND, &bytes)
        .with_context(|| format!("storing the profile of image {}", image.short_id()))?;
    Ok(profile)
}

/// The stored profile of `image`; made (and stored) when there is none, or
/// when it was made by another version of the analysis.
pub fn for_image(store: &Store, image: &Image) -> anyhow::Result<ImageProfile> {
    if let Some(bytes) = store.read_derived(image, KIND)? {
        if let Ok(p) = serde_json::from_slice::<ImageProfile>(&bytes) {
            if p.version == image_profile::VERSION {
                return Ok(p);
            }
        }
    }
    compute_and_store(store, image)
}

/// The stored profile only, without analysing (for display).
pub fn stored(store: &Store, image: &Image) -> Option<ImageProfile> {
    let bytes = store.read_derived(image, KIND).ok()??;
    serde_json::from_slice::<ImageProfile>(&bytes)
        .ok()
        .filter(|p| p.version == image_profile::VERSION)
}

/// At import: make the profile, warning (not failing) when it cannot be.
pub fn record_at_import(store: &Store, image: &Image) {
    if let Err(err) = compute_and_store(store, image) {
        errln!(
            "moat: warning: image {} imported, but its profile failed ({err:#}); `moat run` will try again",
            image.config_digest
        );
    }
}

/// What the `auto` policy is narrowed to for `profile`.
pub fn image_syscalls(label: &str, profile: &ImageProfile) -> ImageSyscalls {
    ImageSyscalls {
        image: label.to_string(),
        allow: profile.allowed(),
        fallbacks: profile.fallback_lines(),
    }
}

/// Lines for `moat image inspect` and `moat surface`.
pub fn describe(profile: &ImageProfile) -> Vec<String> {
    let mut v = vec![format!(
        "{} system calls from {} ELF objects ({}; {} ms)",
        profile.syscalls.len(),
        profile.objects,
        if profile.libc.is_empty() {
            "no libc".to_string()
        } else {
            profile.libc.join(", ")
        },
        profile.analysis_ms
    )];
    match profile.allowed() {
        None => v.push(
            "not pinned: `auto` grants this image what baseline grants, because:".to_string(),
        ),
        Some(set) if !profile.fallback_grants.is_empty() => v.push(format!(
            "{} with the families fallbacks grant ({}), because:",
            set.len(),
            profile
                .fallback_grants
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(_) => {}
    }
    for f in profile.fallback_lines() {
        v.push(format!("  {f}"));
    }
    v
}
