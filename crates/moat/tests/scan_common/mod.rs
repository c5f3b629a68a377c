//! Helpers shared by the scanner's CLI tests (`scan_cli.rs`,
//! `review_scan_cli.rs`): run `moat` on a state root, read its output,
//! import a directory as a one-layer image.

use std::path::Path;
use std::process::{Command, Output};

pub fn moat(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("run moat")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Import a directory as a single-layer image; returns the image ID.
pub fn import_rootfs(root: &Path, dir: &Path, name: &str) -> String {
    let tarball = dir.with_extension("tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success());
    let o = moat(
        root,
        &[
            "image",
            "import",
            tarball.to_str().unwrap(),
            "--name",
            name,
            "--format",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let img: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    img["config_digest"].as_str().unwrap().to_string()
}
