//! Helpers of the shim's tests: a private containerd 1.6 (own config,
//! root, state, sockets and mount namespace under a temp dir, never the
//! host's instance) with `containerd-shim-moat-v2` on its PATH, a busybox
//! image built here as an OCI archive, and a command runner with a
//! deadline. The runner and the terminal helper follow moat-oci's
//! tests/clients/mod.rs.
#![allow(dead_code)]

pub mod cri;
pub mod image;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const NAMESPACE: &str = "moat-shim-test";
pub const IMAGE: &str = "localhost/moat-shim-busybox:latest";
pub const STEP: Duration = Duration::from_secs(60);
/// The runtime name containerd maps to `containerd-shim-moat-v2`.
pub const RUNTIME: &str = "io.containerd.moat.v2";

/// The test policy: baseline plus containerd's default capabilities and
/// exec (tests/policy.yaml).
pub fn policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy.yaml")
}

/// Whether these tests can run here; prints `SKIP:` if not.
pub fn ready(test: &str, tools: &[&str]) -> bool {
    if !rustix::process::getuid().is_root() {
        println!("SKIP: {test}: needs root (containerd as root)");
        return false;
    }
    for tool in tools.iter().chain(&["containerd", "ctr", "unshare"]) {
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

/// [`ready`] for micro-VM tests: QEMU and the guest kernel (skips without
/// them) and the agent (fails without it: a build step was missed).
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

/// A containerd of its own; drop kills its tasks, stops it, ends its
/// shims and removes its directory.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    /// The shim's state root (`MOAT_SHIM_ROOT`): short, as the unix
    /// sockets under it take 64-character CRI ids.
    pub shim_root: tempfile::TempDir,
    daemon: Option<Child>,
}

impl Containerd {
    /// `cri`: with the CRI plugin (runtime handlers `moat` and `runc`, a
    /// CNI bridge in 10.231.0.0/24, the pause image [`PAUSE`]), in a
    /// network namespace of its own; else without CRI.
    pub fn start(cri: bool) -> Self {
        Self::start_with(cri, false)
    }

    /// [`Containerd::start`]; `restrict_oom`: CRI's restrict_oom_score_adj
    /// (runc cannot lower the pause container's oom_score_adj to -998 on
    /// this host, which lacks CAP_SYS_RESOURCE: bench/pod sets it).
    pub fn start_with(cri: bool, restrict_oom: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("moat-shim-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // MOAT_SHIM_BIN: another build of the shim (bench/pod: release).
        let shim = std::env::var_os("MOAT_SHIM_BIN")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-moat-v2")));
        std::os::unix::fs::symlink(shim, bin.join("containerd-shim-moat-v2")).unwrap();
        std::fs::write(
            d.join("moat.yaml"),
            format!("policy: {}\nisolation: sandbox\n", policy_file().display()),
        )
        .unwrap();
        let plugins = if cri {
            cri_plugin(d, restrict_oom)
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_string()
        };
        let config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             {plugins}\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  level = \"warn\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let shim_root = tempfile::Builder::new()
            .prefix("msh")
            .tempdir_in("/run")
            .unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        // Its own mount namespace: the snapshots mounted for tasks stay
        // off the host's mount table. With CRI also its own network
        // namespace: CNI's bridge is made there, never on the host.
        let ns = if cri { "-mn" } else { "-m" };
        let daemon = Command::new("unshare")
            .args([ns, "--propagation", "private", "sh", "-c"])
            .arg("ip link set lo up 2>/dev/null; exec containerd --config \"$0\"")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("MOAT_SHIM_ROOT", shim_root.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            dir,
            shim_root,
            daemon: Some(daemon),
        };
        let up = wait_until(Duration::from_secs(15), || {
            let o = try_run(&mut c.ctr(&["version"]), Duration::from_secs(5)).ok()?;
            o.status.success().then_some(())
        });
        assert!(up.is_some(), "containerd did not answer: {}", c.log());
        c
    }

    /// Imports the pause image (busybox waiting for TERM or INT as the
    /// pod's first process) and the busybox image for CRI.
    pub fn import_cri_images(&self) {
        let archive = self.dir.path().join("pause.oci.tar");
        let rootfs = self.dir.path().join("img");
        image::busybox_rootfs(&rootfs.join("rootfs"));
        image::oci_archive(
            &rootfs.join("rootfs"),
            &self.dir.path().join("pause"),
            &archive,
            PAUSE,
            &[
                "/bin/sh",
                "-c",
                "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
            ],
        );
        self.ok_ns("k8s.io", &["images", "import", archive.to_str().unwrap()]);
        let bb = self.dir.path().join("busybox.oci.tar");
        image::oci_archive(
            &rootfs.join("rootfs"),
            &self.dir.path().join("bb"),
            &bb,
            IMAGE,
            &["sh"],
        );
        self.ok_ns("k8s.io", &["images", "import", bb.to_str().unwrap()]);
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// The shim's config file (runtime option ConfigPath).
    pub fn shim_config(&self) -> PathBuf {
        self.dir.path().join("moat.yaml")
    }

    /// Imports the busybox image into namespace `ns`.
    pub fn import_busybox(&self, ns: &str) {
        let archive = self.dir.path().join("busybox.oci.tar");
        if !archive.exists() {
            image::busybox_archive(&self.dir.path().join("img"), &archive, IMAGE);
        }
        self.ok_ns(ns, &["images", "import", archive.to_str().unwrap()]);
    }

    /// The last lines of containerd's log.
    pub fn log(&self) -> String {
        let all =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(self.socket())
            .args(["-n", ns])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// `ctr -a SOCK -n NAMESPACE ARGS`, not yet run.
    pub fn ctr(&self, args: &[&str]) -> Command {
        self.ctr_ns(NAMESPACE, args)
    }

    pub fn ctr_out(&self, args: &[&str]) -> Output {
        run(&mut self.ctr(args), STEP)
    }

    pub fn ok_ns(&self, ns: &str, args: &[&str]) -> String {
        let o = run(&mut self.ctr_ns(ns, args), STEP);
        assert!(
            o.status.success(),
            "ctr {} failed ({}): {}{}\ncontainerd: {}",
            args.join(" "),
            o.status,
            stderr(&o),
            stdout(&o),
            self.log()
        );
        stdout(&o)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_ns(NAMESPACE, args)
    }

    /// The argv of `ctr run` with the moat shim, its config, `isolation`
    /// and containerd's default seccomp profile.
    pub fn run_argv(&self, isolation: &str, opts: &[&str], id: &str, cmd: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "run".into(),
            "--runtime".into(),
            RUNTIME.into(),
            "--runtime-config-path".into(),
            self.shim_config().display().to_string(),
            "--annotation".into(),
            format!("moat.dev/isolation={isolation}"),
            "--seccomp".into(),
        ];
        v.extend(opts.iter().map(|s| s.to_string()));
        v.push(IMAGE.into());
        v.push(id.into());
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }

    pub fn run(&self, isolation: &str, opts: &[&str], id: &str, cmd: &[&str]) -> Output {
        let argv = self.run_argv(isolation, opts, id, cmd);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ctr_out(&refs)
    }

    /// The STATUS column of `ctr task ls` for `id`.
    pub fn task_status(&self, id: &str) -> Option<String> {
        self.ok(&["task", "ls"]).lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.last().unwrap().to_string())
        })
    }

    pub fn wait_status(&self, id: &str, want: &str) -> Result<(), String> {
        let mut last = None;
        wait_until(Duration::from_secs(20), || {
            last = self.task_status(id);
            (last.as_deref() == Some(want)).then_some(())
        })
        .ok_or_else(|| format!("task {id} is {last:?}, not {want}"))
    }

    /// Pids of running `containerd-shim-moat-v2` processes started by this
    /// containerd (their environment names its shim root).
    pub fn shims(&self) -> Vec<i32> {
        let want = format!("MOAT_SHIM_ROOT={}", self.shim_root.path().display());
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            if !exe.to_string_lossy().contains("containerd-shim-moat-v2") {
                continue;
            }
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_oci = cmdline.split(|b| *b == 0).any(|a| a == b"--moat-oci");
            if !is_oci && env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let limit = Duration::from_secs(15);
        for ns in [NAMESPACE, "k8s.io"] {
            let ls = |what: &str| -> Vec<String> {
                try_run(&mut self.ctr_ns(ns, &[what, "ls", "-q"]), limit)
                    .map(|o| stdout(&o).lines().map(str::to_string).collect())
                    .unwrap_or_default()
            };
            for t in ls("task") {
                let _ = try_run(
                    &mut self.ctr_ns(ns, &["task", "kill", "-s", "SIGKILL", &t]),
                    limit,
                );
                let _ = try_run(
                    &mut self.ctr_ns(ns, &["task", "delete", "--force", &t]),
                    limit,
                );
            }
            for c in ls("container") {
                let _ = try_run(&mut self.ctr_ns(ns, &["container", "delete", &c]), limit);
            }
        }
        if let Some(mut d) = self.daemon.take() {
            let pid = rustix::process::Pid::from_child(&d);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let gone = wait_until(Duration::from_secs(10), || d.try_wait().ok().flatten());
            if gone.is_none() {
                let _ = d.kill();
                let _ = d.wait();
            }
        }
        // Shims this containerd left (a failed test), and moat-oci
        // commands they ran (their --root is under this test's shim
        // root): end them by pid.
        let root = self
            .shim_root
            .path()
            .as_os_str()
            .as_encoded_bytes()
            .to_vec();
        let mut left = self.shims();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmd.split(|b| *b == 0).any(|a| a.starts_with(&root)) {
                left.push(pid);
            }
        }
        for pid in left {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        unmount_under(self.dir.path());
    }
}

/// The pause image of the CRI tests.
pub const PAUSE: &str = "localhost/moat-pause:1";

/// containerd's CRI plugin: handlers `moat` (this shim, its config as
/// ConfigPath, the pod's `moat.dev/*` annotations passed down) and `runc`;
/// CNI's bridge plugin with host-local addresses in 10.231.0.0/24.
fn cri_plugin(d: &Path, restrict_oom: bool) -> String {
    let cni = d.join("cni");
    std::fs::create_dir_all(&cni).unwrap();
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "moat-test",
        "plugins": [
            {"type": "bridge", "bridge": "moatbr0", "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "dataDir": d.join("ipam"),
                      "ranges": [[{"subnet": "10.231.0.0/24"}]]}},
            {"type": "loopback"}
        ]
    });
    std::fs::write(cni.join("10-moat-test.conflist"), conf.to_string()).unwrap();
    let c = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        "[{c}]\n  sandbox_image = \"{PAUSE}\"\n  enable_selinux = false\n  restrict_oom_score_adj = {restrict_oom}\n\
         [{c}.cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{cni}\"\n\
         [{c}.containerd]\n  default_runtime_name = \"runc\"\n\
         [{c}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         [{c}.containerd.runtimes.moat]\n  runtime_type = \"{RUNTIME}\"\n  pod_annotations = [\"moat.dev/*\"]\n\
         [{c}.containerd.runtimes.moat.options]\n  ConfigPath = \"{cfg}\"\n",
        cni = cni.display(),
        cfg = d.join("moat.yaml").display(),
    )
}

/// Lazily unmounts whatever the host mount table still has under `dir`.
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
