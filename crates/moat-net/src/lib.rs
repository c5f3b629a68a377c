//! Container networking shared by the sandbox and VM backends: a network
//! namespace made by the host side, the policy's egress and publish rules
//! as an nftables table installed in it, and `pasta` (package `passt`)
//! attached to it for user-mode connectivity and published ports.
//! See docs/network.md.
//!
//! The rule this crate serves (DESIGN rule 11): the workload never
//! controls its own filter. The namespace is created by root on the host
//! ([`NetNs::create`]), so it is owned by the initial user namespace; a
//! workload in a user namespace of its own holds no capability over it,
//! whatever its policy grants (`CAP_NET_ADMIN`, `CAP_NET_RAW` count only
//! in namespaces its user namespace owns). The table is installed and
//! read back ([`nft::apply`]) before pasta starts and before any workload
//! code runs.
//!
//! # API (stable: the VM backend builds on it)
//! - [`NetNs::create`]`(path)` -> [`NetNs`] (`fd()`, `path()`; dropped:
//!   unmounted and removed). [`netns::remove_bound`] for leftovers.
//! - [`nft::render`]`(&`[`nft::Filter`]`{ egress, publish, dns, routed })`
//!   -> [`nft::Ruleset`]; [`nft::apply`]`(netns_fd, &ruleset)` installs and
//!   verifies; [`nft::verify`] re-checks. Table `inet moat`.
//! - [`NetNs::create_owned`]`(path, uid)`: the same, owned by a user
//!   namespace of the helper's `uid` (`userns()`).
//! - [`pasta::spawn`]`(&`[`pasta::PastaConfig`]`{ netns, publish,
//!   map_gateway, state, uid }, userns)` -> [`pasta::Pasta`] (`pid()`,
//!   `stop()`, killed on drop), jailed as `uid`; [`pasta::args`] for
//!   inspection.
//! - [`Egress::start`] does all three in order for one container.
//! - [`dns::host_resolver`] -> [`dns::Resolver`] (`address`, `conf`): the
//!   host's resolver for a `network.dns: true` grant.
//!
//! Published ports are [`moat_plan::PortPublish`]; its `host_ip` `None`
//! binds every host address (podman's default for `-p 8080:80`).

pub mod dns;
pub mod netns;
pub mod nft;
pub mod pasta;
mod sys;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use moat_plan::{EgressRule, PortPublish};

pub use crate::dns::DnsError;
pub use crate::netns::{NetNs, NetnsError};
pub use crate::nft::NftError;
pub use crate::pasta::{Pasta, PastaError};
pub use crate::sys::loopback_up;

/// Errors of [`Egress::start`].
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("the policy's network rules")]
    Nft(#[from] NftError),
    #[error("the user-mode network (pasta)")]
    Pasta(#[from] PastaError),
    #[error(transparent)]
    Dns(#[from] DnsError),
}

/// One container's egress network: its namespace, filtered, with pasta
/// attached. Dropping it stops pasta and unbinds the namespace (pasta also
/// exits by itself once the bound file is gone).
#[derive(Debug)]
pub struct Egress {
    // Field order is drop order: pasta first, then the namespace.
    pasta: Pasta,
    netns: NetNs,
}

/// What [`Egress::start`] needs.
#[derive(Debug, Clone)]
pub struct EgressConfig<'a> {
    /// Where the namespace is bound, e.g. `/run/moat/netns/<id>`.
    pub path: PathBuf,
    pub egress: &'a [EgressRule],
    pub publish: &'a [PortPublish],
    /// The one resolver the workload may query on port 53
    /// ([`dns::host_resolver`] for a `network.dns` grant).
    pub dns: Option<IpAddr>,
    /// See [`nft::Filter::routed`].
    pub routed: bool,
    /// See [`pasta::PastaConfig::map_gateway`].
    pub map_gateway: bool,
    /// The unprivileged host uid pasta runs as, unique to this container
    /// (see [`helper_uid`]); it owns the namespace's user namespace.
    pub helper_uid: u32,
}

/// First uid of the range jailed network helpers (pasta) run as: above
/// the sandbox's user-namespace owners (0x71000000 + n) and below
/// systemd's "foreign" range (0x7FFE0000), used by no account.
pub const HELPER_UID_BASE: u32 = 0x7200_0000;

/// The helper uid for container slot `n` of `backend` (`0` sandbox, `1`
/// vm): slots are the backends' own per-container uid offsets (the
/// sandbox's user-namespace owner, the VM's VMM uid), so that no two
/// running containers share one.
pub fn helper_uid(backend: u32, n: u32) -> u32 {
    HELPER_UID_BASE + (backend & 0xff) * 0x1_0000 + (n & 0xffff)
}

impl Egress {
    /// Renders the rules (refusing bad ones before anything is created),
    /// creates the namespace, installs and verifies the table, then starts
    /// pasta and waits until it has configured the namespace.
    pub fn start(cfg: &EgressConfig<'_>) -> Result<Egress, NetError> {
        let ruleset = nft::render(&nft::Filter {
            egress: cfg.egress,
            publish: cfg.publish,
            dns: cfg.dns,
            routed: cfg.routed,
        })?;
        let netns = NetNs::create_owned(&cfg.path, cfg.helper_uid)?;
        nft::apply(netns.fd(), &ruleset)?;
        let userns = netns.userns().ok_or(NetnsError::Create {
            step: "the helper's user namespace",
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        })?;
        let pasta = pasta::spawn(
            &pasta::PastaConfig {
                netns: cfg.path.clone(),
                publish: cfg.publish.to_vec(),
                map_gateway: cfg.map_gateway,
                state: with_suffix(&cfg.path, ".pasta"),
                uid: cfg.helper_uid,
            },
            userns,
        )?;
        Ok(Egress { pasta, netns })
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn pasta(&self) -> &Pasta {
        &self.pasta
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.pasta.stop();
        let log = with_suffix(self.netns.path(), ".pasta.log");
        let _ = std::fs::remove_file(log);
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
