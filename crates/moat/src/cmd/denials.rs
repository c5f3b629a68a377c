//! Which system calls a policy denied to a workload, and how to allow them.
//!
//! A policy with `audit.denied_syscalls` (`auto` has it) installs its
//! filter with `SECCOMP_FILTER_FLAG_LOG`, so the kernel writes an audit
//! record (type 1326) for every denied call: the call's number, the
//! program (`exe`, its path inside the container) and the host uid it ran
//! as. `moat run` notes the kernel log's end before the container starts
//! and, when the workload exits non-zero, reads the records written since
//! by uids of the container's id range. Nothing reruns the workload.
//!
//! In a micro-VM the guest agent is the guest kernel's audit daemon: it
//! reads the same records there and sends them with the exit status
//! ([`from_guest`]), without the printk rate limit. Both backends' denials
//! go through the one [`report`].
//!
//! Limits: the kernel rate-limits these records when no audit daemon
//! consumes them (about ten per five seconds), so a burst may be cut short;
//! containers running at the same time share the id range, so one may see
//! another's records (each line names the program).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// The kernel log, positioned at its end when the container starts.
pub struct Watch {
    kmsg: Option<std::fs::File>,
}

/// One denied call, as often as it was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub syscall: String,
    pub nr: u32,
    pub exe: String,
    pub count: usize,
}

impl Watch {
    /// Notes where the kernel log ends now; a no-op where it cannot be read.
    pub fn start() -> Watch {
        let kmsg = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/kmsg")
            .ok()
            .and_then(|f| {
                rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0)).ok()?;
                Some(f)
            });
        Watch { kmsg }
    }

    /// The denials logged since [`Watch::start`] for host uids in
    /// `[uid_base, uid_base + count)`, in the order first seen.
    pub fn denials(self, uid_base: u32, count: u32) -> Vec<Denial> {
        let Some(mut kmsg) = self.kmsg else {
            return Vec::new();
        };
        let mut out: Vec<Denial> = Vec::new();
        let mut buf = vec![0u8; 8192];
        // The kernel's audit thread prints the records a moment after the
        // calls: wait up to a quarter of a second for the first.
        let mut waits = 0;
        for _ in 0..100_000 {
            let n = match kmsg.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                // Overwritten records: go on with the next one.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && out.is_empty() && waits < 5 => {
                    waits += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
                Err(_) => break,
            };
            let rec = String::from_utf8_lossy(&buf[..n]);
            let Some(d) = parse_record(&rec, uid_base, count) else {
                continue;
            };
            match out.iter_mut().find(|o| o.nr == d.nr && o.exe == d.exe) {
                Some(o) => o.count += 1,
                None => out.push(d),
            }
        }
        out
    }
}

/// The denial in one `/dev/kmsg` record, if it is a seccomp audit record
/// of a denied (errno, trap or kill) call by a uid in the range.
pub fn parse_record(rec: &str, uid_base: u32, count: u32) -> Option<Denial> {
    let msg = rec.split_once(';')?.1;
    if !msg.contains("type=1326") {
        return None;
    }
    let fields = moat_vm::audit::fields(msg);
    let uid: u32 = fields.get("uid")?.parse().ok()?;
    if uid < uid_base || uid - uid_base >= count {
        return None;
    }
    let code = u32::from_str_radix(fields.get("code")?.trim_start_matches("0x"), 16).ok()?;
    // SECCOMP_RET_ALLOW and SECCOMP_RET_LOG are not denials.
    let action = code & 0xffff_0000;
    if action == 0x7fff_0000 || action == 0x7ffc_0000 {
        return None;
    }
    if fields.get("arch").map(String::as_str) != Some("c000003e") {
        return None;
    }
    let nr: u32 = fields.get("syscall")?.parse().ok()?;
    let syscall = moat_policy::syscalls::name(nr).unwrap_or_else(|| format!("#{nr}"));
    Some(Denial {
        syscall,
        nr,
        exe: fields.get("exe").cloned().unwrap_or_else(|| "?".into()),
        count: 1,
    })
}

/// The guest's denials (bounded by the host).
pub fn from_guest(r: &moat_vm::GuestReport) -> Vec<Denial> {
    r.denied
        .iter()
        .map(|d| Denial {
            syscall: moat_policy::syscalls::name(d.nr).unwrap_or_else(|| format!("#{}", d.nr)),
            nr: d.nr,
            exe: d.exe.clone(),
            count: usize::try_from(d.count).unwrap_or(usize::MAX),
        })
        .collect()
}

/// What `moat run` prints when the workload exited non-zero and the
/// policy denied calls: each call, its program, and the line that grants it.
pub fn report(policy: &moat_policy::Policy, code: i32, denials: &[Denial]) -> Vec<String> {
    if denials.is_empty() {
        return Vec::new();
    }
    let baseline = moat_policy::Policy::builtin("baseline")
        .map(|b| b.spec.syscalls.allow)
        .unwrap_or_default();
    let mut v = vec![format!(
        "moat: the workload exited {code}; policy {} denied it {} system call(s):",
        policy.name,
        denials.len()
    )];
    for d in denials {
        v.push(format!(
            "  {} (#{}) by {}{}",
            d.syscall,
            d.nr,
            d.exe,
            if d.count > 1 {
                format!(", {} times", d.count)
            } else {
                String::new()
            }
        ));
    }
    let names: Vec<&str> = denials.iter().map(|d| d.syscall.as_str()).collect();
    let base = if crate::cmd::run::uses_auto(policy) {
        "auto".to_string()
    } else {
        policy.source.clone()
    };
    v.push(format!(
        "  to allow {}: a policy file with `extends: {base}` and the line `  syscalls: {{allow: [{}]}}` under `spec:`, passed with --policy FILE",
        if names.len() == 1 { "it" } else { "them" },
        names.join(", ")
    ));
    if crate::cmd::run::uses_auto(policy) {
        if names.iter().all(|n| baseline.contains(*n)) {
            v.push("  or opt out of auto for this run: --policy baseline".to_string());
        } else {
            v.push(
                "  (baseline denies some of these too: --policy baseline would not help)"
                    .to_string(),
            );
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seccomp_audit_records_of_the_container_only() {
        let rec = "5,1234,2733419404,-;audit: type=1326 audit(1796579760.141:40): auid=4294967295 uid=100000 gid=100000 ses=4294967295 pid=24172 comm=\"busybox\" exe=\"/bin/busybox\" sig=0 arch=c000003e syscall=309 compat=0 ip=0x460997 code=0x50001\n";
        let d = parse_record(rec, 100_000, 65_536).unwrap();
        assert_eq!(d.syscall, "getcpu");
        assert_eq!(d.exe, "/bin/busybox");
        // Another uid range, an allowed-and-logged call, another record type.
        assert!(parse_record(rec, 200_000, 65_536).is_none());
        assert!(parse_record(&rec.replace("0x50001", "0x7ffc0000"), 100_000, 65_536).is_none());
        assert!(parse_record("6,1,2,-;hello\n", 100_000, 65_536).is_none());
        // Audit writes untrusted strings with spaces as hex.
        let hex = rec.replace("exe=\"/bin/busybox\"", "exe=2F6F707420782F74");
        assert_eq!(parse_record(&hex, 100_000, 65_536).unwrap().exe, "/opt x/t");
    }
}
