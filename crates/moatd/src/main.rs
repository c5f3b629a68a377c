//! The `moatd` binary: wires the command line to the library.

#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use moatd::daemon::{Daemon, RestartLimits};

/// moatd: runs the Deployments and Pods `moat apply` hands it, on this
/// machine, under moat's policies.
#[derive(Debug, Parser)]
#[command(name = "moatd", version)]
struct Args {
    /// Stay in the foreground (moatd never forks; systemd supervises it).
    #[arg(long)]
    foreground: bool,
    /// State root (images, container records, moatd.db, audit log).
    #[arg(long, env = "MOAT_ROOT", default_value = "/var/lib/moat")]
    root: PathBuf,
    /// Runtime root of the containers (default: moat's).
    #[arg(long)]
    run_root: Option<PathBuf>,
    /// The API socket.
    #[arg(long, default_value = "/run/moat/moatd.sock")]
    socket: PathBuf,
    /// Group that may connect to the socket (mode 0660); without it, root only.
    #[arg(long, default_value = "moat")]
    group: String,
    /// The RBAC file requests are authorised against.
    #[arg(long, default_value = moat_policy::rbac::DEFAULT_RBAC_PATH)]
    rbac: PathBuf,
    /// The moat binary replicas are run with (default: beside moatd).
    #[arg(long)]
    moat: Option<PathBuf>,
    /// Send events as JSON to http://127.0.0.1:PORT/PATH (loopback only).
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
    /// Restarts allowed within --restart-interval before giving up.
    #[arg(long, default_value_t = 5)]
    restart_attempts: usize,
    /// Seconds over which restarts are counted.
    #[arg(long, default_value_t = 300)]
    restart_interval: u64,
    /// Where ConfigMap and Secret volumes of replicas are written (moatd
    /// mounts a tmpfs there at the first such volume unless it is one;
    /// outside moat's state and run roots, which no container may mount).
    #[arg(long, default_value = "/run/moatd/files")]
    files_dir: PathBuf,
    /// First restart back-off in milliseconds (doubling up to 30 s).
    #[arg(long, default_value_t = 500)]
    restart_delay_ms: u64,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("probe-net") {
        let netns = PathBuf::from(argv.get(2).map_or("", String::as_str));
        let port = argv.get(3).and_then(|p| p.parse().ok()).unwrap_or(0);
        let vm = argv.get(4).map(String::as_str) == Some("vm");
        let ok = moatd::probe::probe_net_main(&netns, port, vm, argv.get(5).map(String::as_str));
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if argv.get(1).map(String::as_str) == Some("spawner") {
        return match moatd::spawner::serve(argv.get(2).map_or("", String::as_str)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("moatd: spawner: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moatd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let _ = args.foreground;
    if !rustix::process::geteuid().is_root() {
        anyhow::bail!("moatd runs as root (it starts containers and reads peer credentials); start it with systemctl start moatd");
    }
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("creating the state root {}", args.root.display()))?;
    let lock = lock(&args.root)?;
    let webhook = args
        .webhook
        .as_deref()
        .map(moatd::daemon::parse_webhook)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let moat = match args.moat {
        Some(m) => m,
        None => std::env::current_exe()?
            .parent()
            .map(|p| p.join("moat"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("moat")),
    };
    let store = moatd::store::Store::open(&args.root)?;
    let audit = moatd::audit::Audit::open(&args.root)?;
    // Before any thread is filtered (or started): the process that starts
    // `moat` for the filtered threads, unfiltered itself.
    let exe = std::env::current_exe().context("finding moatd's own binary")?;
    let spawner = moatd::spawner::Client::start(
        &exe,
        &moatd::spawner::Config {
            moat: moat.clone(),
            moatd: exe.clone(),
            state: args.root.clone(),
            files: args.files_dir.clone(),
            webhook: webhook.clone(),
        },
    )?;
    let runtime = moatd::runtime::Runtime {
        moat,
        root: args.root.clone(),
        run_root: args.run_root.clone(),
        rbac: args.rbac.clone(),
        spawner: Some(spawner),
    };
    let limits = RestartLimits {
        attempts: args.restart_attempts,
        interval: Duration::from_secs(args.restart_interval),
        delay: Duration::from_millis(args.restart_delay_ms),
        ..RestartLimits::default()
    };
    let mut d = Daemon::new(
        args.root.clone(),
        args.rbac.clone(),
        store,
        audit,
        runtime,
        limits,
        webhook,
    );
    d.files = args.files_dir.clone();
    let d = Arc::new(d);
    let listener = bind(&args.socket, &args.group)?;
    // From here on the spawner alone holds root's capabilities; moatd
    // keeps those its file work needs (every thread below inherits that).
    moatd::privileges::drop_to_file_ownership()
        .context("dropping moatd's capabilities once its spawner runs")?;
    let adopted = d.store.replicas(None)?.len();
    eprintln!(
        "moatd: serving {} (state {}); {adopted} replica(s) from before adopted",
        args.socket.display(),
        args.root.display()
    );
    d.audit(
        0,
        "moatd",
        "start",
        "moatd",
        "event",
        &[format!("{adopted} replicas adopted")],
    );
    // Each filtered at its start, before it reads anything (DESIGN rule 9);
    // a thread that cannot be filtered ends moatd rather than run open.
    let d2 = d.clone();
    std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || {
            confine_or_exit("reconcile");
            moatd::reconcile::run(&d2)
        })?;
    let d3 = d.clone();
    std::thread::Builder::new()
        .name("advisories".into())
        .spawn(move || {
            confine_or_exit("advisories");
            moatd::advisories::run(&d3)
        })?;
    moatd::api::confine().context("installing the API threads' seccomp filter")?;
    moatd::api::serve(d, listener);
    drop(lock);
    Ok(())
}

/// Installs the workers' filter on the calling thread, or ends moatd.
fn confine_or_exit(thread: &str) {
    if let Err(e) = moatd::workers::confine() {
        eprintln!("moatd: error: installing the {thread} thread's seccomp filter: {e:#}");
        std::process::exit(1);
    }
}

/// One moatd per state root.
fn lock(root: &Path) -> anyhow::Result<std::fs::File> {
    let path = root.join("moatd.lock");
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        anyhow::anyhow!(
            "another moatd serves the state root {} (lock {})",
            root.display(),
            path.display()
        )
    })?;
    Ok(f)
}

fn bind(socket: &Path, group: &str) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => anyhow::bail!("{} is served by another moatd", socket.display()),
        Err(_) => {
            let _ = std::fs::remove_file(socket);
        }
    }
    let l = std::os::unix::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    let gid = group_id(group);
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))?;
    if let Some(g) = gid {
        std::os::unix::fs::chown(socket, Some(0), Some(g))
            .with_context(|| format!("giving {} to group {group}", socket.display()))?;
    }
    Ok(l)
}

fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && (f[0] == name || f[2] == name))
        .and_then(|f| f[2].parse().ok())
}
