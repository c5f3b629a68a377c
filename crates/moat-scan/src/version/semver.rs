//! Semantic Versioning 2.0 precedence (crates.io, npm) and Go module
//! versions (`v` prefix, `+incompatible`, pseudo-versions are pre-releases).
//! Build metadata never affects precedence.

use std::cmp::Ordering;

#[derive(Debug, PartialEq, Eq)]
struct SemVer<'a> {
    core: Vec<u64>,
    pre: Vec<&'a str>,
}

fn parse(v: &str) -> Option<SemVer<'_>> {
    let v = v.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let v = v.strip_prefix('=').unwrap_or(v);
    let v = v.split('+').next().unwrap_or(v);
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, p.split('.').collect()),
        None => (v, Vec::new()),
    };
    if core.is_empty() {
        return None;
    }
    let core = core
        .split('.')
        .map(|n| n.parse::<u64>().ok())
        .collect::<Option<Vec<_>>>()?;
    Some(SemVer { core, pre })
}

fn cmp_ident(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// Compare two semantic versions. Unparsable versions sort before every
/// valid one and among themselves as plain strings.
pub fn compare(a: &str, b: &str) -> Ordering {
    super::unparsable_first(a, b, parse, precedence)
}

fn precedence(pa: &SemVer<'_>, pb: &SemVer<'_>) -> Ordering {
    let n = pa.core.len().max(pb.core.len()).max(3);
    for k in 0..n {
        let x = pa.core.get(k).copied().unwrap_or(0);
        let y = pb.core.get(k).copied().unwrap_or(0);
        match x.cmp(&y) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    match (pa.pre.is_empty(), pb.pre.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    for (x, y) in pa.pre.iter().zip(pb.pre.iter()) {
        match cmp_ident(x, y) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    pa.pre.len().cmp(&pb.pre.len())
}

/// Whether `v` parses as a semantic version.
pub fn is_valid(v: &str) -> bool {
    parse(v).is_some()
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering::*;

    use super::*;

    #[test]
    fn precedence_from_the_spec() {
        let chain = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.10.0",
            "2.0.0",
        ];
        for w in chain.windows(2) {
            assert_eq!(compare(w[0], w[1]), Less, "{} < {}", w[0], w[1]);
            assert_eq!(compare(w[1], w[0]), Greater);
        }
        assert_eq!(compare("1.0.0+build.5", "1.0.0+build.7"), Equal);
        assert_eq!(compare("v1.2.3", "1.2.3"), Equal);
        assert_eq!(compare("v2.0.0+incompatible", "v2.0.1"), Less);
        assert_eq!(
            compare("v0.0.0-20210101000000-abcdef123456", "v0.0.1"),
            Less
        );
        assert_eq!(compare("1.21.3", "1.21.10"), Less);
    }

    #[test]
    fn unparsable_versions_keep_the_order_total() {
        // Reduced from the fuzzer's counterexample: with a string fallback
        // per pair, 2.0.0 < 10.0.0 < "1z" (as strings) but 2.0.0 > "1z".
        let (a, b, c) = ("2.0.0", "10.0.0", "1z");
        assert_eq!(compare(a, b), Less);
        assert_eq!(compare(b, c), Greater);
        assert_eq!(compare(a, c), Greater);
        assert_eq!(compare(c, a), Less);
        assert_eq!(compare("not a version", "0.0.1"), Less);
        assert_eq!(compare("abc", "abd"), Less);
    }
}
