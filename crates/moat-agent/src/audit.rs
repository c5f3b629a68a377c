//! The guest's audit records, read by the agent, and the bounded summary
//! of them it sends the host when a workload fails.
//!
//! The agent is the guest kernel's audit daemon (see `docs/vm.md`): the
//! kernel sends it, over `NETLINK_AUDIT`, one event per call that failed
//! with `EROFS` (a `SYSCALL` record, then `CWD` and `PATH` records, then
//! `EOE`, all with the event's serial) and one `SECCOMP` record per call a
//! filter installed with `SECCOMP_FILTER_FLAG_LOG` denied. [`Collector`]
//! folds them into a [`GuestReport`].
//!
//! The report is advice for the user, never enforcement, and the host
//! treats it as hostile input: a root process in the guest can forge it
//! (see `docs/threat-model.md`). Both sides cut it to [`GuestReport::bounded`]
//! limits; the host also prints every string escaped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Record types (`linux/audit.h`).
pub const AUDIT_SYSCALL: u16 = 1300;
pub const AUDIT_PATH: u16 = 1302;
pub const AUDIT_CWD: u16 = 1307;
pub const AUDIT_EOE: u16 = 1320;
pub const AUDIT_SECCOMP: u16 = 1326;

/// Most distinct entries of each list in a report.
pub const MAX_ENTRIES: usize = 32;
/// Longest path or program name kept (bytes; longer ones are cut).
pub const MAX_STRING: usize = 1024;
/// Events whose end the collector is still waiting for.
const MAX_PENDING: usize = 64;
/// Longest record the collector reads (the kernel's own limit is 8970).
const MAX_RECORD: usize = 9000;
/// `-EROFS` as the audit `exit=` field prints it.
const EROFS: i64 = -30;
/// `AUDIT_ARCH_X86_64`.
const ARCH_X86_64: &str = "c000003e";

/// What the agent saw the workload's processes fail at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestReport {
    /// Calls a seccomp filter denied, by call and program.
    #[serde(default)]
    pub denied: Vec<GuestDenial>,
    /// Writes refused with `EROFS`, by call and path.
    #[serde(default)]
    pub read_only: Vec<GuestReadOnly>,
    /// Entries left out (over [`MAX_ENTRIES`], or lost by the kernel).
    #[serde(default)]
    pub omitted: u64,
}

/// One denied call, as often as it was denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDenial {
    /// The x86-64 system call number.
    pub nr: u32,
    /// The program, its path in the container.
    pub exe: String,
    pub count: u64,
}

/// One write the read-only root refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestReadOnly {
    /// The x86-64 system call number.
    pub nr: u32,
    /// Absolute. Ends in `/` when the kernel named only the directory the
    /// call would have created an entry in (`mkdir`, `open(O_CREAT)` of a
    /// new file: audit logs the parent of a name it did not create).
    pub path: String,
    /// The nearest directory the image has at or above the directory the
    /// write was in, and how many names it holds there ([`locate_dirs`]):
    /// where a grant goes, and whether a tmpfs there hides files. Empty
    /// when unknown.
    #[serde(default)]
    pub image_dir: String,
    #[serde(default)]
    pub image_dir_entries: u32,
}

/// Fills in each refused write's [`GuestReadOnly::image_dir`]: `entries`
/// says how many names the image has in a directory (`None`: no such
/// directory).
pub fn locate_dirs(report: &mut GuestReport, entries: &dyn Fn(&str) -> Option<usize>) {
    for r in &mut report.read_only {
        // The directory written in: the path itself for a new entry.
        let mut dir = match r.path.strip_suffix('/') {
            Some(d) if !d.is_empty() => d.to_string(),
            _ => parent(&r.path),
        };
        loop {
            if let Some(n) = entries(&dir) {
                r.image_dir_entries = u32::try_from(n).unwrap_or(u32::MAX);
                r.image_dir = dir;
                break;
            }
            if dir == "/" {
                break;
            }
            dir = parent(&dir);
        }
    }
}

fn parent(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((p, _)) => p.to_string(),
    }
}

impl GuestReport {
    pub fn is_empty(&self) -> bool {
        self.denied.is_empty() && self.read_only.is_empty() && self.omitted == 0
    }

    /// The report cut to the limits: at most [`MAX_ENTRIES`] of each list
    /// (the rest counted in `omitted`), strings at most [`MAX_STRING`]
    /// bytes without control characters, paths absolute, counts at least 1.
    /// Unknown fields were already dropped by deserializing.
    pub fn bounded(mut self) -> GuestReport {
        let mut omitted = self.omitted;
        for list_len in [self.denied.len(), self.read_only.len()] {
            omitted = omitted.saturating_add(list_len.saturating_sub(MAX_ENTRIES) as u64);
        }
        self.denied.truncate(MAX_ENTRIES);
        self.read_only.truncate(MAX_ENTRIES);
        for d in &mut self.denied {
            d.exe = clean(&d.exe);
            d.count = d.count.max(1);
        }
        self.read_only.retain(|r| r.path.starts_with('/'));
        for r in &mut self.read_only {
            r.path = clean(&r.path);
            r.image_dir = match r.image_dir.starts_with('/') {
                true => clean(&r.image_dir),
                false => String::new(),
            };
        }
        self.omitted = omitted;
        self
    }
}

/// `s` without control characters, cut to [`MAX_STRING`] bytes on a
/// character boundary.
fn clean(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_STRING {
            break;
        }
        out.push(c);
    }
    out
}

/// A syscall event whose records are still arriving.
#[derive(Debug, Default)]
struct Event {
    nr: Option<u32>,
    exit: Option<i64>,
    pid: Option<u32>,
    cwd: Option<String>,
    /// (item, name, nametype) of its PATH records.
    paths: Vec<(u32, String, String)>,
}

/// Folds audit records into a [`GuestReport`]; records of process
/// `ignore_pid` (the agent) are skipped.
#[derive(Debug)]
pub struct Collector {
    ignore_pid: u32,
    pending: BTreeMap<u64, Event>,
    report: GuestReport,
}

impl Collector {
    pub fn new(ignore_pid: u32) -> Collector {
        Collector {
            ignore_pid,
            pending: BTreeMap::new(),
            report: GuestReport::default(),
        }
    }

    /// Takes one record: its netlink message type and payload
    /// (`audit(<time>:<serial>): key=value ...`). Anything malformed or of
    /// another type is ignored.
    pub fn record(&mut self, kind: u16, payload: &[u8]) {
        if payload.len() > MAX_RECORD {
            return;
        }
        let text = String::from_utf8_lossy(payload);
        let Some((serial, body)) = header(&text) else {
            return;
        };
        let f = fields(body);
        match kind {
            AUDIT_SECCOMP => self.seccomp(&f),
            AUDIT_SYSCALL => {
                if f.get("arch").map(String::as_str) != Some(ARCH_X86_64) {
                    return;
                }
                let e = self.event(serial);
                e.nr = f.get("syscall").and_then(|v| v.parse().ok());
                e.exit = f.get("exit").and_then(|v| v.parse().ok());
                e.pid = f.get("pid").and_then(|v| v.parse().ok());
            }
            AUDIT_CWD => {
                if let Some(cwd) = f.get("cwd") {
                    self.event(serial).cwd = Some(cwd.clone());
                }
            }
            AUDIT_PATH => {
                let (Some(item), Some(name)) =
                    (f.get("item").and_then(|v| v.parse().ok()), f.get("name"))
                else {
                    return;
                };
                let nametype = f.get("nametype").cloned().unwrap_or_default();
                let e = self.event(serial);
                if e.paths.len() < 8 {
                    e.paths.push((item, name.clone(), nametype));
                }
            }
            AUDIT_EOE => {
                if let Some(e) = self.pending.remove(&serial) {
                    self.finish_event(e);
                }
            }
            _ => {}
        }
    }

    /// Records the kernel reported lost (its `lost` counter grew).
    pub fn lost(&mut self, n: u64) {
        self.report.omitted = self.report.omitted.saturating_add(n);
    }

    /// The report, with events whose end never came folded in.
    pub fn finish(mut self) -> GuestReport {
        for e in std::mem::take(&mut self.pending).into_values() {
            self.finish_event(e);
        }
        self.report.bounded()
    }

    fn event(&mut self, serial: u64) -> &mut Event {
        if !self.pending.contains_key(&serial) && self.pending.len() >= MAX_PENDING {
            // An event without its end: the oldest goes, as it is.
            if let Some((_, old)) = self.pending.pop_first() {
                self.finish_event(old);
            }
        }
        self.pending.entry(serial).or_default()
    }

    fn finish_event(&mut self, e: Event) {
        let (Some(nr), Some(EROFS), Some(pid)) = (e.nr, e.exit, e.pid) else {
            return;
        };
        if pid == self.ignore_pid {
            return;
        }
        let Some(path) = refused_path(&e) else {
            return;
        };
        let r = &mut self.report.read_only;
        if r.iter().any(|h| h.nr == nr && h.path == path) {
            return;
        }
        if r.len() >= MAX_ENTRIES {
            self.report.omitted = self.report.omitted.saturating_add(1);
            return;
        }
        r.push(GuestReadOnly {
            nr,
            path,
            image_dir: String::new(),
            image_dir_entries: 0,
        });
    }

    fn seccomp(&mut self, f: &BTreeMap<String, String>) {
        let pid: Option<u32> = f.get("pid").and_then(|v| v.parse().ok());
        if pid.is_none_or(|p| p == self.ignore_pid) {
            return;
        }
        if f.get("arch").map(String::as_str) != Some(ARCH_X86_64) {
            return;
        }
        let Some(code) = f
            .get("code")
            .and_then(|c| u32::from_str_radix(c.trim_start_matches("0x"), 16).ok())
        else {
            return;
        };
        // SECCOMP_RET_ALLOW and SECCOMP_RET_LOG are not denials.
        if matches!(code & 0xffff_0000, 0x7fff_0000 | 0x7ffc_0000) {
            return;
        }
        let Some(nr) = f.get("syscall").and_then(|v| v.parse().ok()) else {
            return;
        };
        let exe = clean(f.get("exe").map(String::as_str).unwrap_or("?"));
        let d = &mut self.report.denied;
        if let Some(o) = d.iter_mut().find(|o| o.nr == nr && o.exe == exe) {
            o.count = o.count.saturating_add(1);
        } else if d.len() >= MAX_ENTRIES {
            self.report.omitted = self.report.omitted.saturating_add(1);
        } else {
            d.push(GuestDenial { nr, exe, count: 1 });
        }
    }
}

/// The path of a refused write: the name of a full (`NORMAL`, `CREATE`)
/// PATH record, else the directory of a `PARENT` one (with a trailing
/// `/`), made absolute against the event's working directory.
fn refused_path(e: &Event) -> Option<String> {
    let full = e
        .paths
        .iter()
        .filter(|(_, n, t)| t != "PARENT" && t != "DELETE" && n != "(null)")
        .min_by_key(|(i, _, _)| *i);
    let (name, parent) = match full {
        Some((_, n, _)) => (n.as_str(), false),
        None => {
            let (_, n, _) = e
                .paths
                .iter()
                .filter(|(_, n, t)| t == "PARENT" && n != "(null)")
                .min_by_key(|(i, _, _)| *i)?;
            (n.as_str(), true)
        }
    };
    let joined = if name.starts_with('/') {
        name.to_string()
    } else {
        format!("{}/{name}", e.cwd.as_deref().unwrap_or("/"))
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if parent && out != "/" {
        out.push('/');
    }
    Some(clean(&out))
}

/// The serial and the fields of `audit(<secs>.<ms>:<serial>): <fields>`.
fn header(text: &str) -> Option<(u64, &str)> {
    let rest = text.strip_prefix("audit(")?;
    let (stamp, body) = rest.split_once("):")?;
    let serial = stamp.rsplit_once(':')?.1.parse().ok()?;
    Some((serial, body))
}

/// `key=value` pairs of an audit message: quoted values unquoted, the hex
/// form audit uses for untrusted strings (`name`, `cwd`, `exe`, `comm`)
/// decoded. The first of a repeated key wins.
pub fn fields(msg: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = msg;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].rsplit(' ').next().unwrap_or("").to_string();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            let raw = &after[..end];
            let decoded = if matches!(key.as_str(), "exe" | "comm" | "name" | "cwd") {
                hex_decode(raw).unwrap_or_else(|| raw.to_string())
            } else {
                raw.to_string()
            };
            (decoded, &after[end..])
        };
        out.entry(key).or_insert(value);
        rest = next;
    }
    out
}

fn hex_decode(s: &str) -> Option<String> {
    if s.is_empty() || !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ro(nr: u32, path: &str) -> GuestReadOnly {
        GuestReadOnly {
            nr,
            path: path.into(),
            image_dir: String::new(),
            image_dir_entries: 0,
        }
    }

    fn feed(c: &mut Collector, recs: &[(u16, &str)]) {
        for (k, r) in recs {
            c.record(*k, r.as_bytes());
        }
    }

    #[test]
    fn a_refused_mkdir_names_the_directory_and_an_open_the_file() {
        let mut c = Collector::new(1);
        feed(
            &mut c,
            &[
                (AUDIT_SYSCALL, "audit(1796579760.141:40): arch=c000003e syscall=83 success=no exit=-30 a0=7ffd items=1 ppid=1 pid=40 auid=4294967295 uid=0 comm=\"nginx\" exe=\"/usr/sbin/nginx\" key=(null)"),
                (AUDIT_CWD, "audit(1796579760.141:40): cwd=\"/\""),
                (AUDIT_PATH, "audit(1796579760.141:40): item=0 name=\"/var/lib/nginx/\" inode=12 dev=fe:00 mode=040755 nametype=PARENT cap_fp=0"),
                (AUDIT_EOE, "audit(1796579760.141:40): "),
                // A relative open of an existing file, with a hex cwd.
                (AUDIT_SYSCALL, "audit(1796579760.142:41): arch=c000003e syscall=257 success=no exit=-30 pid=41 exe=\"/bin/busybox\""),
                (AUDIT_CWD, "audit(1796579760.142:41): cwd=2F6F707420782F74"),
                (AUDIT_PATH, "audit(1796579760.142:41): item=0 name=\"../log/a.log\" inode=13 nametype=NORMAL"),
                (AUDIT_EOE, "audit(1796579760.142:41): "),
                // The agent's own, another errno, another type: ignored.
                (AUDIT_SYSCALL, "audit(1.1:42): arch=c000003e syscall=83 exit=-30 pid=1"),
                (AUDIT_PATH, "audit(1.1:42): item=0 name=\"/x/\" nametype=PARENT"),
                (AUDIT_EOE, "audit(1.1:42): "),
                (AUDIT_SYSCALL, "audit(1.1:43): arch=c000003e syscall=83 exit=-2 pid=7"),
                (AUDIT_PATH, "audit(1.1:43): item=0 name=\"/y/\" nametype=PARENT"),
                (AUDIT_EOE, "audit(1.1:43): "),
                (1305, "audit(1.1:44): op=set audit_pid=1"),
            ],
        );
        let r = c.finish();
        assert_eq!(
            r.read_only,
            vec![ro(83, "/var/lib/nginx/"), ro(257, "/opt x/log/a.log"),]
        );
        assert!(r.denied.is_empty());
        // Where the grants go: the image has /var/lib/nginx and /opt x.
        let mut r = r;
        locate_dirs(&mut r, &|d| match d {
            "/var/lib/nginx" => Some(0),
            "/opt x" => Some(3),
            "/" | "/var" | "/var/lib" => Some(1),
            _ => None,
        });
        let dirs: Vec<(&str, u32)> = r
            .read_only
            .iter()
            .map(|h| (h.image_dir.as_str(), h.image_dir_entries))
            .collect();
        assert_eq!(dirs, [("/var/lib/nginx", 0), ("/opt x", 3)]);
    }

    #[test]
    fn seccomp_denials_are_counted_by_call_and_program() {
        let mut c = Collector::new(1);
        let rec = "audit(1796579760.141:50): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=24 comm=\"busybox\" exe=\"/bin/busybox\" sig=0 arch=c000003e syscall=309 compat=0 ip=0x460997 code=0x50001";
        feed(
            &mut c,
            &[
                (AUDIT_SECCOMP, rec),
                (AUDIT_SECCOMP, rec),
                (AUDIT_SECCOMP, &rec.replace("0x50001", "0x7ffc0000")),
                (AUDIT_SECCOMP, &rec.replace("pid=24", "pid=1")),
            ],
        );
        let r = c.finish();
        assert_eq!(
            r.denied,
            vec![GuestDenial {
                nr: 309,
                exe: "/bin/busybox".into(),
                count: 2
            }]
        );
    }

    #[test]
    fn hostile_records_are_bounded_and_never_panic() {
        let mut c = Collector::new(1);
        // Garbage, truncated headers, huge values, bad UTF-8, odd hex.
        for junk in [
            &b""[..],
            b"audit(",
            b"audit(1:x): ",
            b"audit(:18446744073709551616): a=",
            b"audit(1.1:2): name=\"unterminated",
            b"\xff\xfe audit(1.1:2): ===== \"\"\" ",
            b"audit(1.1:3): exe=F",
        ] {
            for k in [
                AUDIT_SYSCALL,
                AUDIT_PATH,
                AUDIT_CWD,
                AUDIT_EOE,
                AUDIT_SECCOMP,
                0,
            ] {
                c.record(k, junk);
            }
        }
        c.record(AUDIT_SECCOMP, &vec![b'a'; 100_000]);
        // Thousands of distinct events and denials, never ended or ended.
        for i in 0..5000u64 {
            let long = "x".repeat(5000);
            c.record(
                AUDIT_SYSCALL,
                format!("audit(1.1:{i}): arch=c000003e syscall=2 exit=-30 pid=9").as_bytes(),
            );
            c.record(
                AUDIT_PATH,
                format!("audit(1.1:{i}): item=0 name=\"/d{i}/{long}\u{7}\" nametype=NORMAL")
                    .as_bytes(),
            );
            if i % 2 == 0 {
                c.record(AUDIT_EOE, format!("audit(1.1:{i}): ").as_bytes());
            }
            c.record(
                AUDIT_SECCOMP,
                format!(
                    "audit(1.1:{i}): pid=9 exe=\"/p{i}\" arch=c000003e syscall={i} code=0x50001"
                )
                .as_bytes(),
            );
        }
        let r = c.finish();
        assert_eq!(r.read_only.len(), MAX_ENTRIES);
        assert_eq!(r.denied.len(), MAX_ENTRIES);
        assert!(
            r.omitted >= 2 * (5000 - MAX_ENTRIES as u64),
            "{}",
            r.omitted
        );
        assert!(r
            .read_only
            .iter()
            .all(|h| h.path.len() <= MAX_STRING && !h.path.contains('\u{7}')));
    }

    /// A small deterministic fuzz: valid records with bytes flipped, cut
    /// and spliced, of every type the collector reads. Nothing panics and
    /// the result stays within its limits.
    #[test]
    fn mutated_records_never_panic() {
        let seeds: [(u16, &str); 6] = [
            (AUDIT_SYSCALL, "audit(1.1:8): arch=c000003e syscall=83 success=no exit=-30 pid=32 exe=\"/bin/busybox\""),
            (AUDIT_CWD, "audit(1.1:8): cwd=\"/etc\""),
            (AUDIT_PATH, "audit(1.1:8): item=0 name=\"/var/lib/app/\" nametype=PARENT"),
            (AUDIT_PATH, "audit(1.1:8): item=1 name=2F6F707420782F74 nametype=NORMAL"),
            (AUDIT_EOE, "audit(1.1:8): "),
            (AUDIT_SECCOMP, "audit(1.1:9): pid=24 exe=\"/bin/busybox\" arch=c000003e syscall=309 code=0x50001"),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut c = Collector::new(1);
        for _ in 0..20_000 {
            let (kind, text) = seeds[(rnd() % seeds.len() as u64) as usize];
            let mut b = text.as_bytes().to_vec();
            for _ in 0..(rnd() % 4) {
                let i = (rnd() % b.len() as u64) as usize;
                match rnd() % 4 {
                    0 => b[i] = rnd() as u8,
                    1 => b.truncate(i),
                    2 => b.insert(i, b"=\" :()/"[(rnd() % 7) as usize]),
                    _ => {
                        let j = (rnd() % b.len() as u64) as usize;
                        let chunk = b[i.min(j)..i.max(j)].to_vec();
                        b.extend_from_slice(&chunk);
                    }
                }
                if b.is_empty() {
                    break;
                }
            }
            c.record(kind, &b);
        }
        let r = c.finish();
        assert!(r.read_only.len() <= MAX_ENTRIES && r.denied.len() <= MAX_ENTRIES);
        assert!(r.read_only.iter().all(|h| h.path.starts_with('/')));
    }

    #[test]
    fn bounded_cuts_what_a_forged_report_carries() {
        let r = GuestReport {
            denied: (0..100)
                .map(|i| GuestDenial {
                    nr: i,
                    exe: format!("/bin/\u{1b}[31m{}", "é".repeat(2000)),
                    count: 0,
                })
                .collect(),
            read_only: vec![
                ro(2, "relative"),
                GuestReadOnly {
                    image_dir: "etc".into(),
                    ..ro(2, "/ok")
                },
            ],
            omitted: u64::MAX - 3,
        }
        .bounded();
        assert_eq!(r.denied.len(), MAX_ENTRIES);
        assert_eq!(r.omitted, u64::MAX);
        let d = &r.denied[0];
        assert!(d.exe.len() <= MAX_STRING && !d.exe.contains('\u{1b}') && d.count == 1);
        // A relative path and a relative image directory are dropped.
        assert_eq!(r.read_only, vec![ro(2, "/ok")]);
    }
}
