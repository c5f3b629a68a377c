//! The `moat` command line. Each subcommand lives in its own module under
//! `cmd/`; this file only parses arguments and dispatches.

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
    /// List running containers.
    Ps(cmd::ps::PsArgs),
    /// Send a signal to a running container.
    Kill(cmd::kill::KillArgs),
    /// Build and inspect the minimal guest kernel of the vm backend.
    #[command(subcommand)]
    Kernel(cmd::kernel::KernelCommand),
    /// Generate least-privilege policies from an image (record, static, merge).
    #[command(subcommand)]
    Profile(cmd::profile::ProfileCommand),
    /// Measure the attack surface a policy or image leaves open.
    Surface(cmd::surface::SurfaceArgs),
    /// Developer helpers (test images).
    #[command(hide = true)]
    #[command(subcommand)]
    Dev(cmd::dev::DevCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(c) => cmd::image::run(&cli.global, c),
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
        Command::Ps(c) => cmd::ps::run(&cli.global, c),
        Command::Kill(c) => cmd::kill::run(&cli.global, c),
        Command::Kernel(c) => cmd::kernel::run(&cli.global, c),
        Command::Profile(c) => cmd::profile::run(&cli.global, c),
        Command::Surface(c) => cmd::surface::run(&cli.global, c),
        Command::Dev(c) => cmd::dev::run(&cli.global, c),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("moat: error: {err:#}");
            ExitCode::from(global::EXIT_FAILURE)
        }
    }
}
