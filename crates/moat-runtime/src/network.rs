//! Network flags of `moat run` (`--network`, `-p`), podman's words, applied
//! to a compiled plan. A flag narrows what the policy grants, never widens
//! it: a wider mode or a port the policy does not publish is refused with
//! the policy's name and the fix.

use moat_policy::plan::{NetworkPlan, PortPublish};

/// `--network` takes the policy's own modes.
pub use moat_policy::model::NetworkMode;

/// How wide a mode is: none < loopback < egress.
fn rank(m: NetworkMode) -> u8 {
    m as u8
}

fn mode_of(plan: &NetworkPlan) -> NetworkMode {
    match plan {
        NetworkPlan::None => NetworkMode::None,
        NetworkPlan::Loopback => NetworkMode::Loopback,
        NetworkPlan::Egress { .. } => NetworkMode::Egress,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkFlagError {
    #[error("--publish {0:?}: write [IP:]HOST:CONTAINER[/tcp|udp], e.g. 8080:80 or 127.0.0.1:8080:80/tcp")]
    PublishSyntax(String),
    #[error("--publish {arg:?}: {what} `{value}` is not {expected}")]
    PublishValue {
        arg: String,
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("--network {flag}: policy {policy} grants network `{granted}`, and a flag cannot widen the policy; run under a policy with `network: {{mode: {flag}}}` or drop --network")]
    Wider {
        flag: &'static str,
        policy: String,
        granted: &'static str,
    },
    #[error("--publish {arg}: policy {policy} does not publish host port {host} to container port {container}/{protocol}; add `{{host: {host}, container: {container}, protocol: {protocol}}}` to its `network.publish`, or drop -p")]
    NotGranted {
        arg: String,
        policy: String,
        host: u16,
        container: u16,
        protocol: String,
    },
    #[error("--publish needs network egress, but {why}; drop -p or use a policy with `network: {{mode: egress, publish: [...]}}`")]
    NoEgress { why: String },
}

/// Parses one `-p` value: `[IP:]HOST:CONTAINER[/tcp|udp]`, IPv6 in
/// brackets (`[::1]:8080:80`).
pub fn parse_publish(arg: &str) -> Result<PortPublish, NetworkFlagError> {
    let syntax = || NetworkFlagError::PublishSyntax(arg.to_string());
    let value = |what, value: &str, expected| NetworkFlagError::PublishValue {
        arg: arg.to_string(),
        what,
        value: value.to_string(),
        expected,
    };
    let (rest, protocol) = match arg.rsplit_once('/') {
        Some((r, p)) if p == "tcp" || p == "udp" => (r, p),
        Some((_, p)) => return Err(value("protocol", p, "`tcp` or `udp`")),
        None => (arg, "tcp"),
    };
    let (ip, ports) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, ports) = r.split_once("]:").ok_or_else(syntax)?;
        (Some(ip), ports)
    } else {
        match rest.matches(':').count() {
            1 => (None, rest),
            2 => {
                let (ip, ports) = rest.split_once(':').ok_or_else(syntax)?;
                (Some(ip), ports)
            }
            _ => return Err(syntax()),
        }
    };
    let (h, c) = ports.split_once(':').ok_or_else(syntax)?;
    let port = |what, s: &str| match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(value(what, s, "a port between 1 and 65535")),
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(ip) => match ip.parse::<std::net::IpAddr>() {
            Ok(a) => Some(a.to_string()),
            Err(_) => return Err(value("host address", ip, "an IP address")),
        },
    };
    Ok(PortPublish {
        host_port: port("host port", h)?,
        container_port: port("container port", c)?,
        protocol: protocol.to_string(),
        host_ip,
    })
}

/// Narrows `plan` (compiled from policy `policy`) to `--network mode` and
/// the `-p` values `publish` (already parsed). Without `-p` the policy's
/// own `publish` list stays; with it, exactly those ports, each of which
/// the policy must publish.
pub fn narrow(
    plan: &mut NetworkPlan,
    policy: &str,
    mode: Option<NetworkMode>,
    publish: &[(String, PortPublish)],
) -> Result<(), NetworkFlagError> {
    let granted = mode_of(plan);
    if let Some(m) = mode {
        if rank(m) > rank(granted) {
            return Err(NetworkFlagError::Wider {
                flag: m.as_str(),
                policy: policy.to_string(),
                granted: granted.as_str(),
            });
        }
        match m {
            NetworkMode::None => *plan = NetworkPlan::None,
            NetworkMode::Loopback => *plan = NetworkPlan::Loopback,
            NetworkMode::Egress => {}
        }
    }
    if publish.is_empty() {
        return Ok(());
    }
    let NetworkPlan::Egress {
        publish: granted_ports,
        ..
    } = plan
    else {
        let why = match mode {
            Some(m) if m != granted => format!("--network {} was given", m.as_str()),
            _ => format!("policy {policy} grants network `{}`", granted.as_str()),
        };
        return Err(NetworkFlagError::NoEgress { why });
    };
    let mut chosen = Vec::with_capacity(publish.len());
    for (arg, p) in publish {
        let ok = granted_ports.iter().any(|g| {
            g.host_port == p.host_port
                && g.container_port == p.container_port
                && g.protocol == p.protocol
        });
        if !ok {
            return Err(NetworkFlagError::NotGranted {
                arg: arg.clone(),
                policy: policy.to_string(),
                host: p.host_port,
                container: p.container_port,
                protocol: p.protocol.clone(),
            });
        }
        chosen.push(p.clone());
    }
    *granted_ports = chosen;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_policy::plan::EgressRule;

    fn pp(host: u16, container: u16, protocol: &str, ip: Option<&str>) -> PortPublish {
        PortPublish {
            host_port: host,
            container_port: container,
            protocol: protocol.into(),
            host_ip: ip.map(String::from),
        }
    }

    fn egress() -> NetworkPlan {
        NetworkPlan::Egress {
            rules: vec![EgressRule {
                cidr: "10.231.0.0/16".into(),
                ports: None,
                protocol: "any".into(),
            }],
            publish: vec![pp(8080, 80, "tcp", None), pp(5353, 53, "udp", None)],
            dns: false,
        }
    }

    #[test]
    fn publish_values_parse() {
        assert_eq!(parse_publish("8080:80").unwrap(), pp(8080, 80, "tcp", None));
        assert_eq!(
            parse_publish("127.0.0.1:8080:80/tcp").unwrap(),
            pp(8080, 80, "tcp", Some("127.0.0.1"))
        );
        assert_eq!(
            parse_publish("[::1]:5353:53/udp").unwrap(),
            pp(5353, 53, "udp", Some("::1"))
        );
        assert_eq!(
            parse_publish(":8080:80").unwrap(),
            pp(8080, 80, "tcp", None)
        );
        assert_eq!(
            parse_publish("80").unwrap_err().to_string(),
            "--publish \"80\": write [IP:]HOST:CONTAINER[/tcp|udp], e.g. 8080:80 or 127.0.0.1:8080:80/tcp"
        );
        assert_eq!(
            parse_publish("8080:80/sctp").unwrap_err().to_string(),
            "--publish \"8080:80/sctp\": protocol `sctp` is not `tcp` or `udp`"
        );
        assert_eq!(
            parse_publish("8080:0").unwrap_err().to_string(),
            "--publish \"8080:0\": container port `0` is not a port between 1 and 65535"
        );
        assert_eq!(
            parse_publish("localhost:8080:80").unwrap_err().to_string(),
            "--publish \"localhost:8080:80\": host address `localhost` is not an IP address"
        );
    }

    #[test]
    fn flags_narrow_and_never_widen() {
        let mut plan = egress();
        narrow(&mut plan, "web.yaml", Some(NetworkMode::Loopback), &[]).unwrap();
        assert_eq!(plan, NetworkPlan::Loopback);

        let mut plan = NetworkPlan::Loopback;
        assert_eq!(
            narrow(&mut plan, "baseline", Some(NetworkMode::Egress), &[]).unwrap_err().to_string(),
            "--network egress: policy baseline grants network `loopback`, and a flag cannot widen the policy; run under a policy with `network: {mode: egress}` or drop --network"
        );

        let mut plan = egress();
        let p = parse_publish("127.0.0.1:8080:80").unwrap();
        narrow(
            &mut plan,
            "web.yaml",
            None,
            &[("127.0.0.1:8080:80".into(), p.clone())],
        )
        .unwrap();
        let NetworkPlan::Egress { publish, .. } = &plan else {
            panic!("{plan:?}")
        };
        assert_eq!(publish, &vec![p]);

        let mut plan = egress();
        let p = parse_publish("9090:80").unwrap();
        assert_eq!(
            narrow(&mut plan, "web.yaml", None, &[("9090:80".into(), p)]).unwrap_err().to_string(),
            "--publish 9090:80: policy web.yaml does not publish host port 9090 to container port 80/tcp; add `{host: 9090, container: 80, protocol: tcp}` to its `network.publish`, or drop -p"
        );

        let mut plan = NetworkPlan::Loopback;
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            narrow(&mut plan, "baseline", None, &[("8080:80".into(), p.clone())]).unwrap_err().to_string(),
            "--publish needs network egress, but policy baseline grants network `loopback`; drop -p or use a policy with `network: {mode: egress, publish: [...]}`"
        );
        let mut plan = egress();
        assert_eq!(
            narrow(&mut plan, "web.yaml", Some(NetworkMode::None), &[("8080:80".into(), p)]).unwrap_err().to_string(),
            "--publish needs network egress, but --network none was given; drop -p or use a policy with `network: {mode: egress, publish: [...]}`"
        );
    }
}
