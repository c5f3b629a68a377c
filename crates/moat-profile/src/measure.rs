//! `moat surface measure`: the host kernel a running workload really
//! reaches, per backend, from the syscall tracepoints (level a) and, where
//! the kernel allows the function tracer, Bottomley's Horizontal Attack
//! Profile (level b: distinct kernel functions).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ebpf::{self, EbpfError};
use crate::syscalls;
use crate::trace::{self, Instance, Recorded, TraceError, TreeFilter};

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
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
    #[error("the traced workload of {program} never started (no execve seen); it exited with {code}: {stderr}")]
    NoWorkload {
        program: String,
        code: i32,
        stderr: String,
    },
}

/// What one traced run showed.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// `sandbox`, `vm` or `crun`.
    pub backend: String,
    /// What was counted as the tenant's host-side footprint.
    pub footprint: String,
    pub exit_code: i32,
    /// The recorder used: `ebpf` or `tracefs`.
    pub recorder: String,
    pub syscalls_count: usize,
    pub syscalls: Vec<String>,
    pub ioctl_requests: Vec<String>,
    pub tasks: usize,
    /// Level (b): distinct kernel functions, or why it could not be measured.
    pub hap_functions: Option<usize>,
    pub hap_unavailable: Option<String>,
    /// The network helper the policy's network needs (pasta for
    /// `egress`), measured in a run of its own: more host surface the
    /// container adds, beside the workload's or QEMU's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_helper: Option<HelperMeasurement>,
}

/// Level (a) for one helper process of a container (and its threads and
/// children), from its `execve` on: its own start-up and sandboxing, and
/// whatever the measured command made it carry.
#[derive(Debug, Clone, Serialize)]
pub struct HelperMeasurement {
    /// The program, e.g. `pasta`.
    pub program: String,
    pub syscalls_count: usize,
    pub syscalls: Vec<String>,
    pub ioctl_requests: Vec<String>,
    pub tasks: usize,
}

/// Traces `argv` once more and counts the host syscalls of `program`'s
/// process tree (the first exec of a file of that name after the exec of
/// `after`).
pub fn measure_helper(
    argv: &[String],
    after: Option<&str>,
    program: &str,
) -> Result<HelperMeasurement, MeasureError> {
    let o = trace(&TraceRun {
        argv,
        after,
        program: Some(program),
        capture: true,
        ..TraceRun::default()
    })?;
    let m = measurement("", "", o.code, &o.recorded);
    Ok(HelperMeasurement {
        program: program.to_string(),
        syscalls_count: m.syscalls_count,
        syscalls: m.syscalls,
        ioctl_requests: m.ioctl_requests,
        tasks: m.tasks,
    })
}

fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('T')))
        .unwrap_or(false)
}

/// Which mechanism records the syscalls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecorderKind {
    /// eBPF where the kernel allows it, else tracefs (with a notice).
    #[default]
    Auto,
    /// eBPF programs on the tracepoints (fails where unavailable).
    Ebpf,
    /// The tracefs text trace (slower; no path names).
    Tracefs,
}

impl std::str::FromStr for RecorderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(RecorderKind::Auto),
            "ebpf" => Ok(RecorderKind::Ebpf),
            "tracefs" => Ok(RecorderKind::Tracefs),
            other => Err(format!(
                "unknown recorder {other:?}: expected auto, ebpf or tracefs"
            )),
        }
    }
}

/// The recording in progress.
enum Active {
    Ebpf(Box<ebpf::Recorder>),
    Tracefs(Instance),
}

/// One traced run of a host command.
#[derive(Debug, Clone, Default)]
pub struct TraceRun<'a> {
    pub argv: &'a [String],
    /// Only execs after the exec of this launcher count (see [`TreeFilter`]).
    pub after: Option<&'a str>,
    /// Only an exec of this program starts the workload.
    pub program: Option<&'a str>,
    /// Trace kernel functions (HAP) instead of syscalls.
    pub functions: bool,
    /// Keep the command's stdout and stderr.
    pub capture: bool,
    /// Send SIGTERM to the command after this long.
    pub timeout: Option<Duration>,
    /// The syscall recorder (the function tracer always uses tracefs).
    pub recorder: RecorderKind,
}

/// What a traced run produced.
#[derive(Debug, Clone, Default)]
pub struct TraceOutcome {
    pub code: i32,
    pub recorded: Recorded,
    /// Why the function tracer could not be used (with `functions`).
    pub refused: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Which recorder was used: `ebpf`, `tracefs` or `function tracer`.
    pub recorder: &'static str,
    /// Why the eBPF recorder was not used, when `Auto` fell back to tracefs.
    pub fallback: Option<String>,
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Runs a host command with its process tree traced.
pub fn trace(run: &TraceRun<'_>) -> Result<TraceOutcome, MeasureError> {
    let launcher = run.argv.first().cloned().unwrap_or_default();
    let filter = TreeFilter::FromFirstExec {
        after: run.after.map(String::from),
        program: run.program.map(String::from),
    };
    let spawn_err = |source: std::io::Error| MeasureError::Spawn {
        program: launcher.clone(),
        source,
    };
    let (out_file, err_file) = if run.capture {
        (
            Some(tempfile::tempfile().map_err(spawn_err)?),
            Some(tempfile::tempfile().map_err(spawn_err)?),
        )
    } else {
        (None, None)
    };
    let to_stdio = |f: &Option<std::fs::File>| -> Result<Stdio, MeasureError> {
        Ok(match f {
            Some(f) => Stdio::from(f.try_clone().map_err(spawn_err)?),
            None => Stdio::null(),
        })
    };
    // The child stops itself before exec'ing the launcher, so that tracing
    // starts before anything of interest happens.
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("kill -STOP $$; exec \"$@\"")
        .arg("sh")
        .args(run.argv)
        .stdin(Stdio::null())
        .stdout(to_stdio(&out_file)?)
        .stderr(to_stdio(&err_file)?)
        .spawn()
        .map_err(spawn_err)?;
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
    let mut fallback = None;
    let abort = |child: &mut std::process::Child| {
        let _ = child.kill();
        signal(pid, rustix::process::Signal::CONT);
        let _ = child.wait();
    };
    let active = if run.functions {
        let inst = match Instance::create("hap") {
            Ok(i) => i,
            Err(e) => {
                abort(&mut child);
                return Err(e.into());
            }
        };
        if let Err(why) = inst.start_functions(pid) {
            refused = Some(why);
        }
        Active::Tracefs(inst)
    } else {
        match start_recorder(run.recorder, pid, &filter) {
            Ok((a, why)) => {
                fallback = why;
                a
            }
            Err(e) => {
                abort(&mut child);
                return Err(e);
            }
        }
    };
    if let (Some(why), Active::Tracefs(_)) = (&refused, &active) {
        // Nothing to measure: do not run the workload at all.
        let _ = child.kill();
        signal(pid, rustix::process::Signal::CONT);
        let _ = child.wait();
        return Ok(TraceOutcome {
            code: -1,
            refused: Some(why.clone()),
            recorder: "function tracer",
            ..TraceOutcome::default()
        });
    }
    signal(pid, rustix::process::Signal::CONT);
    let stop_at = run.timeout.map(|t| Instant::now() + t);
    let mut terminated = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                return Err(MeasureError::Wait {
                    program: launcher,
                    source,
                })
            }
        }
        if let Some(at) = stop_at {
            if !terminated && Instant::now() >= at {
                signal(pid, rustix::process::Signal::TERM);
                terminated = true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    let read_back = |f: Option<std::fs::File>| -> Vec<u8> {
        use std::io::{Read, Seek};
        let mut buf = Vec::new();
        if let Some(mut f) = f {
            let _ = f.rewind();
            let _ = f.read_to_end(&mut buf);
        }
        buf
    };
    let stdout = read_back(out_file);
    let stderr = read_back(err_file);
    let recorder = match (&active, run.functions) {
        (_, true) => "function tracer",
        (Active::Ebpf(_), _) => "ebpf",
        (Active::Tracefs(_), _) => "tracefs",
    };
    if refused.is_some() {
        return Ok(TraceOutcome {
            code,
            refused,
            stdout,
            stderr,
            recorder,
            ..TraceOutcome::default()
        });
    }
    let recorded = match active {
        Active::Ebpf(rec) => rec.stop()?,
        Active::Tracefs(inst) => trace::fold(&trace::parse(&inst.stop()?), &filter),
    };
    if recorded.execs.is_empty() {
        return Err(MeasureError::NoWorkload {
            program: launcher,
            code,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    Ok(TraceOutcome {
        code,
        recorded,
        refused: None,
        stdout,
        stderr,
        recorder,
        fallback,
    })
}

/// Starts the syscall recorder for the (stopped) tree of `pid`; with
/// `Auto`, falls back to tracefs and says why.
fn start_recorder(
    kind: RecorderKind,
    pid: u32,
    filter: &TreeFilter,
) -> Result<(Active, Option<String>), MeasureError> {
    let tracefs = trace::ensure_tracefs()?;
    let tracefs_instance = || -> Result<Active, MeasureError> {
        let inst = Instance::create("trace")?;
        inst.start_syscalls(pid)?;
        Ok(Active::Tracefs(inst))
    };
    match kind {
        RecorderKind::Tracefs => Ok((tracefs_instance()?, None)),
        RecorderKind::Ebpf => Ok((
            Active::Ebpf(Box::new(ebpf::Recorder::start(&tracefs, pid, filter)?)),
            None,
        )),
        RecorderKind::Auto => match ebpf::Recorder::start(&tracefs, pid, filter) {
            Ok(r) => Ok((Active::Ebpf(Box::new(r)), None)),
            Err(e) => {
                let why = format!(
                    "the eBPF recorder is unavailable ({}); recording with tracefs instead (slower, no names of paths opened for writing)",
                    chain(&e)
                );
                Ok((tracefs_instance()?, Some(why)))
            }
        },
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string().lines().next().unwrap_or_default().to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Runs `argv` without tracing, keeping its output; SIGTERM after
/// `timeout`. Returns (exit code, stdout, stderr).
pub fn run_plain(
    argv: &[String],
    timeout: Option<Duration>,
) -> Result<(i32, Vec<u8>, Vec<u8>), MeasureError> {
    use std::io::{Read, Seek};
    let launcher = argv.first().cloned().unwrap_or_default();
    let spawn_err = |source: std::io::Error| MeasureError::Spawn {
        program: launcher.clone(),
        source,
    };
    let mut out = tempfile::tempfile().map_err(spawn_err)?;
    let mut err = tempfile::tempfile().map_err(spawn_err)?;
    let mut child = Command::new(&launcher)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(spawn_err)?)
        .stderr(err.try_clone().map_err(spawn_err)?)
        .spawn()
        .map_err(spawn_err)?;
    let stop_at = timeout.map(|t| Instant::now() + t);
    let mut terminated = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(source) => {
                return Err(MeasureError::Wait {
                    program: launcher,
                    source,
                })
            }
        }
        if let Some(at) = stop_at {
            if !terminated && Instant::now() >= at {
                signal(child.id(), rustix::process::Signal::TERM);
                terminated = true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let _ = out.rewind();
    let _ = out.read_to_end(&mut o);
    let _ = err.rewind();
    let _ = err.read_to_end(&mut e);
    Ok((code, o, e))
}

/// Runs `argv` traced (see [`trace`]); returns the exit code, the record
/// and, with `functions`, why the function tracer was refused.
pub fn trace_command(
    argv: &[String],
    after: Option<&str>,
    program: Option<&str>,
    functions: bool,
) -> Result<(i32, Recorded, Option<String>), MeasureError> {
    let o = trace(&TraceRun {
        argv,
        after,
        program,
        functions,
        ..TraceRun::default()
    })?;
    Ok((o.code, o.recorded, o.refused))
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
        recorder: String::new(),
        syscalls_count: syscalls.len(),
        syscalls,
        ioctl_requests: rec.ioctls.iter().map(|r| format!("{r:#x}")).collect(),
        tasks: rec.tasks,
        hap_functions: None,
        hap_unavailable: None,
        network_helper: None,
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
    let o = trace(&TraceRun {
        argv: &argv,
        after: Some("crun"),
        program,
        ..TraceRun::default()
    })?;
    let mut m = measurement(
        "crun",
        "the container's processes on the host kernel",
        o.code,
        &o.recorded,
    );
    m.recorder = o.recorder.to_string();
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
