//! `moat profile static`: which syscalls an image's entrypoint can make,
//! from its ELF files alone.
//!
//! The entrypoint is resolved inside the root (through `PATH` when it has no
//! slash, through `#!` for scripts), then every object the dynamic loader
//! would map: the interpreter and the transitive `DT_NEEDED` closure,
//! searched in `DT_RPATH`/`DT_RUNPATH` (`$ORIGIN` expanded), the root's
//! `/etc/ld.so.conf` and the default directories, always inside the root.
//! For libc, the functions the other objects import are looked up in the
//! bundled tables ([`crate::libcmap`]); every other object, and static
//! executables, contribute their constant-number `syscall` sites.

use std::collections::{BTreeSet, HashSet, VecDeque};

use crate::elf::{ElfError, ElfInfo};
use crate::libcmap::{self, Flavour};
use crate::profile::Profile;
use crate::rootfs::{normalize, Root, RootError};
use crate::syscalls;

#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error(
        "entrypoint {name:?} not found in the image (searched {searched}); pass --entrypoint PATH"
    )]
    FindEntrypoint { name: String, searched: String },
    #[error("the image has no entrypoint or command; pass --entrypoint PATH")]
    NoEntrypoint,
    #[error("{path}: too many levels of `#!` interpreters")]
    Shebang { path: String },
    #[error("library {name} needed by {by} not found in the image (searched {searched})")]
    FindLibrary {
        name: String,
        by: String,
        searched: String,
    },
    #[error(transparent)]
    Root(#[from] RootError),
    #[error(transparent)]
    Elf(#[from] ElfError),
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// One ELF object the analysis looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectReport {
    pub path: String,
    /// `executable`, `static executable`, `loader`, `libc (glibc)`, `library`.
    pub role: String,
    /// Constant-number syscall sites found (0 for libc, which uses the table).
    pub sites: usize,
    /// Syscall sites whose number is not a constant.
    pub unresolved: usize,
}

/// The result of the static analysis.
#[derive(Debug, Clone)]
pub struct StaticReport {
    pub entrypoint: String,
    pub objects: Vec<ObjectReport>,
    pub profile: Profile,
}

/// Finds `name` (argv[0]) in the root the way `execvp` would.
pub fn resolve_command(root: &Root, name: &str, env: &[String]) -> Result<String, StaticError> {
    if name.is_empty() {
        return Err(StaticError::NoEntrypoint);
    }
    if name.contains('/') {
        let p = normalize(name)?;
        if root.is_file(&p) {
            return Ok(p);
        }
        return Err(StaticError::FindEntrypoint {
            name: name.to_string(),
            searched: p,
        });
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = format!("{}/{name}", dir.trim_end_matches('/'));
        if let Ok(p) = normalize(&candidate) {
            if root.is_file(&p) {
                return Ok(p);
            }
        }
    }
    Err(StaticError::FindEntrypoint {
        name: name.to_string(),
        searched: path.to_string(),
    })
}

fn dirname(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// Directories from the root's `/etc/ld.so.conf` (one level of `include`).
fn ld_so_conf_dirs(root: &Root) -> Vec<String> {
    let mut dirs = Vec::new();
    let mut files = vec!["/etc/ld.so.conf".to_string()];
    let mut seen = HashSet::new();
    while let Some(f) = files.pop() {
        if !seen.insert(f.clone()) || seen.len() > 64 {
            continue;
        }
        let Ok(file) = root.read(&f) else { continue };
        for line in String::from_utf8_lossy(&file.data).lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if let Some(pattern) = line.strip_prefix("include ") {
                // Only the common `dir/*.conf` form is expanded.
                let pattern = pattern.trim();
                if let Some(dir) = pattern.strip_suffix("/*.conf") {
                    // Listed inside the root: a symlinked `dir` resolves
                    // there, never on the host.
                    let mut names: Vec<String> = root
                        .list_dir(dir)
                        .into_iter()
                        .filter(|n| n.ends_with(".conf"))
                        .collect();
                    names.sort();
                    files.extend(names.into_iter().map(|n| format!("{dir}/{n}")));
                }
            } else if line.starts_with('/') {
                dirs.push(line.to_string());
            }
        }
    }
    dirs
}

struct Analysis<'a> {
    root: &'a Root,
    conf_dirs: Vec<String>,
    seen: HashSet<(u64, u64)>,
    queue: VecDeque<(String, String, ElfInfo)>, // (path, role, info)
    objects: Vec<ObjectReport>,
    imports: BTreeSet<String>,
    flavour: Option<Flavour>,
    profile: Profile,
}

impl Analysis<'_> {
    fn load(&mut self, path: &str, role: &str) -> Result<bool, StaticError> {
        let file = self.root.read(path)?;
        if !self.seen.insert(file.id) {
            return Ok(false);
        }
        let info = ElfInfo::parse(path, &file.data)?;
        self.queue
            .push_back((path.to_string(), role.to_string(), info));
        Ok(true)
    }

    fn find_library(&self, name: &str, by: &str, by_info: &ElfInfo) -> Result<String, StaticError> {
        if name.contains('/') {
            return Ok(normalize(name)?);
        }
        let origin = dirname(by);
        let mut dirs: Vec<String> = Vec::new();
        for p in &by_info.runpath {
            dirs.push(p.replace("${ORIGIN}", origin).replace("$ORIGIN", origin));
        }
        dirs.extend(self.conf_dirs.iter().cloned());
        dirs.extend(DEFAULT_LIB_DIRS.iter().map(|s| s.to_string()));
        for dir in &dirs {
            let Ok(p) = normalize(&format!("{dir}/{name}")) else {
                continue;
            };
            if let Ok(file) = self.root.read(&p) {
                // Skip objects of another architecture, like ld.so does.
                if ElfInfo::parse(&p, &file.data).is_ok() {
                    return Ok(p);
                }
            }
        }
        Err(StaticError::FindLibrary {
            name: name.to_string(),
            by: by.to_string(),
            searched: dirs.join(":"),
        })
    }

    fn add_sites(&mut self, path: &str, info: &ElfInfo, role: &str) {
        let scan = info.scan_code();
        let table = syscalls::table();
        let mut found = BTreeSet::new();
        for nr in scan.numbers() {
            if let Some(name) = table.name(nr) {
                found.insert(name);
            }
        }
        for name in &found {
            self.profile.allow(name, format!("syscall in {path}"));
        }
        let unresolved = scan.unresolved();
        if unresolved > 0 && role != "loader" {
            self.profile.warnings.push(format!(
                "{path}: {unresolved} syscall site(s) with a number computed at run time are not covered"
            ));
        }
        self.objects.push(ObjectReport {
            path: path.to_string(),
            role: role.to_string(),
            sites: found.len(),
            unresolved,
        });
    }
}

/// Analyses the program `argv0` of an image whose root is `root`; `env`
/// is the image's environment (for `PATH`).
pub fn analyze(root: &Root, argv0: &str, env: &[String]) -> Result<StaticReport, StaticError> {
    let mut entry = resolve_command(root, argv0, env)?;
    let mut a = Analysis {
        root,
        conf_dirs: ld_so_conf_dirs(root),
        seen: HashSet::new(),
        queue: VecDeque::new(),
        objects: Vec::new(),
        imports: BTreeSet::new(),
        flavour: None,
        profile: Profile::default(),
    };
    a.profile.allow(
        "execve",
        "the workload is started by execve under the filter",
    );
    // Scripts: analyse the interpreter instead.
    for depth in 0.. {
        let file = root.read(&entry)?;
        if !file.data.starts_with(b"#!") {
            break;
        }
        if depth >= 4 {
            return Err(StaticError::Shebang { path: entry });
        }
        let line = file.data[2..]
            .split(|b| *b == b'\n')
            .next()
            .unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let interp = line.split_whitespace().next().unwrap_or("").to_string();
        a.profile.warnings.push(format!(
            "{entry} is a script: only its interpreter {interp} is analysed, not the programs it runs"
        ));
        entry = resolve_command(root, &interp, env)?;
    }
    a.load(&entry, "executable")?;
    while let Some((path, role, info)) = a.queue.pop_front() {
        let soname_flavour = Flavour::from_soname(&path);
        if let Some(interp) = &info.interpreter {
            let p = normalize(interp)?;
            if let Some(f) = Flavour::from_soname(&p) {
                a.flavour = Some(f);
            }
            a.load(&p, "loader")?;
        }
        if let Some(f) = soname_flavour {
            // libc: its functions come from the table, not a scan of all of it.
            a.flavour = Some(f);
            a.objects.push(ObjectReport {
                path: path.clone(),
                role: format!("libc ({})", f.as_str()),
                sites: 0,
                unresolved: 0,
            });
        } else {
            let role = if role == "executable" && info.is_static() {
                "static executable".to_string()
            } else {
                role
            };
            a.add_sites(&path, &info, &role);
            a.imports.extend(info.imports.iter().cloned());
        }
        for name in &info.needed {
            if let Some(f) = Flavour::from_soname(name) {
                a.flavour = Some(f);
            }
            let lib = a.find_library(name, &path, &info)?;
            a.load(&lib, "library")?;
        }
    }
    if let Some(flavour) = a.flavour {
        let tables = libcmap::bundled();
        let table = syscalls::table();
        if let Some(map) = tables.get(&flavour) {
            for import in &a.imports {
                if let Some(set) = map.get(import) {
                    for nr in set {
                        if let Some(name) = table.name(*nr) {
                            a.profile.allow(name, format!("libc:{import}"));
                        }
                    }
                }
            }
        }
        for name in libcmap::CORE {
            a.profile
                .allow(name, format!("{} runtime", flavour.as_str()));
        }
        if a.imports.contains("syscall") {
            a.profile.warnings.push(
                "the program imports syscall(2): numbers passed to it at run time are not covered"
                    .to_string(),
            );
        }
        if a.imports.contains("dlopen") {
            a.profile.warnings.push(
                "the program imports dlopen: libraries it loads at run time are not analysed"
                    .to_string(),
            );
        }
    }
    // Arguments are not analysed: lift the base policy's argument
    // conditions, so that the profile over-approximates.
    if a.profile.syscalls.contains_key("socket") {
        a.profile.socket_condition = Some(
            moat_policy::args::SOCKET_FAMILIES
                .iter()
                .map(|(name, _)| name.to_string())
                .collect(),
        );
    }
    if a.profile.syscalls.contains_key("ioctl") {
        a.profile.ioctl_condition = crate::profile::IoctlGrant::Any;
    }
    Ok(StaticReport {
        entrypoint: entry,
        objects: a.objects,
        profile: a.profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_root() -> Root {
        Root::open(std::path::Path::new("/")).unwrap()
    }

    /// Issue 23 item 10: an `/etc/ld.so.conf` that is a FIFO is skipped at
    /// once (opening it for reading would block until a writer comes).
    #[test]
    fn a_fifo_ld_so_conf_does_not_hang() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        let fifo =
            std::ffi::CString::new(d.path().join("etc/ld.so.conf").to_str().unwrap().as_bytes())
                .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            fifo.as_c_str(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let root = Root::open(d.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(ld_so_conf_dirs(&root)).unwrap());
        let dirs = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO ld.so.conf hung");
        assert!(dirs.is_empty());
    }

    /// Issue 23 item 10: `include` directories are listed inside the image
    /// root; a symlink to a host directory resolves inside the root.
    #[test]
    fn ld_so_conf_includes_are_listed_inside_the_root() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("host.conf"), "/host-only-lib\n").unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/ld.so.conf"), "include /confd/*.conf\n").unwrap();
        std::os::unix::fs::symlink(host.path(), d.path().join("confd")).unwrap();
        // Where the symlink's target is inside the root.
        let inside = d.path().join(host.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("image.conf"), "/image-lib\n").unwrap();
        std::fs::write(host.path().join("image.conf.not"), "").unwrap();
        let root = Root::open(d.path()).unwrap();
        assert_eq!(ld_so_conf_dirs(&root), ["/image-lib"]);
    }

    #[test]
    fn dynamic_host_program_gets_libc_syscalls() {
        let report = analyze(&host_root(), "ls", &[]).unwrap();
        assert_eq!(report.entrypoint, "/usr/bin/ls");
        let roles: Vec<&str> = report.objects.iter().map(|o| o.role.as_str()).collect();
        assert!(roles.contains(&"loader"), "{roles:?}");
        assert!(roles.contains(&"libc (glibc)"), "{roles:?}");
        let names = report.profile.syscall_names();
        for needed in ["getdents64", "openat", "write", "exit_group", "execve"] {
            assert!(names.contains(&needed), "{needed} missing from {names:?}");
        }
        assert!(!names.contains(&"kexec_load"));
        assert!(names.len() < 200, "{}", names.len());
    }

    #[test]
    fn static_busybox_sites() {
        if !std::path::Path::new("/bin/busybox").exists() {
            println!("SKIP: /bin/busybox (busybox-static) is not installed");
            return;
        }
        let report = analyze(&host_root(), "/bin/busybox", &[]).unwrap();
        assert_eq!(report.objects[0].role, "static executable");
        let names = report.profile.syscall_names();
        for needed in ["write", "getdents64", "exit_group", "openat"] {
            assert!(names.contains(&needed), "{needed} missing from {names:?}");
        }
    }

    #[test]
    fn missing_entrypoint_names_the_search() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let err = analyze(&root, "app", &["PATH=/opt/bin:/bin".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "entrypoint \"app\" not found in the image (searched /opt/bin:/bin); pass --entrypoint PATH"
        );
    }
}
