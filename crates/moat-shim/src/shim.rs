//! containerd's shim lifecycle: `start` (one shim per pod, or per
//! container outside Kubernetes), the server, and the `delete` cleanup
//! action containerd runs when a shim died.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, ExitSignal, Flags, Shim, StartOpts};

use crate::runtime::Runtime;
use crate::service::Service;
use crate::stdio::ChildStdio;

/// The shim's state root: `MOAT_SHIM_ROOT` when root runs as itself (the
/// tests' private containerd passes it down), else /run/moat-shim.
pub fn base() -> PathBuf {
    let delegated = ["SUDO_UID", "SUDO_USER", "PKEXEC_UID", "DOAS_USER"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    match std::env::var_os("MOAT_SHIM_ROOT") {
        Some(r) if !r.is_empty() && !delegated && rustix::process::getuid().is_root() => {
            PathBuf::from(r)
        }
        _ => PathBuf::from("/run/moat-shim"),
    }
}

pub struct MoatShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

impl Shim for MoatShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        MoatShim {
            exit: Arc::default(),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let bundle = std::env::current_dir().map_err(|e| Error::Other(format!("bundle: {e}")))?;
        let annotations = crate::options::annotations(&bundle)
            .map_err(|e| Error::InvalidArgument(format!("{e:#}")))?;
        let grouping = crate::options::grouping(&opts.id, &annotations);
        // A pod's further container finds its shim listening: answer with
        // its address, as containerd's own shims do, without spawning a
        // server only to see it exit. (containerd-shim 0.11's spawn does
        // that, and the exit's SIGCHLD, arriving while the start action
        // tore its signal handling down, made it spin for ever in a
        // SIGPIPE loop, so StartContainer never returned.)
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &grouping);
        let path = address.strip_prefix("unix://").unwrap_or(&address);
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            containerd_shim::util::write_address(&address)?;
            return Ok(address);
        }
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().map_err(|e| Error::Other(format!("bundle: {e}")))?;
        let _ = crate::exits::exits();
        let rt = Runtime::new(&base(), &self.namespace);
        let args = [OsString::from("--force"), self.id.clone().into()];
        if let Err(e) = rt.run("delete", &self.id, &args, ChildStdio::default()) {
            log::warn!("cleaning up {}: {e:#}", self.id);
        }
        crate::service::unmount(&bundle.join("rootfs"));
        rt.forget(&self.id);
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(containerd_shim::util::timestamp()?).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        Service::new(publisher, &self.namespace, &base(), Arc::clone(&self.exit))
    }
}
