//! `moat kernel build` says what it is doing when its output is a log.

#[path = "sandbox_common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::Env;

#[test]
fn kernel_build_prints_a_line_per_phase_into_a_log() {
    let env = Env::new();
    // A source tarball that is not one: the build gets as far as
    // extracting it. Another build holds the lock at first.
    let src = env.dir.path().join("linux-source-6.1.tar.xz");
    std::fs::write(&src, b"not a tarball").unwrap();
    let kernels = env.state_root().join("kernels");
    std::fs::create_dir_all(&kernels).unwrap();
    let lock = std::fs::File::create(kernels.join(".lock")).unwrap();
    lock.lock().unwrap();
    let mut child = env
        .moat(&["kernel", "build"])
        .env("MOAT_KERNEL_SOURCE", &src)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert_eq!(
        first,
        format!(
            "moat kernel build: waiting for another kernel build to finish (it holds {})\n",
            kernels.join(".lock").display()
        )
    );
    drop(lock);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    let mut lines = rest.lines();
    assert_eq!(
        lines.next(),
        Some(format!("moat kernel build: [1/5] extracting {}", src.display()).as_str())
    );
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("moat: error: tar xf failed in "),
        "{rest}"
    );
}
