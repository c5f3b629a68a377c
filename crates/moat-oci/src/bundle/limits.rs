//! rlimits and cgroup limits: the caller's, each at most the policy's.

use moat_plan::Plan;

use super::CgroupRequest;

pub(super) fn rlimit_number(name: &str) -> Option<u32> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

pub(super) fn plan_rlimit_number(r: moat_plan::RlimitResource) -> u32 {
    use moat_plan::RlimitResource as R;
    match r {
        R::Nofile => libc::RLIMIT_NOFILE,
        R::Nproc => libc::RLIMIT_NPROC,
        R::Core => libc::RLIMIT_CORE,
        R::Memlock => libc::RLIMIT_MEMLOCK,
        R::Fsize => libc::RLIMIT_FSIZE,
        R::Stack => libc::RLIMIT_STACK,
    }
}

fn min_opt(a: Option<i64>, b: Option<u64>) -> Option<i64> {
    match (a.filter(|v| *v > 0), b) {
        (Some(a), Some(b)) => Some(a.min(b as i64)),
        (Some(a), None) => Some(a),
        (None, Some(b)) => Some(b as i64),
        (None, None) => None,
    }
}

/// The cgroup limits: the caller's, each at most the policy's.
pub(super) fn cgroup_request(
    linux: &oci_spec::runtime::Linux,
    plan: &Plan,
    id: &str,
) -> CgroupRequest {
    let path = linux
        .cgroups_path()
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("/moat-oci/{id}"));
    let r = linux.resources().clone().unwrap_or_default();
    let mem = r.memory().as_ref();
    let cpu = r.cpu().as_ref();
    let mut req = CgroupRequest {
        path,
        memory: min_opt(mem.and_then(|m| m.limit()), plan.cgroup.memory_bytes),
        memory_swap: mem.and_then(|m| m.swap()),
        pids: min_opt(r.pids().as_ref().map(|p| p.limit()), plan.cgroup.pids),
        cpu_quota: cpu.and_then(|c| c.quota()),
        cpu_period: cpu.and_then(|c| c.period()),
        cpu_shares: cpu.and_then(|c| c.shares()),
        cpuset_cpus: cpu.and_then(|c| c.cpus().clone()),
        devices: Vec::new(),
        files: Vec::new(),
    };
    let mut file = |ctl: &str, v1: &str, v2: &str, value: String, required: bool| {
        req.files
            .push((ctl.into(), v1.into(), v2.into(), value, required));
    };
    if let Some(m) = mem {
        if let Some(v) = m.reservation() {
            file(
                "memory",
                "memory.soft_limit_in_bytes",
                "memory.low",
                v.to_string(),
                true,
            );
        }
        if let Some(v) = m.kernel() {
            file(
                "memory",
                "memory.kmem.limit_in_bytes",
                "",
                v.to_string(),
                false,
            );
        }
        if let Some(v) = m.kernel_tcp() {
            file(
                "memory",
                "memory.kmem.tcp.limit_in_bytes",
                "",
                v.to_string(),
                false,
            );
        }
        if let Some(v) = m.swappiness() {
            file("memory", "memory.swappiness", "", v.to_string(), true);
        }
        if let Some(true) = m.disable_oom_killer() {
            file("memory", "memory.oom_control", "", "1".into(), true);
        }
    }
    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight() {
            file("blkio", "blkio.weight", "io.weight", w.to_string(), false);
        }
        if let Some(w) = b.leaf_weight() {
            file("blkio", "blkio.leaf_weight", "", w.to_string(), false);
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(w) = d.weight() {
                let v = format!("{}:{} {w}", d.major(), d.minor());
                file("blkio", "blkio.weight_device", "", v, false);
            }
        }
        for (list, v1) in [
            (
                b.throttle_read_bps_device(),
                "blkio.throttle.read_bps_device",
            ),
            (
                b.throttle_write_bps_device(),
                "blkio.throttle.write_bps_device",
            ),
            (
                b.throttle_read_iops_device(),
                "blkio.throttle.read_iops_device",
            ),
            (
                b.throttle_write_iops_device(),
                "blkio.throttle.write_iops_device",
            ),
        ] {
            for d in list.iter().flatten() {
                let v = format!("{}:{} {}", d.major(), d.minor(), d.rate());
                file("blkio", v1, "", v, false);
            }
        }
    }
    if let Some(n) = r.network() {
        if let Some(c) = n.class_id() {
            file("net_cls", "net_cls.classid", "", c.to_string(), false);
        }
        for p in n.priorities().iter().flatten() {
            let v = format!("{} {}", p.name(), p.priority());
            file("net_prio", "net_prio.ifpriomap", "", v, false);
        }
    }
    for h in r.hugepage_limits().iter().flatten() {
        let v1 = format!("hugetlb.{}.limit_in_bytes", h.page_size());
        let v2 = format!("hugetlb.{}.max", h.page_size());
        file("hugetlb", &v1, &v2, h.limit().to_string(), false);
    }
    if let Some(m) = plan.cgroup.cpu_millis {
        let period = req.cpu_period.unwrap_or(100_000);
        let cap = (m * period / 1000) as i64;
        req.cpu_quota = Some(req.cpu_quota.filter(|q| *q > 0).map_or(cap, |q| q.min(cap)));
        req.cpu_period = Some(period);
    }
    // Deny everything, then the caller's rules, then the devices every
    // container has (runc's order).
    req.devices.push((false, "a".into()));
    for d in r.devices().iter().flatten() {
        let kind = d
            .typ()
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "a".into());
        let num = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
        let rule = if kind == "a" {
            "a".to_string()
        } else {
            format!(
                "{kind} {}:{} {}",
                num(d.major()),
                num(d.minor()),
                d.access().clone().unwrap_or_else(|| "rwm".into())
            )
        };
        req.devices.push((d.allow(), rule));
    }
    for rule in [
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:1 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
    ] {
        req.devices.push((true, rule.into()));
    }
    for d in linux.devices().iter().flatten() {
        let kind = serde_json::to_value(d.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "c".into());
        if kind == "p" {
            continue; // not a device to the devices controller
        }
        let kind = if kind == "u" { "c".to_string() } else { kind };
        req.devices
            .push((true, format!("{kind} {}:{} rwm", d.major(), d.minor())));
    }
    req
}
