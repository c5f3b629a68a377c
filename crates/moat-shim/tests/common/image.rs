//! Images built here: an OCI archive (oci-layout, index, manifest, config,
//! one layer) of a root filesystem, for `ctr images import`.

pub use moat_testkit::rootfs::busybox_rootfs;

use std::path::Path;

use sha2::{Digest, Sha256};

fn blob(dir: &Path, data: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(data));
    let d = dir.join("blobs/sha256");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

/// Writes an OCI archive of `rootfs` named `name`, whose default command
/// is `cmd`, to `out` (staging in `work`).
pub fn oci_archive(rootfs: &Path, work: &Path, out: &Path, name: &str, cmd: &[&str]) {
    let layout = work.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.append_dir_all(".", rootfs).unwrap();
    let layer = layer.into_inner().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let layer_digest = blob(&layout, &layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let config_digest = blob(&layout, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    let manifest_digest = blob(&layout, manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap()}}],
    })
    .to_string();
    std::fs::write(layout.join("index.json"), index).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}",
    )
    .unwrap();
    let mut t = tar::Builder::new(std::fs::File::create(out).unwrap());
    t.append_dir_all(".", &layout).unwrap();
    t.finish().unwrap();
}

/// The busybox image as an OCI archive at `out`.
pub fn busybox_archive(work: &Path, out: &Path, name: &str) {
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    oci_archive(&rootfs, work, out, name, &["sh"]);
}
