//! The guest's network configuration, as the host sends it in `Start`:
//! the agent gives the guest's virtio-net interface exactly this (address,
//! prefix, gateway, MTU) before the workload starts. The host chose it
//! (slirp's fixed addresses, or those of the interface a VM container
//! takes over); the guest is never asked.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Largest MTU the agent accepts (virtio-net's limit is 65535).
pub const MAX_MTU: u32 = 65_535;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNet {
    /// The guest's interface (`eth0`: the only virtio-net device).
    pub interface: String,
    pub address: Ipv4Addr,
    /// Prefix length of `address`'s subnet (the connected route).
    pub prefix: u8,
    /// The default route's next hop, if any.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
    /// The MAC address the host gave the device (for messages and checks;
    /// the VMM sets it).
    pub mac: String,
    /// The resolver the guest is told (`network.dns: true`: slirp's relay):
    /// the agent mounts a file naming it over the image's
    /// `/etc/resolv.conf`. `None`: the image's file stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Ipv4Addr>,
}

impl GuestNet {
    /// Rejects what no interface can take, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.interface.is_empty() || self.interface.len() > 15 {
            return Err(format!(
                "interface name {:?} must be 1 to 15 bytes",
                self.interface
            ));
        }
        if self.prefix > 32 {
            return Err(format!("prefix /{} is longer than 32", self.prefix));
        }
        if !(68..=MAX_MTU).contains(&self.mtu) {
            return Err(format!("MTU {} is outside 68..={MAX_MTU}", self.mtu));
        }
        Ok(())
    }

    /// The netmask of `prefix`.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix.min(32)))
        };
        Ipv4Addr::from(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(prefix: u8, mtu: u32) -> GuestNet {
        GuestNet {
            interface: "eth0".into(),
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix,
            gateway: None,
            mtu,
            mac: "52:54:00:12:34:56".into(),
            dns: None,
        }
    }

    #[test]
    fn netmask_of_prefix() {
        assert_eq!(net(24, 1500).netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(net(16, 1500).netmask(), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(net(0, 1500).netmask(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(net(32, 1500).netmask(), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            net(33, 1500).validate().unwrap_err(),
            "prefix /33 is longer than 32"
        );
        assert_eq!(
            net(24, 20).validate().unwrap_err(),
            "MTU 20 is outside 68..=65535"
        );
        assert!(net(24, 1500).validate().is_ok());
    }
}
