//! The policy's egress and publish rules as one nftables table, installed
//! in a network namespace with `nft -f -` run inside it, then read back.
//!
//! The table is `inet moat` (IPv4 and IPv6 in one): three base chains at
//! filter priority, each with policy `drop`.
//! - `output`: loopback, established/related replies, IPv6 neighbour
//!   discovery, then one `accept` per egress rule (and DNS to the resolver
//!   when granted). Everything else the workload sends is dropped.
//! - `input`: loopback, established/related, neighbour discovery and the
//!   published container ports. Nothing else reaches a listening socket.
//! - `forward`: nothing is routed through the namespace.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::process::{Command, Stdio};

use moat_plan::{EgressRule, PortPublish};

use crate::sys;

/// Family and name of the table moat installs.
pub const TABLE: &str = "moat";

/// Neighbour discovery: without it IPv6 reaches nothing, not even an
/// allowed address (it never leaves the link to pasta's tap).
const NDP: &str = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("egress rule {index}: `{cidr}` is not a CIDR; write an address and a prefix length such as `10.231.0.0/16` or `2001:db8::/32`")]
    Cidr { index: usize, cidr: String },
    #[error("egress rule {index} ({cidr}): port range {first}-{last} is empty or starts at 0; write ports between 1 and 65535, the first not above the last")]
    Ports {
        index: usize,
        cidr: String,
        first: u16,
        last: u16,
    },
    #[error("{what}: protocol `{protocol}` is not `tcp`, `udp`{any}")]
    Protocol {
        what: String,
        protocol: String,
        any: &'static str,
    },
    #[error("published port {host}:{container}: ports must be between 1 and 65535")]
    PublishPort { host: u16, container: u16 },
    #[error("cannot run `nft` ({what}); install nftables (apt-get install nftables)")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`nft -f -` refused moat's table: {stderr}")]
    Apply { stderr: String },
    #[error("the moat table read back from the namespace is not the one installed: {0}")]
    Verify(String),
}

/// What goes into the table.
#[derive(Debug, Clone, Copy)]
pub struct Filter<'a> {
    /// The policy's egress rules.
    pub egress: &'a [EgressRule],
    /// Published ports: their container ports accept inbound connections.
    pub publish: &'a [PortPublish],
    /// A resolver the workload may query on port 53 (UDP and TCP).
    pub dns: Option<IpAddr>,
    /// The workload's traffic is routed through the namespace (a VM's tap
    /// beside the uplink) rather than sent from it: the `forward` chain
    /// gets the egress and publish rules too (else it accepts nothing).
    pub routed: bool,
}

/// A rendered table: the `nft -f` text and how many rules each base chain
/// holds (what [`verify`] expects to read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub text: String,
    pub output_rules: usize,
    pub input_rules: usize,
    pub forward_rules: usize,
}

/// A parsed, normalised CIDR: the address with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// Parses `ADDR/LEN` (IPv4 or IPv6); a bare address is a single host.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => l.parse().ok()?,
            Some(_) => return None,
            None => max,
        };
        if len > max {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(v) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4((u32::from(v) & mask).into())
            }
            IpAddr::V6(v) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6((u128::from(v) & mask).into())
            }
        };
        Some(Cidr { addr, len })
    }

    fn family(&self) -> &'static str {
        if self.addr.is_ipv4() {
            "ip"
        } else {
            "ip6"
        }
    }
}

fn ports_text(first: u16, last: u16) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// The match for `protocol` and optional ports: `tcp dport 443`,
/// `meta l4proto { tcp, udp } th dport 53`, or nothing for any protocol.
fn l4(
    protocol: &str,
    ports: Option<String>,
    what: &dyn Fn() -> String,
) -> Result<String, NftError> {
    let proto = match protocol {
        "tcp" | "udp" => protocol,
        "any" => "",
        _ => {
            return Err(NftError::Protocol {
                what: what(),
                protocol: protocol.to_string(),
                any: " or `any`",
            })
        }
    };
    Ok(match (proto, ports) {
        ("", None) => String::new(),
        ("", Some(p)) => format!(" meta l4proto {{ tcp, udp }} th dport {p}"),
        (p, None) => format!(" meta l4proto {p}"),
        (p, Some(ports)) => format!(" {p} dport {ports}"),
    })
}

/// Renders the table for `f`. Malformed CIDRs, empty port ranges and
/// unknown protocols are refused with the rule they came from.
pub fn render(f: &Filter<'_>) -> Result<Ruleset, NftError> {
    let mut out = vec![
        "oif \"lo\" accept".to_string(),
        "ct state established,related accept".to_string(),
        NDP.to_string(),
    ];
    for (index, r) in f.egress.iter().enumerate() {
        let cidr = Cidr::parse(&r.cidr).ok_or_else(|| NftError::Cidr {
            index,
            cidr: r.cidr.clone(),
        })?;
        let ports = match r.ports {
            Some((first, last)) if first == 0 || first > last => {
                return Err(NftError::Ports {
                    index,
                    cidr: r.cidr.clone(),
                    first,
                    last,
                })
            }
            Some((first, last)) => Some(ports_text(first, last)),
            None => None,
        };
        let what = || format!("egress rule {index} ({})", r.cidr);
        let l4 = l4(&r.protocol, ports, &what)?;
        out.push(format!(
            "{} daddr {}/{}{l4} accept",
            cidr.family(),
            cidr.addr,
            cidr.len
        ));
    }
    if let Some(dns) = f.dns {
        let fam = if dns.is_ipv4() { "ip" } else { "ip6" };
        out.push(format!(
            "{fam} daddr {dns} meta l4proto {{ tcp, udp }} th dport 53 accept"
        ));
    }
    let mut inp = vec![
        "iif \"lo\" accept".to_string(),
        "ct state established,related accept".to_string(),
        NDP.to_string(),
    ];
    for p in f.publish {
        if p.host_port == 0 || p.container_port == 0 {
            return Err(NftError::PublishPort {
                host: p.host_port,
                container: p.container_port,
            });
        }
        let proto = match p.protocol.as_str() {
            "tcp" | "udp" => p.protocol.as_str(),
            other => {
                return Err(NftError::Protocol {
                    what: format!("published port {}:{}", p.host_port, p.container_port),
                    protocol: other.to_string(),
                    any: "",
                })
            }
        };
        inp.push(format!("{proto} dport {} accept", p.container_port));
    }
    let mut fwd = Vec::new();
    if f.routed {
        fwd.push("ct state established,related accept".to_string());
        fwd.extend(out[3..].iter().cloned());
        fwd.extend(inp[3..].iter().cloned());
    }
    let mut text = format!("table inet {TABLE} {{\n");
    let chain = |text: &mut String, name: &str, rules: &[String]| {
        let _ = writeln!(text, "\tchain {name} {{");
        let _ = writeln!(
            text,
            "\t\ttype filter hook {name} priority filter; policy drop;"
        );
        for r in rules {
            let _ = writeln!(text, "\t\t{r}");
        }
        let _ = writeln!(text, "\t}}");
    };
    chain(&mut text, "output", &out);
    chain(&mut text, "input", &inp);
    chain(&mut text, "forward", &fwd);
    text.push_str("}\n");
    Ok(Ruleset {
        text,
        output_rules: out.len(),
        input_rules: inp.len(),
        forward_rules: fwd.len(),
    })
}

/// Runs `nft ARGS` inside the network namespace `netns`, feeding `stdin`.
fn nft_in(
    netns: BorrowedFd<'_>,
    args: &[&str],
    stdin: &str,
) -> Result<std::process::Output, NftError> {
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::enter_netns_before_exec(&mut cmd, netns);
    let mut child = cmd.spawn().map_err(|source| NftError::Spawn {
        what: "starting it",
        source,
    })?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(stdin.as_bytes())
            .map_err(|source| NftError::Spawn {
                what: "writing the table to it",
                source,
            })?;
    }
    child.wait_with_output().map_err(|source| NftError::Spawn {
        what: "waiting for it",
        source,
    })
}

/// Installs `ruleset` in the network namespace `netns` and checks that it
/// is there ([`verify`]). The caller must hold `CAP_NET_ADMIN` over the
/// namespace; the workload must not (see the crate docs).
pub fn apply(netns: BorrowedFd<'_>, ruleset: &Ruleset) -> Result<(), NftError> {
    let out = nft_in(netns, &["-f", "-"], &ruleset.text)?;
    if !out.status.success() {
        return Err(NftError::Apply {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    verify(netns, ruleset)
}

/// Reads the `inet moat` table back from `netns` (`nft -j`) and checks
/// that its three chains hook where they should with policy `drop` and
/// hold as many rules as `ruleset`.
pub fn verify(netns: BorrowedFd<'_>, ruleset: &Ruleset) -> Result<(), NftError> {
    let out = nft_in(netns, &["-j", "list", "table", "inet", TABLE], "")?;
    if !out.status.success() {
        return Err(NftError::Verify(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| NftError::Verify(format!("unreadable `nft -j` output: {e}")))?;
    check_listing(&json, ruleset)
}

fn check_listing(json: &serde_json::Value, ruleset: &Ruleset) -> Result<(), NftError> {
    let items = json
        .get("nftables")
        .and_then(|v| v.as_array())
        .ok_or_else(|| NftError::Verify("no `nftables` array".into()))?;
    let want = [
        ("output", ruleset.output_rules),
        ("input", ruleset.input_rules),
        ("forward", ruleset.forward_rules),
    ];
    for (name, rules) in want {
        let chain = items
            .iter()
            .filter_map(|i| i.get("chain"))
            .find(|c| c["name"] == name && c["table"] == TABLE)
            .ok_or_else(|| NftError::Verify(format!("chain `{name}` is missing")))?;
        if chain["hook"] != name || chain["policy"] != "drop" {
            return Err(NftError::Verify(format!(
                "chain `{name}` hooks {} with policy {}",
                chain["hook"], chain["policy"]
            )));
        }
        let found = items
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(|r| r["chain"] == name && r["table"] == TABLE)
            .count();
        if found != rules {
            return Err(NftError::Verify(format!(
                "chain `{name}` holds {found} rules, {rules} were installed"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidr: &str, ports: Option<(u16, u16)>, protocol: &str) -> EgressRule {
        EgressRule {
            cidr: cidr.into(),
            ports,
            protocol: protocol.into(),
        }
    }

    fn publish(host: u16, container: u16, protocol: &str) -> PortPublish {
        PortPublish {
            host_port: host,
            container_port: container,
            protocol: protocol.into(),
            host_ip: None,
        }
    }

    #[test]
    fn renders_the_whole_table() {
        let egress = [
            rule("10.231.2.3/16", Some((443, 443)), "tcp"),
            rule("fd00:1::/64", Some((8000, 8100)), "udp"),
            rule("192.168.7.0/24", Some((53, 53)), "any"),
            rule("10.9.0.1", None, "any"),
            rule("10.8.0.0/16", None, "tcp"),
        ];
        let publish = [publish(8080, 80, "tcp"), publish(5353, 53, "udp")];
        let r = render(&Filter {
            egress: &egress,
            publish: &publish,
            dns: Some("10.231.0.53".parse().unwrap()),
            routed: false,
        })
        .unwrap();
        assert_eq!(
            r.text,
            "table inet moat {
\tchain output {
\t\ttype filter hook output priority filter; policy drop;
\t\toif \"lo\" accept
\t\tct state established,related accept
\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept
\t\tip daddr 10.231.0.0/16 tcp dport 443 accept
\t\tip6 daddr fd00:1::/64 udp dport 8000-8100 accept
\t\tip daddr 192.168.7.0/24 meta l4proto { tcp, udp } th dport 53 accept
\t\tip daddr 10.9.0.1/32 accept
\t\tip daddr 10.8.0.0/16 meta l4proto tcp accept
\t\tip daddr 10.231.0.53 meta l4proto { tcp, udp } th dport 53 accept
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tiif \"lo\" accept
\t\tct state established,related accept
\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept
\t\ttcp dport 80 accept
\t\tudp dport 53 accept
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t}
}
"
        );
        assert_eq!((r.output_rules, r.input_rules), (9, 5));
    }

    #[test]
    fn routed_traffic_gets_the_rules_in_forward() {
        let egress = [rule("10.231.0.0/16", Some((443, 443)), "tcp")];
        let publish = [publish(8080, 80, "tcp")];
        let r = render(&Filter {
            egress: &egress,
            publish: &publish,
            dns: None,
            routed: true,
        })
        .unwrap();
        assert!(
            r.text.ends_with(
                "\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tip daddr 10.231.0.0/16 tcp dport 443 accept
\t\ttcp dport 80 accept
\t}
}
"
            ),
            "{}",
            r.text
        );
        assert_eq!((r.output_rules, r.input_rules, r.forward_rules), (4, 4, 3));
    }

    #[test]
    fn no_rules_means_loopback_and_replies_only() {
        let r = render(&Filter {
            egress: &[],
            publish: &[],
            dns: None,
            routed: false,
        })
        .unwrap();
        assert_eq!((r.output_rules, r.input_rules), (3, 3));
        assert!(!r.text.contains("daddr"));
    }

    #[test]
    fn malformed_cidrs_ports_and_protocols_are_refused() {
        let err = |egress: &[EgressRule], publish: &[PortPublish]| {
            render(&Filter {
                egress,
                publish,
                dns: None,
                routed: false,
            })
            .unwrap_err()
            .to_string()
        };
        for bad in [
            "10.231.0.0/33",
            "10.0.0/8",
            "fd00::/129",
            "10.231.0.0/",
            "10.231.0.0/+8",
            "host/8",
            "",
        ] {
            assert_eq!(
                err(&[rule("10.231.0.0/16", None, "any"), rule(bad, None, "any")], &[]),
                format!("egress rule 1: `{bad}` is not a CIDR; write an address and a prefix length such as `10.231.0.0/16` or `2001:db8::/32`")
            );
        }
        assert_eq!(
            err(&[rule("10.231.0.0/16", Some((90, 80)), "tcp")], &[]),
            "egress rule 0 (10.231.0.0/16): port range 90-80 is empty or starts at 0; write ports between 1 and 65535, the first not above the last"
        );
        assert_eq!(
            err(&[rule("10.231.0.0/16", Some((0, 80)), "tcp")], &[]),
            "egress rule 0 (10.231.0.0/16): port range 0-80 is empty or starts at 0; write ports between 1 and 65535, the first not above the last"
        );
        assert_eq!(
            err(&[rule("10.231.0.0/16", None, "sctp")], &[]),
            "egress rule 0 (10.231.0.0/16): protocol `sctp` is not `tcp`, `udp` or `any`"
        );
        assert_eq!(
            err(&[], &[publish(8080, 80, "any")]),
            "published port 8080:80: protocol `any` is not `tcp`, `udp`"
        );
        assert_eq!(
            err(&[], &[publish(0, 80, "tcp")]),
            "published port 0:80: ports must be between 1 and 65535"
        );
    }

    #[test]
    fn cidrs_are_normalised() {
        let c = Cidr::parse("10.200.3.4/16").unwrap();
        assert_eq!((c.addr.to_string(), c.len), ("10.200.0.0".to_string(), 16));
        let c = Cidr::parse("fd00::1/0").unwrap();
        assert_eq!((c.addr.to_string(), c.len), ("::".to_string(), 0));
        let c = Cidr::parse("10.231.0.1/0").unwrap();
        assert_eq!(c.addr.to_string(), "0.0.0.0");
    }

    #[test]
    fn a_listing_with_a_missing_rule_or_an_accepting_policy_fails_verification() {
        let r = render(&Filter {
            egress: &[],
            publish: &[],
            dns: None,
            routed: false,
        })
        .unwrap();
        let chain = |name: &str, policy: &str| serde_json::json!({"chain": {"table": "moat", "name": name, "hook": name, "policy": policy}});
        let rule = |name: &str| serde_json::json!({"rule": {"table": "moat", "chain": name}});
        let mut items = vec![
            chain("output", "drop"),
            chain("input", "drop"),
            chain("forward", "drop"),
        ];
        for _ in 0..3 {
            items.push(rule("output"));
            items.push(rule("input"));
        }
        let ok = serde_json::json!({ "nftables": items.clone() });
        check_listing(&ok, &r).unwrap();
        items.pop();
        let short = serde_json::json!({ "nftables": items.clone() });
        assert_eq!(
            check_listing(&short, &r).unwrap_err().to_string(),
            "the moat table read back from the namespace is not the one installed: chain `input` holds 2 rules, 3 were installed"
        );
        items[0] = chain("output", "accept");
        let open = serde_json::json!({ "nftables": items });
        assert_eq!(
            check_listing(&open, &r).unwrap_err().to_string(),
            "the moat table read back from the namespace is not the one installed: chain `output` hooks \"output\" with policy \"accept\""
        );
    }
}
