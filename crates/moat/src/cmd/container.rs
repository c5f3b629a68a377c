//! The container lifecycle in podman's words: `create`, `start`, `stop`,
//! `restart`, `rm`, `wait`, and the hidden `container-monitor` that
//! `run -d` and `start` launch. The work is the runtime core's
//! (`moat_runtime::{spec, monitor, control, record}`); this is wiring.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use moat_runtime::control::{self, Request};
use moat_runtime::record::{self, Record};
use moat_runtime::{Backend, ContainerId, ContainerName, Isolation, Status};

use crate::global::GlobalArgs;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat create --name web busybox httpd -f -p 8080
  moat start web

Takes every option of `moat run` (but -d). The policy is authorised and
compiled, and the image resolved, now; `moat start` runs what was created.")]
pub struct CreateArgs {
    /// Also create the container's process now, held until `moat start`
    /// (runc's `create`; for front ends that need the pid before the start).
    #[arg(long, hide = true)]
    pub held: bool,
    #[command(flatten)]
    pub run: crate::cmd::run::RunArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat start web
  moat start -a job        # wait for it, printing its output; exit with its status

A stopped container starts again from its image: nothing it wrote survives.")]
pub struct StartArgs {
    /// Attach: print the container's output until it stops, then exit with
    /// its exit status (one container only; stdin is not attached).
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Container names or IDs.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat stop web
  moat stop -t 0 web       # SIGKILL at once

SIGTERM goes to the workload (through its supervisor); after the timeout it is
killed. Stopping a stopped container succeeds.")]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", value_name = "S", default_value_t = 10)]
    pub time: u64,
    /// Container names or IDs.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Stop (SIGKILL) a running container first.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove the anonymous volumes made for the container (the image's
    /// declared VOLUMEs) too; named volumes always stay.
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Container names or IDs.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Prints each container's exit status, one per line, once it has stopped.")]
pub struct WaitArgs {
    /// Container names or IDs.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct MonitorArgs {
    /// The descriptor the start report goes to.
    #[arg(long)]
    pub ready_fd: i32,
    /// Create and hold the container until a start request.
    #[arg(long)]
    pub hold: bool,
    pub id: String,
}

/// The backend that holds containers of `isolation`.
pub fn backend_for(global: &GlobalArgs, isolation: Isolation) -> Box<dyn Backend> {
    match isolation {
        Isolation::Sandbox => Box::new(moat_sandbox::SandboxBackend),
        Isolation::Vm => Box::new(moat_vm::VmBackend::new(global.root.clone())),
    }
}

/// Settles the records of containers whose owner died (see
/// `moat_runtime::record::reap_stale`).
pub fn reap(global: &GlobalArgs) -> anyhow::Result<()> {
    let root = global.records_root();
    moat_runtime::record::reap_stale(&root, &mut |r| backend_for(global, r.isolation).cleanup(r))?;
    // Anonymous volumes of `--rm` containers go with them, whichever path
    // (monitor, VM watcher, foreground) removed the record.
    let live: std::collections::HashSet<String> = record::read_all(&root)?
        .into_iter()
        .map(|r| r.id.as_str().to_string())
        .collect();
    let store = moat_runtime::volume_store::Store::new(&global.root);
    if let Err(e) = store.collect_anonymous(&|id| live.contains(id)) {
        errln!("moat: warning: removing the anonymous volumes of removed containers: {e}");
    }
    Ok(())
}

/// Every record, after settling dead ones.
pub fn records(global: &GlobalArgs) -> anyhow::Result<Vec<Record>> {
    reap(global).context("cleaning up after dead containers")?;
    Ok(record::read_all(&global.records_root())?)
}

/// The record named `key` (name, ID or unique ID prefix).
pub fn find(records: &[Record], key: &str) -> anyhow::Result<Record> {
    match record::find(records, key) {
        Some(r) => Ok(r.clone()),
        None => bail!("no container named {key:?} (see `moat ps -a`)"),
    }
}

pub fn create(global: &GlobalArgs, args: CreateArgs) -> anyhow::Result<ExitCode> {
    if args.run.detach {
        bail!("moat create takes no -d: it never starts the container (moat start does)");
    }
    let (ready, steps) = match crate::cmd::run::prepare(global, &args.run)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let stop = Duration::from_secs(args.run.stop_timeout);
    let spec = crate::cmd::run::container_spec(&args.run, &steps, ready, stop);
    moat_runtime::spec::create(&global.records_root(), &spec, args.held)?;
    if args.held {
        if let Err((code, message)) = launch_monitor(global, &spec.id, true)? {
            errln!("moat: error: container {}: {message}", spec.name);
            return Ok(ExitCode::from(code));
        }
    }
    outln!("{}", spec.id);
    Ok(ExitCode::SUCCESS)
}

/// Launches the monitor of a created container and waits until its
/// workload runs; prints the ID (podman's `run -d`).
pub fn start_detached(
    global: &GlobalArgs,
    id: &ContainerId,
    name: &ContainerName,
) -> anyhow::Result<ExitCode> {
    match launch_monitor(global, id, false)? {
        Ok(()) => {
            outln!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Err((code, message)) => {
            errln!("moat: error: container {name}: {message}");
            Ok(ExitCode::from(code))
        }
    }
}

/// Starts `moat container-monitor ID` and reads its start report (with
/// `hold`: its report that the container was created and is held).
fn launch_monitor(
    global: &GlobalArgs,
    id: &ContainerId,
    hold: bool,
) -> anyhow::Result<Result<(), (u8, String)>> {
    let (r, w) = std::io::pipe().context("creating a pipe for the monitor")?;
    let mut args: Vec<OsString> = vec![
        "--root".into(),
        global.root.clone().into(),
        "--run-root".into(),
        global.run_root().into(),
        "container-monitor".into(),
        "--ready-fd".into(),
        "3".into(),
    ];
    if hold {
        args.push("--hold".into());
    }
    args.push(id.to_string().into());
    let exe = std::fs::read_link("/proc/self/exe").context("finding the moat binary")?;
    moat_runtime::startup::spawn_monitor(&exe, &args, w.into())
        .with_context(|| format!("starting the monitor of container {id}"))?;
    let mut report = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(r, 64 * 1024), &mut report)
        .context("reading the monitor's start report")?;
    Ok(moat_runtime::monitor::ready::parse(&report))
}

/// `moat container-monitor`: the monitor process itself.
pub fn monitor(global: &GlobalArgs, args: MonitorArgs) -> anyhow::Result<ExitCode> {
    let id = ContainerId::parse(&args.id)?;
    if args.ready_fd < 3 {
        bail!("--ready-fd must be 3 or above");
    }
    let ready = moat_runtime::startup::adopt_fd(args.ready_fd)?;
    let rec = records(global)?
        .into_iter()
        .find(|r| r.id == id)
        .with_context(|| format!("no container {id}"))?;
    let root = global.records_root();
    let run_root = global.run_root();
    let cfg = moat_runtime::monitor::MonitorConfig {
        root: &root,
        run_root: &run_root,
        id,
        log_max_bytes: moat_runtime::logs::DEFAULT_MAX_BYTES,
        confine: true,
        hold: args.hold,
    };
    let backend: Box<dyn Backend> = match rec.isolation {
        Isolation::Sandbox => Box::new(moat_sandbox::SandboxBackend),
        Isolation::Vm => {
            let spec = moat_runtime::spec::read(&root, &rec.id)?;
            let mut vm = moat_vm::VmBackend::new(global.root.clone());
            vm.accel = spec.accel;
            vm.vm_start = spec
                .vm_start
                .as_deref()
                .and_then(moat_vm::VmStart::parse)
                .unwrap_or(moat_vm::VmStart::Auto);
            // The monitor has no terminal; moat's notices are not the
            // workload's output.
            vm.notice = Box::new(|_| {});
            Box::new(vm)
        }
    };
    let code = moat_runtime::monitor::run(&cfg, backend.as_ref(), Some(ready))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

pub fn start(global: &GlobalArgs, args: StartArgs) -> anyhow::Result<ExitCode> {
    if args.attach && args.names.len() != 1 {
        bail!("moat start -a attaches to one container; name exactly one");
    }
    let all = records(global)?;
    let mut code = ExitCode::SUCCESS;
    for key in &args.names {
        let r = find(&all, key)?;
        if r.monitor_alive() && r.status == Status::Created {
            // Created and held by its monitor (`create --held`): release it.
            control::request(&global.run_root(), &r.id, &Request::Start)?;
            outln!("{key}");
            continue;
        }
        if r.owned() {
            bail!(
                "container {} is already running (moat stop {0} first)",
                r.name
            );
        }
        // Attaching prints what this start writes: from the log's end now.
        let dir = record::container_dir(&global.records_root(), &r.id);
        let follower = moat_runtime::logs::read(&dir, Default::default())?.1;
        match launch_monitor(global, &r.id, false)? {
            Ok(()) if args.attach => return attach(global, &r, follower),
            Ok(()) => outln!("{key}"),
            Err((c, message)) => {
                errln!("moat: error: container {}: {message}", r.name);
                code = ExitCode::from(c);
            }
        }
    }
    Ok(code)
}

/// Prints the container's output as it comes until it stops; its exit
/// status becomes ours.
fn attach(
    global: &GlobalArgs,
    r: &Record,
    mut follower: moat_runtime::logs::Follower,
) -> anyhow::Result<ExitCode> {
    let waiter = {
        let (root, run_root) = (global.records_root(), global.run_root());
        let r = r.clone();
        std::thread::spawn(move || wait_exit(&root, &run_root, &r))
    };
    loop {
        for line in follower.poll()? {
            crate::cmd::logs::print_line(&line);
        }
        if waiter.is_finished() {
            for line in follower.poll()? {
                crate::cmd::logs::print_line(&line);
            }
            let code = waiter
                .join()
                .map_err(|_| anyhow::anyhow!("waiter panicked"))?;
            return Ok(ExitCode::from(code.unwrap_or(125).clamp(0, 255) as u8));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn stop(global: &GlobalArgs, args: StopArgs) -> anyhow::Result<ExitCode> {
    let all = records(global)?;
    for key in &args.names {
        let r = find(&all, key)?;
        stop_one(global, &r, args.time)?;
        outln!("{key}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Stops one container (nothing to do for one that does not run):
/// through its monitor, or, for one run in the foreground, by signalling
/// its supervisor. Returns once it has stopped.
pub fn stop_one(global: &GlobalArgs, r: &Record, secs: u64) -> anyhow::Result<()> {
    if r.monitor_alive() {
        let stop = Request::Stop { timeout_secs: secs };
        return match control::request(&global.run_root(), &r.id, &stop) {
            Ok(_) => Ok(()),
            // It ended meanwhile (a concurrent stop or rm): stopped is stopped.
            Err(_) if wait_unowned(global, &r.id, Duration::from_secs(10)) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    if !r.supervisor_alive() {
        return Ok(());
    }
    let _ = moat_sandbox::signal_container(r, libc::SIGTERM);
    if !wait_unowned(global, &r.id, Duration::from_secs(secs)) {
        let _ = moat_sandbox::signal_container(r, libc::SIGKILL);
        if !wait_unowned(global, &r.id, Duration::from_secs(10)) {
            bail!("container {} did not stop after SIGKILL", r.name);
        }
    }
    Ok(())
}

/// Waits until container `r` has stopped; its exit status, if known.
/// Asks its monitor; where there is none (run in the foreground), or it
/// went away meanwhile, watches the record.
fn wait_exit(root: &Path, run_root: &Path, r: &Record) -> Option<i32> {
    if r.monitor_alive() {
        if let Ok(code) = control::request(run_root, &r.id, &Request::Wait) {
            return code;
        }
    }
    while !unowned_within(root, &r.id, Duration::from_secs(3600)) {}
    record::read_all(root)
        .ok()?
        .into_iter()
        .find(|x| x.id == r.id)
        .and_then(|x| x.exit_code)
}

/// Waits until nothing owns container `id` any more; false on timeout.
fn wait_unowned(global: &GlobalArgs, id: &ContainerId, timeout: Duration) -> bool {
    unowned_within(&global.records_root(), id, timeout)
}

fn unowned_within(root: &Path, id: &ContainerId, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    loop {
        let owned = record::read_all(root)
            .ok()
            .and_then(|all| all.into_iter().find(|r| &r.id == id))
            .is_some_and(|r| r.owned());
        if !owned {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn restart(global: &GlobalArgs, args: StopArgs) -> anyhow::Result<ExitCode> {
    let all = records(global)?;
    for key in &args.names {
        let r = find(&all, key)?;
        stop_one(global, &r, args.time)?;
        reap(global)?;
        match launch_monitor(global, &r.id, false)? {
            Ok(()) => outln!("{key}"),
            Err((code, message)) => {
                errln!("moat: error: container {}: {message}", r.name);
                return Ok(ExitCode::from(code));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rm(global: &GlobalArgs, args: RmArgs) -> anyhow::Result<ExitCode> {
    let all = records(global)?;
    // Check every name before removing any.
    let mut found = Vec::new();
    for key in &args.names {
        let r = find(&all, key)?;
        if r.owned() && !args.force {
            bail!(
                "container {} is running: stop it first (moat stop {0}), or remove it anyway (moat rm -f {0})",
                r.name
            );
        }
        found.push((key, r));
    }
    for (key, r) in found {
        stop_one(global, &r, 0)?;
        remove(global, &r)?;
        if args.volumes {
            moat_runtime::volume_store::Store::new(&global.root)
                .remove_anonymous(r.id.as_str(), true)
                .with_context(|| format!("removing the anonymous volumes of {key}"))?;
        }
        outln!("{key}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes a stopped container: what its backend left, its record, spec
/// and logs, its run directory.
fn remove(global: &GlobalArgs, r: &Record) -> anyhow::Result<()> {
    let (root, run_root) = (&global.records_root(), &global.run_root());
    let _lock = record::lock(root)?;
    // Read again under the lock: started again meanwhile?
    if let Some(now) = record::read_all(root)?.into_iter().find(|x| x.id == r.id) {
        if now.owned() {
            bail!("container {} was started again while being removed", r.name);
        }
        backend_for(global, now.isolation).cleanup(&now);
        record::remove(root, &now.id);
    }
    let _ = std::fs::remove_dir_all(control::run_dir(run_root, &r.id));
    Ok(())
}

pub fn wait(global: &GlobalArgs, args: WaitArgs) -> anyhow::Result<ExitCode> {
    let all = records(global)?;
    let found: Vec<Record> = args
        .names
        .iter()
        .map(|k| find(&all, k))
        .collect::<anyhow::Result<_>>()?;
    for r in found {
        match wait_exit(&global.records_root(), &global.run_root(), &r) {
            Some(c) => outln!("{c}"),
            None => outln!("-1"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `moat ps` shows as a container's status (podman's wording).
pub fn status_text(r: &Record) -> String {
    match r.status {
        Status::Created => "Created".into(),
        Status::Running => "Up".into(),
        Status::Paused => "Paused".into(),
        Status::Stopped => match (r.exit_code, &r.exit_error) {
            (Some(c), _) => format!("Exited ({c})"),
            (None, Some(_)) => "Exited (unknown)".into(),
            (None, None) => "Exited".into(),
        },
    }
}
