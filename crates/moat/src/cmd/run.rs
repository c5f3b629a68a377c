//! `moat run`: run a command in a new container from an image.
//!
//! Wiring only: resolve the image, merge its config with the command line
//! into a `ProcessSpec` (as podman and Docker do), load and compile the
//! policy, choose the backend and hand over. The work happens in
//! `moat-sandbox` and `moat-vm`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use moat_policy::plan::IsolationRequirement;
use moat_policy::rbac::Request;
use moat_policy::{Plan, ProcessSpec};
use moat_sandbox::{state, IdMap, SandboxConfig};

use crate::global::GlobalArgs;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat run busybox echo hello                 # runs under the auto policy, removed on exit
  moat run -it busybox sh                     # interactive shell on a pseudo-terminal
  moat run --isolation sandbox -e A=1 -w /tmp --user 1000:1000 busybox env
  moat run --policy web.yaml --name web busybox httpd -f
  moat run --policy web.yaml --rbac ./rbac.yaml busybox id   # refused unless your roles grant web.yaml
  moat run --rootfs ./rootfs /bin/sh -c 'id; hostname'   # a root filesystem directory instead of an image
  moat run --rm --entrypoint /bin/sh busybox -c 'echo hi'   # podman's spellings (--rm changes nothing)

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
    /// Accepted for podman's sake and changes nothing: a container never
    /// outlives `moat run`, it is always removed when its command exits.
    #[arg(long)]
    pub rm: bool,
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
    /// Treat IMAGE as a root filesystem directory instead of an image reference.
    #[arg(long)]
    pub rootfs: bool,
    /// Image reference (name[:tag], ID or unique ID prefix), or a directory with --rootfs.
    pub image: String,
    /// Command and arguments (default: the image's Entrypoint and Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The parts of an image config `moat run` merges with the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// A resolved image: where its root is and what its config says.
struct ResolvedImage {
    image_id: String,
    rootfs: PathBuf,
    defaults: ImageDefaults,
    /// Its stored profile (made now if missing), when `auto` needs it.
    profile: Option<moat_profile::image_profile::ImageProfile>,
}

pub fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let run_root = global.run_root();
    state::cleanup_stale(&run_root).context("cleaning up after dead containers")?;

    // `auto` (the default) is narrowed to the image's profile once the
    // image is known; until then the widest it can be (baseline's calls)
    // is what is authorised: narrowing only removes calls.
    let policy_name = policy_name(args.policy.as_deref());
    let policy = moat_policy::Policy::resolve_for_image(
        &policy_name,
        &moat_policy::auto::ImageSyscalls::widest(&args.image),
    )?;
    // A `--rootfs` directory is a grant like a volume: checked and
    // authorised before anything starts.
    let rootfs_dir = match args.rootfs {
        true => Some(checked_rootfs(global, &args.image)?),
        false => None,
    };
    let mut extra = Vec::new();
    if let Some(dir) = &rootfs_dir {
        extra.push(Request::Rootfs(dir.display().to_string()));
    }
    // A volume is authorised both as written and as resolved, so that a
    // symbolic link under a granted prefix does not lead elsewhere.
    for v in &policy.spec.filesystem.volumes {
        if let Ok(real) = std::fs::canonicalize(&v.source) {
            if real != Path::new(&v.source) {
                extra.push(Request::Volume(real.display().to_string()));
            }
        }
    }
    // Authorise before anything else (no image is even materialised for a
    // refused policy); every decision is audited.
    let who = crate::cmd::policy::invoking_principal(global);
    let decision =
        crate::cmd::policy::authorize(global, "run", &policy, &who, args.rbac.as_deref(), &extra)?;
    if !decision.allowed {
        errln!(
            "moat: error: policy {} refused for {}:",
            policy.name,
            who.name
        );
        for r in &decision.reasons {
            errln!("  - {r}");
        }
        return Ok(ExitCode::from(crate::global::EXIT_NOT_STARTED));
    }
    moat_policy::compile(&policy)?;

    let image = match rootfs_dir {
        Some(rootfs) => ResolvedImage {
            image_id: format!("rootfs:{}", rootfs.display()),
            rootfs,
            defaults: ImageDefaults::default(),
            profile: None,
        },
        None => resolve_image(global, &args.image, uses_auto(&policy))?,
    };
    let policy = if uses_auto(&policy) {
        let profile = match &image.profile {
            Some(p) => p.clone(),
            None => crate::cmd::auto::analyze_dir_cached(&global.root, &image.rootfs)?,
        };
        moat_policy::Policy::resolve_for_image(
            &policy_name,
            &crate::cmd::auto::image_syscalls(&args.image, &profile),
        )?
    } else {
        policy
    };
    let plan = moat_policy::compile(&policy)?;

    crate::cmd::scan::vulnerability_gate(
        global,
        args.policy.as_deref(),
        &image.image_id,
        &image.rootfs,
        args.allow_unchecked,
    )?;
    let id = state::new_id();
    let name = args.name.clone().unwrap_or_else(|| id[..12].to_string());
    state::validate_name(&name)?;
    let hostname = args.hostname.clone().unwrap_or_else(|| name.clone());
    let process = merge_process(&image.defaults, &args, &hostname, &image.rootfs)?;

    let backend = match (args.isolation, plan.isolation) {
        (Isolation::Sandbox, IsolationRequirement::Vm) => bail!(
            "policy {:?} requires vm isolation; drop --isolation sandbox",
            plan.policy_name
        ),
        (Isolation::Vm, IsolationRequirement::Sandbox) => bail!(
            "policy {:?} requires sandbox isolation; drop --isolation vm",
            plan.policy_name
        ),
        (Isolation::Auto, IsolationRequirement::Vm) | (Isolation::Vm, _) => Isolation::Vm,
        (Isolation::Auto, _) if vm_accelerator_works(&global.root) => Isolation::Vm,
        _ => Isolation::Sandbox,
    };
    let stop_timeout = Duration::from_secs(args.stop_timeout);
    if backend == Isolation::Vm {
        return run_vm(global, &args, image, process, plan, name, stop_timeout);
    }

    let id_map = IdMap::for_root();
    let (uid_base, uid_count) = (id_map.host_uid, id_map.count);
    // Denied calls are logged by the kernel when the policy asks (auto
    // does): note where the log ends, to name them if the workload fails.
    let watch = plan.audit_denied.then(crate::cmd::denials::Watch::start);
    let cfg = SandboxConfig {
        id,
        name,
        image_id: image.image_id,
        rootfs: image.rootfs,
        run_root,
        process,
        plan,
        stop_timeout,
        id_map,
    };
    match moat_sandbox::run(&cfg) {
        Ok(code) => {
            if let (true, Some(w)) = (code != 0, watch) {
                let denials = w.denials(uid_base, uid_count);
                for line in crate::cmd::denials::report(&policy, code, &denials) {
                    errln!("{line}");
                }
            }
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Err(e) => {
            let code = e.exit_code();
            errln!("moat: error: {:#}", anyhow::Error::from(e));
            Ok(ExitCode::from(code))
        }
    }
}

/// The vm backend (moat-vm). Kept to one call so the merge is one line.
fn run_vm(
    global: &GlobalArgs,
    args: &RunArgs,
    image: ResolvedImage,
    process: ProcessSpec,
    plan: Plan,
    name: String,
    stop_timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let opts = moat_vm::VmRunOptions {
        state_root: global.root.clone(),
        run_root: global.run_root(),
        rootfs: image.rootfs,
        image_id: image.image_id,
        process,
        plan,
        accel: args.accel.map(|a| match a {
            Accel::Kvm => "kvm".to_string(),
            Accel::Tcg => "tcg".to_string(),
        }),
        name,
        stop_timeout,
        supervisor_seccomp: moat_vm::supervisor::Scope::Process,
    };
    // The VM's notices may quote the guest (its console, the agent's
    // messages): escaped like every other untrusted text.
    let notice = &mut |n: &str| errln!("{n}");
    match moat_vm::run_container_with(opts, moat_vm::session::Stdio::inherit(), notice) {
        Ok(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(e) => {
            errln!("moat: error: {:#}", anyhow::Error::from(e));
            Ok(ExitCode::from(125))
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

/// Whether `auto` should pick the vm backend.
fn vm_accelerator_works(state_root: &Path) -> bool {
    moat_vm::accelerator_works(state_root)
}

fn resolve_image(
    global: &GlobalArgs,
    reference: &str,
    with_profile: bool,
) -> anyhow::Result<ResolvedImage> {
    let store = moat_image::Store::open(&global.root)
        .with_context(|| format!("opening the image store {}", global.root.display()))?;
    let image = store.resolve(reference)?;
    let rootfs = store
        .rootfs(&image)
        .with_context(|| format!("materialising the rootfs of image {reference:?}"))?;
    let profile = match with_profile {
        true => Some(crate::cmd::auto::for_image(&store, &image)?),
        false => None,
    };
    let c = &image.config;
    Ok(ResolvedImage {
        image_id: image.config_digest.clone(),
        rootfs,
        defaults: ImageDefaults {
            entrypoint: c.entrypoint.clone(),
            cmd: c.cmd.clone(),
            env: c.env.clone(),
            working_dir: c.working_dir.clone(),
            user: c.user.clone(),
        },
        profile,
    })
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
    policy.source == "builtin:auto" || policy.extends.iter().any(|e| e == "builtin:auto")
}

/// Merges the image config with the command line, as podman and Docker do:
/// CMD replaces the image's Cmd (the Entrypoint stays), `-e` overrides
/// image Env by key, `-w` and `--user` replace WorkingDir and User.
pub fn merge_process(
    image: &ImageDefaults,
    args: &RunArgs,
    hostname: &str,
    rootfs: &Path,
) -> anyhow::Result<ProcessSpec> {
    let mut argv = match &args.entrypoint {
        Some(e) => parse_entrypoint(e)?,
        None => image.entrypoint.clone(),
    };
    if !args.command.is_empty() {
        argv.extend(args.command.iter().cloned());
    } else if args.entrypoint.is_none() {
        argv.extend(image.cmd.iter().cloned());
    }
    if argv.is_empty() {
        bail!(
            "image {:?} has no Entrypoint or Cmd; give a command: moat run {} CMD [ARG...]",
            args.image,
            args.image
        );
    }

    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    set(DEFAULT_PATH.to_string());
    set(format!("HOSTNAME={hostname}"));
    if args.tty {
        set("TERM=xterm".to_string());
    }
    for e in &image.env {
        set(e.clone());
    }
    for e in &args.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => set(e.clone()),
            Some(_) => bail!("invalid -e {e:?}: expected KEY=VALUE with a non-empty KEY"),
            None if e.is_empty() => bail!("invalid -e \"\": expected KEY=VALUE"),
            None => {
                if let Ok(v) = std::env::var(e) {
                    set(format!("{e}={v}"));
                }
            }
        }
    }

    let cwd = match args.workdir.as_deref() {
        Some(w) => w.to_string(),
        None if !image.working_dir.is_empty() => image.working_dir.clone(),
        None => "/".to_string(),
    };
    if !cwd.starts_with('/') {
        bail!("working directory {cwd:?} (-w) must be an absolute path");
    }
    let user = args.user.as_deref().unwrap_or(&image.user);
    let id = moat_sandbox::user::resolve(rootfs, user)?;
    Ok(ProcessSpec {
        args: argv,
        env,
        cwd,
        uid: id.uid,
        gid: id.gid,
        additional_gids: id.additional_gids,
        tty: args.tty,
        interactive: args.interactive,
        hostname: hostname.to_string(),
    })
}

/// `--entrypoint`: a JSON array of strings, "" for none, else one command.
fn parse_entrypoint(e: &str) -> anyhow::Result<Vec<String>> {
    if e.is_empty() {
        return Ok(Vec::new());
    }
    if e.trim_start().starts_with('[') {
        return serde_json::from_str::<Vec<String>>(e).map_err(|err| {
            anyhow::anyhow!(
                "--entrypoint {e:?}: not a JSON array of strings ({err}); write a command, or [\"/bin/sh\",\"-c\"]"
            )
        });
    }
    Ok(vec![e.to_string()])
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
