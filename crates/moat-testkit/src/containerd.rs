//! A private containerd for tests: its own config, root, state and socket
//! under a temporary directory, in a mount namespace of its own (the
//! snapshots it mounts stay off the host's mount table), never the host's
//! instance.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cmd::{try_run, wait_until};

/// What a [`Daemon`] is started with, made once its directory exists.
#[derive(Default)]
pub struct Prepared {
    /// config.toml lines between `state` and `[grpc]` (plugins).
    pub plugins: String,
    /// Shell run before `exec containerd` in its namespaces.
    pub prelude: String,
    /// Extra environment of the daemon (and so of its shims).
    pub env: Vec<(String, OsString)>,
}

/// A running private containerd; dropping it stops it (TERM, then KILL)
/// and unmounts what is left under its directory. Callers remove their
/// tasks first (they know their namespaces).
pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    /// Starts containerd in a new temporary directory named `prefix...`,
    /// in the namespaces of `unshare` (`-m`, or `-mn` for a network of its
    /// own); `prepare` gets the directory first, writes the files the
    /// config names (a shim's config, CNI's) and says what to start with.
    /// Waits until `ctr version` answers.
    pub fn start(prefix: &str, unshare: &str, prepare: impl FnOnce(&Path) -> Prepared) -> Self {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let d = dir.path();
        let setup = prepare(d);
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
            plugins = setup.plugins,
            sock = d.join("c.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("unshare")
            .args([unshare, "--propagation", "private", "sh", "-c"])
            .arg(format!("{} exec containerd --config \"$0\"", setup.prelude))
            .arg(d.join("config.toml"))
            .envs(setup.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Daemon {
            dir,
            child: Some(child),
        };
        let up = wait_until(Duration::from_secs(15), || {
            let o = try_run(&mut c.ctr("default", &["version"]), Duration::from_secs(5)).ok()?;
            o.status.success().then_some(())
        });
        assert!(up.is_some(), "containerd did not answer: {}", c.log(10));
        c
    }

    /// containerd's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// `ctr -a SOCK -n NS ARGS`, not yet run.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.args(ctr_argv(&self.socket(), ns, args))
            .stdin(Stdio::null());
        c
    }

    /// The last `n` lines of containerd's log.
    pub fn log(&self, n: usize) -> String {
        let all =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut d) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&d);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let gone = wait_until(Duration::from_secs(10), || d.try_wait().ok().flatten());
            if gone.is_none() {
                let _ = d.kill();
                let _ = d.wait();
            }
        }
        crate::cmd::unmount_under(self.dir.path());
    }
}

/// `ctr`'s arguments after the program name: `-a SOCK -n NS ARGS`.
pub fn ctr_argv(socket: &Path, ns: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec![
        "-a".to_string(),
        socket.display().to_string(),
        "-n".to_string(),
        ns.to_string(),
    ];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

/// The tmux argv of `ctr task exec -t --exec-id t2 ID sh` (a second
/// terminal in container ID).
pub fn exec_t_argv(socket: &Path, ns: &str, id: &str) -> Vec<String> {
    let mut v = vec!["ctr".to_string()];
    v.extend(ctr_argv(
        socket,
        ns,
        &["task", "exec", "-t", "--exec-id", "t2", id, "sh"],
    ));
    v
}
