//! Debian version ordering, as `dpkg --compare-versions` defines it
//! (deb-version(7)): `[epoch:]upstream[-revision]`, `~` sorts before
//! everything including the end of the string, a missing revision equals
//! `-0`.

use std::cmp::Ordering;

struct Parsed<'a> {
    epoch: u64,
    upstream: &'a str,
    revision: &'a str,
}

fn parse(v: &str) -> Parsed<'_> {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, v),
    };
    let (upstream, revision) = match rest.rfind('-') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    Parsed {
        epoch,
        upstream,
        revision,
    }
}

fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp` over one part (upstream or revision).
fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0usize, 0usize);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(|c| c.is_ascii_digit());
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let ac = order(a.get(i).copied());
            let bc = order(b.get(j).copied());
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// Compare two Debian versions.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a, b) = (parse(a), parse(b));
    a.epoch
        .cmp(&b.epoch)
        .then_with(|| verrevcmp(a.upstream.as_bytes(), b.upstream.as_bytes()))
        .then_with(|| verrevcmp(a.revision.as_bytes(), b.revision.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering::*;
    use std::process::Command;

    use super::*;

    #[test]
    fn known_orderings() {
        let cases = [
            ("1:2.38.1-5+deb12u3", "2.38.1-5+deb12u3", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0", "1.0-0", Equal),
            ("2.36.1-8+deb11u1", "2.36.1-8+deb11u2", Less),
            ("3.0.11-1~deb12u2", "3.0.11-1", Less),
            ("1.2.3a", "1.2.3", Greater),
            ("1.2.3+b1", "1.2.3", Greater),
            ("0:1.0", "1.0", Equal),
            ("1.10", "1.9", Greater),
            ("1.010", "1.10", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    /// Small deterministic generator (xorshift) so the test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, s: &[&'a str]) -> &'a str {
            s[(self.next() % s.len() as u64) as usize]
        }
    }

    fn gen_part(r: &mut Rng, first_digit: bool) -> String {
        let atoms = [
            "0", "1", "2", "10", "01", "9", ".", "~", "+", "a", "b", "z", "~rc", "dfsg", "+deb12u",
            "~bpo",
        ];
        let mut s = String::new();
        s.push_str(if first_digit {
            r.pick(&["0", "1", "2", "3", "10"])
        } else {
            r.pick(&["0", "1", "2", "a", "ubuntu"])
        });
        for _ in 0..(r.next() % 5) {
            s.push_str(r.pick(&atoms));
        }
        s
    }

    fn gen_version(r: &mut Rng) -> String {
        let mut v = String::new();
        if r.next().is_multiple_of(4) {
            v.push_str(r.pick(&["0:", "1:", "2:"]));
        }
        v.push_str(&gen_part(r, true));
        if !r.next().is_multiple_of(3) {
            v.push('-');
            v.push_str(&gen_part(r, false));
        }
        v
    }

    /// Property: for generated pairs, `compare` agrees with the real
    /// `dpkg --compare-versions`.
    #[test]
    fn agrees_with_dpkg_on_generated_pairs() {
        if Command::new("dpkg").arg("--version").output().is_err() {
            println!("SKIP: dpkg is not installed");
            return;
        }
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for _ in 0..400 {
            let a = gen_version(&mut r);
            let b = if r.next().is_multiple_of(5) {
                a.clone()
            } else {
                gen_version(&mut r)
            };
            let ours = compare(&a, &b);
            let lt = Command::new("dpkg")
                .args(["--compare-versions", &a, "lt", &b])
                .output()
                .expect("run dpkg");
            let eq = Command::new("dpkg")
                .args(["--compare-versions", &a, "eq", &b])
                .output()
                .expect("run dpkg");
            let theirs = if lt.status.success() {
                Less
            } else if eq.status.success() {
                Equal
            } else {
                Greater
            };
            assert_eq!(ours, theirs, "{a:?} vs {b:?}");
            checked += 1;
        }
        assert_eq!(checked, 400);
    }
}
