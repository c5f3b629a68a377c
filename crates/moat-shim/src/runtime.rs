//! moat-oci's commands, run in a child of the shim. The shim is
//! multi-threaded (ttrpc) and moat-oci's `create` and `exec` fork the
//! container's processes, which must happen in a single-threaded process;
//! so the shim runs moat-oci's library in a fresh process of its own
//! binary (`containerd-shim-moat-v2 --moat-oci ARGS`), as runc's shim runs
//! runc. Errors come back through moat-oci's `--log` (JSON lines).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::exits::exits;
use crate::stdio::ChildStdio;

/// The first argument that makes the shim binary act as moat-oci.
pub const OCI_ARG: &str = "--moat-oci";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("moat-oci {cmd} {id}: {msg}")]
    Failed {
        cmd: String,
        id: String,
        msg: String,
    },
    #[error("starting moat-oci {cmd} {id}")]
    Spawn {
        cmd: String,
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where moat-oci keeps its records, and the site file it reads.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// moat-oci's `--root`.
    pub root: PathBuf,
    /// The shim's own files per container (logs, pid files, exec specs).
    pub work: PathBuf,
    /// The shim config (moat-oci's `MOAT_OCI_CONFIG`).
    pub config: Option<PathBuf>,
}

/// A moat-oci command started in the background.
pub struct Running {
    pub pid: i32,
    cmd: String,
    id: String,
    log: PathBuf,
}

impl Runtime {
    /// The layout under `base` for containerd namespace `ns`.
    pub fn new(base: &Path, ns: &str) -> Runtime {
        Runtime {
            root: base.join(ns).join("oci"),
            work: base.join(ns).join("work"),
            config: None,
        }
    }

    /// The shim's directory for container `id` (made on first use).
    pub fn work_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        use std::os::unix::fs::DirBuilderExt;
        let d = self.work.join(id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .map_err(|source| RuntimeError::Io {
                path: d.display().to_string(),
                source,
            })?;
        Ok(d)
    }

    pub fn forget(&self, id: &str) {
        let _ = std::fs::remove_dir_all(self.work.join(id));
    }

    /// Starts `moat-oci CMD ARGS` (the last of `args` names the container)
    /// with `stdio`.
    pub fn spawn(
        &self,
        cmd: &str,
        id: &str,
        args: &[OsString],
        stdio: ChildStdio,
    ) -> Result<Running, RuntimeError> {
        let log = self.work_dir(id)?.join(format!("{cmd}.log"));
        let _ = std::fs::remove_file(&log);
        let exe = std::env::current_exe().map_err(|source| RuntimeError::Spawn {
            cmd: cmd.into(),
            id: id.into(),
            source,
        })?;
        let mut c = std::process::Command::new(exe);
        c.arg(OCI_ARG)
            .arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json", cmd])
            .args(args);
        match &self.config {
            Some(p) => c.env("MOAT_OCI_CONFIG", p),
            None => c.env_remove("MOAT_OCI_CONFIG"),
        };
        stdio.apply(&mut c);
        let child = c.spawn().map_err(|source| RuntimeError::Spawn {
            cmd: cmd.into(),
            id: id.into(),
            source,
        })?;
        Ok(Running {
            pid: child.id() as i32,
            cmd: cmd.into(),
            id: id.into(),
            log,
        })
    }

    /// Runs `moat-oci CMD ARGS` to completion.
    pub fn run(
        &self,
        cmd: &str,
        id: &str,
        args: &[OsString],
        stdio: ChildStdio,
    ) -> Result<(), RuntimeError> {
        self.spawn(cmd, id, args, stdio)?.finish()
    }
}

impl Running {
    /// Waits for the command; its last logged error if it failed.
    pub fn finish(self) -> Result<(), RuntimeError> {
        let code = exits().wait(self.pid);
        if code == 0 {
            return Ok(());
        }
        Err(RuntimeError::Failed {
            msg: last_error(&self.log).unwrap_or_else(|| format!("exited with status {code}")),
            cmd: self.cmd,
            id: self.id,
        })
    }

    /// Whether the command has ended (its status is then kept for
    /// [`Running::finish`]).
    pub fn ended(&self) -> bool {
        let e = exits();
        match e.wait_for(self.pid, std::time::Duration::ZERO) {
            Some(code) => {
                e.record(self.pid, code);
                true
            }
            None => false,
        }
    }
}

/// The message of the last `"level":"error"` line of a JSON log.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error")
        .find_map(|v| v["msg"].as_str().map(str::to_string))
}

/// The shim binary acting as moat-oci ([`OCI_ARG`]).
pub fn oci_main(args: impl Iterator<Item = OsString>) -> ! {
    use clap::Parser;
    let argv = std::iter::once(OsString::from("moat-oci")).chain(args);
    let cli = moat_oci::args::Cli::parse_from(argv);
    std::process::exit(moat_oci::main(cli));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_logged_error_is_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("create.log");
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"first\"}\n{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"policy \\\"baseline\\\" does not grant CAP_SYS_ADMIN\"}\n",
        )
        .unwrap();
        assert_eq!(
            last_error(&log).as_deref(),
            Some("policy \"baseline\" does not grant CAP_SYS_ADMIN")
        );
        assert_eq!(last_error(&dir.path().join("none")), None);
    }
}
