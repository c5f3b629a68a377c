//! `moat kill`: send a signal to a running container.

use std::process::ExitCode;

use anyhow::bail;
use moat_runtime::{record, Backend};

use crate::global::GlobalArgs;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat kill web            # SIGKILL
  moat kill web TERM       # graceful: killed anyway after the container's --stop-timeout
  moat kill 3f2a9c 15

SIGINT, SIGTERM, SIGHUP and SIGQUIT go through the container's supervisor,
which forwards them and enforces the stop timeout; other signals go to the
container's first process directly. In a micro-VM (--isolation vm) the
supervisor also forwards SIGUSR1 and SIGUSR2; SIGKILL ends the VM.")]
pub struct KillArgs {
    /// Container name, ID or unique ID prefix (see `moat ps`).
    pub name: String,
    /// Signal name (TERM, SIGTERM) or number.
    #[arg(default_value = "KILL")]
    pub signal: String,
}

pub fn run(global: &GlobalArgs, cmd: KillArgs) -> anyhow::Result<ExitCode> {
    let Some(sig) = moat_sandbox::parse_signal(&cmd.signal) else {
        bail!(
            "unknown signal {:?}: use a name like TERM, KILL, HUP, INT, USR1 or a number 1-64",
            cmd.signal
        );
    };
    // The core's one reader (it keeps the trust rules).
    let states = crate::cmd::container::records(global)?;
    let Some(st) = record::find(&states, &cmd.name).filter(|r| r.owned()) else {
        bail!("no running container named {:?} (see `moat ps`)", cmd.name);
    };
    if st.isolation == moat_runtime::Isolation::Vm
        && sig != libc::SIGKILL
        && !moat_vm::session::FORWARDED_SIGNALS.contains(&sig)
    {
        bail!(
            "container {:?} runs in a micro-VM, whose supervisor forwards only INT, TERM, HUP, QUIT, USR1 and USR2 (KILL ends the VM); signal {:?} cannot reach it",
            st.name.as_str(),
            cmd.signal
        );
    }
    // Through the backend that holds the container.
    let r = match st.isolation {
        moat_runtime::Isolation::Vm => moat_vm::VmBackend::new(global.root.clone()).signal(st, sig),
        _ => moat_sandbox::SandboxBackend.signal(st, sig),
    };
    r.map_err(anyhow::Error::from)?;
    Ok(ExitCode::SUCCESS)
}
