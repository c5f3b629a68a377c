//! `kill`, `delete` and `exec` of a micro-VM container (see [`crate::vm`]).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use moat_plan::ProcessSpec;

use crate::args::Exec;
use crate::state::{self, Record, VmRecord};
use crate::sys::{self, Forked};

/// Signals the helper forwards to the workload; KILL ends the VM.
pub fn check_signal(rec: &Record, sig: i32) -> anyhow::Result<()> {
    if sig != libc::SIGKILL && !moat_vm::session::FORWARDED_SIGNALS.contains(&sig) {
        bail!(
            "container {:?} runs in a micro-VM, whose helper forwards only INT, TERM, HUP, QUIT, USR1 and USR2 to the workload (KILL ends the VM); signal {sig} cannot reach it",
            rec.id
        );
    }
    Ok(())
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// `pause` (`frozen`) or `resume` of a VM container: the VMM's cgroup
/// (QEMU: the vCPUs and device threads, so the guest stops where it is)
/// and the container's (the helper, so nothing is relayed meanwhile).
/// The guest's clock goes on, as a paused runc container's does: its
/// timers fire on resume. Paused last, resumed first: `state` says
/// `paused` while any part is frozen.
pub fn set_frozen(rec: &Record, vm: &VmRecord, frozen: bool) -> anyhow::Result<()> {
    refuse_member(rec, vm, if frozen { "pause" } else { "resume" })?;
    let vmm = moat_cgroup::find(&vm.vm_id)
        .ok()
        .flatten()
        .with_context(|| {
            format!(
                "container {:?}: the cgroup of its micro-VM (vm-{}) is gone",
                rec.id, vm.vm_id
            )
        })?;
    let what = if frozen { "freezing" } else { "thawing" };
    if frozen {
        vmm.freeze()
            .with_context(|| format!("container {:?}: {what} its micro-VM", rec.id))?;
        if let Err(e) = rec.cgroup.set_frozen(true) {
            let _ = vmm.thaw();
            return Err(anyhow::Error::from(e)
                .context(format!("container {:?}: {what} its helper", rec.id)));
        }
    } else {
        vmm.thaw()
            .with_context(|| format!("container {:?}: {what} its micro-VM", rec.id))?;
        rec.cgroup
            .set_frozen(false)
            .with_context(|| format!("container {:?}: {what} its helper", rec.id))?;
    }
    Ok(())
}

/// A pod's further container shares its pod's VM: what acts on the
/// whole VM is the pod sandbox's to do.
pub fn refuse_member(rec: &Record, vm: &VmRecord, what: &str) -> anyhow::Result<()> {
    if let Some(sandbox) = &vm.member_of {
        bail!(
            "container {:?} runs in the micro-VM of its pod (sandbox {sandbox:?}), which it shares: {what} acts on the whole VM; {what} the pod's sandbox container instead",
            rec.id
        );
    }
    Ok(())
}

/// Ends a VM container's helper (if it still runs) and removes what the
/// VM left: the cleanup watcher removes the VMM's cgroups and the root
/// disk once the helper is gone; this waits for it, then removes anything
/// a watcher killed before its work left behind.
pub fn delete(rec: &Record, vm: &VmRecord) -> anyhow::Result<()> {
    if state::alive(rec) {
        // A paused container: a frozen (v1) helper would not die of the
        // SIGKILL below until thawed.
        if rec.cgroup.is_frozen() {
            let _ = set_frozen(rec, vm, false);
        }
        if let Some(p) = rustix::process::Pid::from_raw(rec.pid) {
            if let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
                if state::alive(rec) {
                    let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
                }
            }
        }
        if !wait_until(Duration::from_secs(10), || !state::alive(rec)) {
            bail!(
                "container {:?}: its micro-VM helper (pid {}) did not end after SIGKILL",
                rec.id,
                rec.pid
            );
        }
    }
    // The cleanup watcher ends QEMU and removes its cgroups once the
    // helper is gone; wait for it before removing what is left.
    wait_until(Duration::from_secs(10), || {
        moat_cgroup::stats_for(&vm.vm_id).is_none()
    });
    rec.cgroup.kill_all();
    let _ = moat_cgroup::cleanup(&vm.vm_id);
    moat_vm::rootfs::sweep(&vm.state_root);
    Ok(())
}

/// The exec channel of a running VM container, from its helper.
pub(crate) fn channel(root: &Path, id: &str) -> anyhow::Result<std::os::fd::OwnedFd> {
    let path = crate::vm::exec_socket(root, id);
    let s = UnixStream::connect(&path).with_context(|| {
        format!(
            "container {id:?}: connecting to its helper at {}",
            path.display()
        )
    })?;
    sys::recv_fd(s.as_fd())
        .with_context(|| format!("container {id:?}: reading from its helper"))?
        .with_context(|| format!("container {id:?}: its helper closed the exec socket"))
}

/// The process `exec` asks for, as exec.rs worked it out.
pub struct ExecProcess {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub tty: bool,
}

/// `exec` in a VM container: the process runs in the guest through the
/// agent, under the container's plan. With `--detach`, a helper forked
/// here relays its stdio and exits with its status (the `--pid-file` pid).
pub fn exec(root: &Path, a: &Exec, rec: &Record, x: ExecProcess) -> anyhow::Result<i32> {
    let tty = x.tty;
    let process = ProcessSpec {
        args: x.args,
        env: x.env,
        cwd: x.cwd,
        uid: x.uid,
        gid: x.gid,
        additional_gids: x.groups,
        tty,
        interactive: tty,
        hostname: String::new(),
    };
    // A pod's further container: through its pod's VM, by its name there.
    let (control, place) = match rec.vm.as_ref().and_then(|v| v.member_of.clone()) {
        Some(sandbox) => (
            channel(root, &sandbox)?,
            moat_vm::exec::Place::Member(rec.id.clone()),
        ),
        None => (channel(root, &rec.id)?, moat_vm::exec::Place::Workload),
    };
    let peer = crate::vm::console_peer(a.console_socket.as_deref(), tty)?;
    let run = move || -> i32 {
        if let Some(t) = &peer {
            if let Err(e) = sys::take_terminal(t.as_fd()).and_then(|()| sys::raw_mode(t.as_fd())) {
                eprintln!("moat-oci: error: exec: taking the terminal: {e}");
                return 125;
            }
        }
        drop(peer);
        // With a terminal, its size follows the caller's (ResizePty).
        let winch = tty && sys::block_signals(&[libc::SIGWINCH]).is_ok();
        let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        match moat_vm::exec::send(
            control.as_fd(),
            &process,
            tty,
            place,
            [i.as_fd(), o.as_fd(), e.as_fd()],
        )
        .and_then(|call| {
            if let (true, Ok(relay)) = (winch, call.try_clone()) {
                std::thread::spawn(move || {
                    while sys::wait_signals(&[libc::SIGWINCH]).is_ok() {
                        let size = moat_vm::exec::terminal_size(std::io::stdin().as_fd());
                        if let Some((rows, cols)) = size {
                            if relay.resize(rows, cols).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
            call.wait()
        }) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("moat-oci: error: exec: {:#}", anyhow::Error::from(err));
                125
            }
        }
    };
    if !a.detach && !tty {
        return Ok(run());
    }
    // A helper process: the pid-file's with --detach; with a terminal
    // always (it becomes a session leader, which this process may not).
    match sys::fork().context("forking the exec helper")? {
        Forked::Child => std::process::exit(run()),
        Forked::Parent(pid) => {
            if let Some(f) = &a.pid_file {
                crate::create::write_pid_file(f, pid)?;
            }
            if a.detach {
                return Ok(0);
            }
            Ok(crate::reap(pid))
        }
    }
}

/// The fields of `linux.resources` a running micro-VM can take: CPU
/// bandwidth and weight, on the VMM's host cgroup (the vCPUs are QEMU's
/// threads). The guest's memory is its RAM and its pids limit is the
/// agent's, both fixed at boot; the guest has only the devices moat gives
/// it; blkio, hugetlb, network, rdma and cpuset settings have no VMM
/// counterpart moat-oci manages.
const UPDATABLE_CPU: [&str; 3] = ["quota", "period", "shares"];

/// The first field of `resources` (an `update --resources` object) that a
/// micro-VM container cannot take, as `linux.resources.a.b`.
pub fn refused_field(resources: &serde_json::Value) -> Option<String> {
    let obj = resources.as_object()?;
    for (k, v) in obj {
        let absent = v.is_null()
            || v.as_array().is_some_and(|a| a.is_empty())
            || v.as_object()
                .is_some_and(|o| o.values().all(|x| x.is_null()));
        if absent {
            continue;
        }
        if k != "cpu" {
            let sub = v
                .as_object()
                .and_then(|o| o.iter().find(|(_, x)| !x.is_null()).map(|(s, _)| s.clone()));
            return Some(match sub {
                Some(s) => format!("linux.resources.{k}.{s}"),
                None => format!("linux.resources.{k}"),
            });
        }
        for (s, x) in v.as_object().into_iter().flatten() {
            let blank = x.is_null() || x.as_str().is_some_and(str::is_empty);
            if !blank && !UPDATABLE_CPU.contains(&s.as_str()) {
                return Some(format!("linux.resources.cpu.{s}"));
            }
        }
    }
    None
}

/// Drops from `resources` the memory and pids limits equal to the ones
/// the container already has (kubelet and podman resend them with every
/// update): only a change is refused.
pub fn drop_unchanged(rec: &Record, resources: &mut serde_json::Value) {
    for (section, key, current) in [
        ("memory", "limit", rec.cgroup.memory_limit()),
        ("pids", "limit", rec.cgroup.pids_limit()),
    ] {
        let Some(obj) = resources.get_mut(section).and_then(|v| v.as_object_mut()) else {
            continue;
        };
        if obj
            .get(key)
            .and_then(|v| v.as_i64())
            .is_some_and(|v| Some(v) == current)
        {
            obj.remove(key);
        }
    }
}

/// Why `field` cannot change in a running micro-VM, and the way out.
pub fn refusal(id: &str, field: &str) -> String {
    let why = if field.starts_with("linux.resources.memory.") {
        "its memory is the guest's RAM, fixed when the VM boots"
    } else if field.starts_with("linux.resources.pids.") {
        "its pids limit is the guest's, set when the workload starts"
    } else if field.starts_with("linux.resources.devices") {
        "its guest has only the devices moat gives it, whatever the devices cgroup says"
    } else {
        "moat-oci applies only CPU quota, period and shares to a running micro-VM"
    };
    format!("update {field} of container {id:?}: not possible for a micro-VM container ({why}); recreate the container with the new value, or use moat.dev/isolation=sandbox")
}

/// The VMM's cpu cgroup (`<cpu hierarchy>/moat/vm-<id>`), made by moat-vm
/// for every OCI VM container (vm.rs gives each a CPU bandwidth).
fn vmm_cpu_dir(vm: &VmRecord) -> anyhow::Result<(moat_cgroup::Version, std::path::PathBuf)> {
    let h = moat_cgroup::Hierarchies::host().context("reading this host's cgroup hierarchies")?;
    let (v, mount) = h
        .find("cpu")
        .context("this host has no cpu cgroup controller")?;
    let dir = mount.join("moat").join(format!("vm-{}", vm.vm_id));
    if !dir.is_dir() {
        bail!(
            "the micro-VM's cpu cgroup {} is gone (the VM ended, or was created by an older moat-oci without one)",
            dir.display()
        );
    }
    Ok((v, dir))
}

/// cgroup v1 `cpu.shares` as v2 `cpu.weight` (runc's conversion).
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// Writes CPU quota, period and shares to the VMM's cgroup. A quota
/// without a period keeps the group's period.
pub fn apply_cpu(
    rec: &Record,
    vm: &VmRecord,
    req: &crate::bundle::CgroupRequest,
) -> anyhow::Result<()> {
    if req.cpu_quota.is_none() && req.cpu_period.is_none() && req.cpu_shares.is_none() {
        return Ok(());
    }
    let (v, dir) = vmm_cpu_dir(vm).with_context(|| format!("container {:?}", rec.id))?;
    let write = |file: &str, value: String| -> anyhow::Result<()> {
        let p = dir.join(file);
        std::fs::write(&p, &value).with_context(|| format!("writing {value:?} to {}", p.display()))
    };
    match v {
        moat_cgroup::Version::V2 => {
            if req.cpu_quota.is_some() || req.cpu_period.is_some() {
                let cur = std::fs::read_to_string(dir.join("cpu.max")).unwrap_or_default();
                let mut it = cur.split_whitespace();
                let (cur_q, cur_p) = (it.next().unwrap_or("max"), it.next().unwrap_or("100000"));
                let q = match req.cpu_quota {
                    Some(q) if q > 0 => q.to_string(),
                    Some(_) => "max".to_string(),
                    None => cur_q.to_string(),
                };
                let p = req.cpu_period.map_or(cur_p.to_string(), |p| p.to_string());
                write("cpu.max", format!("{q} {p}"))?;
            }
            if let Some(s) = req.cpu_shares {
                write("cpu.weight", shares_to_weight(s).to_string())?;
            }
        }
        moat_cgroup::Version::V1 => {
            if let Some(p) = req.cpu_period.filter(|p| *p > 0) {
                write("cpu.cfs_period_us", p.to_string())?;
            }
            if let Some(q) = req.cpu_quota {
                write(
                    "cpu.cfs_quota_us",
                    if q > 0 { q.to_string() } else { "-1".into() },
                )?;
            }
            if let Some(s) = req.cpu_shares.filter(|s| *s > 0) {
                write("cpu.shares", s.to_string())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_cpu_bandwidth_and_weight_pass_and_the_rest_is_named() {
        for ok in [
            json!({}),
            json!({"cpu": {"quota": 50000, "period": 100000, "shares": 512}}),
            // What callers send for "unset": nulls, empty strings and lists.
            json!({"cpu": {"quota": 1000, "cpus": "", "mems": null}, "devices": [], "memory": {"limit": null}, "hugepageLimits": []}),
        ] {
            assert_eq!(refused_field(&ok), None, "{ok}");
        }
        for (asked, field) in [
            (
                json!({"memory": {"limit": 1 << 27}}),
                "linux.resources.memory.limit",
            ),
            (json!({"pids": {"limit": 10}}), "linux.resources.pids.limit"),
            (
                json!({"cpu": {"quota": 1000, "cpus": "0-1"}}),
                "linux.resources.cpu.cpus",
            ),
            (
                json!({"devices": [{"allow": true}]}),
                "linux.resources.devices",
            ),
            (
                json!({"blockIO": {"weight": 10}}),
                "linux.resources.blockIO.weight",
            ),
        ] {
            assert_eq!(refused_field(&asked).as_deref(), Some(field), "{asked}");
        }
        assert!(refusal("c", "linux.resources.memory.limit").contains("the guest's RAM"));
    }

    #[test]
    fn shares_map_to_weights_as_runc_maps_them() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
