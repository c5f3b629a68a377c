//! `moat kernel`: build and inspect the minimal guest kernel of the vm backend.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use moat_vm::kernel::{self, Progress};

use crate::global::GlobalArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum KernelCommand {
    /// Build the guest kernel into the cache, or reuse the cached one.
    ///
    /// Extracts Debian's linux-source-6.1, applies `make tinyconfig` plus
    /// moat's config fragment (crates/moat-vm/kernel/moat.config), checks
    /// that every option took effect and compiles an uncompressed vmlinux
    /// (booted through PVH). The result is cached under
    /// ROOT/kernels/<key>/vmlinux, where the key hashes the fragment and the
    /// source tarball; every VM reuses it. Takes about 5 minutes on 2 cores.
    #[command(
        after_help = "Examples:\n  moat kernel build\n  moat --root /var/lib/moat kernel build --format json\n  MOAT_KERNEL_SOURCE=/usr/src/linux-source-6.1.tar.xz moat kernel build -j 4"
    )]
    Build {
        /// Parallel compile jobs (default: number of CPUs).
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Output format of the result.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Print the path of the guest kernel VMs would use (exit 1 if not built).
    #[command(after_help = "Examples:\n  moat kernel path\n  moat kernel path --format json")]
    Path {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

pub fn run(global: &GlobalArgs, cmd: KernelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KernelCommand::Build { jobs, format } => build(global, jobs, format),
        KernelCommand::Path { format } => {
            let p = kernel::locate(&global.root)?;
            match format {
                Format::Text => println!("{}", p.display()),
                Format::Json => println!("{}", serde_json::json!({ "path": p })),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn build(global: &GlobalArgs, jobs: Option<usize>, format: Format) -> anyhow::Result<ExitCode> {
    let jobs = jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let tty = std::io::stderr().is_terminal();
    let mut progress = Reporter::new(tty);
    let mut progress = |p: Progress| progress.report(p);
    let built = kernel::build(&global.root, jobs, &mut progress)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string(&built)?),
        Format::Text => {
            let what = if built.built { "built" } else { "cached" };
            println!(
                "{what}: {} (Linux {}, key {})",
                built.path.display(),
                built.release,
                built.key
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Build progress on stderr: one line rewritten in place on a terminal;
/// otherwise (a log, `make demo`) one line per phase and one every
/// [`LOG_EVERY`] compiled objects.
struct Reporter {
    tty: bool,
    last_step: String,
    started: std::time::Instant,
}

/// Objects between two progress lines in a log (a build has about 700).
const LOG_EVERY: u64 = 100;

impl Reporter {
    fn new(tty: bool) -> Reporter {
        Reporter {
            tty,
            last_step: String::new(),
            started: std::time::Instant::now(),
        }
    }

    fn report(&mut self, p: Progress) {
        let mut err = std::io::stderr().lock();
        let line = match p {
            Progress::Step { step, total, what } => {
                self.last_step = format!("[{step}/{total}] {what}");
                let line = format!("moat kernel build: {}", self.last_step);
                if self.tty {
                    let _ = write!(err, "\r\x1b[2K{line}");
                    if step == total {
                        let _ = writeln!(err);
                    }
                    let _ = err.flush();
                    return;
                }
                line
            }
            Progress::Compiled(n) => {
                let elapsed = self.started.elapsed().as_secs();
                let line = format!(
                    "moat kernel build: {}: {n} objects compiled ({}m{:02}s)",
                    self.last_step,
                    elapsed / 60,
                    elapsed % 60
                );
                if self.tty {
                    if n % 16 == 0 {
                        let _ = write!(err, "\r\x1b[2K{line}");
                        let _ = err.flush();
                    }
                    return;
                }
                if n % LOG_EVERY != 0 {
                    return;
                }
                line
            }
            Progress::Waiting { lock } => format!(
                "moat kernel build: waiting for another kernel build to finish (it holds {})",
                lock.display()
            ),
        };
        let _ = writeln!(err, "{line}");
    }
}
