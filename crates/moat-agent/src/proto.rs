//! The framed, versioned protocol spoken over the virtio-serial port.
//!
//! Every frame is an 8-byte header followed by a payload:
//!
//! ```text
//! byte 0   magic 0x4d ('M')
//! byte 1   protocol version (1)
//! byte 2   kind (see [`Kind`])
//! byte 3   reserved, must be 0
//! byte 4-7 payload length, little-endian u32
//! ```
//!
//! Control payloads (`Hello`, `Start`, `Exit`, `Error`, `Exec`,
//! `ExecExit`) are JSON; stdio payloads are raw bytes; `Resize` and
//! `Signal` are fixed-size binary.
//!
//! The `Exec*` kinds multiplex further processes in the running container
//! (`moat exec`) over the same channel: each payload starts with the
//! process's id (little-endian u32, chosen by the host), stdio follows as
//! raw bytes. Either side ignores frames for an id it does not know.
//! Each kind has its own size limit, and anything malformed or oversized is
//! rejected with a [`ProtoError`] as soon as its header is seen: a reader
//! never waits for (or allocates) a payload it will not accept.

use moat_plan::{Plan, ProcessSpec, SeccompProgram};
use serde::{Deserialize, Serialize};

pub const MAGIC: u8 = 0x4d;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 8;
/// Largest stdio chunk in one frame.
pub const MAX_DATA: usize = 32 * 1024;
/// Largest JSON control payload (a `Start` carries the whole plan).
pub const MAX_CONTROL: usize = 1024 * 1024;
/// Largest amount of undecoded input a [`Decoder`] buffers.
const MAX_BUFFERED: usize = HEADER_LEN + MAX_CONTROL;

/// Frame kinds on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Start = 2,
    Stdin = 3,
    StdinEof = 4,
    Stdout = 5,
    Stderr = 6,
    Resize = 7,
    Signal = 8,
    Exit = 9,
    Error = 10,
    /// Host to guest: start a process in the running container.
    Exec = 11,
    ExecStdin = 12,
    ExecStdinEof = 13,
    ExecStdout = 14,
    ExecStderr = 15,
    ExecSignal = 16,
    /// Guest to host: an exec'd process ended (or could not start).
    ExecExit = 17,
    /// Host to guest, first frame to a VM restored from a template: its
    /// own entropy and identity, and the container's verified root.
    Restore = 18,
    /// Host to guest: an exec'd process's terminal changed size.
    ExecResize = 19,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Start,
            3 => Kind::Stdin,
            4 => Kind::StdinEof,
            5 => Kind::Stdout,
            6 => Kind::Stderr,
            7 => Kind::Resize,
            8 => Kind::Signal,
            9 => Kind::Exit,
            10 => Kind::Error,
            11 => Kind::Exec,
            12 => Kind::ExecStdin,
            13 => Kind::ExecStdinEof,
            14 => Kind::ExecStdout,
            15 => Kind::ExecStderr,
            16 => Kind::ExecSignal,
            17 => Kind::ExecExit,
            18 => Kind::Restore,
            19 => Kind::ExecResize,
            _ => return None,
        })
    }

    /// Largest payload accepted for this kind.
    fn max_len(self) -> usize {
        match self {
            Kind::Hello | Kind::Start | Kind::Exit | Kind::Error => MAX_CONTROL,
            Kind::Exec | Kind::ExecExit => MAX_CONTROL,
            Kind::Restore => 64 * 1024,
            Kind::Stdin | Kind::Stdout | Kind::Stderr => MAX_DATA,
            Kind::ExecStdin | Kind::ExecStdout | Kind::ExecStderr => 4 + MAX_DATA,
            Kind::StdinEof => 0,
            Kind::Resize | Kind::Signal | Kind::ExecStdinEof => 4,
            Kind::ExecSignal | Kind::ExecResize => 8,
        }
    }
}

/// Sent by the agent as soon as the channel is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Version of the agent binary (the crate version).
    pub agent_version: String,
    /// The guest kernel release (`uname -r`).
    pub kernel_release: String,
}

/// Sent by the host: what to run and under which plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    pub process: ProcessSpec,
    pub plan: Plan,
    /// The host's moat version. The host sends `Start` without waiting for
    /// the agent's `Hello` (it waits in the socket until the guest opens the
    /// port), so the agent checks the versions match before it runs anything.
    #[serde(default)]
    pub host_version: String,
    /// A random token of this run, chosen by the host. The agent puts it in
    /// its `Exit` and `Error` frames; the host takes a final status only
    /// with the right token, so a process in the guest that reaches the
    /// control port cannot forge the result (it never sees `Start`).
    #[serde(default)]
    pub session: String,
    /// The host's wall-clock time when it sent `Start` (in reply to
    /// `Hello`): the agent sets the guest clock from it.
    #[serde(default)]
    pub wall_clock: Option<WallClock>,
    /// Filters installed beside the plan's (an OCI caller's compiled
    /// `linux.seccomp`): every one of them applies, to exec'd processes too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_seccomp: Vec<SeccompProgram>,
    /// The guest's virtio-net configuration; `None`: no network device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<crate::netconf::GuestNet>,
}

/// Sent by the host as the first frame to a VM restored from a template
/// (the agent of a template waits for it after its `Hello`): what every
/// clone of one template must not share, and the container's root. The
/// agent reseeds the kernel's RNG before anything else, then mounts the
/// root and says `Hello` again; `Start` follows as after a cold boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// Host randomness (hex, at least 32 bytes), credited to the guest's
    /// input pool before a forced reseed of its CRNG.
    pub entropy: String,
    /// The guest kernel's hostname (the workload's, unless its plan sets one).
    pub hostname: String,
    /// The dm-verity root on the first virtio disk, chosen by the host.
    pub root: Option<VerityRoot>,
    /// Print phase times on the console (`moat.trace` of a cold boot).
    #[serde(default)]
    pub trace: bool,
}

/// A dm-verity table for `/dev/vda` (data and hash tree on one disk),
/// as `dm-mod.create=` gives it after a cold boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerityRoot {
    /// Bytes of filesystem data (a multiple of 4096); the hash tree follows.
    pub data_size: u64,
    /// Hex sha256 root hash and salt.
    pub root_hash: String,
    pub salt: String,
}

impl VerityRoot {
    /// The verity target's parameters on `device`.
    pub fn params(&self, device: &str) -> String {
        let blocks = self.data_size / 4096;
        format!(
            "1 {device} {device} 4096 4096 {blocks} {blocks} sha256 {} {}",
            self.root_hash, self.salt
        )
    }
}

/// A `CLOCK_REALTIME` reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WallClock {
    pub secs: i64,
    pub nanos: u32,
}

/// Sent by the agent when the workload has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit code, or 128 + signal number when the workload was killed.
    pub code: i32,
    /// [`Start::session`], echoed.
    #[serde(default)]
    pub session: String,
    /// With a non-zero code: what the guest's audit records say the
    /// workload failed at (writes the read-only root refused, calls the
    /// seccomp filter denied). Advice only, forgeable by a guest root:
    /// the host bounds it ([`crate::audit::GuestReport::bounded`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::audit::GuestReport>,
}

/// Sent by the agent when it could not start or supervise the workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFailure {
    /// Docker-style exit code: 125 setup failed, 126 not executable, 127 not found.
    pub code: i32,
    pub message: String,
    /// [`Start::session`], echoed (empty when the failure came before `Start`).
    #[serde(default)]
    pub session: String,
}

/// Sent by the host: run `process` in the running container, under the
/// plan of its `Start` (same cgroup, mounts, capabilities, seccomp
/// filter, rlimits, no_new_privs). With `process.tty` the process gets a
/// terminal of its own, of `winsize` (rows, columns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStart {
    pub id: u32,
    pub process: ProcessSpec,
    #[serde(default)]
    pub winsize: Option<(u16, u16)>,
    /// Start `process` as the first process of a new container of the
    /// pod instead (a Kubernetes pod's further container, see [`Member`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Box<Member>>,
    /// Run `process` in the pod container of this name rather than in the
    /// workload's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The virtio-fs tag of a pod's share (see [`Member`]).
pub const POD_TAG: &str = "moat-pod";

/// A further container of a pod whose VM runs the pod's first container:
/// its root is `<pod share>/<name>/rootfs` (the host binds the container's
/// rootfs there, under the pod's virtio-fs share), and it gets mount, PID
/// and pids cgroup of its own, with its own plan. The guest's
/// network and hostname are the pod's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The container's name in the guest (the host's container id).
    pub name: String,
    pub plan: Plan,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_seccomp: Vec<SeccompProgram>,
    /// Mount the root read-only (`root.readonly`).
    #[serde(default)]
    pub read_only: bool,
    /// Small files bound over paths of the root (`/etc/hosts`,
    /// `/etc/resolv.conf`, ...), read-only, as the caller bind-mounts them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<MemberFile>,
    /// Host directories the host put on the share as `<name>/vol-<n>`
    /// (`n` the place in this list), bound at their destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<MemberDir>,
}

/// A host directory of a [`Member`] (read-only on the host side too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDir {
    pub destination: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A file of a [`Member`]: its contents and where they go in its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberFile {
    pub destination: String,
    pub contents: String,
}

impl Member {
    /// Whether `name` may name a member: it becomes a path component and a
    /// cgroup name in the guest.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 128
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }
}

/// Sent by the agent when an exec'd process ended, or could not start
/// (`message` says why; `code` 125, 126 or 127 as for the workload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecExit {
    pub id: u32,
    /// Exit code, or 128 + signal number.
    pub code: i32,
    #[serde(default)]
    pub message: String,
    /// [`Start::session`], echoed.
    #[serde(default)]
    pub session: String,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Start(Box<Start>),
    Stdin(Vec<u8>),
    StdinEof,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Resize { rows: u16, cols: u16 },
    Signal(i32),
    Exit(Exit),
    Error(AgentFailure),
    Exec(Box<ExecStart>),
    ExecStdin { id: u32, data: Vec<u8> },
    ExecStdinEof(u32),
    ExecStdout { id: u32, data: Vec<u8> },
    ExecStderr { id: u32, data: Vec<u8> },
    ExecSignal { id: u32, sig: i32 },
    ExecResize { id: u32, rows: u16, cols: u16 },
    ExecExit(ExecExit),
    Restore(Box<Restore>),
}

/// A frame that cannot be accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("bad frame magic 0x{found:02x} (expected 0x4d): the peer is not a moat agent or the stream is out of sync")]
    BadMagic { found: u8 },
    #[error("unsupported protocol version {found} (this side speaks {VERSION}): use a moat-agent built from the same moat release")]
    UnsupportedVersion { found: u8 },
    #[error("unknown frame kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("reserved header byte is {found}, must be 0")]
    Reserved { found: u8 },
    #[error("{kind:?} frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { kind: Kind, len: usize, max: usize },
    #[error("malformed {kind:?} frame: {reason}")]
    Malformed { kind: Kind, reason: String },
    #[error(
        "{kind:?} payload of {len} bytes exceeds the limit of {max} bytes, refusing to send it"
    )]
    EncodeTooLarge { kind: Kind, len: usize, max: usize },
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Start(_) => Kind::Start,
            Message::Stdin(_) => Kind::Stdin,
            Message::StdinEof => Kind::StdinEof,
            Message::Stdout(_) => Kind::Stdout,
            Message::Stderr(_) => Kind::Stderr,
            Message::Resize { .. } => Kind::Resize,
            Message::Signal(_) => Kind::Signal,
            Message::Exit(_) => Kind::Exit,
            Message::Error(_) => Kind::Error,
            Message::Exec(_) => Kind::Exec,
            Message::ExecStdin { .. } => Kind::ExecStdin,
            Message::ExecStdinEof(_) => Kind::ExecStdinEof,
            Message::ExecStdout { .. } => Kind::ExecStdout,
            Message::ExecStderr { .. } => Kind::ExecStderr,
            Message::ExecSignal { .. } => Kind::ExecSignal,
            Message::ExecResize { .. } => Kind::ExecResize,
            Message::ExecExit(_) => Kind::ExecExit,
            Message::Restore(_) => Kind::Restore,
        }
    }

    /// Encodes one frame (header and payload).
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let json = |v: Result<Vec<u8>, serde_json::Error>| {
            v.map_err(|e| ProtoError::Malformed {
                kind: self.kind(),
                reason: e.to_string(),
            })
        };
        let payload: Vec<u8> = match self {
            Message::Hello(h) => json(serde_json::to_vec(h))?,
            Message::Start(s) => json(serde_json::to_vec(s))?,
            Message::Exit(e) => json(serde_json::to_vec(e))?,
            Message::Error(e) => json(serde_json::to_vec(e))?,
            Message::Stdin(d) | Message::Stdout(d) | Message::Stderr(d) => d.clone(),
            Message::StdinEof => Vec::new(),
            Message::Resize { rows, cols } => {
                let mut v = rows.to_le_bytes().to_vec();
                v.extend_from_slice(&cols.to_le_bytes());
                v
            }
            Message::Signal(s) => s.to_le_bytes().to_vec(),
            Message::Exec(e) => json(serde_json::to_vec(e))?,
            Message::ExecExit(e) => json(serde_json::to_vec(e))?,
            Message::Restore(r) => json(serde_json::to_vec(r))?,
            Message::ExecStdin { id, data }
            | Message::ExecStdout { id, data }
            | Message::ExecStderr { id, data } => {
                let mut v = id.to_le_bytes().to_vec();
                v.extend_from_slice(data);
                v
            }
            Message::ExecStdinEof(id) => id.to_le_bytes().to_vec(),
            Message::ExecSignal { id, sig } => {
                let mut v = id.to_le_bytes().to_vec();
                v.extend_from_slice(&sig.to_le_bytes());
                v
            }
            Message::ExecResize { id, rows, cols } => {
                let mut v = id.to_le_bytes().to_vec();
                v.extend_from_slice(&rows.to_le_bytes());
                v.extend_from_slice(&cols.to_le_bytes());
                v
            }
        };
        let kind = self.kind();
        if payload.len() > kind.max_len() {
            return Err(ProtoError::EncodeTooLarge {
                kind,
                len: payload.len(),
                max: kind.max_len(),
            });
        }
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&[MAGIC, VERSION, kind as u8, 0]);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&payload);
        Ok(frame)
    }

    fn decode(kind: Kind, payload: &[u8]) -> Result<Message, ProtoError> {
        fn json<T: serde::de::DeserializeOwned>(kind: Kind, p: &[u8]) -> Result<T, ProtoError> {
            serde_json::from_slice(p).map_err(|e| ProtoError::Malformed {
                kind,
                reason: e.to_string(),
            })
        }
        let fixed = |n: usize| {
            if payload.len() == n {
                Ok(())
            } else {
                Err(ProtoError::Malformed {
                    kind,
                    reason: format!("payload is {} bytes, expected {n}", payload.len()),
                })
            }
        };
        let signal = |sig: i32| {
            if (1..=64).contains(&sig) {
                Ok(sig)
            } else {
                Err(ProtoError::Malformed {
                    kind,
                    reason: format!("signal {sig} is out of range 1..=64"),
                })
            }
        };
        // The process id that starts every Exec stdio payload.
        let id = || {
            payload
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| ProtoError::Malformed {
                    kind,
                    reason: format!(
                        "payload is {} bytes, shorter than its process id",
                        payload.len()
                    ),
                })
        };
        Ok(match kind {
            Kind::Exec => Message::Exec(Box::new(json(kind, payload)?)),
            Kind::ExecExit => Message::ExecExit(json(kind, payload)?),
            Kind::Restore => Message::Restore(Box::new(json(kind, payload)?)),
            Kind::ExecStdin => Message::ExecStdin {
                id: id()?,
                data: payload[4..].to_vec(),
            },
            Kind::ExecStdout => Message::ExecStdout {
                id: id()?,
                data: payload[4..].to_vec(),
            },
            Kind::ExecStderr => Message::ExecStderr {
                id: id()?,
                data: payload[4..].to_vec(),
            },
            Kind::ExecStdinEof => {
                fixed(4)?;
                Message::ExecStdinEof(id()?)
            }
            Kind::ExecSignal => {
                fixed(8)?;
                let sig = i32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
                Message::ExecSignal {
                    id: id()?,
                    sig: signal(sig)?,
                }
            }
            Kind::ExecResize => {
                fixed(8)?;
                Message::ExecResize {
                    id: id()?,
                    rows: u16::from_le_bytes([payload[4], payload[5]]),
                    cols: u16::from_le_bytes([payload[6], payload[7]]),
                }
            }
            Kind::Hello => Message::Hello(json(kind, payload)?),
            Kind::Start => Message::Start(Box::new(json(kind, payload)?)),
            Kind::Exit => Message::Exit(json(kind, payload)?),
            Kind::Error => Message::Error(json(kind, payload)?),
            Kind::Stdin => Message::Stdin(payload.to_vec()),
            Kind::Stdout => Message::Stdout(payload.to_vec()),
            Kind::Stderr => Message::Stderr(payload.to_vec()),
            Kind::StdinEof => {
                fixed(0)?;
                Message::StdinEof
            }
            Kind::Resize => {
                fixed(4)?;
                Message::Resize {
                    rows: u16::from_le_bytes([payload[0], payload[1]]),
                    cols: u16::from_le_bytes([payload[2], payload[3]]),
                }
            }
            Kind::Signal => {
                fixed(4)?;
                let sig = i32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
                Message::Signal(signal(sig)?)
            }
        })
    }
}

/// Incremental decoder: feed it bytes as they arrive, take whole messages out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Once a frame was rejected the stream is out of sync for good.
    failed: Option<ProtoError>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether undecoded bytes remain (a truncated frame at end of stream).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Returns the next complete message, `None` when more bytes are needed,
    /// or the error that makes the stream unusable.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtoError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.try_next();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.buf.clear();
        }
        r
    }

    fn try_next(&mut self) -> Result<Option<Message>, ProtoError> {
        // Validate the header bytes as soon as they arrive.
        if let Some(&m) = self.buf.first() {
            if m != MAGIC {
                return Err(ProtoError::BadMagic { found: m });
            }
        }
        if let Some(&v) = self.buf.get(1) {
            if v != VERSION {
                return Err(ProtoError::UnsupportedVersion { found: v });
            }
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind =
            Kind::from_byte(self.buf[2]).ok_or(ProtoError::UnknownKind { kind: self.buf[2] })?;
        if self.buf[3] != 0 {
            return Err(ProtoError::Reserved { found: self.buf[3] });
        }
        let len = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if len > kind.max_len() {
            return Err(ProtoError::Oversized {
                kind,
                len,
                max: kind.max_len(),
            });
        }
        debug_assert!(HEADER_LEN + len <= MAX_BUFFERED);
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let msg = Message::decode(kind, &self.buf[HEADER_LEN..HEADER_LEN + len])?;
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Message) {
        let bytes = m.encode().unwrap();
        let mut d = Decoder::new();
        // Byte by byte: partial frames must wait, not fail.
        for (i, b) in bytes.iter().enumerate() {
            d.push(&[*b]);
            let got = d.next_message().unwrap();
            if i + 1 < bytes.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(m.clone()));
            }
        }
        assert!(!d.has_partial());
    }

    #[test]
    fn a_verity_root_gives_the_cold_boot_table() {
        let r = VerityRoot {
            data_size: 3 * 4096,
            root_hash: "ab".into(),
            salt: "cd".into(),
        };
        assert_eq!(
            r.params("/dev/vda"),
            "1 /dev/vda /dev/vda 4096 4096 3 3 sha256 ab cd"
        );
    }

    #[test]
    fn every_kind_roundtrips() {
        roundtrip(Message::Hello(Hello {
            agent_version: "0.1.0".into(),
            kernel_release: "6.1.0-moat".into(),
        }));
        roundtrip(Message::Stdin(b"abc\n".to_vec()));
        roundtrip(Message::Restore(Box::new(Restore {
            entropy: "00".repeat(64),
            hostname: "c1".into(),
            root: Some(VerityRoot {
                data_size: 8192,
                root_hash: "aa".into(),
                salt: "bb".into(),
            }),
            trace: true,
        })));
        roundtrip(Message::StdinEof);
        roundtrip(Message::Stdout(vec![0, 255, 10]));
        roundtrip(Message::Stderr(Vec::new()));
        roundtrip(Message::Resize { rows: 24, cols: 80 });
        roundtrip(Message::Signal(15));
        roundtrip(Message::Exit(Exit {
            code: 137,
            session: "0f".into(),
            report: None,
        }));
        roundtrip(Message::Exit(Exit {
            code: 1,
            session: "0f".into(),
            report: Some(crate::audit::GuestReport {
                denied: vec![crate::audit::GuestDenial {
                    nr: 309,
                    exe: "/bin/busybox".into(),
                    count: 2,
                }],
                read_only: vec![crate::audit::GuestReadOnly {
                    nr: 83,
                    path: "/var/lib/nginx/".into(),
                    image_dir: "/var/lib/nginx".into(),
                    image_dir_entries: 0,
                }],
                omitted: 0,
            }),
        }));
        roundtrip(Message::Error(AgentFailure {
            code: 127,
            message: "no such file".into(),
            session: String::new(),
        }));
        roundtrip(Message::Exec(Box::new(ExecStart {
            id: 7,
            process: ProcessSpec {
                args: vec!["id".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                uid: 1000,
                gid: 1000,
                additional_gids: vec![],
                tty: true,
                interactive: true,
                hostname: "h".into(),
            },
            winsize: Some((24, 80)),
            member: None,
            target: Some("second".into()),
        })));
        roundtrip(Message::ExecStdin {
            id: 7,
            data: b"in".to_vec(),
        });
        roundtrip(Message::ExecStdinEof(7));
        roundtrip(Message::ExecStdout {
            id: u32::MAX,
            data: vec![0, 255],
        });
        roundtrip(Message::ExecStderr {
            id: 0,
            data: Vec::new(),
        });
        roundtrip(Message::ExecSignal { id: 7, sig: 9 });
        roundtrip(Message::ExecResize {
            id: 7,
            rows: 50,
            cols: 132,
        });
        roundtrip(Message::ExecExit(ExecExit {
            id: 7,
            code: 127,
            message: "executable \"nope\" not found".into(),
            session: "0f".into(),
        }));
    }

    #[test]
    fn rejects_malformed_exec_frames() {
        assert_eq!(
            decode_err(&[MAGIC, 1, Kind::ExecStdout as u8, 0, 3, 0, 0, 0, 1, 2, 3]),
            "malformed ExecStdout frame: payload is 3 bytes, shorter than its process id"
        );
        assert_eq!(
            decode_err(&[
                MAGIC,
                1,
                Kind::ExecSignal as u8,
                0,
                8,
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                65,
                0,
                0,
                0
            ]),
            "malformed ExecSignal frame: signal 65 is out of range 1..=64"
        );
        let mut h = vec![MAGIC, 1, Kind::ExecStdin as u8, 0];
        h.extend_from_slice(&((MAX_DATA + 5) as u32).to_le_bytes());
        assert_eq!(
            decode_err(&h),
            "ExecStdin frame of 32773 bytes exceeds the limit of 32772 bytes"
        );
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut bytes = Message::Stdout(b"a".to_vec()).encode().unwrap();
        bytes.extend(
            Message::Exit(Exit {
                code: 3,
                session: String::new(),
                report: None,
            })
            .encode()
            .unwrap(),
        );
        let mut d = Decoder::new();
        d.push(&bytes);
        assert_eq!(
            d.next_message().unwrap(),
            Some(Message::Stdout(b"a".to_vec()))
        );
        assert_eq!(
            d.next_message().unwrap(),
            Some(Message::Exit(Exit {
                code: 3,
                session: String::new(),
                report: None,
            }))
        );
        assert_eq!(d.next_message().unwrap(), None);
    }

    /// A guest that lies in its report: an oversized one is refused with
    /// its header, unknown fields are ignored, and what is left is cut to
    /// the report's limits.
    #[test]
    fn a_hostile_guest_report_is_refused_or_bounded() {
        let mut h = vec![MAGIC, 1, Kind::Exit as u8, 0];
        h.extend_from_slice(&((MAX_CONTROL + 1) as u32).to_le_bytes());
        assert_eq!(
            decode_err(&h),
            "Exit frame of 1048577 bytes exceeds the limit of 1048576 bytes"
        );
        let many: Vec<String> = (0..5000)
            .map(|i| format!(r#"{{"nr":{i},"exe":"/x\u001b[2J","count":1,"evil":[1,2]}}"#))
            .collect();
        let json = format!(
            r#"{{"code":1,"session":"s","report":{{"denied":[{}],"read_only":[{{"nr":2,"path":"{}"}}],"extra":{{"a":1}}}},"more":true}}"#,
            many.join(","),
            "/a".repeat(100_000)
        );
        let mut frame = vec![MAGIC, 1, Kind::Exit as u8, 0];
        frame.extend_from_slice(&(json.len() as u32).to_le_bytes());
        frame.extend_from_slice(json.as_bytes());
        let mut d = Decoder::new();
        d.push(&frame);
        let Some(Message::Exit(e)) = d.next_message().unwrap() else {
            panic!("not an Exit");
        };
        let r = e.report.unwrap().bounded();
        assert_eq!(r.denied.len(), crate::audit::MAX_ENTRIES);
        assert_eq!(r.omitted, 5000 - crate::audit::MAX_ENTRIES as u64);
        assert_eq!(r.denied[0].exe, "/x[2J");
        assert!(r.read_only[0].path.len() <= crate::audit::MAX_STRING);
        // Not JSON at all: a malformed frame, not a crash.
        let mut bad = vec![MAGIC, 1, Kind::Exit as u8, 0, 3, 0, 0, 0];
        bad.extend_from_slice(b"{\"r");
        assert!(decode_err(&bad).starts_with("malformed Exit frame"));
    }

    fn decode_err(bytes: &[u8]) -> String {
        let mut d = Decoder::new();
        d.push(bytes);
        let e = d.next_message().unwrap_err().to_string();
        // The stream stays failed.
        assert_eq!(d.next_message().unwrap_err().to_string(), e);
        e
    }

    #[test]
    fn rejects_bad_magic_at_first_byte() {
        assert_eq!(
            decode_err(b"G"),
            "bad frame magic 0x47 (expected 0x4d): the peer is not a moat agent or the stream is out of sync"
        );
    }

    #[test]
    fn rejects_other_versions() {
        assert_eq!(
            decode_err(&[MAGIC, 2]),
            "unsupported protocol version 2 (this side speaks 1): use a moat-agent built from the same moat release"
        );
    }

    #[test]
    fn rejects_unknown_kind_and_reserved_bits() {
        assert_eq!(
            decode_err(&[MAGIC, 1, 99, 0, 0, 0, 0, 0]),
            "unknown frame kind 99"
        );
        assert_eq!(
            decode_err(&[MAGIC, 1, 3, 7, 0, 0, 0, 0]),
            "reserved header byte is 7, must be 0"
        );
    }

    #[test]
    fn rejects_oversized_frames_from_the_header_alone() {
        // 4 GiB announced: rejected without waiting for the payload.
        assert_eq!(
            decode_err(&[MAGIC, 1, Kind::Stdout as u8, 0, 0xff, 0xff, 0xff, 0xff]),
            "Stdout frame of 4294967295 bytes exceeds the limit of 32768 bytes"
        );
        let mut h = vec![MAGIC, 1, Kind::Start as u8, 0];
        h.extend_from_slice(&((MAX_CONTROL + 1) as u32).to_le_bytes());
        assert_eq!(
            decode_err(&h),
            "Start frame of 1048577 bytes exceeds the limit of 1048576 bytes"
        );
    }

    #[test]
    fn rejects_malformed_payloads() {
        let mut f = vec![MAGIC, 1, Kind::Exit as u8, 0, 3, 0, 0, 0];
        f.extend_from_slice(b"{x}");
        assert!(decode_err(&f).starts_with("malformed Exit frame: key must be a string"));
        assert_eq!(
            decode_err(&[MAGIC, 1, Kind::Resize as u8, 0, 2, 0, 0, 0, 1, 2]),
            "malformed Resize frame: payload is 2 bytes, expected 4"
        );
        assert_eq!(
            decode_err(&[MAGIC, 1, Kind::Signal as u8, 0, 4, 0, 0, 0, 0, 1, 0, 0]),
            "malformed Signal frame: signal 256 is out of range 1..=64"
        );
    }

    #[test]
    fn refuses_to_encode_oversized_chunks() {
        let e = Message::Stdout(vec![0; MAX_DATA + 1]).encode().unwrap_err();
        assert_eq!(
            e.to_string(),
            "Stdout payload of 32769 bytes exceeds the limit of 32768 bytes, refusing to send it"
        );
    }
}
