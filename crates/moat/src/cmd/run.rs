//! `moat run`: run a command in a new container from an image.
//!
//! Wiring only: the command line becomes a `moat_runtime` run request;
//! the core's pipeline authorises, compiles, resolves the image, gates on
//! vulnerabilities, merges the process settings and picks the backend;
//! the chosen backend (`moat-sandbox`, `moat-vm`) runs the container.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use moat_policy::rbac::Request;

use crate::global::GlobalArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// Hardened namespace sandbox on this host's kernel.
    Sandbox,
    /// Own micro-VM with its own minimal kernel.
    Vm,
    /// `vm` where a working accelerator exists (or the policy demands it), else `sandbox`.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VmStartArg {
    Cold,
    Template,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkArg {
    None,
    Loopback,
    Egress,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat run busybox echo hello                 # runs under the auto policy, removed on exit
  moat run -it busybox sh                     # interactive shell on a pseudo-terminal
  moat run --isolation sandbox -e A=1 -w /tmp --user 1000:1000 busybox env
  moat run --policy web.yaml --name web busybox httpd -f
  moat run --policy web.yaml --rbac ./rbac.yaml busybox id   # refused unless your roles grant web.yaml
  moat run --rootfs ./rootfs /bin/sh -c 'id; hostname'   # a root filesystem directory instead of an image
  moat run --rm --entrypoint /bin/sh busybox -c 'echo hi'   # podman's spellings
  moat run -d --name web busybox httpd -f -p 8080   # detached: see moat ps, logs, stop, rm
  moat run --policy vols.yaml -v /srv/data:/data:ro -v cache:/cache busybox ls /data

A container is kept, stopped, when its command exits (`moat ps -a`), until
`moat rm`; `--rm` removes it at once.

Exit status: the workload's, or 128+N when signal N killed it; 125 when the
container could not be started, 126 when the command cannot be executed,
127 when it is not found in the container.")]
pub struct RunArgs {
    /// Isolation backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub isolation: Isolation,
    /// Policy file (or built-in name: auto, baseline, restricted) to run
    /// under (default: `auto`, baseline narrowed to the system calls the
    /// image's programs can make; `--policy baseline` opts out).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// RBAC file the policy is authorised against for the invoking user
    /// [default: /etc/moat/rbac.yaml; without it only root may run, with a warning].
    #[arg(long, value_name = "FILE")]
    pub rbac: Option<PathBuf>,
    /// Run even when the policy's `vulnerabilities.fail_on` gate could not
    /// check some packages (no advisory data for their ecosystem).
    #[arg(long)]
    pub allow_unchecked: bool,
    /// Remove the container when it stops (else it is kept, stopped, until
    /// `moat rm`, and its name stays taken, as in podman).
    #[arg(long)]
    pub rm: bool,
    /// Run in the background: print the container ID and return once the
    /// workload runs; its output goes to `moat logs`.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Replace the image's Entrypoint: a command (`/bin/sh`), a JSON array
    /// (`'["/bin/sh","-c"]'`) or "" for none. As in podman, the image's
    /// Cmd is then not used: arguments come from after IMAGE only.
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Keep stdin open and connected to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal (window-size changes are forwarded).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from this environment).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container (absolute; must exist in the image).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: UID[:GID] or NAME[:GROUP] from the image's /etc/passwd.
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Container name for `moat ps` and `moat kill` (default: the first 12 digits of its ID).
    #[arg(long)]
    pub name: Option<String>,
    /// Hostname inside the container (default: the container name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Seconds a workload may take to exit after SIGTERM/SIGINT/SIGHUP before it is killed.
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub stop_timeout: u64,
    /// Accelerator for the vm backend (default: KVM when a probe shows it works, else TCG).
    #[arg(long, value_enum)]
    pub accel: Option<Accel>,
    /// How the vm backend starts a container's micro-VM: restored from a
    /// booted template (default where the VM's devices allow it) or by
    /// booting its kernel (`cold`). With `template` moat says so when it
    /// has to boot cold.
    #[arg(long, value_enum, value_name = "HOW")]
    pub vm_start: Option<VmStartArg>,
    /// Treat IMAGE as a root filesystem directory instead of an image reference.
    #[arg(long)]
    pub rootfs: bool,
    /// Print no notices: which backend `--isolation auto` chose and why,
    /// or that micro-VMs run under software emulation.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Network: none, loopback or egress. Narrows the policy's `network`,
    /// never widens it.
    #[arg(long, value_enum, value_name = "MODE")]
    pub network: Option<NetworkArg>,
    /// Publish a container port on the host: [IP:]HOST:CONTAINER[/tcp|udp]
    /// (every host address unless IP is given, as in podman). The policy
    /// must publish the same ports (`network.publish`).
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:CONTAINER")]
    pub publish: Vec<String>,
    /// `--read-only` (or `=true`) keeps the image's root read-only even
    /// where the policy makes it ephemeral; `--read-only=false` asks for
    /// the writable root that a policy with `filesystem.root: ephemeral`
    /// gives (refused under any other policy). Default: the policy's.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// Mount a host directory or a named volume (`moat volume`): only what
    /// the policy grants (`filesystem.volumes`, `filesystem.named_volumes`);
    /// read-only unless the grant is writable (docs/volumes.md).
    #[arg(short = 'v', long = "volume", value_name = "SRC:DIR[:ro|rw]")]
    pub volumes: Vec<String>,
    /// Mount a tmpfs at DIR (within the policy's `filesystem.writable`).
    #[arg(long = "tmpfs", value_name = "DIR[:SIZE]")]
    pub tmpfs: Vec<String>,
    /// Image reference (name[:tag], ID or unique ID prefix), or a directory with --rootfs.
    pub image: String,
    /// Command and arguments (default: the image's Entrypoint and Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

use moat_profile::image_profile::ImageProfile;
use moat_runtime::pipeline::{self, Prepared, RequestedIsolation, ResolvedImage};
pub use moat_runtime::process::ImageDefaults;
use moat_runtime::{Backend, ImageRef};

pub fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let (ready, steps) = match prepare(global, &args)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let stop_timeout = Duration::from_secs(args.stop_timeout);
    let root = global.records_root();
    let spec = container_spec(&args, &steps, ready, stop_timeout);
    moat_runtime::spec::create(&root, &spec, true)?;
    if args.detach {
        return crate::cmd::container::start_detached(global, &spec.id, &spec.name);
    }

    // Denied calls are logged by the kernel when the policy asks (auto
    // does): note where the log ends, to name them if the workload fails.
    let id_map = moat_sandbox::idmap::IdMap::for_root();
    let watch = spec
        .plan
        .audit_denied
        .then(crate::cmd::denials::Watch::start);
    let container = spec.container(&root);
    if spec.isolation == moat_runtime::Isolation::Vm {
        // A micro-VM's supervisor gives up root (and all but the calls of
        // its relay) once QEMU runs, and its cleanup watcher removes the
        // record when the VM ends: a VM run in the foreground is always
        // removed, as with --rm. A start that failed before leaves a
        // half-created record, which the next command removes.
        return run_vm(global, &args, &container, &steps.resolved_policy, &spec);
    }
    // And the writes a read-only file system refused, to name them and
    // their grants likewise.
    let read_only = crate::cmd::read_only::Watch::start(&spec.plan, id_map.host_uid, id_map.count);
    let result = moat_sandbox::SandboxBackend.run_attached(&container);
    if args.rm {
        let _lock = moat_runtime::record::lock(&root)?;
        moat_runtime::record::remove(&root, &spec.id);
        let volumes = moat_runtime::volume_store::Store::new(&global.root);
        if let Err(e) = volumes.remove_anonymous(spec.id.as_str(), false) {
            errln!("moat: warning: removing the container's anonymous volumes: {e}");
        }
    }
    match result {
        Ok(code) => {
            if code != 0 {
                let denials = watch
                    .map(|w| w.denials(id_map.host_uid, id_map.count))
                    .unwrap_or_default();
                let refused = read_only.hits();
                let entries = crate::cmd::read_only::image_entries(&spec.rootfs);
                let p = &steps.resolved_policy;
                for line in failure_report(p, &spec, code, &denials, &refused, &entries) {
                    errln!("{line}");
                }
            }
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Err(e) => {
            let code = e.exit_code;
            errln!("moat: error: {:#}", anyhow::Error::from(e));
            Ok(ExitCode::from(code))
        }
    }
}

/// Runs the pipeline for the command line: the container ready to be
/// created, or the exit code of a refusal (already reported).
pub fn prepare<'a>(
    global: &'a GlobalArgs,
    args: &'a RunArgs,
) -> anyhow::Result<Result<(moat_runtime::pipeline::Ready, CliSteps<'a>), ExitCode>> {
    crate::cmd::container::reap(global).context("cleaning up after dead containers")?;

    // `auto` (the default) is narrowed to the image's profile once the
    // image is known (`Steps::narrow`); until then the widest it can be
    // (baseline's calls) is what is authorised: narrowing only removes calls.
    let policy = moat_policy::Policy::resolve_for_image(
        &policy_name(args.policy.as_deref()),
        &moat_policy::auto::ImageSyscalls::widest(&args.image),
    )?;
    // A `--rootfs` directory is checked before anything starts (and
    // authorised by the pipeline, like a volume).
    let image = match args.rootfs {
        true => ImageRef::Rootfs(checked_rootfs(global, &args.image)?),
        false => ImageRef::parse(&args.image),
    };
    let mut steps = CliSteps {
        global,
        rbac: args.rbac.as_deref(),
        who: crate::cmd::policy::invoking_principal(global),
        allow_unchecked: args.allow_unchecked,
        quiet: args.quiet,
        image_arg: args.image.clone(),
        policy_arg: policy_name(args.policy.as_deref()),
        profile: None,
        resolved_policy: policy.clone(),
    };
    let request = pipeline::RunRequest {
        policy,
        image,
        process: process_args(args),
        name: args.name.clone(),
        hostname: args.hostname.clone(),
        isolation: match args.isolation {
            Isolation::Sandbox => RequestedIsolation::Sandbox,
            Isolation::Vm => RequestedIsolation::Vm,
            Isolation::Auto => RequestedIsolation::Auto,
        },
        mounts: crate::cmd::volume::mount_args(global, &args.volumes, &args.tmpfs)?,
    };
    match pipeline::prepare(request, &mut steps)? {
        Prepared::Refused { policy, decision } => {
            errln!(
                "moat: error: policy {} refused for {}:",
                policy,
                steps.who.name
            );
            for r in &decision.reasons {
                errln!("  - {r}");
            }
            Ok(Err(ExitCode::from(crate::global::EXIT_NOT_STARTED)))
        }
        Prepared::Ready(mut ready) => {
            crate::cmd::volume::create_missing(global, &ready, args.rm)?;
            for n in &ready.notices {
                errln!("{n}");
            }
            steps.resolved_policy = ready.policy.clone();
            narrow_network(args, &steps.policy_arg, &mut ready.plan.network)?;
            narrow_root(args.read_only, &ready.policy.name, &mut ready.plan.root)?;
            Ok(Ok((*ready, steps)))
        }
    }
}

/// `--network` and `-p` applied to the compiled plan (narrowing only).
fn narrow_network(
    args: &RunArgs,
    policy: &str,
    plan: &mut moat_policy::plan::NetworkPlan,
) -> anyhow::Result<()> {
    use moat_runtime::network::{self, NetworkMode};
    let publish = args
        .publish
        .iter()
        .map(|a| network::parse_publish(a).map(|p| (a.clone(), p)))
        .collect::<Result<Vec<_>, _>>()?;
    let mode = args.network.map(|m| match m {
        NetworkArg::None => NetworkMode::None,
        NetworkArg::Loopback => NetworkMode::Loopback,
        NetworkArg::Egress => NetworkMode::Egress,
    });
    network::narrow(plan, policy, mode, &publish)?;
    Ok(())
}

/// `--read-only[=BOOL]` applied to the compiled plan: it may keep the root
/// read-only, never make it writable beyond what the policy grants.
fn narrow_root(
    read_only: Option<bool>,
    policy: &str,
    root: &mut moat_policy::plan::RootPlan,
) -> anyhow::Result<()> {
    use moat_policy::plan::RootPlan;
    match (read_only, &root) {
        (Some(true), _) => *root = RootPlan::ReadOnly,
        (Some(false), RootPlan::ReadOnly) => anyhow::bail!(
            "--read-only=false: policy {policy:?} keeps the root read-only; run under a policy with `filesystem.root: ephemeral` (a writable layer that goes with the container), or grant the paths the workload writes (`filesystem.writable`)"
        ),
        _ => {}
    }
    Ok(())
}

/// What the container of `ready` is to run, for the core to keep.
pub fn container_spec(
    args: &RunArgs,
    steps: &CliSteps<'_>,
    ready: moat_runtime::pipeline::Ready,
    stop_timeout: Duration,
) -> moat_runtime::spec::Spec {
    moat_runtime::spec::Spec {
        version: moat_runtime::spec::SPEC_VERSION,
        id: ready.id,
        name: ready.name,
        isolation: ready.isolation,
        image_id: ready.image.image_id,
        image: args.image.clone(),
        rootfs: ready.image.rootfs,
        process: ready.process,
        plan: ready.plan,
        policy: steps.policy_arg.clone(),
        stop_timeout_secs: stop_timeout.as_secs(),
        accel: args.accel.map(|a| match a {
            Accel::Kvm => "kvm".to_string(),
            Accel::Tcg => "tcg".to_string(),
        }),
        vm_start: args.vm_start.map(|v| match v {
            VmStartArg::Cold => "cold".to_string(),
            VmStartArg::Template => "template".to_string(),
        }),
        auto_remove: args.rm,
    }
}

/// The pipeline steps that need the command line's context.
pub struct CliSteps<'a> {
    global: &'a GlobalArgs,
    rbac: Option<&'a Path>,
    who: moat_policy::rbac::Principal,
    allow_unchecked: bool,
    quiet: bool,
    /// The image as the user named it (what `auto` reports).
    image_arg: String,
    /// `--policy` as given, or `auto`: what `narrow` resolves again.
    policy_arg: String,
    /// The stored image's profile, kept by `resolve_image` for `narrow`.
    profile: Option<ImageProfile>,
    /// The policy the container runs under (narrowed, for `auto`).
    resolved_policy: moat_policy::Policy,
}

impl pipeline::Steps for CliSteps<'_> {
    fn authorize(
        &mut self,
        policy: &moat_policy::Policy,
        extra: &[Request],
    ) -> anyhow::Result<moat_policy::rbac::Decision> {
        crate::cmd::policy::authorize(self.global, "run", policy, &self.who, self.rbac, extra)
    }

    fn resolve_image(
        &mut self,
        image: &ImageRef,
        policy: &moat_policy::Policy,
    ) -> anyhow::Result<ResolvedImage> {
        let (image, profile) = resolve_image(self.global, &image.as_written(), policy)?;
        self.profile = profile;
        Ok(image)
    }

    /// `auto` (or a policy extending it) narrowed to the image's profile:
    /// the stored image's, or one made now for a `--rootfs` directory.
    fn narrow(
        &mut self,
        policy: &moat_policy::Policy,
        image: &ResolvedImage,
    ) -> anyhow::Result<Option<moat_policy::Policy>> {
        if !uses_auto(policy) {
            return Ok(None);
        }
        let profile = match self.profile.take() {
            Some(p) => p,
            None => crate::cmd::auto::analyze_dir_cached(&self.global.root, &image.rootfs)?,
        };
        let narrowed = moat_policy::Policy::resolve_for_image(
            &self.policy_arg,
            &crate::cmd::auto::image_syscalls(&self.image_arg, &profile),
        )?;
        Ok(Some(narrowed))
    }

    fn vulnerability_gate(
        &mut self,
        policy: &moat_policy::Policy,
        image: &ResolvedImage,
    ) -> anyhow::Result<()> {
        crate::cmd::scan::vulnerability_gate(
            self.global,
            policy,
            &image.image_id.to_string(),
            &image.rootfs,
            self.allow_unchecked,
        )
    }

    fn resolve_user(
        &mut self,
        rootfs: &Path,
        user: &str,
    ) -> anyhow::Result<moat_runtime::process::Ids> {
        let id = moat_sandbox::user::resolve(rootfs, user)?;
        Ok((id.uid, id.gid, id.additional_gids))
    }

    /// Asked only when `auto` has the choice: says once why it runs the
    /// sandbox (unless `--quiet`).
    fn vm_accelerator_works(&mut self) -> bool {
        match moat_vm::why_no_accelerator(&self.global.root) {
            None => true,
            Some(why) => {
                if !self.quiet {
                    eprintln!("{}", auto_sandbox_notice(&why));
                }
                false
            }
        }
    }
}

/// The process options of the command line, for the core.
fn process_args(args: &RunArgs) -> moat_runtime::process::ProcessArgs {
    moat_runtime::process::ProcessArgs {
        image: args.image.clone(),
        entrypoint: args.entrypoint.clone(),
        command: args.command.clone(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        tty: args.tty,
        interactive: args.interactive,
    }
}

/// What moat prints when a workload exited `code` (non-zero): the calls
/// its policy denied and the writes a read-only file system refused, each
/// with the policy line that allows it, whichever backend saw them.
fn failure_report(
    policy: &moat_policy::Policy,
    spec: &moat_runtime::spec::Spec,
    code: i32,
    denials: &[crate::cmd::denials::Denial],
    refused: &[crate::cmd::read_only::Refused],
    entries: &dyn Fn(&str) -> Option<usize>,
) -> Vec<String> {
    let mut lines = crate::cmd::denials::report(policy, code, denials);
    // What a policy granting more would extend: a built-in by name, a
    // file by its path.
    let base = match uses_auto(policy) {
        true => "auto",
        false => policy
            .source
            .strip_prefix("builtin:")
            .unwrap_or(&policy.source),
    };
    lines.extend(crate::cmd::read_only::report(
        base,
        &spec.plan,
        code,
        refused,
        &spec.process.cwd,
        entries,
    ));
    lines
}

/// The vm backend (moat-vm) through the backend trait.
fn run_vm(
    global: &GlobalArgs,
    args: &RunArgs,
    container: &moat_runtime::backend::Container,
    policy: &moat_policy::Policy,
    spec: &moat_runtime::spec::Spec,
) -> anyhow::Result<ExitCode> {
    // The VM's notices may quote the guest (its console, the agent's
    // messages): escaped like every other untrusted text.
    let quiet = args.quiet;
    let mut vm = moat_vm::VmBackend::new(global.root.clone());
    vm.accel = args.accel.map(|a| match a {
        Accel::Kvm => "kvm".to_string(),
        Accel::Tcg => "tcg".to_string(),
    });
    vm.vm_start = match args.vm_start {
        None => moat_vm::VmStart::Auto,
        Some(VmStartArg::Template) => moat_vm::VmStart::Template,
        Some(VmStartArg::Cold) => moat_vm::VmStart::Cold,
    };
    vm.notice = Box::new(move |n: &str| {
        if !quiet {
            errln!("{n}");
        }
    });
    match vm.run_attached(container) {
        Ok(code) => {
            // The guest agent's account of the failure: hostile input,
            // bounded by moat-vm, printed escaped, advice only.
            if let (true, Some(r)) = (code != 0, vm.guest_report.take()) {
                let denials = crate::cmd::denials::from_guest(&r);
                let refused = crate::cmd::read_only::from_guest(&r);
                // The supervisor may open nothing now: the image's
                // directories as the guest saw them.
                let entries = crate::cmd::read_only::guest_entries(&r);
                for line in failure_report(policy, spec, code, &denials, &refused, &entries) {
                    errln!("{line}");
                }
                if r.omitted > 0 {
                    errln!(
                        "moat: (the guest reported {} more failure(s) than shown)",
                        r.omitted
                    );
                }
            }
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Err(e) => {
            let code = e.exit_code;
            errln!("moat: error: {:#}", anyhow::Error::from(e));
            Ok(ExitCode::from(code))
        }
    }
}

/// The `--rootfs` directory, resolved: a directory that is neither the
/// host's root nor a parent of moat's state or run root (either would
/// hand the host's files, or moat's own state, to the container).
pub fn checked_rootfs(global: &GlobalArgs, dir: &str) -> anyhow::Result<PathBuf> {
    let rootfs = std::fs::canonicalize(dir)
        .with_context(|| format!("rootfs directory {dir:?} (--rootfs): not found"))?;
    if !rootfs.is_dir() {
        bail!("rootfs {dir:?} (--rootfs) is not a directory");
    }
    if rootfs == Path::new("/") {
        bail!("rootfs {dir:?} (--rootfs) is the host's root directory; moat never runs the host's own file system as a container's root: pass an unpacked image root");
    }
    for (what, state) in [
        ("state root", global.root.clone()),
        ("run root", global.run_root()),
    ] {
        let state = std::fs::canonicalize(&state).unwrap_or(state);
        if state.starts_with(&rootfs) {
            bail!(
                "rootfs {dir:?} (--rootfs) contains moat's {what} {}; pass a directory outside it",
                state.display()
            );
        }
    }
    Ok(rootfs)
}

/// The one line `--isolation auto` prints when it runs the sandbox because
/// micro-VMs would have no hardware accelerator (`why`).
pub fn auto_sandbox_notice(why: &str) -> String {
    format!(
        "moat: --isolation auto runs this container in the sandbox (namespaces on this host's kernel), not in a micro-VM: {why}. `--isolation vm` runs a micro-VM anyway, under software emulation (slower); `--isolation sandbox` or --quiet hides this notice."
    )
}

fn resolve_image(
    global: &GlobalArgs,
    reference: &str,
    policy: &moat_policy::Policy,
) -> anyhow::Result<(ResolvedImage, Option<ImageProfile>)> {
    let with_profile = uses_auto(policy);
    let store = moat_image::Store::open(&global.root)
        .with_context(|| format!("opening the image store {}", global.root.display()))?;
    let image = store.resolve(reference)?;
    // Trusted sources and signers before the rootfs is even materialised.
    crate::cmd::image_trust::check(&store, &image, reference, policy)?;
    let rootfs = store
        .rootfs(&image)
        .with_context(|| format!("materialising the rootfs of image {reference:?}"))?;
    let profile = match with_profile {
        true => Some(crate::cmd::auto::for_image(&store, &image)?),
        false => None,
    };
    let c = &image.config;
    Ok((
        ResolvedImage {
            image_id: moat_runtime::ImageId::parse(&image.config_digest)?,
            rootfs,
            defaults: ImageDefaults {
                entrypoint: c.entrypoint.clone(),
                cmd: c.cmd.clone(),
                env: c.env.clone(),
                working_dir: c.working_dir.clone(),
                user: c.user.clone(),
            },
            declared_volumes: c.volumes.clone(),
        },
        profile,
    ))
}

/// The policy to run under: `--policy` (a file or a built-in name), else the
/// built-in `auto` policy.
pub fn policy_name(policy: Option<&Path>) -> String {
    match policy {
        Some(p) => p.to_string_lossy().into_owned(),
        None => "auto".to_string(),
    }
}

/// Whether `policy` is `auto` or extends it (and so depends on the image).
pub fn uses_auto(policy: &moat_policy::Policy) -> bool {
    policy.uses_auto()
}

/// Merges the image config with the command line (see
/// [`moat_runtime::process::merge_process`]), resolving the user in `rootfs`.
#[cfg(test)]
fn merge_process(
    image: &ImageDefaults,
    args: &RunArgs,
    hostname: &str,
    rootfs: &Path,
) -> anyhow::Result<moat_policy::ProcessSpec> {
    moat_runtime::process::merge_process(image, &process_args(args), hostname, |user| {
        let id = moat_sandbox::user::resolve(rootfs, user)?;
        Ok((id.uid, id.gid, id.additional_gids))
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(argv: &[&str]) -> RunArgs {
        T::parse_from(std::iter::once("run").chain(argv.iter().copied())).run
    }

    #[test]
    fn merges_image_config_like_docker() {
        let d = tempfile::tempdir().unwrap();
        let image = ImageDefaults {
            entrypoint: vec!["/bin/ep".into()],
            cmd: vec!["default".into()],
            env: vec!["A=1".into(), "PATH=/img/bin".into()],
            working_dir: "/srv".into(),
            user: "7:8".into(),
        };
        let p = merge_process(&image, &parse(&["img"]), "h", d.path()).unwrap();
        assert_eq!(p.args, ["/bin/ep", "default"]);
        assert_eq!(p.cwd, "/srv");
        assert_eq!((p.uid, p.gid), (7, 8));
        assert!(p.env.contains(&"PATH=/img/bin".to_string()));
        assert!(p.env.contains(&"HOSTNAME=h".to_string()));

        let a = parse(&["-e", "A=2", "-w", "/tmp", "--user", "0", "img", "ls", "-l"]);
        let p = merge_process(&image, &a, "h", d.path()).unwrap();
        assert_eq!(p.args, ["/bin/ep", "ls", "-l"]);
        assert_eq!(p.cwd, "/tmp");
        assert_eq!((p.uid, p.gid), (0, 0));
        assert!(p.env.contains(&"A=2".to_string()) && !p.env.contains(&"A=1".to_string()));
    }

    #[test]
    fn entrypoint_replaces_the_image_entrypoint_and_cmd_like_podman() {
        let d = tempfile::tempdir().unwrap();
        let image = ImageDefaults {
            entrypoint: vec!["/bin/ep".into()],
            cmd: vec!["default".into()],
            ..ImageDefaults::default()
        };
        let argv = |a: &[&str]| merge_process(&image, &parse(a), "h", d.path()).map(|p| p.args);
        assert_eq!(
            argv(&["--entrypoint", "/bin/sh", "img"]).unwrap(),
            ["/bin/sh"]
        );
        assert_eq!(
            argv(&["--entrypoint", "/bin/sh", "img", "-c", "id"]).unwrap(),
            ["/bin/sh", "-c", "id"]
        );
        assert_eq!(
            argv(&["--entrypoint", r#"["/bin/sh","-c"]"#, "img", "id"]).unwrap(),
            ["/bin/sh", "-c", "id"]
        );
        assert_eq!(argv(&["--entrypoint", "", "img", "ls"]).unwrap(), ["ls"]);
        assert_eq!(
            argv(&["--entrypoint", "", "img"]).unwrap_err().to_string(),
            "image \"img\" has no Entrypoint or Cmd; give a command: moat run img CMD [ARG...]"
        );
        assert!(argv(&["--entrypoint", "[1]", "img"])
            .unwrap_err()
            .to_string()
            .starts_with("--entrypoint \"[1]\": not a JSON array of strings"));
        assert!(parse(&["--rm", "img"]).rm);
    }

    #[test]
    fn rejects_bad_input_with_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let none = ImageDefaults::default();
        let err = merge_process(&none, &parse(&["img"]), "h", d.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image \"img\" has no Entrypoint or Cmd; give a command: moat run img CMD [ARG...]"
        );
        let err =
            merge_process(&none, &parse(&["-w", "rel", "img", "x"]), "h", d.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "working directory \"rel\" (-w) must be an absolute path"
        );
        let err =
            merge_process(&none, &parse(&["-e", "=v", "img", "x"]), "h", d.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid -e \"=v\": expected KEY=VALUE with a non-empty KEY"
        );
    }
}
