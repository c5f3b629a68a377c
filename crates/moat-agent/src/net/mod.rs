//! The guest's network, as the host configured it ([`GuestNet`] in
//! `Start`): loopback up, the virtio-net interface given its address,
//! netmask, MTU and default route, before the workload starts. Filtering
//! never happens here: the guest's kernel is not trusted with it (the host
//! filters, see docs/network.md).

mod sys;

use moat_agent::netconf::GuestNet;

use crate::Failure;

/// How long the agent waits for the virtio-net interface to appear.
const WAIT_FOR_DEVICE_MS: u64 = 2000;

pub fn configure(n: &GuestNet) -> Result<(), Failure> {
    n.validate()
        .map_err(|e| Failure::setup(format!("the host's network configuration: {e}")))?;
    let name = n.interface.as_str();
    let err = |what: &str, e: std::io::Error| {
        Failure::setup(format!(
            "{what} of {name} ({}/{}): {e}",
            n.address, n.prefix
        ))
    };
    let ctl = sys::Ctl::new().map_err(|e| err("socket for network ioctls", e))?;
    ctl.up("lo").map_err(|e| err("bringing up lo", e))?;
    // Ports below 1024 for any uid, as in the sandbox's namespace (and
    // Docker's default): the guest's network is the container's alone.
    std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")
        .map_err(|e| err("setting net.ipv4.ip_unprivileged_port_start", e))?;
    // The driver probes the device during boot; wait a little in case the
    // agent got here first.
    let mut waited = 0;
    let mac = loop {
        match ctl.hwaddr(name) {
            Ok(m) => break m,
            Err(e) if waited >= WAIT_FOR_DEVICE_MS => {
                return Err(err(
                    "finding the interface (is virtio-net in the guest kernel?)",
                    e,
                ))
            }
            Err(_) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                waited += 20;
            }
        }
    };
    let have = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    if !n.mac.is_empty() && !have.eq_ignore_ascii_case(&n.mac) {
        return Err(Failure::setup(format!(
            "{name} has MAC {have}, the host sent {}: the VMM and the configuration disagree",
            n.mac
        )));
    }
    ctl.set_mtu(name, n.mtu)
        .map_err(|e| err("setting the MTU", e))?;
    ctl.set_address(name, n.address)
        .map_err(|e| err("setting the address", e))?;
    ctl.set_netmask(name, n.netmask())
        .map_err(|e| err("setting the netmask", e))?;
    ctl.up(name).map_err(|e| err("bringing up", e))?;
    if let Some(gw) = n.gateway {
        ctl.default_route(gw)
            .map_err(|e| err(&format!("adding the default route via {gw}"), e))?;
    }
    Ok(())
}
