//! moat as a runc-compatible OCI runtime. See docs/oci.md.
//!
//! Each command is one short-lived process, as with runc: `create` leaves
//! the container's first process waiting at its start gate and exits;
//! nothing of moat stays resident beside a container.

pub mod args;
pub mod bundle;
pub mod cgroup;
mod create;
mod exec;
mod log;
mod ops;
mod pod;
pub mod seccomp;
pub mod site;
pub mod state;
mod sys;
mod vm;
mod vmops;

use std::path::PathBuf;

use args::{Cli, Command};

/// An environment override, honoured only when root runs as itself (not
/// under sudo, pkexec or doas), as everywhere in moat.
pub(crate) fn env_override(name: &str) -> Option<String> {
    let delegated = ["SUDO_UID", "SUDO_USER", "PKEXEC_UID", "DOAS_USER"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if rustix::process::getuid().is_root() && !delegated {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    } else {
        None
    }
}

/// Waits for our child `pid`: its exit code, or 128+N when signal N
/// killed it (the shell's and runc's convention); 125 if it cannot be
/// waited for.
pub(crate) fn reap(pid: i32) -> i32 {
    use rustix::process::{waitpid, Pid, WaitOptions};
    let Some(p) = Pid::from_raw(pid) else {
        return 125;
    };
    loop {
        match waitpid(Some(p), WaitOptions::empty()) {
            Ok(Some((_, st))) => {
                return match st.terminating_signal() {
                    Some(sig) => 128 + sig,
                    None => st.exit_status().unwrap_or(0),
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            _ => return 125,
        }
    }
}

/// The state root: `--root`, else `/run/moat-oci` for root (podman runs
/// `state` with no flags), else `$XDG_RUNTIME_DIR/moat-oci`.
fn state_root(cli: &Cli) -> PathBuf {
    if let Some(r) = &cli.root {
        return r.clone();
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/run/moat-oci");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("moat-oci"),
        None => PathBuf::from(format!(
            "/tmp/moat-oci-{}",
            rustix::process::geteuid().as_raw()
        )),
    }
}

/// Carries out one command; returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    let logger = log::Logger::open(&cli);
    if cli.systemd_cgroup {
        logger.error("--systemd-cgroup is not supported: moat-oci manages cgroupfs paths; configure the caller with cgroup_manager = \"cgroupfs\" (podman) or SystemdCgroup = false (containerd)");
        return 1;
    }
    let root = state_root(&cli);
    let r = match &cli.command {
        Command::Create(a) => create::create(&root, a, &logger).map(|_| 0),
        Command::Run(a) => create::run(&root, a, &logger),
        Command::Start(a) => ops::start(&root, &a.id, &logger).map(|_| 0),
        Command::State(a) => ops::state(&root, &a.id).map(|_| 0),
        Command::Kill(a) => ops::kill(&root, a).map(|_| 0),
        Command::Delete(a) => ops::delete(&root, a, &logger).map(|_| 0),
        Command::Exec(a) => exec::exec(&root, a),
        Command::Ps(a) => ops::ps(&root, a).map(|_| 0),
        Command::List(a) => ops::list(&root, a).map(|_| 0),
        Command::Pause(a) => ops::pause(&root, &a.id, true).map(|_| 0),
        Command::Resume(a) => ops::pause(&root, &a.id, false).map(|_| 0),
        Command::Update(a) => ops::update(&root, a).map(|_| 0),
        Command::Features => ops::features().map(|_| 0),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            logger.error(&format!("{e:#}"));
            1
        }
    }
}
