//! Shared helpers of the sandbox and escape integration tests: a busybox
//! root filesystem built from Debian's busybox-static, the static escape
//! helper, and a `moat` command bound to a temporary state root.
#![allow(dead_code)]

pub mod images;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Whether the privileged sandbox tests can run here; prints `SKIP:` if not.
pub fn can_sandbox(test: &str) -> bool {
    // SAFETY-free: geteuid via /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid_root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !euid_root {
        println!("SKIP: {test}: needs root (user namespaces with a mapped id range, cgroups)");
        return false;
    }
    if !Path::new("/bin/busybox").exists() {
        println!("SKIP: {test}: /bin/busybox (busybox-static) is not installed");
        return false;
    }
    true
}

/// Whether the micro-VM tests can run here (root, QEMU, a built guest
/// kernel); prints `SKIP:` if not.
pub fn vm_ready(env: &Env, test: &str) -> bool {
    if !can_sandbox(test) {
        return false;
    }
    if !Path::new("/usr/bin/qemu-system-x86_64").is_file() {
        println!("SKIP: {test}: qemu-system-x86_64 is not installed");
        return false;
    }
    let k = env.moat(&["kernel", "path"]).output().unwrap();
    if !k.status.success() {
        println!(
            "SKIP: {test}: guest kernel not built: {}",
            stderr(&k).trim()
        );
        return false;
    }
    true
}

/// A test environment: a temp dir with a state root and a busybox rootfs.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
}

/// A test that fails half-way must not leave a detached container running
/// (a writer loop kept a core busy for an hour once): every container of
/// the state root is removed, by force, when the test ends.
impl Drop for Env {
    fn drop(&mut self) {
        if !self.state_root().exists() {
            return;
        }
        let Ok(o) = self.moat(&["ps", "-a", "--format", "json"]).output() else {
            return;
        };
        let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        for c in list.as_array().into_iter().flatten() {
            if let Some(id) = c["Id"].as_str().or(c["id"].as_str()) {
                let _ = self.moat(&["rm", "-f", id]).output();
            }
        }
    }
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("moat-sbx-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        busybox_rootfs(&rootfs);
        // The one-time "no RBAC file" warning (tested in policy_cli.rs and
        // by `run_is_authorised_by_rbac`) would otherwise be the first line
        // of stderr in whichever test runs first; mark it as already shown.
        let marker = dir.path().join("state/audit/.no-rbac-warned");
        std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
        std::fs::write(&marker, b"").unwrap();
        Env { dir, rootfs }
    }

    pub fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `moat --root <tmp>/state ARGS...`
    pub fn moat(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moat"));
        c.arg("--root").arg(self.state_root()).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// `moat run --isolation sandbox --rootfs <rootfs> ARGS...`, waited for.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["run", "--isolation", "sandbox", "--rootfs"];
        let root = self.rootfs.to_str().unwrap().to_string();
        let (opts, rest): (Vec<&str>, Vec<&str>) = split_opts(args);
        full.extend(opts);
        full.push(&root);
        full.extend(rest);
        self.moat(&full).output().unwrap()
    }

    /// `moat ARGS`, which must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.moat(args).output().unwrap();
        assert!(
            o.status.success(),
            "moat {args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    /// A policy `name` extending baseline with the `spec` lines `extra`,
    /// written in the test directory; its path.
    pub fn policy(&self, name: &str, extra: &str) -> String {
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!("apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  extends: baseline\n{extra}"),
        )
        .unwrap();
        path.display().to_string()
    }

    /// The container `name` as `moat inspect` shows it.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v[0].clone()
    }

    /// Installs the static escape helper as `/bin/escape-helper`.
    pub fn with_helper(&self) -> &Self {
        let dst = self.rootfs.join("bin/escape-helper");
        std::fs::copy(escape_helper(), &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        self
    }
}

/// Splits leading `--opt value`/`-x` run options from IMAGE-relative args:
/// everything up to a literal `--` is options.
fn split_opts<'a>(args: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    match args.iter().position(|a| *a == "--") {
        Some(i) => (args[..i].to_vec(), args[i + 1..].to_vec()),
        None => (Vec::new(), args.to_vec()),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub use moat_testkit::rootfs::busybox_rootfs;

/// Path of the static escape helper, compiled once per test binary (and
/// cached across binaries by source content) with
/// `rustc -C target-feature=+crt-static`.
pub fn escape_helper() -> PathBuf {
    static HELPER: OnceLock<PathBuf> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helper/escape_helper.rs");
            let text = std::fs::read(&src).unwrap();
            let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let out = out_dir.join(format!("escape-helper-{hash:016x}"));
            if !out.exists() {
                let tmp = out_dir.join(format!("escape-helper-{hash:016x}.{}", std::process::id()));
                let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
                let st = Command::new(rustc)
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
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
                    .expect("running rustc for the escape helper");
                assert!(st.success(), "building the escape helper failed");
                std::fs::rename(&tmp, &out).unwrap();
            }
            out
        })
        .clone()
}

/// Lines of `text` that start with `prefix`.
pub fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
}

/// The mount table of this (host) process, for "host unchanged" checks.
pub fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
}

/// Polls `f` until it holds; fails the test after `secs` seconds.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
