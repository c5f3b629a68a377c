//! Test images made from the busybox test image with changes to its config.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{stderr, Env};

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

/// The busybox test image as an OCI layout whose config declares
/// `VOLUME` at each of `volumes`, imported as `volimg`.
pub fn import_image_with_volumes(env: &Env, volumes: &[&str]) {
    let dir = env.dir.path().join("layout");
    env.ok(&[
        "dev",
        "test-image",
        "--format",
        "oci-layout",
        "-o",
        dir.to_str().unwrap(),
    ]);
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let mut index = read(&dir.join("index.json"));
    let mut manifest = read(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let mut config = read(&blob(manifest["config"]["digest"].as_str().unwrap()));
    let decl: serde_json::Map<String, serde_json::Value> = volumes
        .iter()
        .map(|v| (v.to_string(), serde_json::json!({})))
        .collect();
    config["config"]["Volumes"] = serde_json::Value::Object(decl);
    let write = |v: &serde_json::Value| -> (String, usize) {
        let bytes = serde_json::to_vec(v).unwrap();
        let d = format!("sha256:{}", sha256_hex(&bytes));
        std::fs::write(blob(&d), &bytes).unwrap();
        (d, bytes.len())
    };
    let (cd, cs) = write(&config);
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (md, ms) = write(&manifest);
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = ms.into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    env.ok(&["image", "import", dir.to_str().unwrap(), "--name", "volimg"]);
}

/// The root filesystem of corpus image `name` (`scripts/corpus`, from
/// this machine's Debian packages), or `None` (with `SKIP:`) where a
/// package is missing.
pub fn corpus(env: &Env, name: &str) -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/corpus");
    let dir = env.dir.path().join(format!("corpus-{name}"));
    let out = Command::new(script).arg(name).arg(&dir).output().unwrap();
    if out.status.code() == Some(1) && stderr(&out).contains("missing") {
        println!("SKIP: corpus image {name}: {}", stderr(&out).trim());
        return None;
    }
    assert!(
        out.status.success(),
        "scripts/corpus {name}: {}",
        stderr(&out)
    );
    Some(dir)
}
