//! "Did you mean ...?" suggestions by edit distance.

/// The candidate closest to `input`, if it is close enough to be a likely typo.
pub fn closest<'a, I>(input: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    let input_l = input.to_ascii_lowercase();
    let limit = (input.chars().count() / 3).max(2);
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let near = candidates
        .iter()
        .map(|c| (distance(&input_l, &c.to_ascii_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, c.len()))
        .map(|(_, c)| c.to_string());
    // A truncated name (`@network` for `@network-io`, `strict` for
    // `restricted`) is a likely slip too.
    near.or_else(|| {
        candidates
            .iter()
            .filter(|c| input_l.len() >= 3 && c.to_ascii_lowercase().contains(&input_l))
            .min_by_key(|c| c.len())
            .map(|c| c.to_string())
    })
}

/// Edit distance over chars where swapping two neighbours counts as one
/// edit (optimal string alignment), the commonest typo.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        assert_eq!(distance("mkdri", "mkdir"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(
            closest("mkdirt", ["mkdir", "mkdirat", "rmdir"]).as_deref(),
            Some("mkdir")
        );
        assert_eq!(
            closest("capabilites", ["capabilities", "syscalls"]).as_deref(),
            Some("capabilities")
        );
        assert_eq!(closest("zzzzzz", ["mkdir"]), None);
    }
}
