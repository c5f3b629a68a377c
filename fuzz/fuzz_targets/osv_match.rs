//! OSV records and version orders. Parses arbitrary bytes as an advisory
//! and evaluates its ranges; and, on `a \0 b \0 c`, checks that every
//! ecosystem's version comparison is a total order (reflexive, antisymmetric,
//! transitive), because the matcher's answers are only as good as that.
#![no_main]

use std::cmp::Ordering;

use libfuzzer_sys::fuzz_target;
use moat_scan::version::Scheme;
use moat_scan::{matcher, osv};

const SCHEMES: [Scheme; 6] = [
    Scheme::Dpkg,
    Scheme::Apk,
    Scheme::Rpm,
    Scheme::Semver,
    Scheme::Pep440,
    Scheme::Go,
];

fuzz_target!(|data: &[u8]| {
    if let Ok(adv) = osv::parse(data) {
        for a in &adv.affected {
            for s in SCHEMES {
                let _ = matcher::affects(s, a, "1.0.0");
                let _ = matcher::affects(s, a, "0:1.2-3");
            }
        }
    }
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let (Some(a), Some(b), Some(c)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    for s in SCHEMES {
        assert_eq!(s.compare(a, a), Ordering::Equal, "{s:?}: {a:?} != itself");
        let ab = s.compare(a, b);
        assert_eq!(
            ab,
            s.compare(b, a).reverse(),
            "{s:?}: {a:?} vs {b:?} not antisymmetric"
        );
        // rpm compares a missing release as equal to any release (as rpm's
        // own ranges do), which is deliberately not transitive: "1-1" = "1"
        // = "1-2" but "1-1" < "1-2". The other orders must be transitive.
        if s == Scheme::Rpm {
            continue;
        }
        let bc = s.compare(b, c);
        if ab != Ordering::Greater && bc != Ordering::Greater {
            assert_ne!(
                s.compare(a, c),
                Ordering::Greater,
                "{s:?}: {a:?} <= {b:?} <= {c:?} but {a:?} > {c:?}"
            );
        }
    }
});
