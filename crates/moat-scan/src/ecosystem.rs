//! OSV ecosystem strings and package-name normalisation.
//!
//! Advisories and packages meet on a normalised key: the OSV ecosystem with
//! a trailing `:LTS` dropped (`Ubuntu:22.04:LTS` → `Ubuntu:22.04`),
//! distribution releases kept (`Debian:12`, `Alpine:v3.18`).

use crate::version::Scheme;

/// The ordering scheme of an OSV ecosystem (base name before the first `:`),
/// or `None` when moat cannot order its versions.
pub fn scheme_of(ecosystem: &str) -> Option<Scheme> {
    let base = ecosystem.split(':').next().unwrap_or(ecosystem);
    Some(match base {
        "Debian" | "Ubuntu" => Scheme::Dpkg,
        "Alpine" | "Wolfi" | "Chainguard" => Scheme::Apk,
        "Red Hat" | "Rocky Linux" | "AlmaLinux" | "openSUSE" | "SUSE" | "Mageia" | "openEuler" => {
            Scheme::Rpm
        }
        "crates.io" | "npm" => Scheme::Semver,
        "PyPI" => Scheme::Pep440,
        "Go" => Scheme::Go,
        _ => return None,
    })
}

/// Normalise an OSV ecosystem string to the key advisories are stored under.
pub fn normalize(ecosystem: &str) -> String {
    let e = ecosystem.trim();
    e.strip_suffix(":LTS").unwrap_or(e).to_string()
}

/// Normalise a package name the way its ecosystem compares names.
pub fn normalize_name(ecosystem: &str, name: &str) -> String {
    let base = ecosystem.split(':').next().unwrap_or(ecosystem);
    match base {
        // PEP 503: case-insensitive, runs of -, _ and . are equal.
        "PyPI" => {
            let mut out = String::with_capacity(name.len());
            let mut sep = false;
            for c in name.trim().chars() {
                if matches!(c, '-' | '_' | '.') {
                    sep = true;
                } else {
                    if sep && !out.is_empty() {
                        out.push('-');
                    }
                    sep = false;
                    out.push(c.to_ascii_lowercase());
                }
            }
            out
        }
        _ => name.trim().to_string(),
    }
}

/// The keys a package of `ecosystem` is looked up under: the ecosystem
/// itself and, for a distribution release, the release-less base (`Debian`).
pub fn lookup_keys(ecosystem: &str) -> Vec<String> {
    let key = normalize(ecosystem);
    match key.split_once(':') {
        Some((base, _)) => vec![key.clone(), base.to_string()],
        None => vec![key],
    }
}

/// The OSV ecosystem of an OS release from `/etc/os-release` (`ID`,
/// `VERSION_ID`), or `None` when no advisory source covers it.
pub fn from_os_release(id: &str, version_id: &str) -> Option<String> {
    let major = version_id.split('.').next().unwrap_or(version_id);
    Some(match id {
        "debian" if !version_id.is_empty() => format!("Debian:{major}"),
        "debian" => "Debian".to_string(),
        "ubuntu" => format!("Ubuntu:{version_id}"),
        "alpine" => {
            let mut parts = version_id.split('.');
            let (a, b) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            format!("Alpine:v{a}.{b}")
        }
        "wolfi" => "Wolfi".to_string(),
        "rocky" => format!("Rocky Linux:{major}"),
        "almalinux" => format!("AlmaLinux:{major}"),
        "rhel" => "Red Hat".to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecosystem_strings_as_osv_writes_them() {
        assert_eq!(normalize("Ubuntu:22.04:LTS"), "Ubuntu:22.04");
        assert_eq!(normalize("Debian:12"), "Debian:12");
        assert_eq!(scheme_of("Alpine:v3.18"), Some(Scheme::Apk));
        assert_eq!(scheme_of("Ubuntu:22.04:LTS"), Some(Scheme::Dpkg));
        assert_eq!(scheme_of("Hackage"), None);
        assert_eq!(
            from_os_release("alpine", "3.18.4").as_deref(),
            Some("Alpine:v3.18")
        );
        assert_eq!(
            from_os_release("debian", "12").as_deref(),
            Some("Debian:12")
        );
        assert_eq!(
            from_os_release("ubuntu", "22.04").as_deref(),
            Some("Ubuntu:22.04")
        );
        assert_eq!(from_os_release("fedora", "39"), None);
        assert_eq!(lookup_keys("Debian:12"), ["Debian:12", "Debian"]);
        assert_eq!(normalize_name("PyPI", "Foo_Bar.baz"), "foo-bar-baz");
        assert_eq!(normalize_name("npm", "@types/Node"), "@types/Node");
    }
}
