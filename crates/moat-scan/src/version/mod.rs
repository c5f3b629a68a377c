//! Version ordering per ecosystem.

use std::cmp::Ordering;

pub mod apk;
pub mod dpkg;
pub mod pep440;
pub mod rpm;
pub mod semver;

/// How an ecosystem orders its versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Dpkg,
    Apk,
    Rpm,
    Semver,
    Pep440,
    Go,
}

impl Scheme {
    /// Compare `a` with `b` in this scheme's order.
    pub fn compare(self, a: &str, b: &str) -> Ordering {
        match self {
            Scheme::Dpkg => dpkg::compare(a, b),
            Scheme::Apk => apk::compare(a, b),
            Scheme::Rpm => rpm::compare(a, b),
            Scheme::Semver | Scheme::Go => semver::compare(a, b),
            Scheme::Pep440 => pep440::compare(a, b),
        }
    }
}

/// Orders `a` and `b` by `cmp` on their parses; unparsable versions sort
/// before every valid one and in string order among themselves. Falling
/// back to strings per pair instead is not transitive (found by the
/// `osv_match` fuzzer).
fn unparsable_first<'a, T>(
    a: &'a str,
    b: &'a str,
    parse: impl Fn(&'a str) -> Option<T>,
    cmp: impl FnOnce(&T, &T) -> Ordering,
) -> Ordering {
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => cmp(&x, &y),
        (None, None) => a.cmp(b),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
    }
}
