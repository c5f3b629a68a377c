//! The image profile: every system call any program in an image can make,
//! from every ELF executable and shared library in it, without running
//! anything. This is what the `auto` policy narrows `baseline` to.
//!
//! Each object contributes what [`crate::static_analysis`] finds for one
//! program: its constant-number `syscall` sites, and through the libc
//! tables the calls of every libc function any object imports. On top of
//! that, calls to *syscall wrappers* are resolved at their call sites: a
//! function whose `syscall` takes its number straight from an argument
//! register (libc's `syscall(2)` with `rdi`, Go's `Syscall6` with `rax`),
//! a PLT stub or GOT slot of libc's `syscall`, and Go's `syscall.*`
//! functions by name. A call to a wrapper whose number is not a constant,
//! or a `syscall` site that is neither constant nor in a wrapper, cannot be
//! pinned: it is recorded as a [`Fallback`] and the image then gets every
//! call baseline's families grant (never "allow all").

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

use iced_x86::Register;
use serde::{Deserialize, Serialize};

use crate::disasm::CallTarget;
use crate::elf::ElfInfo;
use crate::libcmap::{self, Flavour};
use crate::rootfs::{Root, RootError};
use crate::syscalls;

/// Version of the stored form; a profile of another version is recomputed
/// (2: calls to a syscall wrapper through a register loaded from its GOT
/// slot are pinned, and wrapper pointers not followed fall back).
pub const VERSION: u32 = 2;

/// Files and directories the walk visits at most (a hostile image guard).
const MAX_ENTRIES: usize = 1_000_000;
/// Directory depth the walk descends at most.
const MAX_DEPTH: usize = 64;
/// Unpinned sites listed per image (the count is always exact).
const MAX_FALLBACKS: usize = 20;

/// Go functions that make a system call whose number is their first
/// argument (`rax` under Go's register ABI).
const GO_WRAPPERS: &[&str] = &[
    "syscall.Syscall",
    "syscall.Syscall6",
    "syscall.RawSyscall",
    "syscall.RawSyscall6",
    "syscall.rawSyscallNoError",
    "syscall.rawVforkSyscall",
    "runtime/internal/syscall.Syscall6",
    "golang.org/x/sys/unix.Syscall",
    "golang.org/x/sys/unix.Syscall6",
    "golang.org/x/sys/unix.RawSyscall",
    "golang.org/x/sys/unix.RawSyscall6",
    "golang.org/x/sys/unix.RawSyscallNoError",
    "golang.org/x/sys/unix.SyscallNoError",
];

/// glibc's internal signal that makes every thread repeat a set*id call.
const SIGSETXID: u32 = 33;
/// `tgkill` on x86_64, which sends it.
const TGKILL: u32 = 234;

/// File names of runtimes that generate machine code at run time.
const JIT_RUNTIMES: &[&str] = &[
    "libjvm.so",
    "libv8.so",
    "libnode.so",
    "libmozjs",
    "libluajit",
];

#[derive(Debug, thiserror::Error)]
pub enum ImageProfileError {
    #[error("cannot list {path} in the image root {root}")]
    List {
        path: String,
        root: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the image root {root} has more than {MAX_ENTRIES} entries; refusing to analyse it")]
    TooManyEntries { root: String },
    #[error(transparent)]
    Root(#[from] RootError),
}

/// Where the analysis could not pin a call, and what the image gets instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    /// The object (path inside the image).
    pub object: String,
    /// Why, in words (`syscall site at 0x1234 with a computed number`).
    pub why: String,
    /// What the image gets for it: a baseline family (`@credentials`) when
    /// the case is known, else `baseline` (every call baseline allows).
    pub grants: String,
}

/// The grant of a fallback whose case is unknown.
pub const WHOLE_BASELINE: &str = "baseline";

/// The stored result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageProfile {
    pub version: u32,
    /// Every call the analysis pinned, with the first object that needs it.
    pub syscalls: BTreeMap<String, String>,
    /// Unpinned calls (at most [`MAX_FALLBACKS`] listed).
    pub fallbacks: Vec<Fallback>,
    /// How many unpinned calls there were in all.
    pub fallback_count: usize,
    /// What the fallbacks grant, all of them: families, or `baseline`.
    pub fallback_grants: BTreeSet<String>,
    /// ELF objects analysed.
    pub objects: usize,
    /// ELF files not analysed (another architecture or class), e.g. 32-bit.
    pub skipped: Vec<String>,
    /// C library flavours found.
    pub libc: Vec<String>,
    /// Wall time of the analysis.
    pub analysis_ms: u64,
}

impl ImageProfile {
    /// The calls `auto` may allow for this image: `None` when a fallback
    /// applies and the image gets what baseline's families grant.
    pub fn allowed(&self) -> Option<BTreeSet<String>> {
        if self.fallback_grants.contains(WHOLE_BASELINE) {
            return None;
        }
        let mut set: BTreeSet<String> = self.syscalls.keys().cloned().collect();
        for family in &self.fallback_grants {
            if let Some(members) = moat_policy::syscalls::expand_group(family) {
                set.extend(members.into_iter().map(str::to_string));
            }
        }
        Some(set)
    }

    /// One line per fallback reason, for `moat image inspect` and `explain`.
    pub fn fallback_lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .fallbacks
            .iter()
            .map(|f| format!("{}: {} (grants {})", f.object, f.why, f.grants))
            .collect();
        if self.fallback_count > self.fallbacks.len() {
            v.push(format!(
                "... and {} more",
                self.fallback_count - self.fallbacks.len()
            ));
        }
        v
    }
}

struct Walk<'a> {
    root: &'a Root,
    seen: HashSet<(u64, u64)>,
    entries: usize,
    profile: ImageProfile,
    imports: BTreeSet<String>,
    flavours: BTreeSet<Flavour>,
}

/// Analyses every ELF executable and shared library under `root`.
pub fn analyze_image(root: &Root) -> Result<ImageProfile, ImageProfileError> {
    let started = Instant::now();
    let mut w = Walk {
        root,
        seen: HashSet::new(),
        entries: 0,
        profile: ImageProfile {
            version: VERSION,
            syscalls: BTreeMap::new(),
            fallbacks: Vec::new(),
            fallback_count: 0,
            fallback_grants: BTreeSet::new(),
            objects: 0,
            skipped: Vec::new(),
            libc: Vec::new(),
            analysis_ms: 0,
        },
        imports: BTreeSet::new(),
        flavours: BTreeSet::new(),
    };
    w.dir("", 0)?;
    let table = syscalls::table();
    let tables = libcmap::bundled();
    let imports = std::mem::take(&mut w.imports);
    for flavour in w.flavours.clone() {
        if let Some(map) = tables.get(&flavour) {
            for import in &imports {
                for nr in map.get(import).into_iter().flatten() {
                    if let Some(name) = table.name(*nr) {
                        w.allow(name, format!("libc:{import}"));
                    }
                }
            }
        }
        for name in libcmap::CORE {
            w.allow(name, format!("{} runtime", flavour.as_str()));
        }
        w.profile.libc.push(flavour.as_str().to_string());
    }
    w.allow(
        "execve",
        "the workload is started by execve under the filter",
    );
    // Made by the kernel itself when a call interrupted by a signal is
    // restarted, and the return from every signal handler: no program's
    // code names them, every program can need them.
    w.allow(
        "restart_syscall",
        "issued by the kernel to restart an interrupted call",
    );
    w.allow("rt_sigreturn", "issued on return from a signal handler");
    w.profile.analysis_ms = started.elapsed().as_millis() as u64;
    Ok(w.profile)
}

impl Walk<'_> {
    fn allow(&mut self, name: &str, reason: impl Into<String>) {
        self.profile
            .syscalls
            .entry(name.to_string())
            .or_insert_with(|| reason.into());
    }

    fn unpinned(&mut self, object: &str, why: String) {
        self.fallback(object, why, WHOLE_BASELINE);
    }

    fn fallback(&mut self, object: &str, why: String, grants: &str) {
        self.profile.fallback_count += 1;
        self.profile.fallback_grants.insert(grants.to_string());
        if self.profile.fallbacks.len() < MAX_FALLBACKS {
            self.profile.fallbacks.push(Fallback {
                object: object.to_string(),
                why,
                grants: grants.to_string(),
            });
        }
    }

    fn dir(&mut self, path: &str, depth: usize) -> Result<(), ImageProfileError> {
        if depth > MAX_DEPTH {
            return Ok(());
        }
        let host = self.root.path().join(path.trim_start_matches('/'));
        let rd = std::fs::read_dir(&host).map_err(|source| ImageProfileError::List {
            path: if path.is_empty() { "/" } else { path }.to_string(),
            root: self.root.path().display().to_string(),
            source,
        })?;
        let mut names: Vec<(String, std::fs::FileType)> = Vec::new();
        for ent in rd.flatten() {
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(ImageProfileError::TooManyEntries {
                    root: self.root.path().display().to_string(),
                });
            }
            let Ok(ft) = ent.file_type() else { continue };
            names.push((ent.file_name().to_string_lossy().into_owned(), ft));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, ft) in names {
            let child = format!("{path}/{name}");
            if ft.is_dir() {
                // A directory that vanished or cannot be read is skipped.
                let _ = self.dir(&child, depth + 1);
            } else if ft.is_file() {
                self.file(&child)?;
            }
        }
        Ok(())
    }

    fn file(&mut self, path: &str) -> Result<(), ImageProfileError> {
        let Ok(Some(file)) = self.root.read_elf(path) else {
            return Ok(());
        };
        if !self.seen.insert(file.id) {
            return Ok(());
        }
        let info = match ElfInfo::parse(path, &file.data) {
            Ok(i) => i,
            Err(e) => {
                if self.profile.skipped.len() < MAX_FALLBACKS {
                    self.profile.skipped.push(e.to_string());
                }
                return Ok(());
            }
        };
        self.profile.objects += 1;
        let base = path.rsplit('/').next().unwrap_or(path);
        if JIT_RUNTIMES.iter().any(|j| base.starts_with(j)) {
            self.unpinned(
                path,
                "a runtime that generates machine code (JIT): its calls are not in the file"
                    .to_string(),
            );
        }
        if let Some(f) = Flavour::from_soname(path) {
            // libc: its functions come from the tables, for what is imported.
            self.flavours.insert(f);
            return Ok(());
        }
        self.imports.extend(info.imports.iter().cloned());
        let is_loader = base.starts_with("ld-linux");
        self.code(path, &info, is_loader, &file.data);
        Ok(())
    }

    fn code(&mut self, path: &str, info: &ElfInfo, is_loader: bool, data: &[u8]) {
        let scan = info.scan_code();
        let table = syscalls::table();
        for nr in scan.numbers() {
            if let Some(name) = table.name(nr) {
                self.allow(name, format!("syscall in {path}"));
            }
        }
        // Function extents: `.eh_frame`, then sized symbols.
        let mut extents: Vec<(u64, u64)> = info.functions.clone();
        extents.extend(
            info.exports
                .iter()
                .filter(|e| e.size > 0)
                .map(|e| (e.addr, e.size)),
        );
        extents.sort_unstable();
        let containing = |addr: u64| -> Option<(u64, u64)> {
            let i = extents.partition_point(|(s, _)| *s <= addr);
            extents[..i]
                .iter()
                .rev()
                .take(8)
                .find(|(s, l)| addr < s + l)
                .copied()
        };
        let is_go = info
            .exports
            .iter()
            .any(|e| e.name == "runtime.main" || e.name == "runtime.rt0_go");
        // Wrappers: entry address -> register holding the number.
        let mut wrappers: BTreeMap<u64, Register> = BTreeMap::new();
        let mut wrapper_extents: Vec<(u64, u64)> = Vec::new();
        if is_go {
            for e in &info.exports {
                if GO_WRAPPERS.contains(&e.name.as_str()) {
                    wrappers.insert(e.addr, Register::RAX);
                    wrapper_extents.push((e.addr, e.size.max(1)));
                }
            }
        }
        let slots: BTreeSet<u64> = info.syscall_slots.iter().copied().collect();
        for (ip, slot) in &scan.got_jumps {
            if slots.contains(slot) {
                wrappers.insert(*ip, Register::RDI);
                wrappers.insert(ip.saturating_sub(4), Register::RDI); // endbr64 before it
            }
        }
        let arg = if is_go { Register::RAX } else { Register::RDI };
        let mut unresolved: Vec<u64> = Vec::new();
        let mut setxid: Vec<u64> = Vec::new();
        let starts: BTreeSet<u64> = extents.iter().map(|(s, _)| *s).collect();
        let jump_entered: BTreeMap<u64, u64> = scan
            .jump_entered
            .iter()
            .filter(|(_, start)| !starts.contains(start))
            .copied()
            .collect();
        for site in scan.sites.iter().filter(|s| s.nr.is_none()) {
            if jump_entered.contains_key(&site.addr) {
                continue; // every path into it was followed
            }
            // Bytes that decode as `syscall` outside every function the
            // unwind tables describe are data in the code section (tables
            // of hand-written assembly), not a call site.
            if !extents.is_empty() && containing(site.addr).is_none() {
                continue;
            }
            if wrapper_extents
                .iter()
                .any(|(s, l)| site.addr >= *s && site.addr < s + l)
            {
                continue;
            }
            let wrapper = containing(site.addr).filter(|(start, _)| {
                info.code.iter().any(|(base, bytes)| {
                    crate::disasm::number_from_entry(bytes, *base, *start, site.addr, arg)
                })
            });
            match wrapper {
                Some((start, len)) => {
                    wrappers.insert(start, arg);
                    wrapper_extents.push((start, len));
                }
                None => {
                    let via_saved = containing(site.addr).and_then(|(start, len)| {
                        info.code.iter().find_map(|(base, bytes)| {
                            crate::disasm::numbers_via_saved_register(
                                bytes, *base, start, len, site.addr,
                            )
                        })
                    });
                    if let Some(values) = via_saved {
                        for v in values {
                            match u32::try_from(v).ok().and_then(|n| table.name(n)) {
                                Some(name) => self.allow(name, format!("syscall in {path}")),
                                None => unresolved.push(site.addr),
                            }
                        }
                        continue;
                    }
                    // The handler (`cmp edi, 33` first) or the broadcaster
                    // (`tgkill(pid, tid, 33)` to every thread).
                    let is_setxid = containing(site.addr).is_some_and(|(start, len)| {
                        info.code.iter().any(|(base, bytes)| {
                            crate::disasm::starts_with_cmp_edi(bytes, *base, start, SIGSETXID)
                                || (crate::disasm::function_sets(
                                    bytes,
                                    *base,
                                    start,
                                    len,
                                    Register::EDX,
                                    u64::from(SIGSETXID),
                                ) && crate::disasm::function_sets(
                                    bytes,
                                    *base,
                                    start,
                                    len,
                                    Register::EAX,
                                    u64::from(TGKILL),
                                ))
                        })
                    });
                    if is_setxid {
                        setxid.push(site.addr);
                    } else {
                        unresolved.push(site.addr);
                    }
                }
            }
        }
        // The dynamic loader runs before the filter matters for any
        // computed site of its own: its calls are glibc's runtime (CORE).
        for addr in setxid {
            self.fallback(
                path,
                format!("syscall site at {addr:#x} in glibc's SIGSETXID handler, which repeats a credential call in every thread"),
                "@credentials",
            );
        }
        if !is_loader {
            unresolved.sort_unstable();
            unresolved.dedup();
            for addr in unresolved {
                self.unpinned(
                    path,
                    format!("syscall site at {addr:#x} with a number computed at run time"),
                );
            }
        }
        // What a GOT slot holds once the program runs: a static-pie's
        // relative relocation, or a static executable's stored address.
        let slot_target = |g: u64| {
            info.relative_slots.get(&g).copied().or_else(|| {
                (!info.dynamic)
                    .then(|| crate::elf::read_u64_at(data, g))
                    .flatten()
            })
        };
        let slot_reg = |g: u64| {
            if slots.contains(&g) {
                return Some(Register::RDI);
            }
            slot_target(g).and_then(|t| wrappers.get(&t).copied())
        };
        let in_wrapper = |addr: u64| {
            wrapper_extents
                .iter()
                .any(|(s, l)| addr >= *s && addr < s + l)
        };
        // A wrapper's address loaded into a register is followed to the
        // calls made through that register; a load with no such call is a
        // pointer kept or passed on, whose calls cannot be seen.
        if !is_loader {
            let followed: BTreeSet<u64> = scan.calls.iter().filter_map(|c| c.loaded_at).collect();
            for (at, g) in &scan.global_loads {
                if !followed.contains(at) && !in_wrapper(*at) && slot_reg(*g).is_some() {
                    self.unpinned(
                        path,
                        format!("the address of a syscall wrapper is loaded at {at:#x} and used where the analysis cannot follow it"),
                    );
                }
            }
        }
        for call in &scan.calls {
            let reg = match call.target {
                CallTarget::Direct(t) => wrappers.get(&t).copied(),
                CallTarget::Got(g) => slot_reg(g),
            };
            let Some(reg) = reg else { continue };
            if wrapper_extents
                .iter()
                .any(|(s, l)| call.addr >= *s && call.addr < s + l)
            {
                continue; // a wrapper passing its own argument on
            }
            let global_writes: &[u64] = &scan.global_writes;
            let nr = if reg == Register::RAX {
                // A number in a package variable no code writes (Go's
                // `unix.FcntlSyscall`): its value in the file.
                call.eax.or_else(|| {
                    let g = call.eax_global?;
                    if global_writes.contains(&g) {
                        return None;
                    }
                    crate::elf::read_u64_at(data, g)
                })
            } else {
                call.edi
            };
            match nr.and_then(|n| u32::try_from(n).ok()) {
                Some(n) => match table.name(n) {
                    Some(name) => self.allow(name, format!("syscall wrapper call in {path}")),
                    None => self.unpinned(
                        path,
                        format!("call at {:#x} passes unknown syscall number {n}", call.addr),
                    ),
                },
                None => self.unpinned(
                    path,
                    format!(
                        "call at {:#x} to a syscall wrapper with a number computed at run time",
                        call.addr
                    ),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_busybox_profile_is_small_and_pinned() {
        if !std::path::Path::new("/bin/busybox").exists() {
            println!("SKIP: /bin/busybox (busybox-static) is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::copy("/bin/busybox", dir.path().join("bin/busybox")).unwrap();
        std::fs::write(dir.path().join("bin/notelf"), vec![b'x'; 100]).unwrap();
        let p = analyze_image(&Root::open(dir.path()).unwrap()).unwrap();
        assert_eq!(p.objects, 1);
        eprintln!(
            "{} calls, fallbacks {:?}",
            p.syscalls.len(),
            p.fallback_lines()
        );
        for needed in ["write", "getdents64", "exit_group", "execve", "wait4"] {
            assert!(p.syscalls.contains_key(needed), "{needed} missing");
        }
        assert!(!p.syscalls.contains_key("kexec_load"));
    }

    #[test]
    fn unpinned_sites_fall_back_and_say_where() {
        let dir = tempfile::tempdir().unwrap();
        // A tiny ELF is hard to forge by hand: use a JIT runtime's name.
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::copy("/bin/true", dir.path().join("lib/libjvm.so")).unwrap();
        let p = analyze_image(&Root::open(dir.path()).unwrap()).unwrap();
        assert!(p.allowed().is_none());
        assert!(
            p.fallback_lines()[0]
                .starts_with("/lib/libjvm.so: a runtime that generates machine code"),
            "{:?}",
            p.fallback_lines()
        );
    }
}
