//! `moat surface measure`: the host kernel a running workload really
//! reaches, per backend, from the syscall tracepoints (level a) and, where
//! the kernel allows the function tracer, Bottomley's Horizontal Attack
//! Profile (level b: distinct kernel functions).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::syscalls;
use crate::trace::{self, Instance, Recorded, TraceError, TreeFilter};

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not reach its start point within 30 s")]
    NotStopped { program: String },
    #[error("waiting for {program}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {path}")]
    Bundle {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the traced workload of {program} never started (no execve seen); its exit code was {code}"
    )]
    NoWorkload { program: String, code: i32 },
}

/// What one traced run showed.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// `sandbox`, `vm` or `crun`.
    pub backend: String,
    /// What was counted as the tenant's host-side footprint.
    pub footprint: String,
    pub exit_code: i32,
    pub syscalls_count: usize,
    pub syscalls: Vec<String>,
    pub ioctl_requests: Vec<String>,
    pub tasks: usize,
    /// Level (b): distinct kernel functions, or why it could not be measured.
    pub hap_functions: Option<usize>,
    pub hap_unavailable: Option<String>,
}

fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('T')))
        .unwrap_or(false)
}

/// Runs `argv` on the host with its tree traced from the first exec after
/// the exec of the launcher `after` (see [`TreeFilter`]); returns the exit
/// code and the record.
/// With `functions`, traces kernel functions instead of syscalls and
/// returns the refusal when the kernel does not allow it.
pub fn trace_command(
    argv: &[String],
    after: Option<&str>,
    program: Option<&str>,
    functions: bool,
) -> Result<(i32, Recorded, Option<String>), MeasureError> {
    let launcher = argv.first().cloned().unwrap_or_default();
    let inst = Instance::create(if functions { "hap" } else { "measure" })?;
    // The child stops itself before exec'ing the launcher, so that tracing
    // starts before anything of interest happens.
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("kill -STOP $$; exec \"$@\"")
        .arg("sh")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| MeasureError::Spawn {
            program: launcher.clone(),
            source,
        })?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stopped(pid) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(MeasureError::NotStopped { program: launcher });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut refused = None;
    if functions {
        if let Err(why) = inst.start_functions(pid) {
            refused = Some(why);
        }
    } else if let Err(e) = inst.start_syscalls(pid) {
        let _ = child.kill();
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("child pid is positive"),
            rustix::process::Signal::CONT,
        );
        let _ = child.wait();
        return Err(e.into());
    }
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::CONT);
    }
    let status = child.wait().map_err(|source| MeasureError::Wait {
        program: launcher.clone(),
        source,
    })?;
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    if refused.is_some() {
        return Ok((code, Recorded::default(), refused));
    }
    let text = inst.stop()?;
    let filter = TreeFilter::FromFirstExec {
        after: after.map(String::from),
        program: program.map(String::from),
    };
    let rec = trace::fold(&trace::parse(&text), &filter);
    if rec.execs.is_empty() {
        return Err(MeasureError::NoWorkload {
            program: launcher,
            code,
        });
    }
    Ok((code, rec, None))
}

/// Turns a recording into a [`Measurement`].
pub fn measurement(backend: &str, footprint: &str, code: i32, rec: &Recorded) -> Measurement {
    let table = syscalls::table();
    let syscalls: Vec<String> = rec
        .syscalls
        .keys()
        .map(|nr| {
            table
                .name(*nr)
                .map(String::from)
                .unwrap_or_else(|| format!("#{nr}"))
        })
        .collect();
    Measurement {
        backend: backend.to_string(),
        footprint: footprint.to_string(),
        exit_code: code,
        syscalls_count: syscalls.len(),
        syscalls,
        ioctl_requests: rec.ioctls.iter().map(|r| format!("{r:#x}")).collect(),
        tasks: rec.tasks,
        hap_functions: None,
        hap_unavailable: None,
    }
}

/// Measures level (b) for `argv`: the distinct kernel functions its tree
/// reaches, or why the host does not allow measuring it.
pub fn hap(
    argv: &[String],
    after: Option<&str>,
    program: Option<&str>,
) -> Result<Result<usize, String>, MeasureError> {
    let (_, rec, refused) = trace_command(argv, after, program, true)?;
    Ok(match refused {
        Some(why) => Err(why),
        None => Ok(rec.functions.len()),
    })
}

/// Writes an OCI bundle for crun under `dir`: `config.json` from
/// `crun spec`, pointing at `rootfs` read-only and running `args`.
pub fn crun_bundle(dir: &Path, rootfs: &Path, args: &[String]) -> Result<(), MeasureError> {
    let out = Command::new("crun")
        .arg("spec")
        .current_dir(dir)
        .output()
        .map_err(|source| MeasureError::Bundle {
            what: "cannot run `crun spec` (install crun)".into(),
            path: dir.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(MeasureError::Bundle {
            what: format!(
                "crun spec failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            path: dir.to_path_buf(),
            source: std::io::Error::other("crun spec"),
        });
    }
    let path = dir.join("config.json");
    let bad = |what: &str, source: std::io::Error| MeasureError::Bundle {
        what: what.to_string(),
        path: path.clone(),
        source,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| bad("cannot read", e))?;
    let mut spec: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad("cannot parse", e.into()))?;
    let abs = std::fs::canonicalize(rootfs).map_err(|e| bad("cannot resolve the rootfs", e))?;
    spec["root"] = serde_json::json!({ "path": abs, "readonly": true });
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = serde_json::json!(false);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap_or_default())
        .map_err(|e| bad("cannot write", e))?;
    Ok(())
}

/// Level (a) and (b) for crun running `args` in `rootfs`.
pub fn measure_crun(rootfs: &Path, args: &[String]) -> Result<Measurement, MeasureError> {
    let dir = tempfile::tempdir().map_err(|source| MeasureError::Bundle {
        what: "cannot create a temporary bundle".into(),
        path: std::env::temp_dir(),
        source,
    })?;
    crun_bundle(dir.path(), rootfs, args)?;
    let state = dir.path().join("state");
    let id = format!("moat-measure-{}", std::process::id());
    // crun refuses hybrid cgroups (a v2 mount with a controller beside the
    // v1 ones); in a private mount namespace without the v2 mount it sees
    // plain v1.
    let hybrid: Vec<String> = if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "umount -l /sys/fs/cgroup/unified && exec \"$@\"",
            "sh",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    } else {
        Vec::new()
    };
    let argv: Vec<String> = hybrid
        .into_iter()
        .chain([
            "crun".into(),
            "--root".into(),
            state.display().to_string(),
            "run".into(),
            "--bundle".into(),
            dir.path().display().to_string(),
            id,
        ])
        .collect();
    let program = args.first().map(String::as_str);
    let (code, rec, _) = trace_command(&argv, Some("crun"), program, false)?;
    let mut m = measurement(
        "crun",
        "the container's processes on the host kernel",
        code,
        &rec,
    );
    match hap(&argv, Some("crun"), program)? {
        Ok(n) => m.hap_functions = Some(n),
        Err(why) => m.hap_unavailable = Some(why),
    }
    Ok(m)
}

/// The distinct names of a set of recorded syscalls.
pub fn names(rec: &Recorded) -> BTreeSet<String> {
    let table = syscalls::table();
    rec.syscalls
        .keys()
        .filter_map(|n| table.name(*n).map(String::from))
        .collect()
}
