//! `start`, `state`, `kill`, `delete`, `ps`, `list`, `pause`/`resume`,
//! `update` and `features`.

use std::path::Path;

use anyhow::{bail, Context};

use crate::args::{Delete, Kill, List, Ps, Update};
use crate::bundle::CgroupRequest;
use crate::create::state_json;
use crate::log::Logger;
use crate::state::{self, Record};

pub fn start(root: &Path, id: &str, log: &Logger) -> anyhow::Result<()> {
    let mut rec = state::load(root, id)?;
    match state::status(&rec) {
        "created" => {}
        other => bail!("container {id:?} is {other}: only a created container can be started"),
    }
    let gate = state::gate(root, id);
    moat_sandbox::oci::start(&gate).with_context(|| format!("starting container {id:?}"))?;
    rec.started = true;
    state::save(root, &rec)?;
    let _ = std::fs::remove_file(&gate);
    let st = serde_json::to_vec(&state_json(&rec, "running")).unwrap_or_default();
    for h in &rec.hooks.poststart {
        if let Err(e) = moat_sandbox::oci::run_hook(h, &st) {
            log.warn(&format!("poststart {e}"));
        }
    }
    Ok(())
}

pub fn state(root: &Path, id: &str) -> anyhow::Result<()> {
    let rec = state::load(root, id)?;
    let st = state_json(&rec, state::status(&rec));
    println!("{}", serde_json::to_string_pretty(&st)?);
    Ok(())
}

/// Signal names as runc accepts them (`KILL`, `SIGKILL`) and numbers.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    const NAMES: &[(&str, i32)] = &[
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ILL", libc::SIGILL),
        ("TRAP", libc::SIGTRAP),
        ("ABRT", libc::SIGABRT),
        ("IOT", libc::SIGIOT),
        ("BUS", libc::SIGBUS),
        ("FPE", libc::SIGFPE),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("SEGV", libc::SIGSEGV),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("STKFLT", libc::SIGSTKFLT),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("TTIN", libc::SIGTTIN),
        ("TTOU", libc::SIGTTOU),
        ("URG", libc::SIGURG),
        ("XCPU", libc::SIGXCPU),
        ("XFSZ", libc::SIGXFSZ),
        ("VTALRM", libc::SIGVTALRM),
        ("PROF", libc::SIGPROF),
        ("WINCH", libc::SIGWINCH),
        ("IO", libc::SIGIO),
        ("PWR", libc::SIGPWR),
        ("SYS", libc::SIGSYS),
    ];
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn signal_pid(pid: i32, sig: i32) {
    let p = rustix::process::Pid::from_raw(pid);
    let s = rustix::process::Signal::from_named_raw(sig);
    if let (Some(p), Some(s)) = (p, s) {
        let _ = rustix::process::kill_process(p, s);
    }
}

pub fn kill(root: &Path, a: &Kill) -> anyhow::Result<()> {
    let sig = parse_signal(&a.signal).with_context(|| {
        format!(
            "unknown signal {:?}: give a name (TERM, SIGKILL) or a number 1-64",
            a.signal
        )
    })?;
    let rec = state::load(root, &a.id)?;
    if !state::alive(&rec) {
        bail!("container {:?} is not running", a.id);
    }
    if rec.vm.is_some() {
        // --all too: the helper is the one process to signal.
        crate::vmops::check_signal(&rec, sig)?;
    } else if a.all {
        for pid in rec.cgroup.pids() {
            signal_pid(pid, sig);
        }
        return thaw_for_kill(&rec, sig);
    }
    // Pin the process, then check it is still the recorded one.
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(rec.pid).context("bad pid")?,
        rustix::process::PidfdFlags::empty(),
    )
    .with_context(|| format!("container {:?} is not running", a.id))?;
    if !state::alive(&rec) {
        bail!("container {:?} is not running", a.id);
    }
    let s = rustix::process::Signal::from_named_raw(sig)
        .with_context(|| format!("signal {sig} cannot be sent"))?;
    rustix::process::pidfd_send_signal(&pidfd, s)
        .with_context(|| format!("signalling container {:?}", a.id))?;
    thaw_for_kill(&rec, sig)
}

/// As runc: a paused container gets its signal on resume, except KILL,
/// which thaws it (a task frozen by the v1 freezer dies only thawed).
fn thaw_for_kill(rec: &Record, sig: i32) -> anyhow::Result<()> {
    if sig == libc::SIGKILL && rec.cgroup.is_frozen() {
        match &rec.vm {
            Some(vm) => crate::vmops::set_frozen(rec, vm, false)?,
            None => rec.cgroup.set_frozen(false)?,
        }
    }
    Ok(())
}

pub fn delete(root: &Path, a: &Delete, log: &Logger) -> anyhow::Result<()> {
    let rec = match state::load(root, &a.id) {
        Ok(r) => r,
        Err(state::StateError::NotFound(_)) if a.force => {
            // A create killed before it wrote the record leaves only the
            // directory (and its gate): remove it.
            state::remove(root, &a.id)?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let status = state::status(&rec);
    if status != "stopped" && !a.force {
        bail!(
            "container {:?} is {status}: stop it first or use delete --force",
            a.id
        );
    }
    if let Some(sandbox) = rec.vm.as_ref().and_then(|v| v.member_of.as_deref()) {
        crate::pod::delete(root, &rec, sandbox);
    } else if let Some(vm) = &rec.vm {
        crate::vmops::delete(&rec, vm)?;
        if vm.pod_share {
            crate::pod::share(root, &rec.id).remove();
        }
    } else if status != "stopped" {
        rec.cgroup.kill_all();
        if let Some(p) = rustix::process::Pid::from_raw(rec.pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
    rec.cgroup.remove();
    let st = serde_json::to_vec(&state_json(&rec, "stopped")).unwrap_or_default();
    for h in &rec.hooks.poststop {
        if let Err(e) = moat_sandbox::oci::run_hook(h, &st) {
            log.warn(&format!("poststop {e}"));
        }
    }
    state::remove(root, &a.id)?;
    Ok(())
}

pub fn ps(root: &Path, a: &Ps) -> anyhow::Result<()> {
    let rec = state::load(root, &a.id)?;
    let pids = rec.cgroup.pids();
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            println!("PID\tCMD");
            for p in pids {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                println!("{p}\t{}", comm.trim());
            }
        }
        other => bail!("--format {other:?}: use table or json"),
    }
    Ok(())
}

pub fn list(root: &Path, a: &List) -> anyhow::Result<()> {
    let recs: Vec<Record> = state::ids(root)
        .iter()
        .filter_map(|id| state::load(root, id).ok())
        .collect();
    if a.quiet {
        for r in &recs {
            println!("{}", r.id);
        }
        return Ok(());
    }
    match a.format.as_str() {
        "json" => {
            let v: Vec<_> = recs
                .iter()
                .map(|r| state_json(r, state::status(r)))
                .collect();
            println!("{}", serde_json::to_string(&v)?);
        }
        "table" => {
            println!("ID\tPID\tSTATUS\tBUNDLE\tCREATED");
            for r in &recs {
                let st = state::status(r);
                let pid = if st == "stopped" { 0 } else { r.pid };
                println!(
                    "{}\t{pid}\t{st}\t{}\t{}",
                    r.id,
                    r.bundle.display(),
                    r.created
                );
            }
        }
        other => bail!("--format {other:?}: use table or json"),
    }
    Ok(())
}

pub fn pause(root: &Path, id: &str, freeze: bool) -> anyhow::Result<()> {
    let rec = state::load(root, id)?;
    let st = state::status(&rec);
    match (freeze, st) {
        (true, "running") | (false, "paused") => {}
        (true, _) => bail!("container {id:?} is {st}: only a running container can be paused"),
        (false, _) => bail!("container {id:?} is {st}: only a paused container can be resumed"),
    }
    match &rec.vm {
        Some(vm) => crate::vmops::set_frozen(&rec, vm, freeze)?,
        None => rec.cgroup.set_frozen(freeze)?,
    }
    Ok(())
}

pub fn update(root: &Path, a: &Update) -> anyhow::Result<()> {
    let rec = state::load(root, &a.id)?;
    if !state::alive(&rec) {
        bail!("container {:?} is not running", a.id);
    }
    let mut req = CgroupRequest::default();
    let mut asked = serde_json::json!({});
    if let Some(src) = &a.resources {
        let text = if src.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            s
        } else {
            std::fs::read_to_string(src).with_context(|| format!("reading {}", src.display()))?
        };
        let r: oci_spec::runtime::LinuxResources =
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "--resources {}: not a runtime-spec linux.resources object",
                    src.display()
                )
            })?;
        asked = serde_json::from_str(&text).unwrap_or(asked);
        if let Some(m) = r.memory() {
            req.memory = m.limit();
            req.memory_swap = m.swap();
        }
        if let Some(p) = r.pids() {
            req.pids = Some(p.limit());
        }
        if let Some(c) = r.cpu() {
            req.cpu_quota = c.quota();
            req.cpu_period = c.period();
            req.cpu_shares = c.shares();
            req.cpuset_cpus = c.cpus().clone();
        }
    }
    req.memory = a.memory.or(req.memory);
    req.pids = a.pids_limit.or(req.pids);
    req.cpu_quota = a.cpu_quota.or(req.cpu_quota);
    req.cpu_period = a.cpu_period.or(req.cpu_period);
    if let Some(vm) = &rec.vm {
        crate::vmops::refuse_member(&rec, vm, "update")?;
        if let Some(m) = a.memory {
            asked["memory"]["limit"] = m.into();
        }
        if let Some(p) = a.pids_limit {
            asked["pids"]["limit"] = p.into();
        }
        crate::vmops::drop_unchanged(&rec, &mut asked);
        if let Some(field) = crate::vmops::refused_field(&asked) {
            bail!("{}", crate::vmops::refusal(&a.id, &field));
        }
        check_ceiling(&rec, &req)?;
        crate::vmops::apply_cpu(&rec, vm, &req)?;
        // The container's own cgroup (the helper's) shows the same.
        rec.cgroup.apply(&CgroupRequest {
            cpu_quota: req.cpu_quota,
            cpu_period: req.cpu_period,
            cpu_shares: req.cpu_shares,
            ..CgroupRequest::default()
        })?;
        return Ok(());
    }
    check_ceiling(&rec, &req)?;
    rec.cgroup.apply(&req)?;
    Ok(())
}

/// `update` never goes above the policy: memory, pids, CPU bandwidth.
fn check_ceiling(rec: &Record, req: &CgroupRequest) -> anyhow::Result<()> {
    let ceil = &rec.cgroup_ceiling;
    for (asked, max, what) in [
        (req.memory, ceil.memory, "memory"),
        (req.pids, ceil.pids, "pids"),
    ] {
        if let (Some(v), Some(m)) = (asked, max) {
            if v <= 0 || v > m {
                bail!(
                    "update asks for {what} {}, above policy {:?}'s {m}",
                    if v <= 0 {
                        "unlimited".to_string()
                    } else {
                        v.to_string()
                    },
                    rec.policy
                );
            }
        }
    }
    if let (Some(q), Some(cq)) = (req.cpu_quota, ceil.cpu_quota) {
        let cp = ceil.cpu_period.unwrap_or(100_000) as i128;
        let p = req.cpu_period.unwrap_or(100_000) as i128;
        // q/p above cq/cp, without rounding.
        if q <= 0 || (q as i128) * cp > (cq as i128) * p {
            bail!(
                "update asks for CPU quota {} per period {p} µs, above policy {:?}'s {cq} per {cp} µs",
                if q <= 0 { "unlimited".to_string() } else { q.to_string() },
                rec.policy
            );
        }
    }
    Ok(())
}

pub fn features() -> anyhow::Result<()> {
    let v = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async",
            "dirsync", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime", "relatime",
            "norelatime", "strictatime", "nostrictatime", "bind", "rbind", "private", "rprivate",
            "shared", "rshared", "slave", "rslave", "unbindable", "runbindable", "tmpcopyup"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": moat_plan::caps::CAPABILITIES.iter().map(|c| format!("CAP_{c}")).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": crate::seccomp::ACTIONS,
                "operators": crate::seccomp::OPERATORS,
                "archs": ["SCMP_ARCH_X86_64"],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            "moat.dev/policy": "policy a container runs under (built-in name or file); RBAC decides",
            "moat.dev/isolation": "sandbox or vm",
        },
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
