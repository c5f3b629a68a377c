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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(c) => cmd::image::run(&cli.global, c),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("moat: error: {err:#}");
            ExitCode::from(global::EXIT_FAILURE)
        }
    }
}
