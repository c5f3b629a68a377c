//! Shared helpers of the real-client tests (podman 4.3 through conmon,
//! containerd 1.6 through its runc v2 shim): the runtime under test, a
//! busybox image, a private podman with its own storage and containers.conf,
//! and a command runner with a deadline.
//!
//! The runtime under test is `$MOAT_OCI_TEST_RUNTIME` if set (runc or crun
//! as a stand-in, or a wrapper script that logs its argv), else the
//! `moat-oci` binary of this crate.
//!
//! This host's cgroups are hybrid: v1 controllers, and a v2 hierarchy at
//! /sys/fs/cgroup/unified that holds only hugetlb. runc and moat-oci run
//! under podman as they are; crun refuses ("cgroups in hybrid mode not
//! supported, drop all controllers from cgroupv2") unless the v2
//! controllers are hidden. So every podman command of a [`Podman`] runs,
//! through `nsenter`, in one private mount namespace held by a helper
//! process (`unshare -m --propagation private`); for crun (or with
//! `MOAT_OCI_TEST_HIDE_CGROUP2=1`) an empty file is bind-mounted over
//! /sys/fs/cgroup/unified/cgroup.controllers in that namespace only (the
//! trick of bench/sandbox-start). The namespace also keeps podman's overlay
//! and network-namespace mounts off the host: they vanish with it.
#![allow(dead_code)]
// Each test binary uses a different part of what is re-exported here.
#![allow(unused_imports)]

pub mod bundle;

pub use moat_testkit::cmd::{code, run, stderr, stdout, try_run, unmount_under, wait_until, which};
pub use moat_testkit::rootfs::busybox_rootfs;
pub use moat_testkit::tmux::Tmux;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::Duration;

/// The image every test runs, as podman and containerd name it.
pub const IMAGE: &str = "localhost/moat-test-busybox:latest";

/// This host's hard limits are below podman's default `nofile` and `nproc`
/// (1048576 and 4194304): without these, runc fails setting rlimit 7.
pub const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=32768:32768",
];

/// Deadline of one client command unless a test says otherwise.
pub const STEP: Duration = Duration::from_secs(30);

/// The OCI runtime under test.
pub fn runtime() -> PathBuf {
    match std::env::var_os("MOAT_OCI_TEST_RUNTIME") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_moat-oci")),
    }
}

/// [`ready`] for micro-VM tests: also QEMU, the guest kernel and the
/// agent ([`moat_testkit::host::vm_available`]).
pub fn vm_ready(test: &str, tools: &[&str]) -> bool {
    ready(test, tools) && moat_testkit::host::vm_available(test)
}

/// The annotation naming the tests' policy: baseline plus podman's default
/// capabilities and exec (tests/clients/podman-defaults.yaml).
pub fn policy_annotation() -> String {
    format!(
        "moat.dev/policy={}/tests/clients/podman-defaults.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The annotation that picks moat's isolation (`sandbox` or `vm`).
pub fn isolation_annotation(isolation: &str) -> String {
    format!("moat.dev/isolation={isolation}")
}

/// Whether these tests can run here (root and the tools); prints `SKIP:`
/// if not.
pub fn ready(test: &str, tools: &[&str]) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        println!("SKIP: {test}: needs root (podman and containerd as root)");
        return false;
    }
    for tool in tools.iter().chain(&["unshare", "nsenter", "tar"]) {
        if which(tool).is_none() {
            println!("SKIP: {test}: {tool} is not installed (run scripts/bootstrap)");
            return false;
        }
    }
    if !Path::new("/bin/busybox").exists() {
        println!("SKIP: {test}: /bin/busybox (busybox-static) is not installed");
        return false;
    }
    true
}

/// A private mount namespace held open by `unshare ... cat` until its stdin
/// closes (so it also ends if the test process dies).
pub struct MountNs {
    holder: Child,
    stdin: Option<ChildStdin>,
}

impl MountNs {
    /// `hide_cgroup2`: cover /sys/fs/cgroup/unified/cgroup.controllers with
    /// `empty` inside the namespace (crun on hybrid cgroups).
    pub fn new(empty: &Path, hide_cgroup2: bool) -> Self {
        std::fs::write(empty, b"").unwrap();
        let bind = hide_cgroup2_script(empty, hide_cgroup2);
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!("{bind} echo ready; exec cat >/dev/null"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare -m");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "the mount namespace holder did not start");
        let stdin = holder.stdin.take();
        MountNs { holder, stdin }
    }

    /// `nsenter --mount=/proc/PID/ns/mnt -- PROGRAM`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// The argv prefix of [`MountNs::command`], for tmux.
    pub fn prefix(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--mount=/proc/{}/ns/mnt", self.holder.id()),
            "--".into(),
        ]
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.holder.wait();
    }
}

/// The shell line that hides the v2 controllers (if `hide` and this host
/// has them) by binding the empty file `empty` over them.
pub fn hide_cgroup2_script(empty: &Path, hide: bool) -> String {
    let controllers = "/sys/fs/cgroup/unified/cgroup.controllers";
    if hide && Path::new(controllers).exists() {
        format!(
            "mount --bind '{}' {controllers} || exit 1;",
            empty.display()
        )
    } else {
        String::new()
    }
}

/// Whether the runtime needs the hybrid-cgroup trick (see the module doc).
pub fn hides_cgroup2(runtime: &Path) -> bool {
    std::env::var("MOAT_OCI_TEST_HIDE_CGROUP2").as_deref() == Ok("1")
        || runtime.file_name().and_then(|n| n.to_str()) == Some("crun")
}

/// The private containers.conf: the runtime under test registered as
/// `moat-oci` (podman 4.3 passes `--log-format=json` only to runtimes named
/// in `runtime_supports_json`), cgroupfs, no events journal.
pub fn containers_conf(runtime: &Path) -> String {
    format!(
        "[engine]\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"none\"\n\
         runtime = \"moat-oci\"\n\
         runtime_supports_json = [\"crun\", \"runc\", \"kata\", \"runsc\", \"krun\", \"youki\", \"moat-oci\"]\n\
         \n\
         [engine.runtimes]\n\
         moat-oci = [\"{}\"]\n",
        runtime.display()
    )
}

/// podman with its own storage, run root, containers.conf and mount
/// namespace under a temporary directory, and the busybox image imported.
/// Drop removes every container, ends the namespace (its mounts go with
/// it) and deletes the directory.
pub struct Podman {
    pub dir: tempfile::TempDir,
    pub runtime: PathBuf,
    ns: Option<MountNs>,
}

impl Podman {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("moat-oci-podman-")
            .tempdir()
            .unwrap();
        let runtime = runtime();
        let conf = dir.path().join("containers.conf");
        std::fs::write(&conf, containers_conf(&runtime)).unwrap();
        let ns = MountNs::new(&dir.path().join("empty"), hides_cgroup2(&runtime));
        let p = Podman {
            dir,
            runtime,
            ns: Some(ns),
        };
        let rootfs = p.dir.path().join("rootfs");
        busybox_rootfs(&rootfs);
        let tar = p.dir.path().join("rootfs.tar");
        let o = run(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
            STEP,
        );
        assert!(o.status.success(), "tar: {}", stderr(&o));
        p.ok(&["import", tar.to_str().unwrap(), IMAGE]);
        p
    }

    /// `podman GLOBAL-FLAGS ARGS` in the private namespace, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.ns.as_ref().unwrap().command("podman");
        c.args(self.global_flags()).args(args);
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"));
        c
    }

    /// podman's global flags for this instance.
    pub fn global_flags(&self) -> Vec<String> {
        let d = self.dir.path();
        vec![
            "--root".into(),
            d.join("root").display().to_string(),
            "--runroot".into(),
            d.join("run").display().to_string(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "none".into(),
            "--runtime".into(),
            "moat-oci".into(),
        ]
    }

    /// The full argv (with `env CONTAINERS_CONF=...`) of `podman ARGS`, for
    /// tmux.
    pub fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = self.ns.as_ref().unwrap().prefix();
        v.push("env".into());
        v.push(format!(
            "CONTAINERS_CONF={}",
            self.dir.path().join("containers.conf").display()
        ));
        v.push("podman".into());
        v.extend(self.global_flags());
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// `podman ARGS`, waited for up to [`STEP`].
    pub fn podman(&self, args: &[&str]) -> Output {
        run(&mut self.cmd(args), STEP)
    }

    /// `podman ARGS`, which must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.podman(args);
        assert!(
            o.status.success(),
            "podman {} failed ({}): {}{}",
            args.join(" "),
            o.status,
            stderr(&o),
            stdout(&o)
        );
        stdout(&o)
    }

    /// The options every container gets: this host's rlimits, the
    /// isolation annotation and the test policy ([`policy_annotation`]).
    pub fn container_opts(isolation: &str) -> Vec<String> {
        let mut v = Self::default_policy_opts(isolation);
        v.push("--annotation".into());
        v.push(policy_annotation());
        v
    }

    /// [`Podman::container_opts`] without the test policy: the container
    /// runs under the site's default policy.
    pub fn default_policy_opts(isolation: &str) -> Vec<String> {
        let mut v: Vec<String> = ULIMITS.iter().map(|s| s.to_string()).collect();
        v.push("--annotation".into());
        v.push(isolation_annotation(isolation));
        v
    }

    /// `podman run --rm [container_opts] OPTS IMAGE CMD...`, up to [`STEP`].
    pub fn run_rm(&self, isolation: &str, opts: &[&str], cmd: &[&str]) -> Output {
        let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
        args.extend(Self::container_opts(isolation));
        args.extend(opts.iter().map(|s| s.to_string()));
        args.push(IMAGE.into());
        args.extend(cmd.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.podman(&refs)
    }

    /// Saves the image as an OCI archive (for containerd).
    pub fn save_oci_archive(&self, out: &Path) {
        self.ok(&[
            "save",
            "--format",
            "oci-archive",
            "-o",
            out.to_str().unwrap(),
            IMAGE,
        ]);
    }
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if self.ns.is_some() {
            let _ = try_run(&mut self.cmd(&["rm", "-af", "-t", "0"]), STEP);
        }
        drop(self.ns.take());
        unmount_under(self.dir.path());
    }
}
