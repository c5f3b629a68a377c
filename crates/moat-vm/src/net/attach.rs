//! Connecting a guest to an existing network namespace's interface, the
//! way Kata's `tcfilter` mode does: a tap device beside the interface and
//! two `tc` mirred redirects, so every frame arriving on the interface
//! leaves through the tap (to the guest) and every frame from the guest
//! leaves through the interface. The guest takes the interface's address,
//! MAC, MTU and default route, so peers (the podman bridge, its port
//! forwards) see the container they configured.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::{sys, GuestNet, NetDevice, NetError};

/// The tap's name in the namespace (Kata names it `tap0_kata`).
pub const TAP_NAME: &str = "tap0_moat";

/// What to take over: `interface` in the namespace at `netns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    pub netns: PathBuf,
    pub interface: String,
}

#[derive(Deserialize)]
struct Link {
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    address: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    local: Option<String>,
    prefixlen: Option<u8>,
}

#[derive(Deserialize)]
struct Route {
    gateway: Option<Ipv4Addr>,
}

/// Creates the tap and the redirects in `a.netns` and returns the device
/// for the VMM and the configuration for the guest. Needs root
/// (`CAP_NET_ADMIN` over the namespace).
pub fn attach(a: &Attach) -> Result<(NetDevice, GuestNet), NetError> {
    let ns = File::open(&a.netns).map_err(|source| NetError::OpenNetns {
        path: a.netns.clone(),
        source,
    })?;
    // One short-lived thread enters the namespace (network namespaces are
    // per thread): the tools it runs inherit it, and the process stays
    // where it was.
    std::thread::scope(|s| {
        s.spawn(|| {
            sys::enter_netns(&ns).map_err(|source| NetError::EnterNetns {
                path: a.netns.clone(),
                source,
            })?;
            in_netns(a)
        })
        .join()
        .map_err(|_| NetError::Thread)?
    })
}

/// [`attach`]'s work, on a thread inside the namespace.
fn in_netns(a: &Attach) -> Result<(NetDevice, GuestNet), NetError> {
    let netns = a.netns.as_path();
    let ifname = a.interface.as_str();
    let links: Vec<Link> = json(netns, &["ip", "-j", "addr", "show", "dev", ifname])?;
    let unusable = |what: &str| NetError::Unusable {
        interface: ifname.to_string(),
        netns: netns.to_path_buf(),
        what: what.to_string(),
    };
    let link = links
        .into_iter()
        .next()
        .ok_or_else(|| unusable("no link"))?;
    let (address, prefix) = link
        .addr_info
        .iter()
        .find_map(|i| {
            (i.family == "inet").then_some((i.local.as_ref()?.parse().ok()?, i.prefixlen?))
        })
        .ok_or_else(|| unusable("no IPv4 address"))?;
    if link.address.len() != 17 {
        return Err(unusable(&format!("MAC address {:?}", link.address)));
    }
    let routes: Vec<Route> = json(
        netns,
        &["ip", "-j", "-4", "route", "show", "default", "dev", ifname],
    )?;
    let gateway = routes.iter().find_map(|r| r.gateway);
    let mtu = if link.mtu == 0 { 1500 } else { link.mtu };
    let tap = sys::create_tap(TAP_NAME).map_err(|source| NetError::Tap {
        name: TAP_NAME.to_string(),
        netns: netns.to_path_buf(),
        source,
    })?;
    let mtu_s = mtu.to_string();
    run(netns, &["ip", "link", "set", TAP_NAME, "mtu", &mtu_s, "up"])?;
    for (from, to) in [(ifname, TAP_NAME), (TAP_NAME, ifname)] {
        // `replace`: a qdisc left by an earlier, failed attach goes, with
        // its filters.
        run(netns, &["tc", "qdisc", "replace", "dev", from, "ingress"])?;
        run(
            netns,
            &[
                "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    let guest = GuestNet {
        interface: "eth0".to_string(),
        address,
        prefix,
        gateway,
        mtu,
        mac: link.address.to_ascii_lowercase(),
        dns: None,
    };
    Ok((
        NetDevice::Tap {
            fd: tap,
            mac: guest.mac.clone(),
        },
        guest,
    ))
}

fn tool(netns: &Path, argv: &[&str]) -> Result<Vec<u8>, NetError> {
    let fail = |detail: String| NetError::Tool {
        command: argv.join(" "),
        netns: netns.to_path_buf(),
        detail,
    };
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

fn run(netns: &Path, argv: &[&str]) -> Result<(), NetError> {
    tool(netns, argv).map(drop)
}

fn json<T: serde::de::DeserializeOwned>(netns: &Path, argv: &[&str]) -> Result<T, NetError> {
    let out = tool(netns, argv)?;
    serde_json::from_slice(&out).map_err(|e| NetError::Tool {
        command: argv.join(" "),
        netns: netns.to_path_buf(),
        detail: format!("unexpected output: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let links: Vec<Link> = serde_json::from_str(
            r#"[{"ifindex":2,"ifname":"eth0","mtu":1400,"address":"AA:bb:cc:dd:ee:01",
            "addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64},
                         {"family":"inet","local":"10.88.0.5","prefixlen":16}]}]"#,
        )
        .unwrap();
        let l = &links[0];
        assert_eq!(l.mtu, 1400);
        let v4 = l.addr_info.iter().find_map(|i| {
            (i.family == "inet").then_some((i.local.as_ref()?.parse().ok()?, i.prefixlen?))
        });
        assert_eq!(v4, Some((Ipv4Addr::new(10, 88, 0, 5), 16)));
        let r: Vec<Route> =
            serde_json::from_str(r#"[{"dst":"default","gateway":"10.88.0.1","dev":"eth0"}]"#)
                .unwrap();
        assert_eq!(r[0].gateway, Some(Ipv4Addr::new(10, 88, 0, 1)));
    }
}
