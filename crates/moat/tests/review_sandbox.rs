//! Attack tests for the sandbox items of the outside security reviews
//! (issues 11 and 23) and the sandbox's share of issue 12. Each test does
//! what the review did, as a hostile workload or a planted record, and
//! asserts that it now fails with the host unchanged.

#[path = "sandbox_common/mod.rs"]
mod sandbox_common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use sandbox_common::*;

/// The static helper of these tests (`tests/helper/sandbox_review_helper.rs`),
/// compiled once per source content, as the escape helper is.
fn helper() -> PathBuf {
    static HELPER: OnceLock<PathBuf> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            let src =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helper/sandbox_review_helper.rs");
            let text = std::fs::read(&src).unwrap();
            let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let out = out_dir.join(format!("sandbox-review-helper-{hash:016x}"));
            if !out.exists() {
                let tmp = out_dir.join(format!(
                    "sandbox-review-helper-{hash:016x}.{}",
                    std::process::id()
                ));
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
                    .arg(&tmp)
                    .arg(&src)
                    .status()
                    .expect("running rustc for the sandbox review helper");
                assert!(st.success(), "building the sandbox review helper failed");
                std::fs::rename(&tmp, &out).unwrap();
            }
            out
        })
        .clone()
}

/// Installs the helper as `/bin/helper` in the env's rootfs.
fn with_helper(env: &Env) {
    let dst = env.rootfs.join("bin/helper");
    std::fs::copy(helper(), &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A policy file in the env's directory: `baseline` with the given spec
/// lines added.
fn policy(env: &Env, name: &str, spec: &str) -> PathBuf {
    let p = env.dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!(
            "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  extends: baseline\n{spec}"
        ),
    )
    .unwrap();
    p
}

fn moat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_moat")
}

/// Issue 11 item 2: under `script` (a real pty) with stdin from /dev/null,
/// a workload opens /dev/tty, tries to become the foreground process group
/// and TIOCSTI-injects a command into the host shell, under a policy that
/// does not deny TIOCSTI. The container is its own session without a
/// terminal: no /dev/tty, no terminal on stdio, nothing injected, and the
/// host shell runs nothing.
#[test]
fn workload_cannot_reach_the_host_terminal() {
    if !can_sandbox("workload_cannot_reach_the_host_terminal") {
        return;
    }
    if Command::new("script").arg("--version").output().is_err() {
        println!("SKIP: workload_cannot_reach_the_host_terminal: script (util-linux) is missing");
        return;
    }
    let env = Env::new();
    with_helper(&env);
    let pol = policy(
        &env,
        "tiocsti-not-denied",
        "  syscalls:\n    conditions:\n      ioctl:\n        deny: []\n",
    );
    let marker = env.dir.path().join("injected-command-ran");
    let moat = format!(
        "{} --root {} run --isolation sandbox --policy {} --rootfs {} /bin/helper tty-attack 'touch {}'",
        moat_bin(),
        env.state_root().display(),
        pol.display(),
        env.rootfs.display(),
        marker.display()
    );
    // The "host shell": runs moat on the terminal, then reads lines from
    // that terminal and runs them, as an interactive shell would.
    let shell = format!(
        "{moat}; echo moat-exit=$?; for i in 1 2 3; do read -t 1 line && [ -n \"$line\" ] && {{ echo HOST-RAN:$line; sh -c \"$line\"; }}; done; true"
    );
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!("bash -c '{}'", shell.replace('\'', "'\\''")))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let o = stdout(&out).replace('\r', "");
    assert!(o.contains("moat-exit=0"), "{o}");
    assert!(o.contains("session: own\n"), "{o}");
    assert!(o.contains("open /dev/tty: ENOENT\n"), "{o}");
    for fd in 0..3 {
        assert!(o.contains(&format!("fd {fd}: not a terminal\n")), "{o}");
    }
    assert!(!o.contains("TIOCSTI"), "no terminal to inject into:\n{o}");
    assert!(
        !o.contains("HOST-RAN"),
        "the host shell ran injected input:\n{o}"
    );
    assert!(!marker.exists(), "the injected command ran on the host");
}

/// The relay keeps stdout and stderr apart and complete, and `-t` still
/// gives the container its own terminal as `/dev/tty` and `/dev/console`.
#[test]
fn stdio_on_a_terminal_is_relayed_and_tty_is_the_containers_own() {
    if !can_sandbox("stdio_on_a_terminal_is_relayed_and_tty_is_the_containers_own") {
        return;
    }
    let env = Env::new();
    let root = env.rootfs.display().to_string();
    let run = |args: &str| {
        let cmd = format!(
            "{} --root {} run --isolation sandbox --rootfs {root} {args}",
            moat_bin(),
            env.state_root().display()
        );
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        stdout(&out).replace('\r', "")
    };
    let o = run("sh -c 'seq 1 20000 | tail -n 1; echo to-stderr >&2; test -t 1 || echo no-tty'");
    assert_eq!(o, "20000\nto-stderr\nno-tty\n");
    let o =
        run("-t sh -c 'test -c /dev/tty && echo hi > /dev/tty && test -t 0 && ls /dev/console'");
    assert_eq!(o, "hi\n/dev/console\n");
}
