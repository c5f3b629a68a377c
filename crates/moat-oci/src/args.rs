//! The command line of `moat-oci`, runc's flags and commands (what
//! podman's conmon and containerd's go-runc pass), apart from the code
//! that carries them out.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// moat as an OCI runtime: a drop-in for runc under podman (`--runtime`),
/// conmon and containerd (`BinaryName`, `ctr run --runc-binary`). Every
/// container runs in moat's hardened sandbox or in its own micro-VM, under
/// a moat policy intersected with the bundle's config.json. See docs/oci.md.
#[derive(Debug, Parser)]
#[command(
    name = "moat-oci",
    version,
    disable_help_subcommand = true,
    after_help = "\
Examples:
  podman --runtime /usr/local/bin/moat-oci run --rm --annotation moat.dev/isolation=sandbox IMAGE echo hi
  ctr run --rm --seccomp --runc-binary /usr/local/bin/moat-oci IMAGE c1 echo hi
  moat-oci --root /run/moat-oci state c1

Annotations: moat.dev/isolation=sandbox|vm, moat.dev/policy=NAME|FILE (RBAC decides).
Site defaults: /etc/moat/oci.yaml (policy, isolation, allow_unconfined_seccomp, no_new_privileges).
Exit codes: 0 success, 1 error (the message names the input and the fix); `run` and
`exec` return the workload's status (128+N when killed by signal N)."
)]
pub struct Cli {
    /// Where container state lives (default /run/moat-oci for root,
    /// $XDG_RUNTIME_DIR/moat-oci otherwise).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Also write errors here (always created; one JSON object per failure
    /// with --log-format json, as podman and containerd read it).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Format of --log: `text` lines, or `json` objects one per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Manage cgroups through systemd (not supported: use cgroupfs).
    #[arg(long)]
    pub systemd_cgroup: bool,
    /// Log progress, not only errors.
    #[arg(long)]
    pub debug: bool,
    /// Accepted for compatibility with runc's callers; ignored.
    #[arg(long, hide = true, value_name = "PATH")]
    pub criu: Option<String>,
    /// Accepted for compatibility with runc's callers; ignored.
    #[arg(long, hide = true, value_name = "BOOL")]
    pub rootless: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container from a bundle; it waits for `start`.
    Create(Create),
    /// Run the process of a created container.
    Start(Id),
    /// Create, start and wait for a container (exit status is the workload's).
    Run(Create),
    /// Print a container's state as JSON.
    State(Id),
    /// Send a signal (name or number, default TERM) to a container.
    Kill(Kill),
    /// Remove a container (--force kills a running one first).
    Delete(Delete),
    /// Run another process in a running container.
    Exec(Exec),
    /// List the processes of a container.
    Ps(Ps),
    /// List containers.
    List(List),
    /// Suspend every process of a container (cgroup freezer).
    Pause(Id),
    /// Resume a paused container.
    Resume(Id),
    /// Change a running container's resource limits.
    Update(Update),
    /// Print what this runtime supports, as JSON.
    Features,
}

#[derive(Debug, Args)]
pub struct Id {
    /// Container ID.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct Create {
    /// Bundle directory (holds config.json).
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    pub bundle: PathBuf,
    /// Unix socket that receives the pty master when process.terminal is set.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Write the container's process id here.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Accepted for compatibility; moat always pivots the root.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for compatibility; moat never creates a session keyring.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass this many descriptors after stdio (3..3+N) to the container.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preserve_fds: u32,
    /// Run only: return after the start, do not wait (runc run --detach).
    #[arg(short, long, hide = true)]
    pub detach: bool,
    /// Container ID.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct Kill {
    /// Signal every process of the container, not only its first.
    #[arg(short, long)]
    pub all: bool,
    pub id: String,
    /// Signal name (TERM, SIGKILL) or number.
    #[arg(default_value = "TERM")]
    pub signal: String,
}

#[derive(Debug, Args)]
pub struct Delete {
    /// Kill the container first if it runs.
    #[arg(short, long)]
    pub force: bool,
    pub id: String,
}

#[derive(Debug, Args)]
pub struct Exec {
    /// Unix socket that receives the pty master (with --tty).
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Working directory inside the container.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// UID[:GID] inside the container.
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Additional group id (repeatable).
    #[arg(short = 'g', long = "additional-gids", value_name = "GID")]
    pub additional_gids: Vec<u32>,
    /// A process.json (runtime-spec `process` object) instead of ARGS.
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Return once the process runs.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the process id here.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Add a capability (repeatable); the policy must grant it.
    #[arg(short, long = "cap", value_name = "CAP")]
    pub caps: Vec<String>,
    /// Pass this many descriptors after stdio to the process.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preserve_fds: u32,
    /// Set no_new_privs for this process (moat sets it anyway unless the
    /// site honours a config's noNewPrivileges: false).
    #[arg(long)]
    pub no_new_privs: bool,
    /// Accepted for compatibility; refused unless empty.
    #[arg(long, value_name = "LABEL")]
    pub process_label: Option<String>,
    /// Accepted for compatibility; a warning where no LSM is loaded.
    #[arg(long, value_name = "PROFILE")]
    pub apparmor: Option<String>,
    /// Accepted for compatibility; the process joins the container's cgroup.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Accepted for compatibility.
    #[arg(long)]
    pub ignore_paused: bool,
    pub id: String,
    /// The command and its arguments (unless --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct Ps {
    /// `table` (pids, one per line) or `json` (an array of pids).
    #[arg(short, long, default_value = "table")]
    pub format: String,
    pub id: String,
    /// Options for ps(1) in table format (ignored for json).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct List {
    /// `table` or `json`.
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Print only the IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct Update {
    /// A runtime-spec `linux.resources` JSON object, from FILE or `-` (stdin).
    #[arg(short, long, value_name = "FILE|-")]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes.
    #[arg(long, value_name = "BYTES")]
    pub memory: Option<i64>,
    /// Maximum number of processes.
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// CPU CFS quota in microseconds per period.
    #[arg(long, value_name = "US")]
    pub cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds.
    #[arg(long, value_name = "US")]
    pub cpu_period: Option<u64>,
    pub id: String,
}
