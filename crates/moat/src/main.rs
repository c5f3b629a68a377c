//! The `moat` command line. Each subcommand lives in its own module under
//! `cmd/`; this file only parses arguments and dispatches.

#![forbid(unsafe_code)]

#[macro_use]
mod display;
mod cmd;
mod global;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::global::GlobalArgs;

/// moat runs OCI images inside their own micro-VM (own kernel) or a hardened
/// namespace sandbox, under a declarative security policy.
#[derive(Debug, Parser)]
#[command(name = "moat", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Import, list, inspect, export and remove images.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// List images (podman's spelling of `moat image ls`).
    Images(cmd::image::LsArgs),
    /// Check, explain, compile, export and diff security policies.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Scan an image, a rootfs or an SBOM for known vulnerabilities.
    Scan(cmd::scan::ScanArgs),
    /// Import OSV advisories and show the advisory database status.
    #[command(subcommand)]
    Vulndb(cmd::vulndb::VulndbCommand),
    /// Pull an image from a registry.
    Pull(cmd::registry::PullArgs),
    /// Push an image from the store to a registry.
    Push(cmd::registry::PushArgs),
    /// Store credentials for a registry.
    Login(cmd::registry::LoginArgs),
    /// Remove stored credentials for a registry.
    Logout(cmd::registry::LogoutArgs),
    /// Generate signing keys (cosign format).
    #[command(subcommand)]
    Key(cmd::trust::KeyCommand),
    /// Sign an image in a registry (cosign-style signature beside it).
    Sign(cmd::trust::SignArgs),
    /// Verify an image's signature in a registry against a public key.
    Verify(cmd::trust::VerifyArgs),
    /// Run a command in a new container from an image.
    Run(cmd::run::RunArgs),
    /// Create a container without starting it (`moat start` runs it).
    Create(cmd::container::CreateArgs),
    /// Start created or stopped containers (in the background).
    Start(cmd::container::StartArgs),
    /// Stop running containers: SIGTERM, then SIGKILL after a timeout.
    Stop(cmd::container::StopArgs),
    /// Stop and start containers again.
    Restart(cmd::container::StopArgs),
    /// Remove stopped containers (-f: running ones too).
    Rm(cmd::container::RmArgs),
    /// Wait for containers to stop; print their exit statuses.
    Wait(cmd::container::WaitArgs),
    /// List containers (running ones; -a: all).
    Ps(cmd::ps::PsArgs),
    /// Send a signal to a running container.
    Kill(cmd::kill::KillArgs),
    /// Run a command in a running container (where its policy allows exec).
    Exec(cmd::exec::ExecArgs),
    /// Print a container's output (detached containers).
    Logs(cmd::logs::LogsArgs),
    /// Show a container's record, process and policy as JSON.
    Inspect(cmd::inspect::InspectArgs),
    /// Show containers' memory, CPU and process figures.
    Stats(cmd::inspect::StatsArgs),
    /// The monitor of a detached container (started by run -d and start).
    #[command(hide = true)]
    ContainerMonitor(cmd::container::MonitorArgs),
    /// Create, list, inspect and remove named volumes (both backends).
    #[command(subcommand)]
    Volume(cmd::volume::VolumeCommand),
    /// Build and inspect the minimal guest kernel of the vm backend.
    #[command(subcommand)]
    Kernel(cmd::kernel::KernelCommand),
    /// Generate least-privilege policies from an image (record, static, merge).
    #[command(subcommand)]
    Profile(cmd::profile::ProfileCommand),
    /// Measure the attack surface a policy or image leaves open.
    Surface(cmd::surface::SurfaceArgs),
    /// Create or update objects in moatd from manifests (Kubernetes subset).
    Apply(cmd::moatd::ApplyArgs),
    /// Delete moatd objects named in manifests or as TYPE/NAME.
    Delete(cmd::moatd::DeleteArgs),
    /// List moatd's deployments, pods, volumes or secrets.
    Get(cmd::moatd::GetArgs),
    /// Show one moatd object in detail, with its pods and events.
    Describe(cmd::moatd::DescribeArgs),
    /// Watch, list and undo the rollouts of a deployment.
    #[command(subcommand)]
    Rollout(cmd::moatd::RolloutCommand),
    /// moatd's events (-f: keep following).
    Events(cmd::moatd::EventsArgs),
    /// Verify moatd's hash-chained audit log.
    #[command(subcommand)]
    Audit(cmd::moatd::AuditCommand),
    /// Developer helpers (test images).
    #[command(hide = true)]
    #[command(subcommand)]
    Dev(cmd::dev::DevCommand),
}

fn main() -> ExitCode {
    if let Err(e) = moat_runtime::startup::cloexec_inherited_fds() {
        eprintln!("moat: error: marking inherited descriptors close-on-exec: {e}");
        return ExitCode::from(global::EXIT_FAILURE);
    }
    let invoker = match global::detect_invoker() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("moat: error: {e}");
            return ExitCode::from(global::EXIT_FAILURE);
        }
    };
    global::scrub_env(&invoker);
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let runs_container = global::runs_container(&argv);
    let mut cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        // Help and --version exit 0; a usage error of a command that runs
        // containers exits 125, like any failure before its workload.
        Err(e) if e.use_stderr() && runs_container => {
            let _ = e.print();
            return ExitCode::from(global::EXIT_NOT_STARTED);
        }
        Err(e) => e.exit(),
    };
    cli.global.invoker = invoker;
    cli.global.restrict();
    // Commands that run a container answer 125 for any failure of moat's
    // own before the workload runs, so that it never reads as the
    // workload's exit status (podman's convention).
    let is_run = matches!(
        cli.command,
        Command::Run(_)
            | Command::Create(_)
            | Command::Start(_)
            | Command::Exec(_)
            | Command::ContainerMonitor(_)
    );
    // A closed output pipe ends every command quietly (SIGPIPE's default)
    // but `run`, whose supervisor must outlive a reader that went away to
    // stop and clean up the container; moat itself prints nothing there
    // while the workload runs, and the workload gets the default back.
    if !is_run {
        moat_runtime::startup::default_sigpipe();
    }
    let result = match cli.command {
        Command::Image(c) => cmd::image::run(&cli.global, c),
        Command::Images(a) => cmd::image::run(&cli.global, cmd::image::ImageCommand::Ls(a)),
        Command::Policy(c) => cmd::policy::run(&cli.global, c),
        Command::Scan(c) => cmd::scan::run(&cli.global, c),
        Command::Vulndb(c) => cmd::vulndb::run(&cli.global, c),
        Command::Pull(c) => cmd::registry::pull(&cli.global, c),
        Command::Push(c) => cmd::registry::push(&cli.global, c),
        Command::Login(c) => cmd::registry::login(c),
        Command::Logout(c) => cmd::registry::logout(c),
        Command::Key(c) => cmd::trust::key(c),
        Command::Sign(c) => cmd::trust::sign(c),
        Command::Verify(c) => cmd::trust::verify(c),
        Command::Run(c) => cmd::run::run(&cli.global, c),
        Command::Create(c) => cmd::container::create(&cli.global, c),
        Command::Start(c) => cmd::container::start(&cli.global, c),
        Command::Stop(c) => cmd::container::stop(&cli.global, c),
        Command::Restart(c) => cmd::container::restart(&cli.global, c),
        Command::Rm(c) => cmd::container::rm(&cli.global, c),
        Command::Wait(c) => cmd::container::wait(&cli.global, c),
        Command::Exec(c) => cmd::exec::run(&cli.global, c),
        Command::Logs(c) => cmd::logs::run(&cli.global, c),
        Command::Inspect(c) => cmd::inspect::inspect(&cli.global, c),
        Command::Stats(c) => cmd::inspect::stats(&cli.global, c),
        Command::ContainerMonitor(c) => cmd::container::monitor(&cli.global, c),
        Command::Ps(c) => cmd::ps::run(&cli.global, c),
        Command::Kill(c) => cmd::kill::run(&cli.global, c),
        Command::Kernel(c) => cmd::kernel::run(&cli.global, c),
        Command::Volume(c) => cmd::volume::run(&cli.global, c),
        Command::Profile(c) => cmd::profile::run(&cli.global, c),
        Command::Surface(c) => cmd::surface::run(&cli.global, c),
        Command::Dev(c) => cmd::dev::run(&cli.global, c),
        Command::Apply(c) => cmd::moatd::apply(c),
        Command::Delete(c) => cmd::moatd::delete(c),
        Command::Get(c) => cmd::moatd::get(c),
        Command::Describe(c) => cmd::moatd::describe(c),
        Command::Rollout(c) => cmd::moatd::rollout(c),
        Command::Events(c) => cmd::moatd::events(c),
        Command::Audit(c) => cmd::moatd::audit(c),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            errln!("moat: error: {err:#}");
            let not_started = err.downcast_ref::<global::NotStarted>().is_some();
            ExitCode::from(if is_run || not_started {
                global::EXIT_NOT_STARTED
            } else {
                global::EXIT_FAILURE
            })
        }
    }
}
