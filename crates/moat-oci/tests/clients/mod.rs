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

pub mod bundle;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// [`ready`] for micro-VM tests: also QEMU, the guest kernel (`make
/// kernel`; skips without them) and the agent (`make agent`; fails
/// without it: a build step was missed).
pub fn vm_ready(test: &str, tools: &[&str]) -> bool {
    if !ready(test, tools) {
        return false;
    }
    if !Path::new("/usr/bin/qemu-system-x86_64").is_file() {
        println!("SKIP: {test}: qemu-system-x86_64 is not installed");
        return false;
    }
    if let Err(e) = moat_vm::kernel::locate(Path::new("/var/lib/moat")) {
        println!("SKIP: {test}: guest kernel not built ({e}; `make kernel`)");
        return false;
    }
    assert!(
        moat_vm::initramfs::locate_agent().is_ok(),
        "no guest agent build: run `make agent`"
    );
    true
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

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `cmd` (stdin null, its own process group) and collects its output;
/// on `limit` the whole group is killed and the error says so. A descendant
/// still holding the output pipes 10 s after the command exited is an error
/// too: go-runc and conmon would wait forever on it.
pub fn try_run(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{desc}: cannot start: {e}"))?;
    let (tx, rx) = mpsc::channel();
    for (i, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        let mut pipe = pipe.unwrap();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((i, buf));
        });
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| format!("{desc}: wait: {e}"))? {
            break st;
        }
        if Instant::now() > deadline {
            kill_group(&child);
            let _ = child.wait();
            let (out, err, _) = collect(&rx, Duration::from_secs(2));
            return Err(format!(
                "{desc} did not finish within {limit:?}; its output so far:\n{}{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out, err, held) = collect(&rx, Duration::from_secs(10));
    if held {
        return Err(format!(
            "{desc} exited ({status}) but a process it left still holds its output pipes; \
             output so far:\n{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ));
    }
    Ok(Output {
        status,
        stdout: out,
        stderr: err,
    })
}

/// Gathers both pipes for up to `wait`; also whether one was still open
/// then (held by a leftover descendant).
fn collect(rx: &mpsc::Receiver<(usize, Vec<u8>)>, wait: Duration) -> (Vec<u8>, Vec<u8>, bool) {
    let mut bufs = [None, None];
    let deadline = Instant::now() + wait;
    while bufs.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, b)) => bufs[i] = Some(b),
            Err(_) => break,
        }
    }
    let held = bufs.iter().any(Option::is_none);
    let [out, err] = bufs;
    (out.unwrap_or_default(), err.unwrap_or_default(), held)
}

fn kill_group(child: &Child) {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// [`try_run`] that panics with the command and its output on a deadline
/// or held pipes.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    try_run(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// A minimal root filesystem: busybox and its applets, /etc/passwd and
/// group, and the directories a container needs.
pub fn busybox_rootfs(root: &Path) {
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "etc",
        "root",
        "var",
        "home/user",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n\
         nobody:x:65534:65534::/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
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

/// Lazily unmounts whatever the host mount table still has under `dir`
/// (nothing, unless a client leaked a mount out of its namespace).
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_str().unwrap_or("/nonexistent");
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(prefix))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = Command::new("umount")
            .args(["-l", m])
            .stderr(Stdio::null())
            .status();
    }
}

/// A tmux server on a private socket, for a real terminal.
pub struct Tmux {
    pub socket: PathBuf,
}

impl Tmux {
    /// Starts a detached session `s` running `argv` in a 100x30 terminal;
    /// when it exits the pane shows `[exited N]` and stays.
    pub fn start(socket: PathBuf, argv: &[String]) -> Self {
        let t = Tmux { socket };
        let quoted: Vec<String> = argv
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let shell = format!("{}; echo \"[exited $?]\"; sleep 120", quoted.join(" "));
        let o = t.tmux(&[
            "new-session",
            "-d",
            "-s",
            "s",
            "-x",
            "100",
            "-y",
            "30",
            &shell,
        ]);
        assert!(o.status.success(), "tmux new-session: {}", stderr(&o));
        t
    }

    pub fn tmux(&self, args: &[&str]) -> Output {
        run(
            Command::new("tmux")
                .args(["-f", "/dev/null", "-S"])
                .arg(&self.socket)
                .args(args)
                .stdin(Stdio::null()),
            Duration::from_secs(10),
        )
    }

    /// Types `text` and Enter.
    pub fn send_line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "s", "-l", text]);
        self.tmux(&["send-keys", "-t", "s", "Enter"]);
    }

    /// The visible pane.
    pub fn screen(&self) -> String {
        stdout(&self.tmux(&["capture-pane", "-p", "-t", "s"]))
    }

    /// Waits up to `limit` for `needle` on the screen (less if the client
    /// exits first); the screen either way.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return Ok(s);
            }
            // The client ended: what it printed is all there will be.
            if Instant::now() > deadline || s.contains("[exited ") {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}

/// Waits up to `limit` for `f` to return `Some`.
pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The exit code of `status`, or 128+N for signal N as a shell shows it.
pub fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
