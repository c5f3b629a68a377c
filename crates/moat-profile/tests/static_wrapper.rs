//! Static executables that call libc's `syscall()` the way rustc emits it
//! for a static-pie: the wrapper's address loaded from a GOT slot that a
//! relative relocation fills, then `call reg`. Each call's number is
//! pinned; a wrapper pointer the analysis cannot follow is a fallback,
//! never a silent miss. The programs are built here by rustc.

use std::path::Path;
use std::process::Command;

use moat_profile::image_profile::analyze_image;
use moat_profile::rootfs::Root;

/// Builds `src` static into `<root>/bin/<name>`.
fn build(root: &Path, name: &str, src: &str) {
    let dir = root.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let file = root.join(format!("{name}.rs"));
    std::fs::write(&file, src).unwrap();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let st = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(dir.join(name))
        .arg(&file)
        .status()
        .expect("running rustc");
    assert!(st.success(), "building {name}");
    std::fs::remove_file(&file).unwrap();
}

const HEADER: &str = "extern \"C\" { fn syscall(n: i64, ...) -> i64; }\n";

#[test]
fn numbers_passed_to_the_static_syscall_wrapper_are_pinned() {
    let d = tempfile::tempdir().unwrap();
    build(
        d.path(),
        "calls",
        &format!(
            "{HEADER}fn main() {{
                let n = std::env::args().count();
                // SAFETY: the program is only analysed, never run.
                for _ in 0..n {{ unsafe {{ syscall(294, 0) }}; }}
                // SAFETY: as above.
                unsafe {{ syscall(129, 0, 0, 0) }};
                // SAFETY: as above.
                unsafe {{ syscall(241, 0) }};
            }}"
        ),
    );
    let p = analyze_image(&Root::open(d.path()).unwrap()).unwrap();
    assert_eq!(p.fallback_lines(), Vec::<String>::new());
    let allowed = p.allowed().expect("pinned");
    for call in ["inotify_init1", "rt_sigqueueinfo", "mq_unlink"] {
        assert!(allowed.contains(call), "{call} missing: {allowed:?}");
    }
}

#[test]
fn a_wrapper_pointer_the_analysis_cannot_follow_falls_back() {
    let d = tempfile::tempdir().unwrap();
    build(
        d.path(),
        "pointer",
        &format!(
            "{HEADER}fn main() {{
                let f: unsafe extern \"C\" fn(i64, ...) -> i64 = std::hint::black_box(syscall);
                // SAFETY: the program is only analysed, never run.
                unsafe {{ f(294, 0) }};
            }}"
        ),
    );
    let p = analyze_image(&Root::open(d.path()).unwrap()).unwrap();
    let lines = p.fallback_lines();
    assert!(
        lines.iter().any(|l| l.starts_with("/bin/pointer: ")),
        "no fallback for an unfollowed wrapper pointer: {lines:?}"
    );
}
