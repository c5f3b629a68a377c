//! `create` and `run`.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use anyhow::{bail, Context};
use moat_sandbox::oci::{self, CreateSteps};
use moat_sandbox::SandboxError;

use crate::args::Create;
use crate::bundle::{self, Bundle, CgroupRequest, Prepared};
use crate::cgroup::Groups;
use crate::log::Logger;
use crate::site::{Isolation, Site};
use crate::state::{self, ExecDefaults, Record};

/// The state JSON of runtime-spec, as `state` prints it and hooks read it.
pub(crate) fn state_json(rec: &Record, status: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": rec.id,
        "status": status,
        "pid": if status == "stopped" { 0 } else { rec.pid },
        "bundle": rec.bundle,
        "rootfs": rec.rootfs,
        "created": rec.created,
        "owner": rec.owner,
        "annotations": rec.annotations,
    })
}

struct Steps<'a> {
    groups: &'a Groups,
    /// Written from here, the host side: lowering it (CRI gives a pod's
    /// pause container -998) needs CAP_SYS_RESOURCE in the host's user
    /// namespace, which the container's init no longer has.
    oom_score_adj: Option<i32>,
    hooks: &'a [oci::OciHook],
    state: serde_json::Value,
}

impl CreateSteps for Steps<'_> {
    fn join_cgroup(&mut self, pid: i32) -> Result<(), SandboxError> {
        self.groups.add(pid).map_err(|e| SandboxError::Setup {
            step: "joining the cgroup".into(),
            detail: e.to_string(),
        })?;
        if let Some(v) = self.oom_score_adj {
            let path = format!("/proc/{pid}/oom_score_adj");
            match std::fs::write(&path, v.to_string()) {
                // Lowering needs CAP_SYS_RESOURCE, which a runtime run
                // without it (a container host's own container) lacks: the
                // process stays as killable as its parent, the safe side.
                Err(e) if v < 0 && e.kind() == std::io::ErrorKind::PermissionDenied => {}
                Err(e) => {
                    return Err(SandboxError::Setup {
                        step: format!("oom_score_adj {v}"),
                        detail: format!("{path}: {e}"),
                    })
                }
                Ok(()) => {}
            }
        }
        Ok(())
    }
    fn runtime_hooks(&mut self, pid: i32) -> Result<(), SandboxError> {
        self.state["pid"] = serde_json::json!(pid);
        let state = serde_json::to_vec(&self.state).unwrap_or_default();
        for h in self.hooks {
            oci::run_hook(h, &state).map_err(|detail| SandboxError::Setup {
                step: "createRuntime hook".into(),
                detail,
            })?;
        }
        Ok(())
    }
}

/// Writes `pid` to `file`, staged then renamed.
pub(crate) fn write_pid_file(file: &Path, pid: i32) -> anyhow::Result<()> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = file.file_name().context("--pid-file names no file")?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, pid.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))
}

pub fn create(root: &Path, a: &Create, log: &Logger) -> anyhow::Result<i32> {
    let mut b = Bundle::load(&a.bundle)?;
    let pod_vm = crate::pod::joined_sandbox(root, &b)?;
    if pod_vm.is_some() {
        crate::pod::drop_namespace_paths(&mut b);
    }
    let site = Site::load()?;
    // The host's root, or a directory holding moat-oci's own state, is
    // never a container's root (the state would be the container's);
    // checked first, before `auto` analyses the root.
    let state_abs = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    if b.rootfs == Path::new("/") || state_abs.starts_with(&b.rootfs) {
        bail!(
            "root.path {} of {}/config.json is the host's root or holds moat-oci's state {}: give the container its own root filesystem",
            b.rootfs.display(),
            b.dir.display(),
            root.display()
        );
    }
    let mut p = bundle::prepare(&b, &site, &a.id)?;
    if let (Some(sandbox), false) = (&pod_vm, p.isolation == Isolation::Vm) {
        bail!(
            "container {:?}: its pod's sandbox {:?} runs in a micro-VM, so its containers do too; drop the container's moat.dev/isolation or make it vm",
            a.id,
            sandbox.id
        );
    }
    for w in &p.warnings {
        log.warn(w);
    }
    for d in &p.debug {
        log.debug(d);
    }
    if p.init.terminal && a.console_socket.is_none() {
        bail!("process.terminal is set but no --console-socket was given");
    }
    p.init.preserve_fds = a.preserve_fds;
    let kept: Vec<i32> = (3..3 + a.preserve_fds as i32).collect();
    p.init.drop = p.init.drop.clone().keep_fds(&kept);
    let dir = state::make_dir(root, &a.id)?;
    let r = build(root, &dir, a, &b, &mut p, log);
    if r.is_err() {
        let _ = state::remove(root, &a.id);
    }
    r
}

fn build(
    root: &Path,
    dir: &Path,
    a: &Create,
    b: &Bundle,
    p: &mut Prepared,
    log: &Logger,
) -> anyhow::Result<i32> {
    log.debug(&format!("creating {} under policy {}", a.id, p.policy));
    // A VM container's cgroup is made once its guest is held (vm.rs).
    let groups = if p.isolation == Isolation::Vm {
        Groups::default()
    } else {
        Groups::create(&p.cgroup)?
    };
    p.init.cgroup_dirs = groups.dirs.clone();
    let mut rec = Record {
        id: a.id.clone(),
        bundle: b.dir.clone(),
        rootfs: b.rootfs.clone(),
        pid: 0,
        pid_start: 0,
        created: moat_policy::plan::time::now_rfc3339(),
        owner: String::new(),
        annotations: b.annotations.clone(),
        started: false,
        isolation: p.isolation,
        policy: p.policy.clone(),
        cgroup: groups.clone(),
        cgroup_ceiling: CgroupRequest {
            memory: p.plan.cgroup.memory_bytes.map(|v| v as i64),
            pids: p.plan.cgroup.pids.map(|v| v as i64),
            cpu_quota: p.plan.cgroup.cpu_millis.map(|m| (m * 100) as i64),
            cpu_period: p.plan.cgroup.cpu_millis.map(|_| 100_000),
            ..CgroupRequest::default()
        },
        hooks: p.hooks.clone(),
        exec: exec_defaults(b, p),
        vm: None,
    };
    p.init.state_for_hooks = state_json(&rec, "created");
    if p.isolation == Isolation::Vm {
        let r = match crate::pod::joined_sandbox(root, b) {
            Ok(Some(sandbox)) => crate::pod::create(root, a, b, p, &mut rec, &sandbox),
            Ok(None) => crate::vm::create(root, dir, a, b, p, &mut rec, log),
            Err(e) => Err(e),
        };
        if r.is_err() {
            groups.remove();
            if crate::pod::is_sandbox(&b.annotations) {
                crate::pod::share(root, &a.id).remove();
            }
        }
        return r;
    }
    let gate = UnixListener::bind(state::gate(root, &a.id))
        .with_context(|| format!("creating the start gate in {}", dir.display()))?;
    let console = match &a.console_socket {
        Some(path) if p.init.terminal => Some(
            UnixStream::connect(path)
                .with_context(|| format!("connecting to --console-socket {}", path.display()))?,
        ),
        _ => None,
    };
    let mut steps = Steps {
        groups: &groups,
        oom_score_adj: p.init.oom_score_adj.take(),
        hooks: &p.hooks.create_runtime,
        state: p.init.state_for_hooks.clone(),
    };
    let created = match oci::create(&p.init, gate, console, &mut steps) {
        Ok(c) => c,
        Err(e) => {
            groups.remove();
            return Err(e.into());
        }
    };
    let pid = created.pid;
    rec.pid = pid;
    rec.pid_start = moat_runtime::record::process_start_time(pid).unwrap_or(0);
    // Dropping `created` uncommitted (an error here) ends the container.
    let written = state::save(root, &rec)
        .map_err(anyhow::Error::from)
        .and_then(|()| match &a.pid_file {
            Some(f) => write_pid_file(f, pid),
            None => Ok(()),
        });
    if let Err(e) = written {
        drop(created);
        groups.remove();
        return Err(e);
    }
    created.commit()?;
    Ok(pid)
}

fn exec_defaults(b: &Bundle, p: &Prepared) -> ExecDefaults {
    let process = b.config.process().clone().unwrap_or_default();
    let d = &p.init.drop;
    let sets = d.capability_sets();
    ExecDefaults {
        uid: d.uid(),
        gid: d.gid(),
        groups: d.groups(),
        env: process.env().clone().unwrap_or_default(),
        cwd: d.cwd().to_string(),
        caps: [
            sets.bounding,
            sets.effective,
            sets.permitted,
            sets.inheritable,
            sets.ambient,
        ],
        rlimits: d.raw_rlimits(),
        caller_seccomp: p.caller_seccomp.clone(),
        policy_seccomp: p.plan.seccomp.clone(),
        policy_caps: p.plan.capabilities.clone(),
        exec_allowed: p.plan.exec_allowed,
        no_new_privs: d.no_new_privs(),
    }
}

/// `run`: create, start and wait; the exit status is the workload's.
pub fn run(root: &Path, a: &Create, log: &Logger) -> anyhow::Result<i32> {
    // The first process becomes our child when its parent exits.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("PR_SET_CHILD_SUBREAPER")?;
    let pid = create(root, a, log)?;
    crate::ops::start(root, &a.id, log)?;
    if a.detach {
        return Ok(0);
    }
    let code = crate::reap(pid);
    let _ = crate::ops::delete(
        root,
        &crate::args::Delete {
            force: true,
            id: a.id.clone(),
        },
        log,
    );
    Ok(code)
}
