//! Helpers of the shim's tests: a private containerd 1.6 (own config,
//! root, state, sockets and mount namespace under a temp dir, never the
//! host's instance) with `containerd-shim-moat-v2` on its PATH, a busybox
//! image built here as an OCI archive; the command runner and the
//! terminal come from moat-testkit.
#![allow(dead_code)]
// Each test binary uses a different part of what is re-exported here.
#![allow(unused_imports)]

pub mod cri;
pub mod image;

pub use moat_testkit::cmd::{code, run, stderr, stdout, try_run, wait_until, which};
use moat_testkit::containerd::{Daemon, Prepared};
pub use moat_testkit::tmux::Tmux;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

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

/// [`ready`] for micro-VM tests: also QEMU, the guest kernel and the
/// agent ([`moat_testkit::host::vm_available`]).
pub fn vm_ready(test: &str, tools: &[&str]) -> bool {
    ready(test, tools) && moat_testkit::host::vm_available(test)
}

/// A containerd of its own; drop kills its tasks, stops it, ends its
/// shims and removes its directory.
pub struct Containerd {
    /// Stopped first when dropped (fields drop in this order).
    d: Daemon,
    /// The shim's state root (`MOAT_SHIM_ROOT`): short, as the unix
    /// sockets under it take 64-character CRI ids.
    pub shim_root: tempfile::TempDir,
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
        let shim_root = tempfile::Builder::new()
            .prefix("msh")
            .tempdir_in("/run")
            .unwrap();
        // With CRI its own network namespace too: CNI's bridge is made
        // there, never on the host.
        let ns = if cri { "-mn" } else { "-m" };
        let d = Daemon::start("moat-shim-containerd-", ns, |d| {
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
            let path = format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
            );
            Prepared {
                plugins,
                prelude: "ip link set lo up 2>/dev/null;".into(),
                env: vec![
                    ("PATH".into(), path.into()),
                    ("MOAT_SHIM_ROOT".into(), shim_root.path().into()),
                ],
            }
        });
        Containerd { d, shim_root }
    }

    /// The private containerd's directory.
    pub fn path(&self) -> &Path {
        self.d.dir.path()
    }

    /// Imports the pause image (busybox waiting for TERM or INT as the
    /// pod's first process) and the busybox image for CRI.
    pub fn import_cri_images(&self) {
        let archive = self.path().join("pause.oci.tar");
        let rootfs = self.path().join("img");
        image::busybox_rootfs(&rootfs.join("rootfs"));
        image::oci_archive(
            &rootfs.join("rootfs"),
            &self.path().join("pause"),
            &archive,
            PAUSE,
            &[
                "/bin/sh",
                "-c",
                "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
            ],
        );
        self.ok_ns("k8s.io", &["images", "import", archive.to_str().unwrap()]);
        let bb = self.path().join("busybox.oci.tar");
        image::oci_archive(
            &rootfs.join("rootfs"),
            &self.path().join("bb"),
            &bb,
            IMAGE,
            &["sh"],
        );
        self.ok_ns("k8s.io", &["images", "import", bb.to_str().unwrap()]);
    }

    pub fn socket(&self) -> PathBuf {
        self.d.socket()
    }

    /// The shim's config file (runtime option ConfigPath).
    pub fn shim_config(&self) -> PathBuf {
        self.path().join("moat.yaml")
    }

    /// Imports the busybox image into namespace `ns`.
    pub fn import_busybox(&self, ns: &str) {
        let archive = self.path().join("busybox.oci.tar");
        if !archive.exists() {
            image::busybox_archive(&self.path().join("img"), &archive, IMAGE);
        }
        self.ok_ns(ns, &["images", "import", archive.to_str().unwrap()]);
    }

    /// The last lines of containerd's log.
    pub fn log(&self) -> String {
        self.d.log(15)
    }

    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> Command {
        self.d.ctr(ns, args)
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
        // containerd stops with `self.d` (after the shims below are
        // ended: fields drop after this body).
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
