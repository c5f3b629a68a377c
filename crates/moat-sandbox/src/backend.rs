//! The sandbox as a [`moat_runtime::Backend`].

use std::path::Path;

use moat_runtime::backend::{BackendError, Container};
use moat_runtime::{Backend, Isolation, Record};

use crate::{IdMap, SandboxConfig, SandboxError};

/// The namespace sandbox on this host's kernel, containers owned by this
/// process (host ids mapped from [`IdMap::for_root`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxBackend;

fn backend_error(e: SandboxError) -> BackendError {
    BackendError {
        exit_code: e.exit_code(),
        error: Box::new(e),
    }
}

impl Backend for SandboxBackend {
    fn isolation(&self) -> Isolation {
        Isolation::Sandbox
    }

    fn run_attached(&self, c: &Container) -> Result<i32, BackendError> {
        let cfg = SandboxConfig {
            id: c.id.to_string(),
            name: c.name.to_string(),
            image_id: c.image_id.clone(),
            rootfs: c.rootfs.clone(),
            run_root: c.run_root.clone(),
            process: c.process.clone(),
            plan: c.plan.clone(),
            stop_timeout: c.stop_timeout,
            id_map: IdMap::for_root(),
            started_notify: c.started_notify.clone(),
            start_gate: c.start_gate.clone(),
        };
        crate::run(&cfg).map_err(backend_error)
    }

    fn signal(&self, record: &Record, sig: i32) -> Result<(), BackendError> {
        crate::signal_container(record, sig).map_err(backend_error)
    }

    fn delete(&self, run_root: &Path, record: &Record) -> Result<(), BackendError> {
        let _lock = crate::state::lock(run_root).map_err(|e| backend_error(e.into()))?;
        if record.owned() {
            return Err(backend_error(SandboxError::Prepare {
                what: format!("removing container {}: it is still running", record.name),
                source: std::io::Error::from_raw_os_error(libc::EBUSY),
            }));
        }
        crate::state::destroy(run_root, &record.id);
        Ok(())
    }

    fn exec(&self, req: &moat_runtime::backend::ExecRequest<'_>) -> Result<i32, BackendError> {
        crate::exec(req.record, req.plan, req.rootfs, req.process.clone()).map_err(backend_error)
    }

    fn cleanup(&self, record: &Record) {
        crate::cgroup::destroy(&record.id);
    }

    fn stats(&self, record: &Record) -> Option<moat_runtime::backend::Stats> {
        crate::cgroup::stats(&record.id)
    }
}
