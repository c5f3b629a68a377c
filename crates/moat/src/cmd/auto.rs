//! The image profile behind the `auto` policy: made when an image enters
//! the store, kept beside its record (`images/<hex>.profile.json`), read by
//! `moat run`, `moat image inspect`, `moat surface` and `moat policy explain`.

use std::path::Path;

use anyhow::Context;
use moat_image::{Image, Store};
use moat_profile::image_profile::{self, ImageProfile};
use moat_profile::rootfs_profile;

/// The kind of derived metadata the profile is stored as.
const KIND: &str = "profile";

/// Analyses a root filesystem directory.
pub fn analyze_dir(rootfs: &Path) -> anyhow::Result<ImageProfile> {
    Ok(rootfs_profile::analyze_dir(rootfs)?)
}

/// The profile of a `--rootfs` directory, cached under the state root
/// (see [`rootfs_profile::analyze_dir_cached`]).
pub fn analyze_dir_cached(state_root: &Path, rootfs: &Path) -> anyhow::Result<ImageProfile> {
    let cache = state_root.join("cache").join("rootfs-profiles");
    Ok(rootfs_profile::analyze_dir_cached(&cache, rootfs)?)
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

pub use rootfs_profile::image_syscalls;

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
