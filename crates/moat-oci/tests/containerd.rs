//! containerd 1.6 drives the runtime under test through its stock
//! `io.containerd.runc.v2` shim: `ctr run --runc-binary RUNTIME` (what a
//! `BinaryName` in config.toml sets), with the isolation as the OCI
//! annotation `moat.dev/isolation` (`ctr run --annotation`). Each test
//! starts a private containerd (own root, state, socket and mount
//! namespace under a temp dir) and imports the busybox image that a
//! private podman saved as an OCI archive. Needs root, containerd, podman.

#[path = "clients/mod.rs"]
mod clients;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use clients::{
    code, hide_cgroup2_script, hides_cgroup2, isolation_annotation, policy_annotation, ready, run,
    runtime, stderr, stdout, try_run, wait_until, Podman, Tmux, IMAGE, STEP,
};
use moat_testkit::containerd::{exec_t_argv, Daemon, Prepared};

const SANDBOX: &str = "sandbox";
const NAMESPACE: &str = "moat-test";

/// A containerd of its own, with the busybox image; drop deletes its tasks
/// and containers, stops it and removes its directory.
struct Containerd {
    d: Daemon,
}

impl Containerd {
    fn start() -> Self {
        // The CRI plugin would want CNI and a sandbox image: not needed by
        // ctr. For crun, the v2 controllers hidden in containerd's mount
        // namespace too (see clients/mod.rs).
        let d = Daemon::start("moat-oci-containerd-", "-m", |d| {
            let empty = d.join("empty");
            std::fs::write(&empty, b"").unwrap();
            Prepared {
                plugins: "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".into(),
                prelude: hide_cgroup2_script(&empty, hides_cgroup2(&runtime())),
                env: Vec::new(),
            }
        });
        let c = Containerd { d };
        let archive = c.path().join("busybox.oci.tar");
        Podman::new().save_oci_archive(&archive);
        c.ok(&["images", "import", archive.to_str().unwrap()]);
        c
    }

    fn path(&self) -> &Path {
        self.d.dir.path()
    }

    /// The last lines of containerd's log.
    fn log(&self) -> String {
        self.d.log(10)
    }

    /// `ctr -a SOCK -n moat-test ARGS`, not yet run.
    fn ctr(&self, args: &[&str]) -> Command {
        self.d.ctr(NAMESPACE, args)
    }

    fn ctr_out(&self, args: &[&str]) -> Output {
        run(&mut self.ctr(args), STEP)
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr_out(args);
        assert!(
            o.status.success(),
            "ctr {} failed ({}): {}{}",
            args.join(" "),
            o.status,
            stderr(&o),
            stdout(&o)
        );
        stdout(&o)
    }

    /// The options of `ctr run` that put the runtime under test (with a
    /// state root under the temp dir) and the isolation in place.
    fn run_opts(&self, isolation: &str) -> Vec<String> {
        vec![
            "--runc-binary".into(),
            runtime().display().to_string(),
            "--runc-root".into(),
            self.runc_root().display().to_string(),
            "--annotation".into(),
            isolation_annotation(isolation),
            "--annotation".into(),
            policy_annotation(),
            // containerd's default profile; without it moat refuses the
            // container as unconfined (see unconfined_refused).
            "--seccomp".into(),
        ]
    }

    fn runc_root(&self) -> PathBuf {
        self.path().join("runc-root")
    }

    /// `ctr run [run_opts] OPTS IMAGE ID CMD...`, up to [`STEP`].
    fn run(&self, isolation: &str, opts: &[&str], id: &str, cmd: &[&str]) -> Output {
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(self.run_opts(isolation));
        args.extend(opts.iter().map(|s| s.to_string()));
        args.push(IMAGE.into());
        args.push(id.into());
        args.extend(cmd.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr_out(&refs)
    }

    /// The STATUS column of `ctr task ls` for `id`.
    fn task_status(&self, id: &str) -> Option<String> {
        self.ok(&["task", "ls"]).lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.last().unwrap().to_string())
        })
    }

    fn wait_status(&self, id: &str, want: &str) -> Result<(), String> {
        let mut last = None;
        wait_until(Duration::from_secs(15), || {
            last = self.task_status(id);
            (last.as_deref() == Some(want)).then_some(())
        })
        .ok_or_else(|| format!("task {id} is {last:?}, not {want}"))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let limit = Duration::from_secs(15);
        let ls = |what: &str| -> Vec<String> {
            try_run(&mut self.ctr(&[what, "ls", "-q"]), limit)
                .map(|o| stdout(&o).lines().map(str::to_string).collect())
                .unwrap_or_default()
        };
        for t in ls("task") {
            let _ = try_run(&mut self.ctr(&["task", "kill", "-s", "SIGKILL", &t]), limit);
            let _ = self.wait_status(&t, "STOPPED");
            let _ = try_run(&mut self.ctr(&["task", "delete", "--force", &t]), limit);
        }
        for c in ls("container") {
            let _ = try_run(&mut self.ctr(&["container", "delete", &c]), limit);
        }
        // The daemon stops with `self.d`.
    }
}

fn run_to_completion(isolation: &str) {
    let c = Containerd::start();
    let o = c.run(
        isolation,
        &["--rm"],
        "once",
        &["sh", "-c", "echo out-$((6*7)); echo err >&2; exit 3"],
    );
    assert_eq!(code(o.status), 3, "ctr run: {}", stderr(&o));
    assert_eq!(stdout(&o), "out-42\n");
    assert!(stderr(&o).contains("err"), "{}", stderr(&o));
    assert_eq!(
        c.ok(&["container", "ls", "-q"]),
        "",
        "--rm left the container"
    );
}

fn detached_exec_kill_delete(isolation: &str) {
    let c = Containerd::start();
    let log = c.path().join("d.log");
    let uri = format!("file://{}", log.display());
    let script = "echo started; trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done";
    let o = c.run(
        isolation,
        &["-d", "--log-uri", &uri],
        "d",
        &["sh", "-c", script],
    );
    assert!(
        o.status.success(),
        "ctr run -d: {}\ncontainerd: {}",
        stderr(&o),
        c.log()
    );
    c.wait_status("d", "RUNNING").unwrap();
    let logged = wait_until(Duration::from_secs(10), || {
        let l = std::fs::read_to_string(&log).ok()?;
        l.contains("started").then_some(l)
    });
    assert!(logged.is_some(), "no output in {}", log.display());
    let o = c.ctr_out(&[
        "task",
        "exec",
        "--exec-id",
        "x",
        "d",
        "sh",
        "-c",
        "echo in-$((6*7)); ps; exit 4",
    ]);
    assert_eq!(code(o.status), 4, "ctr task exec: {}", stderr(&o));
    assert!(stdout(&o).starts_with("in-42\n"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("while"),
        "exec does not see the workload: {}",
        stdout(&o)
    );
    c.ok(&["task", "kill", "d"]);
    c.wait_status("d", "STOPPED").unwrap();
    assert!(std::fs::read_to_string(&log).unwrap().contains("got-term"));
    let o = c.ctr_out(&["task", "delete", "d"]);
    assert!(o.status.success(), "ctr task delete: {}", stderr(&o));
    assert!(!stderr(&o).contains("non-zero exit code"), "{}", stderr(&o));
    assert_eq!(c.task_status("d"), None);
    c.ok(&["container", "delete", "d"]);
    assert_eq!(c.ok(&["container", "ls", "-q"]), "");
    // SIGKILL: the shim reaps 128+9 from the pid file's process.
    let o = c.run(isolation, &["-d", "--null-io"], "k", &["sleep", "600"]);
    assert!(o.status.success(), "ctr run -d: {}", stderr(&o));
    c.wait_status("k", "RUNNING").unwrap();
    c.ok(&["task", "kill", "-s", "SIGKILL", "k"]);
    c.wait_status("k", "STOPPED").unwrap();
    let o = c.ctr_out(&["task", "delete", "k"]);
    assert!(
        stderr(&o).contains("exit code 137"),
        "ctr task delete k: {}",
        stderr(&o)
    );
    c.ok(&["container", "delete", "k"]);
}

fn terminal(isolation: &str) {
    let c = Containerd::start();
    let mut argv: Vec<String> = vec![
        "ctr".into(),
        "-a".into(),
        c.path().join("c.sock").display().to_string(),
        "-n".into(),
        NAMESPACE.into(),
        "run".into(),
        "--rm".into(),
        "-t".into(),
    ];
    argv.extend(c.run_opts(isolation));
    argv.extend([IMAGE.into(), "tty".into(), "sh".into()]);
    let tmux = Tmux::start(c.path().join("tmux.sock"), &argv);
    tmux.shell_round_trip("ctr run -t", isolation, "", Duration::from_secs(20));
    // task exec -t: a second terminal through the console socket.
    let exec = Tmux::start(
        c.path().join("tmux-exec.sock"),
        &exec_t_argv(&c.d.socket(), NAMESPACE, "tty"),
    );
    exec.shell_round_trip("ctr task exec -t", isolation, "", Duration::from_secs(20));
    exec.exit_with("ctr task exec -t", 3, Duration::from_secs(20));
    tmux.exit_with("ctr run -t", 6, Duration::from_secs(20));
}

/// Paths under the runtime's state root `root` whose name holds `id`.
fn state_of(root: &Path, id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().contains(id) {
                found.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
    found
}

fn state_cleaned_after_delete(isolation: &str) {
    let c = Containerd::start();
    let o = c.run(isolation, &["--rm"], "gone-4c1d", &["true"]);
    assert!(o.status.success(), "ctr run: {}", stderr(&o));
    // The shim passed --root RUNC-ROOT/NAMESPACE: the runtime used it.
    assert!(
        c.runc_root().join(NAMESPACE).is_dir(),
        "no {}",
        c.runc_root().display()
    );
    let left = state_of(&c.runc_root(), "gone-4c1d");
    assert!(
        left.is_empty(),
        "the runtime left state after delete: {left:?}"
    );
}

/// `ctr run` without `--seccomp` asks for no filter at all: refused by
/// name (the site has not allowed unconfined containers).
fn unconfined_refused(isolation: &str) {
    let c = Containerd::start();
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    args.extend(
        c.run_opts(isolation)
            .into_iter()
            .filter(|a| a != "--seccomp"),
    );
    args.extend([
        IMAGE.to_string(),
        "unconfined".into(),
        "echo".into(),
        "ran-unconfined".into(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = c.ctr_out(&refs);
    assert!(
        !o.status.success() && !stdout(&o).contains("ran-unconfined"),
        "an unconfined container ran: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("unconfined"),
        "ctr said: {}",
        stderr(&o)
    );
}

fn privileged_refused(isolation: &str) {
    let c = Containerd::start();
    let o = c.run(
        isolation,
        &["--rm", "--privileged"],
        "priv",
        &["echo", "ran-privileged"],
    );
    assert!(
        !o.status.success() && !stdout(&o).contains("ran-privileged"),
        "--privileged ran under moat's default policy: {}{}",
        stdout(&o),
        stderr(&o)
    );
    // The shim read the runtime's error from --log (one JSON object a line)
    // and it names the policy.
    assert!(
        !stderr(&o).contains("unable to retrieve OCI runtime error"),
        "the runtime left no error in its --log file: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("policy"), "ctr said: {}", stderr(&o));
}

macro_rules! sandbox_tests {
    ($($name:ident => $case:ident,)*) => {$(
        #[test]
        fn $name() {
            if ready(stringify!($name), &["containerd", "ctr", "containerd-shim-runc-v2", "podman", "tmux"]) {
                $case(SANDBOX);
            }
        }
    )*};
}

sandbox_tests! {
    sandbox_ctr_run_to_completion => run_to_completion,
    sandbox_ctr_detached_exec_kill_task_states_delete => detached_exec_kill_delete,
    sandbox_ctr_run_on_a_terminal_in_tmux => terminal,
    sandbox_ctr_run_rm_leaves_no_runtime_state => state_cleaned_after_delete,
    sandbox_ctr_privileged_refused_by_default_policy => privileged_refused,
    sandbox_ctr_unconfined_refused => unconfined_refused,
}

use moat_testkit::host as vmhost;

/// Whether the VM tests can run (root, the clients, QEMU, a built guest
/// kernel); prints why not.
fn vm_ready(test: &str) -> bool {
    clients::vm_ready(
        test,
        &[
            "containerd",
            "ctr",
            "containerd-shim-runc-v2",
            "podman",
            "tmux",
        ],
    )
}

macro_rules! vm_tests {
    ($($name:ident => $case:ident,)*) => {$(
        #[test]
        fn $name() {
            if vm_ready(stringify!($name)) {
                let _lock = vmhost::vm_lock();
                $case("vm");
                vmhost::assert_nothing_left(Path::new("/nonexistent"));
            }
        }
    )*};
}

vm_tests! {
    vm_ctr_run_to_completion => run_to_completion,
    vm_ctr_detached_exec_kill_task_states_delete => detached_exec_kill_delete,
    vm_ctr_run_on_a_terminal_in_tmux => terminal,
    vm_ctr_run_rm_leaves_no_runtime_state => state_cleaned_after_delete,
}
