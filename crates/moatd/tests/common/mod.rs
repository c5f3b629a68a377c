//! Shared helpers of the moatd integration tests: a private state root
//! with the busybox test image, a `moatd --foreground` on a private
//! socket, the `moat` client bound to both, and manifest text.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether the privileged tests can run here; prints `SKIP:` if not.
pub fn can_run(test: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        println!("SKIP: {test}: needs root");
        return false;
    }
    if !Path::new("/bin/busybox").exists() {
        println!("SKIP: {test}: /bin/busybox (busybox-static) is not installed");
        return false;
    }
    assert!(
        moat_bin().is_file(),
        "{} is missing: build it first (cargo build -p moat)",
        moat_bin().display()
    );
    true
}

pub fn moatd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_moatd"))
}

/// The `moat` binary beside `moatd` (one workspace build makes both).
pub fn moat_bin() -> PathBuf {
    moatd_bin().parent().unwrap().join("moat")
}

pub struct Env {
    pub dir: tempfile::TempDir,
    /// `busybox@sha256:<manifest digest>`.
    pub image: String,
    pub daemon: Option<Child>,
    pub extra: Vec<String>,
}

impl Env {
    /// A state root with the busybox image; `rbac` is the RBAC file's
    /// text (none: root alone may do anything).
    pub fn new(rbac: Option<&str>) -> Env {
        let dir = tempfile::Builder::new().prefix("moatd-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let marker = dir.path().join("state/audit/.no-rbac-warned");
        std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
        std::fs::write(&marker, b"").unwrap();
        if let Some(text) = rbac {
            std::fs::write(dir.path().join("rbac.yaml"), text).unwrap();
        }
        let mut env = Env {
            dir,
            image: String::new(),
            daemon: None,
            extra: Vec::new(),
        };
        let tar = env.dir.path().join("busybox.tar");
        env.ok(&["dev", "test-image", "-o", tar.to_str().unwrap()]);
        let out = env.ok(&["image", "import", tar.to_str().unwrap()]);
        let digest = out
            .split("manifest ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .unwrap()
            .to_string();
        env.image = format!("busybox@{digest}");
        env
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("moatd.sock")
    }
    pub fn rbac(&self) -> PathBuf {
        self.dir.path().join("rbac.yaml")
    }

    /// Asserts `secret` is in none of `seen` (what, text) nor in moatd's
    /// audit logs.
    pub fn assert_absent(&self, secret: &str, mut seen: Vec<(&str, String)>) {
        for f in ["audit/moatd.log", "audit/policy.log"] {
            seen.push((
                f,
                std::fs::read_to_string(self.state().join(f)).unwrap_or_default(),
            ));
        }
        for (what, text) in seen {
            assert!(!text.contains(secret), "the secret is in {what}");
        }
    }

    /// Starts `moatd --foreground` and waits for its socket.
    pub fn start(&mut self) {
        self.spawn(false, &[]);
    }

    /// Starts moatd with its ConfigMap and Secret files under the test
    /// directory (`--files-dir`) and the umask of its systemd unit (0077):
    /// the replica's user must still read the files. Keep the guard after
    /// the Env, so that it unmounts the files' tmpfs first.
    pub fn start_with_files(&mut self) -> Unmount {
        let files = self.dir.path().join("files");
        self.spawn(
            true,
            &["--files-dir".to_string(), files.display().to_string()],
        );
        Unmount(files)
    }

    fn spawn(&mut self, unit_umask: bool, args: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("moatd.log"))
            .unwrap();
        let mut cmd = if unit_umask {
            let mut c = Command::new("sh");
            c.args(["-c", "umask 0077; exec \"$@\"", "sh"])
                .arg(moatd_bin());
            c
        } else {
            Command::new(moatd_bin())
        };
        let child = cmd
            .args([
                "--foreground",
                "--group",
                "nogroup",
                "--restart-delay-ms",
                "200",
            ])
            .arg("--root")
            .arg(self.state())
            .arg("--socket")
            .arg(self.socket())
            .arg("--rbac")
            .arg(self.rbac())
            .args(args)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "moatd did not start: {}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of moatd.
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moatd.log")).unwrap_or_default()
    }

    /// `moat --root STATE ARGS` with MOATD_SOCKET set.
    pub fn moat(&self, args: &[&str]) -> Command {
        let mut c = Command::new(moat_bin());
        c.arg("--root").arg(self.state()).args(args);
        c.env("MOATD_SOCKET", self.socket()).stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.moat(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        if !o.status.success() {
            let events = self.run(&["events"]);
            panic!(
                "moat {args:?}: {}{}\nevents:\n{}",
                stdout(&o),
                stderr(&o),
                stdout(&events)
            );
        }
        stdout(&o)
    }

    /// `moat ARGS` as uid/gid 65534 (nobody), through setpriv, without
    /// the settings only root may override (`make test` exports one).
    pub fn as_nobody(&self, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(moat_bin())
            .args(args)
            .env_remove("MOAT_DEMO_ROOT")
            .env_remove("MOAT_ROOT")
            .env_remove("MOAT_RUN_ROOT")
            .env("MOATD_SOCKET", self.socket())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Writes `text` as `name` in the test directory; its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p.to_str().unwrap().to_string()
    }

    pub fn apply(&self, name: &str, text: &str) -> String {
        let f = self.file(name, text);
        self.ok(&["apply", "-f", &f])
    }

    /// `moat get pods -o json`.
    pub fn pods(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["get", "pods", "-o", "json"])).unwrap();
        v.as_array().unwrap().clone()
    }

    /// The runtime core's records (`moat ps -a`).
    pub fn containers(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["ps", "-a", "--format", "json"])).unwrap();
        v.as_array().unwrap().clone()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_daemon();
        if let Ok(o) = self.moat(&["ps", "-a", "--format", "json"]).output() {
            let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            for c in list.as_array().into_iter().flatten() {
                if let Some(id) = c["id"].as_str() {
                    let _ = self.moat(&["rm", "-f", id]).output();
                }
            }
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `f` until it holds or `secs` pass.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A policy that allows exec (for exec probes), in the sandbox.
pub const EXEC_POLICY: &str = "apiVersion: moat.dev/v1
kind: Policy
metadata:
  name: probe-exec
spec:
  extends: baseline
  isolation: sandbox
  exec: true
";

/// [`EXEC_POLICY`] for micro-VMs (`probe-exec-vm`).
pub const VM_POLICY: &str = "apiVersion: moat.dev/v1
kind: Policy
metadata:
  name: probe-exec-vm
spec:
  extends: baseline
  isolation: vm
  exec: true
";

/// What varies between the test Deployments.
pub struct Spec<'a> {
    pub name: &'a str,
    pub replicas: u32,
    /// Shell script the container runs.
    pub script: &'a str,
    /// The readiness probe's command (`None`: no probe).
    pub ready: Option<&'a str>,
    pub policy: Option<&'a str>,
    pub deadline: u32,
    pub surge: &'a str,
    pub unavailable: &'a str,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            name: "web",
            replicas: 2,
            script: "touch /tmp/ready; exec sleep 1000",
            ready: Some("cat /tmp/ready"),
            policy: Some("probe-exec"),
            deadline: 600,
            surge: "1",
            unavailable: "0",
        }
    }
}

/// A Deployment that passes Pod Security "restricted".
pub fn deployment(image: &str, s: &Spec) -> String {
    let policy = s
        .policy
        .map(|p| format!("        moat.dev/policy: {p}\n"))
        .unwrap_or_default();
    let probe = s
        .ready
        .map(|cmd| {
            let words: Vec<String> = cmd.split(' ').map(|w| format!("{w:?}")).collect();
            format!(
                "        readinessProbe:\n          exec: {{command: [{}]}}\n          periodSeconds: 1\n",
                words.join(", ")
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  progressDeadlineSeconds: {deadline}
  selector:
    matchLabels: {{app: {name}}}
  strategy:
    rollingUpdate: {{maxSurge: {surge}, maxUnavailable: {unavailable}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations:
        moat.dev/isolation: sandbox
{policy}    spec:
      terminationGracePeriodSeconds: 1
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
        seccompProfile: {{type: RuntimeDefault}}
      containers:
      - name: {name}
        image: {image}
        command: [/bin/sh, -c, {script:?}]
        workingDir: /tmp
        securityContext:
          allowPrivilegeEscalation: false
          capabilities: {{drop: [ALL]}}
{probe}",
        name = s.name,
        replicas = s.replicas,
        deadline = s.deadline,
        surge = s.surge,
        unavailable = s.unavailable,
        script = s.script,
    )
}

/// Lazily unmounts moatd's files tmpfs when dropped.
pub struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// ConfigMap `app`: `greeting` and `mode: fast`.
pub fn config_map(greeting: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app}}\ndata:\n  greeting: {greeting}\n  mode: fast\n")
}

/// Secret `db` holding `password: VALUE`.
pub fn secret(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\nstringData: {{password: {value}}}\n"
    )
}
