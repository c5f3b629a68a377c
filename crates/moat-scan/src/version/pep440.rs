//! PEP 440 version ordering (PyPI): `[N!]N(.N)*[{a|b|rc}N][.postN][.devN][+local]`.

use std::cmp::Ordering;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum LocalPart {
    Alpha(String),
    Num(u64),
}

/// Sort key, compared field by field.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    epoch: u64,
    release: Vec<u64>,
    /// (phase, n): dev-only releases sort before every pre-release,
    /// final releases after them.
    pre: (i8, u64),
    post: (i8, u64),
    dev: (i8, u64),
    local: Vec<LocalPart>,
}

fn take_num(s: &str) -> (u64, &str) {
    let s = s.trim_start_matches(['.', '-', '_']);
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (s[..end].parse().unwrap_or(0), &s[end..])
}

fn parse(v: &str) -> Option<Key> {
    let v = v.trim().to_ascii_lowercase();
    let v = v.strip_prefix('v').unwrap_or(&v).to_string();
    let (v, local) = match v.split_once('+') {
        Some((a, l)) => (a.to_string(), Some(l.to_string())),
        None => (v, None),
    };
    let (epoch, mut rest) = match v.split_once('!') {
        Some((e, r)) => (e.parse().ok()?, r),
        None => (0, v.as_str()),
    };
    let mut release = Vec::new();
    loop {
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        release.push(rest[..end].parse().ok()?);
        rest = &rest[end..];
        if rest.starts_with('.') && rest[1..].starts_with(|c: char| c.is_ascii_digit()) {
            rest = &rest[1..];
        } else {
            break;
        }
    }
    while release.len() > 1 && release.last() == Some(&0) {
        release.pop();
    }
    let mut pre = None;
    let mut post = None;
    let mut dev = None;
    loop {
        let t = rest.trim_start_matches(['.', '-', '_']);
        if t.is_empty() {
            break;
        }
        let phases: [(&str, i8); 8] = [
            ("alpha", 0),
            ("beta", 1),
            ("preview", 2),
            ("pre", 2),
            ("rc", 2),
            ("a", 0),
            ("b", 1),
            ("c", 2),
        ];
        if let Some((p, rank)) = phases.iter().find(|(p, _)| t.starts_with(p)) {
            if pre.is_some() {
                return None;
            }
            let (n, r) = take_num(&t[p.len()..]);
            pre = Some((*rank, n));
            rest = r;
        } else if let Some(x) = t
            .strip_prefix("post")
            .or_else(|| t.strip_prefix("rev"))
            .or_else(|| t.strip_prefix('r'))
        {
            let (n, r) = take_num(x);
            post = Some(n);
            rest = r;
        } else if let Some(x) = t.strip_prefix("dev") {
            let (n, r) = take_num(x);
            dev = Some(n);
            rest = r;
        } else if rest.starts_with('-') && t.starts_with(|c: char| c.is_ascii_digit()) {
            let (n, r) = take_num(t);
            post = Some(n);
            rest = r;
        } else {
            return None;
        }
    }
    let pre = match (pre, post, dev) {
        (Some((r, n)), _, _) => (r, n),
        (None, None, Some(_)) => (-1, 0),
        _ => (3, 0),
    };
    let post = post.map_or((-1, 0), |n| (0, n));
    let dev = dev.map_or((1, 0), |n| (0, n));
    let local = local
        .map(|l| {
            l.split(['.', '-', '_'])
                .map(|p| {
                    p.parse()
                        .map_or_else(|_| LocalPart::Alpha(p.to_string()), LocalPart::Num)
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Key {
        epoch,
        release,
        pre,
        post,
        dev,
        local,
    })
}

/// Compare two PEP 440 versions; unparsable ones sort first, in string
/// order among themselves.
pub fn compare(a: &str, b: &str) -> Ordering {
    // Legacy versions first, as in `packaging`'s old LegacyVersion.
    super::unparsable_first(a, b, parse, Key::cmp)
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering::*;

    use super::*;

    #[test]
    fn ordering_from_pep_440() {
        let chain = [
            "1.0.dev456",
            "1.0a1",
            "1.0a2.dev456",
            "1.0a12.dev456",
            "1.0a12",
            "1.0b1.dev456",
            "1.0b2",
            "1.0b2.post345.dev456",
            "1.0b2.post345",
            "1.0rc1.dev456",
            "1.0rc1",
            "1.0",
            "1.0+abc.5",
            "1.0+abc.7",
            "1.0+5",
            "1.0.post456.dev34",
            "1.0.post456",
            "1.1.dev1",
            "1!0.5",
        ];
        for w in chain.windows(2) {
            assert_eq!(compare(w[0], w[1]), Less, "{} < {}", w[0], w[1]);
        }
        assert_eq!(compare("1.0", "1.0.0"), Equal);
        assert_eq!(compare("1.0-1", "1.0.post1"), Equal);
        assert_eq!(compare("1.0RC1", "1.0rc1"), Equal);
        assert_eq!(compare("2.31.0", "2.4.0"), Greater);
    }

    #[test]
    fn legacy_versions_keep_the_order_total() {
        // With a per-pair string fallback: 2.0 < 10.0 < "1z" (as strings)
        // but 2.0 > "1z".
        assert_eq!(compare("2.0", "10.0"), Ordering::Less);
        assert_eq!(compare("10.0", "1z"), Ordering::Greater);
        assert_eq!(compare("2.0", "1z"), Ordering::Greater);
    }
}
