//! The x86_64 system call table (number <-> name): the policy's one table
//! (`moat_policy::syscalls::X86_64`), indexed both ways for the profiler.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

/// Number and name of every x86_64 system call this build knows.
#[derive(Debug)]
pub struct SyscallTable {
    by_nr: BTreeMap<u32, &'static str>,
    by_name: HashMap<&'static str, u32>,
}

impl SyscallTable {
    fn parse() -> SyscallTable {
        let by_nr: BTreeMap<u32, &'static str> = moat_policy::syscalls::X86_64
            .iter()
            .map(|(name, nr)| (*nr, *name))
            .collect();
        let by_name = by_nr.iter().map(|(nr, name)| (*name, *nr)).collect();
        SyscallTable { by_nr, by_name }
    }

    /// Name of syscall `nr`, if it exists on x86_64.
    pub fn name(&self, nr: u32) -> Option<&'static str> {
        self.by_nr.get(&nr).copied()
    }

    /// Number of the syscall called `name`.
    pub fn number(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// All (number, name) pairs in number order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &'static str)> + '_ {
        self.by_nr.iter().map(|(n, s)| (*n, *s))
    }

    /// How many syscalls the table holds.
    pub fn len(&self) -> usize {
        self.by_nr.len()
    }

    /// Whether the table is empty (never, for the bundled data).
    pub fn is_empty(&self) -> bool {
        self.by_nr.is_empty()
    }

    /// The highest syscall number known.
    pub fn max_nr(&self) -> u32 {
        self.by_nr.keys().next_back().copied().unwrap_or(0)
    }
}

/// The bundled table.
pub fn table() -> &'static SyscallTable {
    static TABLE: OnceLock<SyscallTable> = OnceLock::new();
    TABLE.get_or_init(SyscallTable::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_numbers() {
        let t = table();
        assert_eq!(t.number("read"), Some(0));
        assert_eq!(t.number("execve"), Some(59));
        assert_eq!(t.name(435), Some("clone3"));
        assert_eq!(t.name(462), Some("mseal"));
        // The policy's table: 382 calls, uretprobe (335) included.
        assert_eq!(t.len(), 382);
        assert_eq!(t.name(335), Some("uretprobe"));
    }
}
