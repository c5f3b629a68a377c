//! Accelerator selection. KVM only when a test guest really boots under it
//! and the agent answers; otherwise TCG with one notice saying why. The
//! answer is cached under the state root, keyed by the guest kernel and the
//! host kernel, so the probe runs once per (guest, host) pair.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use moat_agent::proto::{Decoder, Message};

use crate::boot::{self, console_tail, BootRequest};
use crate::hypervisor::{Accel, Hypervisor};
use crate::{kernel, sys, VmError};

/// How long a KVM guest may take to answer (it boots in well under a second).
const PROBE_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub guest_kernel: String,
    pub host_kernel: String,
    pub kvm: bool,
    /// Why KVM is not used (empty when it is), in the user's terms.
    pub reason: String,
    /// The same, as data (`None` when KVM is used; a cache written before
    /// it existed is probed again).
    #[serde(default)]
    pub why: Option<NoKvm>,
}

/// Why micro-VMs cannot use KVM here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoKvm {
    /// There is no `/dev/kvm`.
    Missing,
    /// `/dev/kvm` exists but cannot be opened.
    Unusable { error: String },
    /// Only root may open `/dev/kvm`, and the jailed VMM is not root.
    RootOnly { mode: u32 },
    /// A test guest failed or stayed silent under KVM.
    GuestFailed { detail: String },
}

impl NoKvm {
    /// What it means for the user (never a bare error of QEMU's).
    pub fn explain(&self) -> String {
        match self {
            NoKvm::Missing => "this host offers no hardware virtualisation (there is no /dev/kvm: the CPU has no VT-x/AMD-V, it is switched off, or the kvm module is not loaded)".into(),
            NoKvm::Unusable { error } => format!("this host's hardware virtualisation is not usable (/dev/kvm cannot be opened: {error})"),
            NoKvm::RootOnly { mode } => format!("/dev/kvm may be opened by root only (mode {mode:04o}), and moat runs each micro-VM as an unprivileged user; giving /dev/kvm to a kvm group with mode 0660 (Debian's default) lets micro-VMs use it"),
            NoKvm::GuestFailed { detail } => format!("hardware virtualisation is present but a test micro-VM did not run under it ({detail})"),
        }
    }
}

fn guest_kernel_id(path: &Path) -> String {
    match fs::metadata(path) {
        Ok(m) => format!("{}:{}:{}", path.display(), m.len(), m.mtime()),
        Err(_) => path.display().to_string(),
    }
}

fn host_kernel_id() -> String {
    let r = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let v = fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default();
    format!("{} {}", r.trim(), v.trim())
}

/// The cached probe result, probing first when there is none for this
/// guest kernel and host kernel. The bool is true when the probe just ran.
pub fn probe(state_root: &Path, hv: &dyn Hypervisor) -> Result<(ProbeResult, bool), VmError> {
    let kernel_path = kernel::locate(state_root)?;
    let key = (guest_kernel_id(&kernel_path), host_kernel_id());
    let cache = state_root.join("vm").join("accel.json");
    if let Ok(text) = fs::read(&cache) {
        if let Ok(r) = serde_json::from_slice::<ProbeResult>(&text) {
            if r.guest_kernel == key.0 && r.host_kernel == key.1 && (r.kvm || r.why.is_some()) {
                return Ok((r, false));
            }
        }
    }
    let why = match fs::File::options().read(true).write(true).open("/dev/kvm") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(NoKvm::Missing),
        Err(e) => Some(NoKvm::Unusable {
            error: e.to_string(),
        }),
        // The jailed VMM keeps only the group of /dev/kvm; without one that
        // may read and write it, QEMU would fail with "Permission denied".
        Ok(f) if crate::jail::kvm_group().is_none() => Some(NoKvm::RootOnly {
            mode: f.metadata().map_or(0, |m| m.mode() & 0o7777),
        }),
        Ok(_) => probe_boot(state_root, hv)
            .err()
            .map(|detail| NoKvm::GuestFailed { detail }),
    };
    let r = ProbeResult {
        guest_kernel: key.0,
        host_kernel: key.1,
        kvm: why.is_none(),
        reason: why.as_ref().map(NoKvm::explain).unwrap_or_default(),
        why,
    };
    let dir = state_root.join("vm");
    let _ = fs::create_dir_all(&dir);
    let stage = dir.join(format!(".accel.{}.tmp", std::process::id()));
    if fs::write(&stage, serde_json::to_vec_pretty(&r).unwrap_or_default()).is_ok() {
        let _ = fs::rename(&stage, &cache);
    }
    Ok((r, true))
}

/// Boots a guest without a root disk under KVM and waits for the agent's hello.
fn probe_boot(state_root: &Path, hv: &dyn Hypervisor) -> Result<(), String> {
    let id = format!("{:016x}", sys::getrandom_u64());
    let mut booted = boot::boot(
        hv,
        BootRequest {
            state_root,
            root: None,
            vcpus: 1,
            memory_mib: 128,
            accel: Accel::Kvm,
            cpu_millis: None,
            id: &id,
            cleanup: Vec::new(),
            trace: false,
            volumes: Vec::new(),
            host_dirs: (Vec::new(), Vec::new()),
            net: None,
            netns: None,
            template: None,
        },
    )
    .map_err(|e| format!("it could not start: {e}"))?;
    let mut sock = fs::File::from(booted.control.try_clone().map_err(|e| e.to_string())?);
    let _ = sys::set_nonblocking(std::os::fd::AsFd::as_fd(&sock), true);
    let mut decoder = Decoder::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < PROBE_DEADLINE {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut fds = [libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let _ = sys::poll(&mut fds, 100);
        if let Ok(n) = sock.read(&mut buf) {
            decoder.push(&buf[..n]);
            if let Ok(Some(Message::Hello(_))) = decoder.next_message() {
                return Ok(());
            }
        }
        if booted.vmm.try_wait().is_some() {
            let tail = console_tail(&mut booted.vmm.console, 3);
            let last = tail.lines().last().unwrap_or("no output").to_string();
            return Err(format!("it stopped with: {last}"));
        }
    }
    Err(format!(
        "it did not answer within {} s; on PVM hosts stock guests hang",
        PROBE_DEADLINE.as_secs()
    ))
}

/// Chooses the accelerator: `requested` (`kvm`, `tcg`, `auto` or none) wins;
/// otherwise the probe. `notice` receives one line when TCG is chosen after
/// a fresh probe.
pub fn select(
    state_root: &Path,
    requested: Option<&str>,
    hv: &dyn Hypervisor,
    notice: &mut dyn FnMut(&str),
) -> Result<Accel, VmError> {
    match requested {
        None | Some("auto") => {}
        Some(s) => {
            return Accel::parse(s).ok_or_else(|| VmError::BadAccel {
                value: s.to_string(),
            });
        }
    }
    let (r, fresh) = probe(state_root, hv)?;
    if r.kvm {
        return Ok(Accel::Kvm);
    }
    if fresh {
        notice(&format!(
            "moat: running micro-VMs under TCG (software emulation, slower): {}; force one with --accel kvm|tcg",
            r.reason
        ));
    }
    Ok(Accel::Tcg)
}
