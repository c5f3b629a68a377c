//! The resolver a container with `network.dns: true` uses: the host's own,
//! as its `/etc/resolv.conf` names it. Traffic to it goes through pasta
//! like any other flow (pasta opens an ordinary UDP or TCP socket to that
//! address on the host), so the container is told the same address and
//! the namespace's table lets exactly that address, port 53, through.
//!
//! A resolver on the host's loopback (`127.0.0.53`, systemd-resolved's
//! stub) is out of a container's reach: its `127.0.0.0/8` is its own, and
//! moat starts pasta with `--no-map-gw`. For that case the upstream list
//! systemd-resolved writes (`/run/systemd/resolve/resolv.conf`) is used
//! instead; if there is none either, the grant is refused naming the file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The host's resolver configuration.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of upstream resolvers, used when
/// [`HOST_RESOLV_CONF`] names only its loopback stub.
pub const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("`network.dns` grants the host's resolver, but {path} cannot be read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`network.dns` grants the host's resolver, but {path} names none a container can reach{found}; configure a resolver outside the host's loopback there, or drop `network.dns` and grant one as an egress rule (`{{to: ADDRESS/32, ports: 53, protocol: any}}`) with the image's own /etc/resolv.conf")]
    NoResolver { path: PathBuf, found: String },
}

/// The resolver a container is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    /// The one address the table lets through on port 53.
    pub address: IpAddr,
    /// The container's `/etc/resolv.conf`: that address, and the host's
    /// `search`, `domain` and `options` lines.
    pub conf: String,
}

/// Whether a container's network (pasta's, `--no-map-gw`) reaches `a`.
fn reachable(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            // Link-local needs a zone (`fe80::1%eth0`) that is the host's.
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// The resolver of one resolv.conf text: the first IPv4 `nameserver` a
/// container reaches, else the first such IPv6 one. `Err` lists the
/// nameservers found (none reachable).
pub fn from_text(text: &str) -> Result<Resolver, Vec<String>> {
    let mut servers: Vec<(String, Option<IpAddr>)> = Vec::new();
    let mut extra = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(w) = words.next() {
                    servers.push((w.to_string(), w.parse().ok()));
                }
            }
            Some("search" | "domain" | "options") => extra.push(line.to_string()),
            _ => {}
        }
    }
    let usable = |v4: bool| {
        servers
            .iter()
            .filter_map(|(_, a)| *a)
            .find(|a| a.is_ipv4() == v4 && reachable(a))
    };
    let Some(address) = usable(true).or_else(|| usable(false)) else {
        return Err(servers.into_iter().map(|(w, _)| w).collect());
    };
    let mut conf =
        format!("# moat: the host's resolver (network.dns: true)\nnameserver {address}\n");
    for l in extra {
        conf.push_str(&l);
        conf.push('\n');
    }
    Ok(Resolver { address, conf })
}

fn read(path: &Path) -> Result<String, DnsError> {
    std::fs::read_to_string(path).map_err(|source| DnsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The host's resolver from `resolv_conf` (normally
/// [`HOST_RESOLV_CONF`]), falling back to `upstream` (normally
/// [`RESOLVED_UPSTREAM`]) when the first names only loopback resolvers.
pub fn host_resolver(resolv_conf: &Path, upstream: &Path) -> Result<Resolver, DnsError> {
    let found = match from_text(&read(resolv_conf)?) {
        Ok(r) => return Ok(r),
        Err(found) => found,
    };
    if let Ok(text) = std::fs::read_to_string(upstream) {
        if let Ok(r) = from_text(&text) {
            return Ok(r);
        }
    }
    Err(DnsError::NoResolver {
        path: resolv_conf.to_path_buf(),
        found: if found.is_empty() {
            String::new()
        } else {
            format!(" (only {})", found.join(", "))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reachable_ipv4_resolver_and_the_search_lines() {
        let r = from_text(
            "# generated\nnameserver 127.0.0.53\nnameserver fd00::53\nnameserver 10.231.9.2\nnameserver 10.231.9.3\nsearch example.test\noptions edns0\n",
        )
        .unwrap();
        assert_eq!(r.address, "10.231.9.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            r.conf,
            "# moat: the host's resolver (network.dns: true)\nnameserver 10.231.9.2\nsearch example.test\noptions edns0\n"
        );
        let r =
            from_text("nameserver ::1\nnameserver fe80::1%eth0\nnameserver fd00::53\n").unwrap();
        assert_eq!(r.address, "fd00::53".parse::<IpAddr>().unwrap());
        assert_eq!(
            from_text("nameserver 127.0.0.53\n").unwrap_err(),
            vec!["127.0.0.53".to_string()]
        );
    }

    #[test]
    fn loopback_stub_falls_back_to_the_upstream_list_else_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let stub = d.path().join("resolv.conf");
        let up = d.path().join("upstream.conf");
        std::fs::write(&stub, "nameserver 127.0.0.53\n").unwrap();
        assert_eq!(
            host_resolver(&stub, &up).unwrap_err().to_string(),
            format!("`network.dns` grants the host's resolver, but {} names none a container can reach (only 127.0.0.53); configure a resolver outside the host's loopback there, or drop `network.dns` and grant one as an egress rule (`{{to: ADDRESS/32, ports: 53, protocol: any}}`) with the image's own /etc/resolv.conf", stub.display())
        );
        std::fs::write(&up, "nameserver 10.231.9.2\n").unwrap();
        assert_eq!(
            host_resolver(&stub, &up).unwrap().address,
            "10.231.9.2".parse::<IpAddr>().unwrap()
        );
    }
}
