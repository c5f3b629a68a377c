//! Alpine (apk-tools) version ordering: `1.2.3a_rc1_p2-r4`.
//!
//! Follows apk-tools' token walk: digits, an optional letter, suffixes
//! (`_alpha` < `_beta` < `_pre` < `_rc` < release < `_cvs` < `_svn` < `_git`
//! < `_hg` < `_p`), then `-rN`.

use std::cmp::Ordering;

/// Token kinds in apk-tools' order; when two versions differ in kind at the
/// same position, the one with the *later* kind is older.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Digit,
    Letter,
    Suffix,
    SuffixNo,
    RevisionNo,
    End,
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Num(u128),
    /// A non-first number with a leading zero compares as a string.
    Frac(String),
    Int(i64),
}

impl Value {
    fn cmp(&self, o: &Value) -> Ordering {
        match (self, o) {
            (Value::Num(a), Value::Num(b)) => a.cmp(b),
            (Value::Frac(a), Value::Frac(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Frac(a), Value::Num(b)) => a.as_str().cmp(b.to_string().as_str()),
            (Value::Num(a), Value::Frac(b)) => a.to_string().as_str().cmp(b.as_str()),
            _ => Ordering::Equal,
        }
    }
}

const PRE: [&str; 4] = ["alpha", "beta", "pre", "rc"];
const POST: [&str; 5] = ["cvs", "svn", "git", "hg", "p"];

fn tokens(v: &str) -> Vec<(Kind, Value)> {
    let b = v.trim().as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut kind = Kind::Digit;
    let num = |i: &mut usize| {
        let s = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        &v.trim()[s..*i]
    };
    loop {
        if i >= b.len() {
            out.push((Kind::End, Value::Int(0)));
            return out;
        }
        match kind {
            Kind::Digit | Kind::SuffixNo | Kind::RevisionNo => {
                if !b[i].is_ascii_digit() {
                    out.push((Kind::Invalid, Value::Int(0)));
                    return out;
                }
                let s = num(&mut i);
                let val = if kind == Kind::Digit
                    && !out.is_empty()
                    && s.starts_with('0')
                    && s.len() > 1
                {
                    Value::Frac(s.to_string())
                } else {
                    Value::Num(s.parse().unwrap_or(u128::MAX))
                };
                out.push((kind, val));
            }
            Kind::Letter => {
                out.push((Kind::Letter, Value::Int(i64::from(b[i]))));
                i += 1;
            }
            Kind::Suffix => {
                let s = i;
                while i < b.len() && b[i].is_ascii_lowercase() {
                    i += 1;
                }
                let name = &v.trim()[s..i];
                let val = if let Some(p) = PRE.iter().position(|x| *x == name) {
                    p as i64 - PRE.len() as i64
                } else if let Some(p) = POST.iter().position(|x| *x == name) {
                    p as i64 + 1
                } else {
                    out.push((Kind::Invalid, Value::Int(0)));
                    return out;
                };
                out.push((Kind::Suffix, Value::Int(val)));
            }
            Kind::End | Kind::Invalid => return out,
        }
        // Decide the kind of the next token from the separator.
        if i >= b.len() {
            continue;
        }
        let c = b[i];
        let prev = out.last().map(|t| t.0).unwrap_or(Kind::Digit);
        kind = match c {
            b'.' if prev == Kind::Digit => {
                i += 1;
                Kind::Digit
            }
            b'a'..=b'z' if prev == Kind::Digit => Kind::Letter,
            b'_' if matches!(
                prev,
                Kind::Digit | Kind::Letter | Kind::SuffixNo | Kind::Suffix
            ) =>
            {
                i += 1;
                Kind::Suffix
            }
            b'0'..=b'9' if prev == Kind::Suffix => Kind::SuffixNo,
            b'-' if i + 1 < b.len() && b[i + 1] == b'r' => {
                i += 2;
                Kind::RevisionNo
            }
            _ => {
                out.push((Kind::Invalid, Value::Int(0)));
                return out;
            }
        };
    }
}

/// Compare two apk versions.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ta, tb) = (tokens(a), tokens(b));
    let mut k = 0;
    loop {
        let (ka, va) = &ta[k.min(ta.len() - 1)];
        let (kb, vb) = &tb[k.min(tb.len() - 1)];
        if ka == kb && *ka != Kind::End && *ka != Kind::Invalid && va == vb {
            k += 1;
            continue;
        }
        if ka == kb {
            match va.cmp(vb) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        // A pre-release suffix makes the longer version older.
        if *ka == Kind::Suffix && matches!(va, Value::Int(x) if *x < 0) {
            return Ordering::Less;
        }
        if *kb == Kind::Suffix && matches!(vb, Value::Int(x) if *x < 0) {
            return Ordering::Greater;
        }
        return kb.cmp(ka);
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering::*;

    use super::*;

    #[test]
    fn orderings() {
        let cases = [
            ("1.2.3-r0", "1.2.3-r1", Less),
            ("1.2.3-r10", "1.2.3-r9", Greater),
            ("1.2.3_rc1", "1.2.3", Less),
            ("1.2.3_alpha", "1.2.3_beta", Less),
            ("1.2.3_beta2", "1.2.3_pre1", Less),
            ("1.2.3_pre1", "1.2.3_rc1", Less),
            ("1.2.3_p1", "1.2.3", Greater),
            ("1.2.3_p1", "1.2.4", Less),
            ("1.2.3a", "1.2.3", Greater),
            ("1.2.3a", "1.2.4", Less),
            ("1.2", "1.2.1", Less),
            ("1.2_rc1", "1.2.1", Less),
            ("3.1.4-r5", "3.1.4_p1-r0", Less),
            ("1.36.1-r15", "1.36.1-r16", Less),
            ("3.0.10-r0", "3.0.9-r3", Greater),
            ("1.10", "1.9", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}
