//! The agent as the guest kernel's audit daemon.
//!
//! Registered with `AUDIT_SET` (its pid, auditing on), the agent gets the
//! kernel's audit records over `NETLINK_AUDIT` rather than through printk
//! (whose rate limit cuts a burst short). One exit-filter rule asks for
//! every call that fails with `EROFS`; the workload's seccomp filter,
//! installed with `SECCOMP_FILTER_FLAG_LOG` when the policy has
//! `audit.denied_syscalls`, adds a record per denied call. The records are
//! folded by [`moat_agent::audit::Collector`]. Audit must be on before the
//! workload is forked: the kernel gives a task an audit context only if
//! auditing was ever enabled when it was created.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use moat_agent::audit::{Collector, GuestReport};

use crate::sys;

const AUDIT_SET: u16 = 1001;
const AUDIT_ADD_RULE: u16 = 1011;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// `struct audit_status` mask bits.
const STATUS_ENABLED: u32 = 0x1;
const STATUS_FAILURE: u32 = 0x2;
const STATUS_PID: u32 = 0x4;
const STATUS_RATE_LIMIT: u32 = 0x8;
const STATUS_BACKLOG_LIMIT: u32 = 0x10;
const STATUS_BACKLOG_WAIT_TIME: u32 = 0x20;
/// `AUDIT_FILTER_EXIT`, `AUDIT_ALWAYS`, the fields and `AUDIT_EQUAL`.
const FILTER_EXIT: u32 = 0x04;
const ALWAYS: u32 = 2;
const FIELD_ARCH: u32 = 11;
const FIELD_EXIT: u32 = 103;
const OP_EQUAL: u32 = 0x4000_0000;
const ARCH_X86_64: u32 = 0xc000_003e;

pub struct Auditd {
    fd: OwnedFd,
    seq: u32,
    collector: Collector,
}

impl Auditd {
    /// Registers the agent and adds the `EROFS` rule when `read_only_rule`.
    pub fn start(read_only_rule: bool) -> io::Result<Auditd> {
        let fd = sys::audit_socket(4 << 20)?;
        let pid = sys::getpid() as u32;
        let mut a = Auditd {
            fd,
            seq: 0,
            collector: Collector::new(pid),
        };
        // Silent on failure (no printk, no panic), no rate limit, a deep
        // backlog. `struct audit_status`: mask, enabled, failure, pid,
        // rate_limit, backlog_limit, lost, backlog, version,
        // backlog_wait_time, backlog_wait_time_actual.
        let mut status = [0u32; 11];
        status[0] =
            STATUS_ENABLED | STATUS_FAILURE | STATUS_PID | STATUS_RATE_LIMIT | STATUS_BACKLOG_LIMIT;
        status[1] = 1;
        status[3] = pid;
        status[5] = 8192;
        a.request(AUDIT_SET, &words(&status))?;
        // A full backlog drops records instead of stalling the workload.
        status = [0u32; 11];
        status[0] = STATUS_BACKLOG_WAIT_TIME;
        a.request(AUDIT_SET, &words(&status))?;
        if read_only_rule {
            a.request(AUDIT_ADD_RULE, &erofs_rule())?;
        }
        Ok(a)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads every record waiting.
    pub fn drain(&mut self) {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = sys::recv(self.fd.as_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            for (kind, payload) in messages(&buf[..n]) {
                if kind != NLMSG_ERROR {
                    // With `moat.trace`, every record on the console.
                    if crate::TRACE.load(std::sync::atomic::Ordering::Relaxed) {
                        crate::trace(&format!(
                            "audit record {kind}: {}",
                            String::from_utf8_lossy(payload)
                        ));
                    }
                    self.collector.record(kind, payload);
                }
            }
        }
    }

    /// The report, once the kernel's audit thread has delivered the
    /// records of the workload's last calls (it sends them a moment
    /// later): read until the socket has been quiet for 100 ms, at most
    /// a second.
    pub fn finish(mut self) -> GuestReport {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            let mut fds = [libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if !matches!(sys::poll(&mut fds, 100), Ok(n) if n > 0) {
                break;
            }
            self.drain();
        }
        self.collector.finish()
    }

    /// Sends `payload` as `kind` and waits (up to a second) for the
    /// kernel's answer to it; records that arrive meanwhile are kept.
    fn request(&mut self, kind: u16, payload: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        sys::netlink_send(
            self.fd.as_fd(),
            kind,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            payload,
        )?;
        let start = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        while start.elapsed() < Duration::from_secs(1) {
            let n = match sys::recv(self.fd.as_fd(), &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [libc::pollfd {
                        fd: self.fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    }];
                    sys::poll(&mut fds, 100)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for (k, p) in messages(&buf[..n]) {
                if k != NLMSG_ERROR {
                    self.collector.record(k, p);
                    continue;
                }
                // struct nlmsgerr: error, then the request's header
                // (len, type, flags, seq, pid): its seq at byte 12.
                let (Some(err), Some(req_seq)) = (word(p, 0), word(p, 12)) else {
                    continue;
                };
                if req_seq != seq {
                    continue;
                }
                return match err as i32 {
                    0 => Ok(()),
                    e => Err(io::Error::from_raw_os_error(-e)),
                };
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the kernel did not answer an audit request",
        ))
    }
}

/// `struct audit_rule_data` of "exit,always -F arch=b64 -F exit=-EROFS"
/// over every system call.
fn erofs_rule() -> Vec<u8> {
    const N: usize = 64;
    let mut w: Vec<u32> = vec![FILTER_EXIT, ALWAYS, 2];
    w.extend([u32::MAX; N]); // mask: all calls
    let mut fields = [0u32; N];
    let mut values = [0u32; N];
    let mut flags = [0u32; N];
    (fields[0], values[0], flags[0]) = (FIELD_ARCH, ARCH_X86_64, OP_EQUAL);
    (fields[1], values[1], flags[1]) = (FIELD_EXIT, (-libc::EROFS) as u32, OP_EQUAL);
    w.extend(fields);
    w.extend(values);
    w.extend(flags);
    w.push(0); // buflen
    words(&w)
}

fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn word(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// The (type, payload) of each netlink message in a datagram. An audit
/// record comes alone in its datagram, and its `nlmsg_len` leaves out the
/// header (a quirk the kernel keeps for old audit daemons): its payload is
/// the rest of the datagram, without trailing NULs.
fn messages(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = word(b, 0).unwrap_or(0) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if kind >= 1000 {
            let mut p = &b[16..];
            while let [rest @ .., 0] = p {
                p = rest;
            }
            out.push((kind, p));
            break;
        }
        if len < 16 || len > b.len() {
            break;
        }
        out.push((kind, &b[16..len]));
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32, kind: u16) -> Vec<u8> {
        let mut h = len.to_ne_bytes().to_vec();
        h.extend_from_slice(&kind.to_ne_bytes());
        h.extend_from_slice(&[0; 10]);
        h
    }

    #[test]
    fn a_record_is_the_whole_datagram_whatever_its_length_says() {
        let text = b"audit(1.360:9): cwd=\"/etc\"";
        let mut d = header(text.len() as u32, 1307);
        d.extend_from_slice(text);
        d.extend_from_slice(&[0, 0]);
        assert_eq!(messages(&d), vec![(1307, &text[..])]);
        // An ack: nlmsgerr (error 0, then the request's header).
        let mut ack = header(36, NLMSG_ERROR);
        ack.extend_from_slice(&0u32.to_ne_bytes());
        ack.extend_from_slice(&header(1056, AUDIT_ADD_RULE));
        let m = messages(&ack);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, NLMSG_ERROR);
        assert_eq!(word(m[0].1, 0), Some(0));
        // Garbage: nothing, no panic.
        assert!(messages(&[1, 2, 3]).is_empty());
        assert!(messages(&header(u32::MAX, 2)).is_empty());
    }
}
