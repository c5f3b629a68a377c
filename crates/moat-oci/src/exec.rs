//! `exec`: another process in a running container, never stronger than
//! the container's policy (caps, filters, rlimits, no_new_privs).

use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context};
use moat_privdrop::{CapSets, DropSpec, Exec as ExecSpec};
use moat_sandbox::oci::{exec_in, ExecIn};

use crate::args::Exec;
use crate::state;

fn caps_of(
    set: &Option<oci_spec::runtime::Capabilities>,
    granted: &[String],
    which: &str,
    policy: &str,
) -> anyhow::Result<u64> {
    let mut mask = 0;
    for c in set.iter().flatten() {
        let full = serde_json::to_value(c)?.as_str().unwrap_or("").to_string();
        let name = full.trim_start_matches("CAP_");
        if !granted.iter().any(|g| g == name) {
            if moat_plan::caps::DOCKER_DEFAULT.contains(&name) {
                continue;
            }
            bail!("exec asks for capability {full} (capabilities.{which}), which policy {policy:?} does not grant");
        }
        if let Some(n) = moat_plan::caps::number(name) {
            mask |= 1 << n;
        }
    }
    Ok(mask)
}

pub fn exec(root: &Path, a: &Exec) -> anyhow::Result<i32> {
    let rec = state::load(root, &a.id)?;
    let st = state::status(&rec);
    if st != "running" {
        bail!(
            "container {:?} is {st}: exec needs a running container",
            a.id
        );
    }
    let d = &rec.exec;
    if !d.exec_allowed {
        bail!(
            "policy {:?} does not allow exec in its containers (exec: false); run the container under a policy with exec: true (annotation moat.dev/policy)",
            rec.policy
        );
    }
    let (args, env, cwd, uid, gid, groups, sets, tty) = match &a.process {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading --process {}", file.display()))?;
            let p: oci_spec::runtime::Process = serde_json::from_str(&text).with_context(|| {
                format!(
                    "--process {}: not a runtime-spec process object",
                    file.display()
                )
            })?;
            let sets = match p.capabilities() {
                Some(c) => {
                    let g = &d.policy_caps;
                    let bnd = caps_of(c.bounding(), g, "bounding", &rec.policy)?;
                    let e = caps_of(c.effective(), g, "effective", &rec.policy)?;
                    let pm = caps_of(c.permitted(), g, "permitted", &rec.policy)?;
                    let i = caps_of(c.inheritable(), g, "inheritable", &rec.policy)?;
                    let am = caps_of(c.ambient(), g, "ambient", &rec.policy)?;
                    CapSets {
                        bounding: bnd,
                        effective: e & pm,
                        permitted: pm & bnd,
                        inheritable: i & bnd,
                        ambient: am & pm & i & bnd,
                    }
                }
                None => CapSets::default(),
            };
            let u = p.user();
            (
                p.args().clone().unwrap_or_default(),
                p.env().clone().unwrap_or_default(),
                p.cwd().display().to_string(),
                u.uid(),
                u.gid(),
                u.additional_gids().clone().unwrap_or_default(),
                sets,
                p.terminal().unwrap_or(false) || a.tty,
            )
        }
        None => {
            let mut env = d.env.clone();
            env.extend(a.env.iter().cloned());
            let (uid, gid) = match &a.user {
                Some(u) => {
                    let (u, g) = u.split_once(':').unwrap_or((u.as_str(), "0"));
                    (
                        u.parse()
                            .with_context(|| format!("--user {u:?}: give UID[:GID] as numbers"))?,
                        g.parse()
                            .with_context(|| format!("--user group {g:?}: give a number"))?,
                    )
                }
                None => (d.uid, d.gid),
            };
            let mut sets = d.cap_sets();
            for c in &a.caps {
                let name = moat_plan::caps::canonical(c)
                    .with_context(|| format!("--cap {c:?}: unknown capability"))?;
                if !d.policy_caps.iter().any(|g| g == name) {
                    bail!("--cap {c}: policy {:?} does not grant it", rec.policy);
                }
                let bit = 1u64 << moat_plan::caps::number(name).unwrap_or(0);
                sets.bounding |= bit;
                sets.effective |= bit;
                sets.permitted |= bit;
                sets.inheritable |= bit;
                sets.ambient |= bit;
            }
            let mut groups = d.groups.clone();
            groups.extend(&a.additional_gids);
            (
                a.args.clone(),
                env,
                a.cwd.clone().unwrap_or_else(|| d.cwd.clone()),
                uid,
                gid,
                groups,
                sets,
                a.tty,
            )
        }
    };
    if args.is_empty() {
        bail!("exec: no command given (ARGS or --process FILE)");
    }
    if tty && a.console_socket.is_none() {
        bail!("exec --tty needs --console-socket");
    }
    if rec.vm.is_some() {
        return crate::vmops::exec(
            root,
            a,
            &rec,
            crate::vmops::ExecProcess {
                args,
                env,
                cwd,
                uid,
                gid,
                groups,
                tty,
            },
        );
    }
    let drop = DropSpec::unprivileged(uid, gid, &groups)
        .with_cwd(&cwd)?
        .with_capability_sets(sets)
        .with_raw_rlimits(&d.rlimits)?
        .with_extra_seccomp(&d.caller_seccomp)
        .with_extra_seccomp(&d.policy_seccomp);
    let drop = if d.no_new_privs || a.no_new_privs {
        drop
    } else {
        drop.with_new_privileges_allowed()
    };
    let kept: Vec<i32> = (3..3 + a.preserve_fds as i32).collect();
    let drop = drop.keep_fds(&kept);
    let exec = ExecSpec::new(&args, &env)?;
    let console = match (&a.console_socket, tty) {
        (Some(p), true) => Some(
            UnixStream::connect(p)
                .with_context(|| format!("connecting to --console-socket {}", p.display()))?,
        ),
        _ => None,
    };
    let x = ExecIn {
        init_pid: rec.pid,
        drop,
        exec,
        cgroup_procs: rec.cgroup.procs_files(),
        preserve_fds: a.preserve_fds,
    };
    let pid = exec_in(&x, console)?;
    if let Some(f) = &a.pid_file {
        crate::create::write_pid_file(f, pid)?;
    }
    if a.detach {
        return Ok(0);
    }
    Ok(crate::reap(pid))
}
