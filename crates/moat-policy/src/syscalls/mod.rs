//! x86_64 system call names and numbers, and the named groups policies use.
//!
//! Other crates use these tables too (the profiler maps recorded numbers back
//! to names, the surface scorer counts what a filter leaves open).

mod groups;
mod table;

pub use groups::{expand_group, group_names, groups_markdown, Group, GROUPS, PRIVILEGED_SUBGROUPS};
pub use table::{X32_ONLY, X86_64};

/// `AUDIT_ARCH_X86_64`: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// Bit set in the syscall number by the x32 ABI (`__X32_SYSCALL_BIT`).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The highest native system call number this table knows.
pub fn max_number() -> u32 {
    X86_64.iter().map(|&(_, nr)| nr).max().unwrap_or(0)
}

/// The number of a native x86_64 system call.
pub fn number(name: &str) -> Option<u32> {
    X86_64.iter().find(|&&(n, _)| n == name).map(|&(_, nr)| nr)
}

/// The name of a native x86_64 system call number. Numbers with the x32 bit
/// set resolve to the x32 entry point (`x32:` prefix) they stand for.
pub fn name(nr: u32) -> Option<String> {
    if nr & X32_SYSCALL_BIT != 0 {
        let base = nr & !X32_SYSCALL_BIT;
        return X32_ONLY
            .iter()
            .chain(X86_64.iter())
            .find(|&&(_, n)| n == base)
            .map(|&(n, _)| format!("x32:{n}"));
    }
    X86_64
        .iter()
        .find(|&&(_, n)| n == nr)
        .map(|&(n, _)| n.to_string())
}

/// All native system call names, in number order.
pub fn names() -> impl Iterator<Item = &'static str> {
    X86_64.iter().map(|&(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_complete() {
        assert_eq!(X86_64.len(), 382);
        assert_eq!(X32_ONLY.len(), 36);
        for pair in X86_64.windows(2) {
            assert!(pair[0].1 < pair[1].1, "{:?} before {:?}", pair[0], pair[1]);
        }
        let mut names: Vec<_> = names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), X86_64.len());
    }

    #[test]
    fn lookups_both_ways() {
        assert_eq!(number("read"), Some(0));
        assert_eq!(number("mkdirat"), Some(258));
        assert_eq!(number("clone3"), Some(435));
        assert_eq!(number("nope"), None);
        assert_eq!(name(59).as_deref(), Some("execve"));
        assert_eq!(name(X32_SYSCALL_BIT | 520).as_deref(), Some("x32:execve"));
        assert_eq!(name(X32_SYSCALL_BIT | 1).as_deref(), Some("x32:write"));
        assert_eq!(name(400), None);
        assert_eq!(max_number(), 469);
    }
}
