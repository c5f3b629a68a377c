//! Containers through the runtime core. Records are read with the core's
//! own reader (`moat_runtime::record`); creating, starting, stopping,
//! entering and removing go through the `moat` binary, so that a replica
//! is made by the very pipeline `moat run -d` uses (authorisation, image
//! trust, vulnerability gate, backend choice) and outlives moatd with its
//! own monitor.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moat_runtime::{Record, Status};

use crate::spawner::{Client as Spawner, Program, Reply};
use crate::template::Template;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot run {}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {name}: {message}")]
    Failed {
        what: &'static str,
        name: String,
        message: String,
    },
    #[error("reading container records")]
    Records(#[source] moat_runtime::StateError),
}

/// A replica as the runtime core sees it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub id: String,
    pub running: bool,
    pub pid: i32,
    pub exit_code: Option<i32>,
    pub isolation: moat_runtime::Isolation,
}

#[derive(Debug, Clone)]
pub struct Runtime {
    pub moat: PathBuf,
    pub root: PathBuf,
    pub run_root: Option<PathBuf>,
    pub rbac: PathBuf,
    /// Where processes are started: moatd's spawner (its filtered threads
    /// start none themselves); `None`: here.
    pub spawner: Option<Spawner>,
}

/// A `moat` command line being built.
pub struct Cmd(Vec<OsString>);

impl Cmd {
    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Cmd {
        self.0.push(a.as_ref().to_owned());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, it: I) -> &mut Cmd {
        for a in it {
            self.arg(a);
        }
        self
    }
}

impl Runtime {
    fn cmd(&self) -> Cmd {
        let mut c = Cmd(Vec::new());
        c.arg("--root").arg(&self.root);
        if let Some(r) = &self.run_root {
            c.arg("--run-root").arg(r);
        }
        c
    }

    /// Runs `program` (the spawner's, or here), stdin from /dev/null;
    /// killed after `timeout`.
    pub fn start(
        &self,
        program: Program,
        args: &[OsString],
        timeout: Option<Duration>,
        output: bool,
    ) -> Result<Reply, RuntimeError> {
        let bin = match program {
            Program::Moat => self.moat.clone(),
            Program::ProbeNet => std::env::current_exe().unwrap_or_else(|_| "moatd".into()),
        };
        if let Some(s) = &self.spawner {
            let r = s
                .run(program, args, timeout, output)
                .map_err(|e| RuntimeError::Spawn {
                    bin: bin.clone(),
                    source: std::io::Error::other(e),
                })?;
            return match r.error {
                Some(e) if r.code.is_none() => Err(RuntimeError::Spawn {
                    bin,
                    source: std::io::Error::other(e),
                }),
                _ => Ok(r),
            };
        }
        local(&bin, args, timeout, output).map_err(|source| RuntimeError::Spawn { bin, source })
    }

    fn run(&self, what: &'static str, name: &str, c: &mut Cmd) -> Result<String, RuntimeError> {
        let out = self.start(Program::Moat, &c.0, None, true)?;
        if out.code != Some(0) {
            let err = String::from_utf8_lossy(&out.stderr);
            let message = err
                .lines()
                .filter(|l| !l.starts_with("moat: warning: no RBAC file"))
                .map(|l| l.strip_prefix("moat: error: ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(RuntimeError::Failed {
                what,
                name: name.to_string(),
                message,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `moat run -d` of `t` as container `name`, under `policy` when the
    /// replica has a derived one (files, limits); its ID.
    pub fn create(
        &self,
        name: &str,
        t: &Template,
        policy: Option<&Path>,
    ) -> Result<String, RuntimeError> {
        let mut c = self.cmd();
        c.args(["run", "-d", "-q", "--name", name])
            .args(["--isolation", &t.isolation])
            .arg("--policy")
            .arg(policy.map_or_else(|| t.policy.clone().into(), |p| p.as_os_str().to_owned()))
            .args(["--stop-timeout", &t.grace_seconds.to_string()]);
        // A missing file means what it means to `moat run`: root alone.
        if self.rbac.exists() {
            c.arg("--rbac").arg(&self.rbac);
        }
        if let Some(u) = &t.user {
            c.args(["--user", u]);
        }
        if let Some(w) = &t.workdir {
            c.args(["--workdir", w]);
        }
        for (k, v) in &t.env {
            c.args(["--env", &format!("{k}={v}")]);
        }
        for v in &t.volumes {
            c.args(["--volume", v]);
        }
        if !t.command.is_empty() {
            c.arg("--entrypoint")
                .arg(serde_json::to_string(&t.command).unwrap_or_default());
        }
        c.arg(&t.image).args(&t.args);
        self.run("starting replica", name, &mut c)
    }

    /// Starts a stopped replica again (`moat start`).
    pub fn restart(&self, name: &str) -> Result<(), RuntimeError> {
        self.run("restarting replica", name, self.cmd().args(["start", name]))
            .map(drop)
    }

    /// Stops (SIGTERM, then SIGKILL after `grace`) and removes a replica.
    pub fn remove(&self, name: &str, grace: u64) -> Result<(), RuntimeError> {
        let mut stop = self.cmd();
        stop.args(["stop", "-t", &grace.to_string(), name]);
        let _ = self.start(Program::Moat, &stop.0, None, false);
        self.run(
            "removing replica",
            name,
            self.cmd().args(["rm", "-f", name]),
        )
        .map(drop)
    }

    /// Kills a replica's workload (a failed liveness probe); the restart
    /// policy then applies.
    pub fn kill(&self, name: &str) -> Result<(), RuntimeError> {
        self.run("killing replica", name, self.cmd().args(["kill", name]))
            .map(drop)
    }

    /// Runs `cmd` in a replica; whether it exited 0 within `timeout`.
    pub fn exec_ok(&self, name: &str, cmd: &[String], timeout: Duration) -> bool {
        let mut c = self.cmd();
        c.arg("exec").arg(name).args(cmd);
        self.start(Program::Moat, &c.0, Some(timeout), false)
            .is_ok_and(|r| r.code == Some(0))
    }

    /// The output of a replica, at most `limit` bytes, read in-process
    /// with the runtime core's log reader (the API threads start no
    /// process).
    pub fn logs(
        &self,
        name: &str,
        tail: Option<usize>,
        limit: usize,
    ) -> Result<String, RuntimeError> {
        let records = moat_runtime::record::read_all(&self.root).map_err(RuntimeError::Records)?;
        let Some(r) = moat_runtime::record::find(&records, name) else {
            return Err(RuntimeError::Failed {
                what: "reading the logs of replica",
                name: name.to_string(),
                message: "no such container".to_string(),
            });
        };
        let dir = moat_runtime::record::container_dir(&self.root, &r.id);
        let filter = moat_runtime::logs::Filter {
            since_nanos: None,
            tail,
        };
        let (lines, _) =
            moat_runtime::logs::read(&dir, filter).map_err(|e| RuntimeError::Failed {
                what: "reading the logs of replica",
                name: name.to_string(),
                message: e.to_string(),
            })?;
        let mut out = String::new();
        for l in lines {
            if out.len() + l.log.len() > limit {
                break;
            }
            out.push_str(&l.log);
        }
        Ok(out)
    }

    /// Where probes reach a replica's network, and whether it is a VM: a
    /// sandbox's first process's namespace; a micro-VM's VMM namespace,
    /// which the vm backend binds at `ROOT/netns/ID` (under the records
    /// root, moat-vm's `net::egress::netns_path`) for `network: egress`;
    /// never the pid of a VM's record, its supervisor on the host's
    /// network.
    pub fn netns(&self, o: &Observed) -> Option<(PathBuf, bool)> {
        match o.isolation {
            moat_runtime::Isolation::Vm => Some((self.root.join("netns").join(&o.id), true)),
            _ if o.pid > 0 => Some((PathBuf::from(format!("/proc/{}/ns/net", o.pid)), false)),
            _ => None,
        }
    }

    /// Every container of the state root by name.
    pub fn observe(&self) -> Result<HashMap<String, Observed>, RuntimeError> {
        let records = moat_runtime::record::read_all(&self.root).map_err(RuntimeError::Records)?;
        Ok(records
            .into_iter()
            .map(|r| (r.name.to_string(), observed(&r)))
            .collect())
    }
}

fn observed(r: &Record) -> Observed {
    let alive =
        r.pid > 0 && moat_runtime::record::process_start_time(r.pid) == Some(r.pid_start_time);
    Observed {
        id: r.id.to_string(),
        running: r.status == Status::Running && (alive || r.monitor_alive()),
        pid: r.pid,
        exit_code: r.exit_code,
        isolation: r.isolation,
    }
}

/// Runs `bin` in this process's thread (no spawner: tests, tools).
fn local(
    bin: &Path,
    args: &[OsString],
    timeout: Option<Duration>,
    output: bool,
) -> std::io::Result<Reply> {
    let mut c = Command::new(bin);
    c.args(args)
        .stdin(Stdio::null())
        .env_remove("SUDO_UID")
        .env_remove("SUDO_USER")
        .env_remove("PKEXEC_UID")
        .env_remove("DOAS_USER");
    if !output {
        c.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = c.spawn()?;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match child.try_wait()? {
                Some(s) => {
                    return Ok(Reply {
                        code: s.code(),
                        ..Reply::default()
                    })
                }
                None if deadline.is_none_or(|d| Instant::now() < d) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(Reply::default());
                }
            }
        }
    }
    let out = c.output()?;
    Ok(Reply {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: out.stderr,
        error: None,
    })
}
