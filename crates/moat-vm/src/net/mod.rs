//! The guest's network device and what connects it on the host side.
//!
//! Two ways, both with the filtering outside the guest (docs/network.md):
//! - [`attach`]: a VM container under the OCI interface takes over the
//!   interface that podman or CNI put in the network namespace its
//!   `config.json` names (Kata's way): a tap device created in that
//!   namespace, two `tc` mirred redirects between the interface and the
//!   tap, and the guest given the interface's address, MAC, MTU and
//!   default route. QEMU itself stays in its jail's own, empty namespace
//!   and only holds the tap's descriptor: it has no socket on the pod's
//!   network.
//! - egress (`moat run`): libslirp inside the jail's namespace, see
//!   [`egress`].

pub mod attach;
pub mod egress;
mod sys;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

pub use moat_agent::netconf::GuestNet;

pub use self::attach::{attach, Attach};

/// The guest's virtio-net device as the VMM gets it.
#[derive(Debug)]
pub enum NetDevice {
    /// A tap queue the host created (the VMM cannot create one).
    Tap { fd: OwnedFd, mac: String },
    /// QEMU's user-mode stack (libslirp) with these inbound forwards.
    User { mac: String, forwards: Vec<Forward> },
}

impl NetDevice {
    pub fn mac(&self) -> &str {
        match self {
            NetDevice::Tap { mac, .. } | NetDevice::User { mac, .. } => mac,
        }
    }
}

/// One inbound forward of the user-mode stack: `host_port` in the VMM's
/// namespace to `guest_port` in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// `tcp` or `udp`.
    pub protocol: String,
    pub host_port: u16,
    pub guest_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening the network namespace {path}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering the network namespace {path}")]
    EnterNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` in the network namespace {netns} failed: {detail}")]
    Tool {
        command: String,
        netns: PathBuf,
        detail: String,
    },
    #[error("interface {interface} in the network namespace {netns} has {what}: a micro-VM guest takes over one IPv4 interface; give the container an IPv4 network")]
    Unusable {
        interface: String,
        netns: PathBuf,
        what: String,
    },
    #[error("creating the tap device {name} in the network namespace {netns}")]
    Tap {
        name: String,
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the network setup thread panicked")]
    Thread,
    #[error("the VM's egress network")]
    Egress(#[from] moat_net::NetError),
    #[error("duplicating the network namespace's descriptor")]
    Dup(#[source] std::io::Error),
}
