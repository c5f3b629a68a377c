//! `moat surface`: measure the attack surface a policy or image leaves open.

use std::process::ExitCode;

use anyhow::Context;
use moat_profile::measure::{self, Measurement};
use moat_profile::surface::{self, Surface};

use crate::global::{BeforeStart, GlobalArgs};

#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
        moat surface restricted\n  \
        moat surface ./web.yaml --format json | jq .syscalls.allowed_count\n  \
        moat surface measure --rootfs ./rootfs --isolation crun -- /bin/sh -c 'echo hi'\n\n\
        The score runs from 0 (nothing reachable) to 100; weights in docs/surface.md."
)]
pub struct SurfaceArgs {
    #[command(subcommand)]
    pub command: Option<SurfaceCommand>,
    /// A policy file, a built-in policy name (`baseline`, `restricted`), or
    /// an image (its static profile is measured).
    pub target: Option<String>,
    /// `table` for people, `json` for scripts (`syscalls.allowed_count`,
    /// `syscalls.allowed`).
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum SurfaceCommand {
    /// Measure the host kernel a running workload reaches, per backend.
    ///
    /// (a) distinct host syscalls (and ioctl requests) of the tenant's
    /// host-side processes, from the kernel's syscall tracepoints: the
    /// workload's processes for the sandbox and crun, the QEMU process for
    /// the vm backend. (b) where the kernel lets the function tracer run,
    /// the distinct kernel functions reached (Bottomley's Horizontal Attack
    /// Profile); otherwise it says why not. Needs root.
    #[command(after_help = "Example:\n  \
        moat surface measure busybox --isolation all -- /bin/sh -c 'echo hi; ls /'")]
    Measure(MeasureArgs),
}

#[derive(Debug, clap::Args)]
pub struct MeasureArgs {
    #[command(flatten)]
    pub source: super::profile::Source,
    /// Backend(s) to measure.
    #[arg(long, default_value = "all", value_parser = ["sandbox", "vm", "crun", "all"])]
    pub isolation: String,
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Accelerator for the vm backend (`kvm` or `tcg`; default: KVM when
    /// the cached probe shows a guest boots, else TCG). The probe runs
    /// before measuring, so its test guest is never counted.
    #[arg(long, value_parser = ["kvm", "tcg"])]
    pub accel: Option<String>,
    /// Policy the sandbox and vm runs get (a file or a built-in name;
    /// default: `moat run`'s). Under `network: egress` the network helper
    /// (pasta) is measured too, in a run of its own.
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<String>,
    /// Command to run (default: the image's entrypoint and command).
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: SurfaceArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(SurfaceCommand::Measure(m)) => run_measure(global, m),
        None => {
            let target = args.target.as_deref().context(
                "name a policy file, a built-in policy or an image: moat surface POLICY|IMAGE",
            )?;
            let (plan, profile) = super::profile::compile_target(global, target)?;
            let s = surface::of_plan(&plan)?;
            if args.format == "json" {
                let mut v = serde_json::to_value(&s)?;
                if let (Some(p), Some(obj)) = (&profile, v.as_object_mut()) {
                    obj.insert("image_profile".into(), serde_json::to_value(p)?);
                }
                println!(
                    "{}",
                    crate::display::json(serde_json::to_string_pretty(&v)?)
                );
            } else {
                print!("{}", render(&s));
                if let Some(p) = &profile {
                    for line in crate::cmd::auto::describe(p) {
                        outln!("image        {line}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The human-readable report.
pub fn render(s: &Surface) -> String {
    let mut o = String::new();
    let sc = &s.syscalls;
    o.push_str(&format!("policy       {}\n", s.policy));
    o.push_str(&format!("isolation    {} ({})\n", s.isolation, s.kernel));
    o.push_str(&format!(
        "syscalls     {} of {} allowed ({} conditionally); Docker's default allows ~{} of ~{}; Confine disables >= {} of {}\n",
        sc.allowed_count,
        sc.total,
        sc.conditional.len(),
        sc.docker_default_allowed,
        sc.docker_default_total,
        sc.confine_disabled_at_least,
        sc.confine_total
    ));
    o.push_str(&format!(
        "capabilities {} (Docker's default: {}){}\n",
        s.capabilities.count,
        s.capabilities.docker_default_count,
        if s.capabilities.names.is_empty() {
            String::new()
        } else {
            format!(": {}", s.capabilities.names.join(", "))
        }
    ));
    o.push_str(&format!(
        "devices      {} beyond the standard {}{}\n",
        s.devices.len(),
        surface::STANDARD_DEVICES.len(),
        if s.devices.is_empty() {
            String::new()
        } else {
            format!(": {}", s.devices.join(", "))
        }
    ));
    o.push_str(&format!(
        "writable     {}\n",
        if s.writable_paths.is_empty() {
            "nothing (read-only root)".to_string()
        } else if s.writable_paths[0].starts_with("/ ") {
            s.writable_paths.join(", ")
        } else {
            format!("{} (root read-only)", s.writable_paths.join(", "))
        }
    ));
    o.push_str(&format!(
        "network      {}{}\n",
        s.network,
        if s.network == "egress" {
            format!(
                " ({} rules, {} published ports)",
                s.egress_rules, s.published_ports
            )
        } else {
            String::new()
        }
    ));
    o.push_str(&format!("host reach   {}\n", s.host_reach.join("; ")));
    o.push_str(&format!(
        "score        {:.1} / 100 (lower is smaller; Docker's defaults: {:.1})\n",
        s.score, s.docker_default_score
    ));
    o.push_str(&format!("allowed      {}\n", sc.allowed.join(" ")));
    o
}

fn run_measure(global: &GlobalArgs, args: MeasureArgs) -> anyhow::Result<ExitCode> {
    // Failures before anything runs exit 125 (`NotStarted`).
    super::profile::check_runnable(global, &args.source).before_start()?;
    let target = super::profile::resolve_target(global, &args.source).before_start()?;
    let command = if args.command.is_empty() {
        target.argv.clone()
    } else {
        args.command.clone()
    };
    if command.is_empty() {
        return Err(anyhow::anyhow!(
            "{}: no command to run; pass one after `--`",
            target.label
        ))
        .before_start();
    }
    let backends: Vec<&str> = match args.isolation.as_str() {
        "all" => vec!["sandbox", "vm", "crun"],
        one => vec![one],
    };
    let mut results: Vec<Result<Measurement, String>> = Vec::new();
    for backend in &backends {
        let r = match *backend {
            // crun runs the workload under no moat policy and no RBAC:
            // only root acting as itself may use it.
            "crun" if !global.invoker.is_root() => Err(format!(
                "not measured: crun runs the workload without moat's policy or RBAC, and moat runs for {}; only root acting as itself may measure crun",
                global.invoker.describe()
            )),
            "crun" => measure::measure_crun(&target.rootfs, &command).map_err(|e| format!("{e:#}")),
            other => measure_moat(
                global,
                &args.source,
                other,
                args.accel.as_deref(),
                args.policy.as_deref(),
                &command,
            ),
        };
        results.push(r.map_err(|e| format!("{backend}: {e}")));
    }
    if args.format == "json" {
        let doc: Vec<serde_json::Value> = results
            .iter()
            .zip(&backends)
            .map(|(r, b)| match r {
                Ok(m) => serde_json::to_value(m).unwrap_or_default(),
                Err(e) => serde_json::json!({ "backend": b, "error": e }),
            })
            .collect();
        println!(
            "{}",
            crate::display::json(serde_json::to_string_pretty(&doc)?)
        );
    } else {
        for r in &results {
            match r {
                Ok(m) => {
                    println!(
                        "{:<8} {:>3} distinct host syscalls, {} ioctl requests, {} tasks, exit {} ({}; recorded with {})",
                        m.backend,
                        m.syscalls_count,
                        m.ioctl_requests.len(),
                        m.tasks,
                        m.exit_code,
                        m.footprint,
                        m.recorder
                    );
                    match (&m.hap_functions, &m.hap_unavailable) {
                        (Some(n), _) => println!("         HAP: {n} distinct kernel functions"),
                        (None, Some(why)) => println!("         HAP: not measured: {why}"),
                        _ => {}
                    }
                    println!("         {}", m.syscalls.join(" "));
                    if let Some(h) = &m.network_helper {
                        println!(
                            "         network helper ({}, jailed): {} distinct host syscalls, {} ioctl requests, {} tasks",
                            h.program,
                            h.syscalls_count,
                            h.ioctl_requests.len(),
                            h.tasks
                        );
                        println!("         {}", h.syscalls.join(" "));
                    }
                }
                // May quote the workload's or the guest's error text.
                Err(e) => outln!("{e}"),
            }
        }
    }
    Ok(if results.iter().all(|r| r.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::global::EXIT_FAILURE)
    })
}

/// Whether `policy` (a file or built-in name) gives the container an
/// `egress` network, which a helper process (pasta) serves.
fn needs_network_helper(policy: Option<&str>) -> Result<bool, String> {
    let Some(p) = policy else {
        // `moat run`'s default (`auto`, baseline's network): none.
        return Ok(false);
    };
    if p == "auto" {
        return Ok(false);
    }
    let policy = moat_policy::Policy::resolve(p).map_err(|e| format!("--policy {p}: {e}"))?;
    Ok(policy.spec.network.mode == moat_policy::model::NetworkMode::Egress)
}

/// Measures `moat run --isolation BACKEND` itself: for the sandbox the
/// workload's processes, for the vm the QEMU process; and, when the
/// policy's network needs one, the network helper (pasta) in a second run.
fn measure_moat(
    global: &GlobalArgs,
    source: &super::profile::Source,
    backend: &str,
    accel: Option<&str>,
    policy: Option<&str>,
    command: &[String],
) -> Result<Measurement, String> {
    let helper = needs_network_helper(policy)?;
    // Settle the accelerator first: `auto` would otherwise boot the KVM
    // probe guest inside the traced run and measure that QEMU instead.
    let accel = match (backend, accel) {
        ("vm", Some(a)) => Some(a.to_string()),
        ("vm", None) => Some(if moat_vm::accelerator_works(&global.root) {
            "kvm".to_string()
        } else {
            "tcg".to_string()
        }),
        _ => None,
    };
    let argv = super::profile::moat_run_argv(
        global,
        source,
        backend,
        policy.map(std::path::Path::new),
        accel.as_deref(),
        command,
    )
    .map_err(|e| format!("{e:#}"))?;
    let (program, footprint) = if backend == "vm" {
        (
            Some("qemu-system-x86_64"),
            "the QEMU process (the tenant's host-side footprint)",
        )
    } else if helper {
        // moat executes `nft` and pasta before the workload: the workload
        // is the first exec of its own program.
        (
            command.first().map(String::as_str),
            "the workload's processes on the host kernel",
        )
    } else {
        (None, "the workload's processes on the host kernel")
    };
    let after = Some("moat");
    let outcome = measure::trace(&measure::TraceRun {
        argv: &argv,
        after,
        program,
        capture: true,
        ..measure::TraceRun::default()
    })
    .map_err(|e| format!("{e:#}"))?;
    if let Some(why) = &outcome.fallback {
        eprintln!("moat: notice: {why}");
    }
    let mut m = measure::measurement(backend, footprint, outcome.code, &outcome.recorded);
    m.recorder = outcome.recorder.to_string();
    if backend == "vm" {
        if let Some(a) = &accel {
            m.footprint = format!("{footprint}, {a}");
        }
    }
    match measure::hap(&argv, after, program) {
        Ok(Ok(n)) => m.hap_functions = Some(n),
        Ok(Err(why)) => m.hap_unavailable = Some(why),
        Err(e) => m.hap_unavailable = Some(format!("{e:#}")),
    }
    if helper {
        let h = measure::measure_helper(&argv, after, "pasta")
            .map_err(|e| format!("the network helper (pasta): {e:#}"))?;
        m.network_helper = Some(h);
    }
    Ok(m)
}
