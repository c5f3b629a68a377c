//! The `egress` network of a micro-VM (`moat run`): QEMU's user-mode
//! stack (libslirp) inside a network namespace that the host made and
//! filtered before the VMM exists (moat-net: namespace, nftables table,
//! pasta).
//!
//! Why this shape (docs/network.md, "The VM"): with `-netdev user` every
//! guest flow becomes an ordinary socket that QEMU opens in its own
//! namespace, so the policy's table in that namespace's `output` chain
//! sees each connection as the guest asked for it (address, port,
//! protocol), whatever the guest's kernel sends: crafted frames, raw
//! sockets, its own routes. The guest's kernel cannot reach the table (it
//! is in another kernel), and QEMU, jailed as an unprivileged uid with no
//! capability, cannot change it either. pasta, attached to the namespace
//! from outside, carries what the table lets out to the host's network,
//! and the published ports in: host port -> pasta -> the container port
//! in the namespace -> slirp's `hostfwd` -> the guest.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use moat_policy::plan::{EgressRule, PortPublish};

use super::{Forward, GuestNet, NetDevice, NetError};

/// The guest's side of slirp (QEMU's defaults, fixed in `qemu::net_args`).
pub const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// slirp's DNS relay (to the resolver of the host's `/etc/resolv.conf`,
/// through the namespace's table like any other flow).
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// A locally administered MAC (QEMU's default NIC address).
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// One VM's egress network, up before the VMM starts.
pub struct EgressNet {
    /// The namespace (bound at `path`), its table and pasta.
    pub net: moat_net::Egress,
    /// A descriptor of the namespace, for the jail to join.
    pub netns: OwnedFd,
    pub device: NetDevice,
    pub guest: GuestNet,
}

/// Files the cleanup watcher removes (the namespace's bind mount, which it
/// unmounts first, and pasta's log): the supervisor gives up root once the
/// VM runs and cannot.
pub fn cleanup_paths(net: &moat_net::Egress) -> Vec<PathBuf> {
    let p = net.netns().path();
    let mut log = p.as_os_str().to_owned();
    log.push(".pasta.log");
    vec![p.to_path_buf(), PathBuf::from(log)]
}

/// The namespace path of VM `id` under `run_root`.
pub fn netns_path(run_root: &Path, id: &str) -> PathBuf {
    run_root.join("netns").join(id)
}

/// The inbound forwards of slirp for `publish`: pasta delivers host port
/// H to the container port C in the namespace, where slirp listens on C
/// and forwards to C in the guest.
pub fn forwards(publish: &[PortPublish]) -> Vec<Forward> {
    publish
        .iter()
        .map(|p| Forward {
            protocol: p.protocol.clone(),
            host_port: p.container_port,
            guest_port: p.container_port,
        })
        .collect()
}

/// Makes the namespace, installs and verifies the policy's table, starts
/// pasta; returns what the VMM and the guest get. With `dns` (the
/// policy's `network.dns: true`) the table lets slirp's relay reach the
/// host's resolver (the one QEMU's libslirp reads from the host's
/// `/etc/resolv.conf`) on port 53; the guest asks [`RESOLVER`].
pub fn start(
    run_root: &Path,
    id: &str,
    rules: &[EgressRule],
    publish: &[PortPublish],
    dns: bool,
) -> Result<EgressNet, NetError> {
    let dns = if dns {
        Some(
            moat_net::dns::host_resolver(
                Path::new(moat_net::dns::HOST_RESOLV_CONF),
                Path::new(moat_net::dns::RESOLVED_UPSTREAM),
            )
            .map_err(moat_net::NetError::from)?
            .address,
        )
    } else {
        None
    };
    let path = netns_path(run_root, id);
    moat_net::netns::remove_bound(&path);
    let net = moat_net::Egress::start(&moat_net::EgressConfig {
        path,
        egress: rules,
        publish,
        dns,
        routed: false,
        map_gateway: false,
        // The VMM's uid is `jail::UID_BASE + n`, `n` from the id's first
        // four hex digits (boot.rs); the helper's pairs with it.
        helper_uid: moat_net::helper_uid(
            1,
            u32::from_str_radix(&id[..4.min(id.len())], 16).unwrap_or(0),
        ),
    })?;
    let netns = net
        .netns()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(NetError::Dup)?;
    let guest = GuestNet {
        interface: "eth0".into(),
        address: GUEST_ADDRESS,
        prefix: 24,
        gateway: Some(GATEWAY),
        mtu: 1500,
        mac: GUEST_MAC.into(),
        dns: dns.map(|_| RESOLVER),
    };
    let device = NetDevice::User {
        mac: GUEST_MAC.into(),
        forwards: forwards(publish),
    };
    Ok(EgressNet {
        net,
        netns,
        device,
        guest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ports_forward_container_port_to_itself() {
        let f = forwards(&[PortPublish {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: Some("127.0.0.1".into()),
        }]);
        assert_eq!(
            f,
            vec![Forward {
                protocol: "tcp".into(),
                host_port: 80,
                guest_port: 80
            }]
        );
    }
}
