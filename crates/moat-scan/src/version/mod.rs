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
