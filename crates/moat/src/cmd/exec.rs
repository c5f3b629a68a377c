//! `moat exec`: run a command in a running container, never weaker than
//! its first process (see `moat_sandbox::exec`), and only where the
//! container's policy allows it (`exec: true`; the built-in policies say
//! no: containers are immutable).

use std::process::ExitCode;

use anyhow::{bail, Context};
use moat_runtime::{Isolation, Status};

use crate::global::GlobalArgs;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat exec web ps
  moat exec -it web sh
  moat exec -e DEBUG=1 -u 1000 -w /tmp web env

The command runs in the container's namespaces and cgroups, as its user (or
--user), with its capabilities, limits and seccomp filter. Only containers
whose policy says `exec: true` can be entered.

Exit status: the command's; 125 when it could not be started, 126 when it
cannot be executed, 127 when it is not found.")]
pub struct ExecArgs {
    /// Keep stdin open and connected to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from this environment).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// User to run as: UID[:GID] or NAME[:GROUP] from the image's /etc/passwd.
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Working directory inside the container (absolute).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Container name or ID.
    pub name: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let all = crate::cmd::container::records(global)?;
    let r = crate::cmd::container::find(&all, &args.name)?;
    if !r.owned() || r.status != Status::Running {
        bail!(
            "container {} is not running ({}): exec needs a running container (moat start {0})",
            r.name,
            crate::cmd::container::status_text(&r)
        );
    }
    let spec = moat_runtime::spec::read(&global.records_root(), &r.id)
        .with_context(|| format!("reading what container {} runs", r.name))?;
    if !spec.plan.exec_allowed {
        bail!(
            "policy {} of container {} does not allow exec (`exec: false`; containers are immutable): run a new container to inspect it, or run it under a policy with `exec: true`",
            spec.policy,
            r.name
        );
    }
    let request = moat_runtime::process::ProcessArgs {
        image: spec.image.clone(),
        command: args.command.clone(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        tty: args.tty,
        interactive: args.interactive,
        entrypoint: None,
    };
    let process = moat_runtime::process::exec_process(&spec.process, &request, |user| {
        let id = moat_sandbox::user::resolve(&spec.rootfs, user)?;
        Ok((id.uid, id.gid, id.additional_gids))
    })?;
    let backend = crate::cmd::container::backend_for(global, r.isolation);
    let run_root = global.run_root();
    let request = moat_runtime::backend::ExecRequest {
        record: &r,
        plan: &spec.plan,
        rootfs: &spec.rootfs,
        process: &process,
        run_root: &run_root,
    };
    let result = backend.exec(&request).map_err(|e| {
        let code = e.exit_code;
        let mut err = anyhow::Error::from(e);
        if r.isolation == Isolation::Vm && !r.monitor_alive() {
            err = err.context(format!(
                "container {} runs in a micro-VM: exec goes through its monitor (run it with -d)",
                r.name
            ));
        }
        (code, err)
    });
    match result {
        Ok(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Err((code, e)) => {
            errln!("moat: error: {e:#}");
            Ok(ExitCode::from(code))
        }
    }
}
