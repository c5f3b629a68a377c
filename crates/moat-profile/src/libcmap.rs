//! Which system calls each libc function can make.
//!
//! The tables in `data/libc-syscalls.tsv` are produced by
//! [`analyze_library`] run over a real libc (`examples/gen_libc_syscalls.rs`):
//! the library's code is split into regions at every function symbol, each
//! region gets the constant-number `syscall` sites it contains, and the sets
//! are closed over the direct call graph (calls, tail jumps, and rip-relative
//! `lea` of code, which covers IFUNC resolvers and most function pointers).
//! Calls through vtables and other computed pointers are invisible to this,
//! so [`CORE`] lists, by hand, what libc's runtime itself needs whatever the
//! program calls (start-up, stdio buffers, exit); see `docs/profiles.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

use crate::elf::ElfInfo;
use crate::syscalls;

static TABLE_TSV: &str = include_str!("../data/libc-syscalls.tsv");

/// Which C library an object links against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flavour {
    Glibc,
    Musl,
}

impl Flavour {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Glibc => "glibc",
            Flavour::Musl => "musl",
        }
    }

    /// Recognises libc by its soname.
    pub fn from_soname(name: &str) -> Option<Flavour> {
        let base = name.rsplit('/').next().unwrap_or(name);
        if base == "libc.so.6" {
            Some(Flavour::Glibc)
        } else if base.starts_with("libc.musl-") || base.starts_with("ld-musl-") {
            Some(Flavour::Musl)
        } else {
            None
        }
    }
}

/// Syscalls libc's own runtime makes for any program, beyond what the
/// imported functions reach through direct calls: process start-up and the
/// dynamic loader (`brk`, `mmap`, `mprotect`, `arch_prctl`, TLS and robust
/// futex set-up, `rseq`), stdio through its vtables (`read`, `write`,
/// `lseek`, `fstat`, `ioctl` for `isatty`), and exit.
pub const CORE: &[&str] = &[
    "read",
    "write",
    "close",
    "fstat",
    "newfstatat",
    "lseek",
    "mmap",
    "mprotect",
    "munmap",
    "brk",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "ioctl",
    "pread64",
    "access",
    "openat",
    "arch_prctl",
    "set_tid_address",
    "set_robust_list",
    "rseq",
    "prlimit64",
    "getrandom",
    "futex",
    "exit",
    "exit_group",
    "getpid",
    "gettid",
    "tgkill",
    "readlink",
    "execve",
];

/// Function name -> syscall numbers, for one libc flavour.
pub type FunctionMap = BTreeMap<String, BTreeSet<u32>>;

/// The bundled tables.
pub fn bundled() -> &'static HashMap<Flavour, FunctionMap> {
    static TABLES: OnceLock<HashMap<Flavour, FunctionMap>> = OnceLock::new();
    TABLES.get_or_init(|| parse_tsv(TABLE_TSV))
}

/// Parses the table format: `set<TAB>ID<TAB>name,name,...` lines define
/// syscall sets, `FLAVOUR<TAB>function<TAB>ID` lines map a function to one
/// (a set line precedes its first use).
pub fn parse_tsv(text: &str) -> HashMap<Flavour, FunctionMap> {
    let table = syscalls::table();
    let mut sets: HashMap<&str, BTreeSet<u32>> = HashMap::new();
    let mut out: HashMap<Flavour, FunctionMap> = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut it = line.split('\t');
        let (Some(kind), Some(key), Some(value)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let flavour = match kind {
            "set" => {
                let set = value
                    .split(',')
                    .filter_map(|n| table.number(n.trim()))
                    .collect();
                sets.insert(key, set);
                continue;
            }
            "glibc" => Flavour::Glibc,
            "musl" => Flavour::Musl,
            _ => continue,
        };
        let set = sets.get(value).cloned().unwrap_or_default();
        out.entry(flavour).or_default().insert(key.to_string(), set);
    }
    out
}

/// Writes the maps in the table format; set IDs are numbered in order of
/// first use, so the output is deterministic. Functions without syscalls
/// are listed too (with an empty set), so that "known, makes none" differs
/// from "unknown".
pub fn to_tsv(maps: &[(Flavour, FunctionMap)]) -> String {
    let table = syscalls::table();
    let mut ids: HashMap<&BTreeSet<u32>, usize> = HashMap::new();
    let mut out = String::new();
    for (flavour, map) in maps {
        for (func, set) in map {
            let next = ids.len();
            let id = *ids.entry(set).or_insert_with(|| {
                let names: Vec<&str> = set.iter().filter_map(|n| table.name(*n)).collect();
                out.push_str(&format!("set\t{next}\t{}\n", names.join(",")));
                next
            });
            out.push_str(&format!("{}\t{func}\t{id}\n", flavour.as_str()));
        }
    }
    out
}

type Bits = [u64; 8];

fn bit_set(b: &mut Bits, n: u32) {
    if n < 512 {
        b[(n / 64) as usize] |= 1 << (n % 64);
    }
}

/// Computes, for every exported function of a shared library, the syscalls
/// reachable from it (see the module documentation).
pub fn analyze_library(info: &ElfInfo) -> FunctionMap {
    let mut starts: Vec<u64> = info.exports.iter().map(|e| e.addr).collect();
    starts.extend(info.functions.iter().map(|(start, _)| *start));
    starts.sort_unstable();
    starts.dedup();
    let region = |addr: u64| -> Option<usize> {
        match starts.binary_search(&addr) {
            Ok(i) => Some(i),
            Err(0) => None,
            Err(i) => Some(i - 1),
        }
    };
    let scan = info.scan_code();
    let mut sets: Vec<Bits> = vec![[0; 8]; starts.len()];
    for site in &scan.sites {
        if let (Some(nr), Some(r)) = (site.nr, region(site.addr)) {
            bit_set(&mut sets[r], nr);
        }
    }
    let in_code = |a: u64| {
        info.code
            .iter()
            .any(|(base, bytes)| a >= *base && a < base + bytes.len() as u64)
    };
    let mut edges: Vec<(usize, usize)> = scan
        .edges
        .iter()
        .filter(|(_, to)| in_code(*to))
        .filter_map(|(from, to)| Some((region(*from)?, region(*to)?)))
        .filter(|(a, b)| a != b)
        .collect();
    edges.sort_unstable();
    edges.dedup();
    loop {
        let mut changed = false;
        for &(a, b) in &edges {
            let src = sets[b];
            let dst = &mut sets[a];
            for i in 0..8 {
                let merged = dst[i] | src[i];
                if merged != dst[i] {
                    dst[i] = merged;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut out = FunctionMap::new();
    for e in &info.exports {
        let Some(r) = region(e.addr) else { continue };
        let mut set = BTreeSet::new();
        for (i, word) in sets[r].iter().enumerate() {
            for bit in 0..64 {
                if word & (1 << bit) != 0 {
                    set.insert((i * 64 + bit) as u32);
                }
            }
        }
        out.entry(e.name.clone()).or_default().extend(set);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nr(name: &str) -> u32 {
        syscalls::table().number(name).unwrap()
    }

    #[test]
    fn flavour_from_soname() {
        assert_eq!(Flavour::from_soname("libc.so.6"), Some(Flavour::Glibc));
        assert_eq!(
            Flavour::from_soname("/lib/ld-musl-x86_64.so.1"),
            Some(Flavour::Musl)
        );
        assert_eq!(Flavour::from_soname("libm.so.6"), None);
    }

    #[test]
    fn bundled_glibc_table_knows_common_functions() {
        let glibc = &bundled()[&Flavour::Glibc];
        assert!(
            glibc["opendir"].contains(&nr("openat")),
            "{:?}",
            glibc["opendir"]
        );
        assert!(glibc["getdents64"].contains(&nr("getdents64")));
        assert!(glibc["socket"].contains(&nr("socket")));
        assert!(glibc["strlen"].is_empty());
        let musl = &bundled()[&Flavour::Musl];
        assert!(musl["socket"].contains(&nr("socket")));
    }

    #[test]
    fn tsv_round_trip() {
        let mut map = FunctionMap::new();
        map.insert("f".into(), [0, 1].into_iter().collect());
        map.insert("g".into(), BTreeSet::new());
        let text = to_tsv(&[(Flavour::Musl, map.clone())]);
        assert_eq!(
            text,
            "set\t0\tread,write\nmusl\tf\t0\nset\t1\t\nmusl\tg\t1\n"
        );
        assert_eq!(parse_tsv(&text)[&Flavour::Musl], map);
    }
}
