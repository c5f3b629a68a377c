//! Package URLs (https://github.com/package-url/purl-spec) for CycloneDX
//! output and input.

use crate::inventory::{OsRelease, Package};

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn dec(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The purl of an inventory package.
pub fn of(p: &Package, os: Option<&OsRelease>) -> String {
    let distro = os.map(|o| format!("{}-{}", o.id, o.version_id));
    let osid = os.map_or("unknown", |o| o.id.as_str());
    let (ty, ns, name) = match p.kind.as_str() {
        "dpkg" => ("deb", Some(osid.to_string()), p.name.clone()),
        "apk" => ("apk", Some(osid.to_string()), p.name.clone()),
        "rpm" => ("rpm", Some(osid.to_string()), p.name.clone()),
        "cargo" => ("cargo", None, p.name.clone()),
        "go" => ("golang", None, p.name.clone()),
        "npm" => ("npm", None, p.name.clone()),
        "python" => ("pypi", None, p.name.to_ascii_lowercase()),
        other => (other, None, p.name.clone()),
    };
    let name_part = match name.rsplit_once('/') {
        Some((scope, n)) => format!(
            "{}/{}",
            scope.split('/').map(enc).collect::<Vec<_>>().join("/"),
            enc(n)
        ),
        None => enc(&name),
    };
    let mut s = format!("pkg:{ty}/");
    if let Some(ns) = ns {
        s.push_str(&enc(&ns));
        s.push('/');
    }
    s.push_str(&name_part);
    s.push('@');
    s.push_str(&enc(&p.version));
    if matches!(ty, "deb" | "apk" | "rpm") {
        let mut q = Vec::new();
        if let Some(d) = distro {
            q.push(format!("distro={}", enc(&d)));
        }
        if let Some(src) = p.source_name.as_ref().filter(|s| **s != p.name) {
            q.push(format!("upstream={}", enc(src)));
        }
        if !q.is_empty() {
            s.push('?');
            s.push_str(&q.join("&"));
        }
    }
    s
}

/// A parsed purl.
#[derive(Debug, PartialEq, Eq)]
pub struct Purl {
    pub ty: String,
    pub namespace: Option<String>,
    pub name: String,
    pub version: String,
    pub qualifiers: Vec<(String, String)>,
}

impl Purl {
    pub fn qualifier(&self, k: &str) -> Option<&str> {
        self.qualifiers
            .iter()
            .find(|(q, _)| q == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse `pkg:type/namespace/name@version?qualifiers#subpath`.
pub fn parse(s: &str) -> Option<Purl> {
    let rest = s.strip_prefix("pkg:")?;
    let rest = rest.split('#').next()?;
    let (rest, quals) = match rest.split_once('?') {
        Some((r, q)) => (r, q),
        None => (rest, ""),
    };
    let (rest, version) = rest.rsplit_once('@')?;
    let (ty, path) = rest.split_once('/')?;
    let (namespace, name) = match path.rsplit_once('/') {
        Some((ns, n)) => (Some(dec(ns)), dec(n)),
        None => (None, dec(path)),
    };
    let qualifiers = quals
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_ascii_lowercase(), dec(v)))
        .collect();
    Some(Purl {
        ty: ty.to_ascii_lowercase(),
        namespace,
        name,
        version: dec(version),
        qualifiers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = Package {
            name: "bsdutils".into(),
            version: "1:2.38.1-5+deb12u3".into(),
            kind: "dpkg".into(),
            ecosystem: "Debian:12".into(),
            source_name: Some("util-linux".into()),
            source_version: Some("2.38.1-5+deb12u3".into()),
            layer: None,
            path: "/var/lib/dpkg/status".into(),
        };
        let os = OsRelease {
            id: "debian".into(),
            version_id: "12".into(),
            pretty_name: String::new(),
        };
        let s = of(&p, Some(&os));
        assert_eq!(
            s,
            "pkg:deb/debian/bsdutils@1%3A2.38.1-5+deb12u3?distro=debian-12&upstream=util-linux"
        );
        let u = parse(&s).unwrap();
        assert_eq!(u.version, "1:2.38.1-5+deb12u3");
        assert_eq!(u.qualifier("distro"), Some("debian-12"));
        let u = parse("pkg:npm/%40babel/core@7.20.0").unwrap();
        assert_eq!(
            (u.namespace.as_deref(), u.name.as_str()),
            (Some("@babel"), "core")
        );
        let u = parse("pkg:golang/github.com/gorilla/websocket@v1.5.0").unwrap();
        assert_eq!(u.namespace.as_deref(), Some("github.com/gorilla"));
    }
}
