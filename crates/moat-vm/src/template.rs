//! VM templates: a guest booted once per (kernel, agent, VMM, VM shape) to
//! where its agent waits for its first instruction, its device state and
//! memory saved with QEMU's migration stream into a file. A container's VM
//! restores that state instead of booting, then gets its root and its own
//! entropy over the control channel (`Restore`). See `docs/vm.md`.
//!
//! A template is trusted code (guest kernel memory): it lives under the
//! root-only state root, keyed by the hash of its inputs, and its state
//! file is checked against the digest recorded when it was built, through
//! the descriptor the VMM then reads, before every use. A template whose
//! inputs changed is never found (another key); one that fails its digest
//! is refused, removed and built again.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_agent::proto::{Decoder, Message};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::boot::{self, console_tail, BootRequest, TemplateBoot};
use crate::hypervisor::{Accel, Hypervisor};
use crate::lock::FileLock;
use crate::{initramfs, kernel, sys, VmError};

pub mod memory;

/// Bumped when the template's layout or protocol changes: old ones are not used.
const FORMAT: &str = "moat-template-2";
/// Size the guest sees for its root disk: the template boots with a sparse
/// placeholder this large, so any image up to it fits the verity table
/// after a restore (the guest keeps the capacity it probed at boot).
const PLACEHOLDER_BYTES: u64 = 1 << 40;
/// How long a template's guest may take to boot (TCG on a busy host).
const BOOT_DEADLINE: Duration = Duration::from_secs(90);
const MIGRATE_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template file {path} failed verification: its sha256 is {found}, recorded {expected} when it was built")]
    Digest {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("template {path} was built from other inputs (its manifest does not match this kernel, agent, VMM and VM shape)")]
    Stale { path: PathBuf },
    #[error("template {path} has an unreadable manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("booting the template")]
    Boot(#[source] Box<VmError>),
    #[error("the template's guest did not say hello within {seconds} s; console:\n{console}")]
    NoHello { seconds: u64, console: String },
    #[error("the template's guest agent is version {agent}, moat is {host}: rebuild the agent (`make agent`)")]
    AgentVersion { agent: String, host: String },
    #[error("the template's state through QEMU's monitor: {reason}")]
    Save { reason: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TemplateError + 'a {
    move |source| TemplateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The VM shape a template is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
}

/// A file input, by identity (path, size, modification time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileId {
    fn of(path: &Path) -> Result<FileId, TemplateError> {
        let md = fs::metadata(path).map_err(io("stat", path))?;
        Ok(FileId {
            path: path.to_path_buf(),
            size: md.len(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        })
    }
}

/// Everything a template depends on; its key is their hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub format: String,
    pub kernel: FileId,
    /// The initramfs, whose name is keyed by the agent build.
    pub agent: FileId,
    pub vmm: FileId,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
    /// The guest command line, without the host's TSC frequency (which
    /// drifts; the restored guest keeps the calibration it booted with).
    pub cmdline: String,
}

impl Inputs {
    pub fn current(
        hv: &dyn Hypervisor,
        vmm: &Path,
        state_root: &Path,
        shape: Shape,
    ) -> Result<Inputs, VmError> {
        let kernel = kernel::locate(state_root)?;
        let initrd = initramfs::ensure(state_root)?;
        let file = |p: &Path| FileId::of(p).map_err(|e| VmError::Template(Box::new(e)));
        Ok(Inputs {
            format: FORMAT.into(),
            kernel: file(&kernel)?,
            agent: file(&initrd)?,
            vmm: file(vmm)?,
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib,
            accel: shape.accel,
            cmdline: stable_cmdline(&cmdline(hv, shape.accel)),
        })
    }

    /// The cache key: 16 hex digits of sha256 over the inputs.
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..8])
    }
}

/// The command line of a template and of every VM restored from it.
pub fn cmdline(hv: &dyn Hypervisor, accel: Accel) -> String {
    format!("{} moat.template", hv.guest_cmdline(accel))
}

fn stable_cmdline(c: &str) -> String {
    c.split_whitespace()
        .filter(|w| !w.starts_with("tsc_early_khz="))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    key: String,
    inputs: Inputs,
    /// sha256 of the state file (device state), hex.
    state_sha256: String,
    state_size: u64,
    /// sha256 of the guest memory (`memory`, all of it, holes as zeros).
    memory_sha256: String,
}

/// A verified template: its state, open and rewound, and its sealed
/// memory, for one restore.
pub struct Template {
    pub dir: PathBuf,
    pub state: File,
    pub memory: OwnedFd,
    /// True when this call built it.
    pub built: bool,
}

/// Where templates live: `<root>/vm/templates/<key>/{state,manifest.json}`.
pub fn dir(state_root: &Path) -> PathBuf {
    state_root.join("vm").join("templates")
}

/// The template for `inputs`: verified if cached, else (or if it fails
/// verification, with a notice) built now.
pub fn ensure(
    hv: &dyn Hypervisor,
    state_root: &Path,
    inputs: &Inputs,
    notice: &mut dyn FnMut(&str),
) -> Result<Template, TemplateError> {
    let base = dir(state_root);
    fs::create_dir_all(&base).map_err(io("create", &base))?;
    fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).map_err(io("chmod", &base))?;
    let key = inputs.key();
    let dir = base.join(&key);
    let lock_path = base.join(format!("{key}.lock"));
    let _lock = FileLock::exclusive(&lock_path).map_err(io("lock", &lock_path))?;
    if dir.exists() {
        match open_verified(&dir, inputs) {
            Ok((state, memory)) => {
                return Ok(Template {
                    dir,
                    state,
                    memory,
                    built: false,
                })
            }
            Err(e) => {
                notice(&format!(
                    "moat: notice: refusing the micro-VM template: {}; building it again",
                    chain(&e)
                ));
                fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
            }
        }
    }
    build(hv, state_root, inputs, &dir)?;
    let (state, memory) = open_verified(&dir, inputs)?;
    // A new template is when older ones become garbage: a kernel, agent or
    // QEMU rebuilt in place leaves its templates unusable for good.
    sweep_stale(&base, &key);
    Ok(Template {
        dir,
        state,
        memory,
        built: true,
    })
}

/// Removes the templates under `base` that no run can use again (one of
/// their input files changed or is gone, or an older format) and the
/// staging directories of builds whose process died; skips any whose lock
/// is held (in use or being built) and the template `keep`.
pub fn sweep_stale(base: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || name == keep {
            continue;
        }
        if let Some((_, pid)) = name.split_once(".tmp-") {
            let dead = pid
                .parse::<i32>()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|p| {
                    rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH)
                });
            if dead {
                let _ = fs::remove_dir_all(&path);
            }
            continue;
        }
        if !stale(&path) {
            continue;
        }
        let lock_path = base.join(format!("{name}.lock"));
        if let Ok(Some(_lock)) = FileLock::try_exclusive(&lock_path) {
            let _ = fs::remove_dir_all(&path);
            let _ = fs::remove_file(&lock_path);
        }
    }
}

/// Whether the template in `dir` can never be used again: its manifest is
/// unreadable or of another format, or an input file is not what it was.
fn stale(dir: &Path) -> bool {
    let Ok(text) = fs::read(dir.join("manifest.json")) else {
        return true;
    };
    let Ok(m) = serde_json::from_slice::<Manifest>(&text) else {
        return true;
    };
    let i = &m.inputs;
    i.format != FORMAT
        || [&i.kernel, &i.agent, &i.vmm]
            .iter()
            .any(|f| FileId::of(&f.path).ok().as_ref() != Some(*f))
}

/// Opens the template's state and checks it, through that descriptor,
/// against the manifest's digest and inputs; with its memory: the held
/// sealed memfd, or the `memory` file loaded into a new one and checked
/// against the manifest's digest.
pub fn open_verified(dir: &Path, inputs: &Inputs) -> Result<(File, OwnedFd), TemplateError> {
    let mpath = dir.join("manifest.json");
    let text = fs::read(&mpath).map_err(io("read", &mpath))?;
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| TemplateError::Manifest {
        path: mpath.clone(),
        reason: e.to_string(),
    })?;
    if m.inputs != *inputs || m.key != inputs.key() {
        return Err(TemplateError::Stale {
            path: dir.to_path_buf(),
        });
    }
    let spath = dir.join("state");
    let mut f = File::open(&spath).map_err(io("open", &spath))?;
    let (digest, size) = sha256_of(&mut f).map_err(io("read", &spath))?;
    if digest != m.state_sha256 || size != m.state_size {
        return Err(TemplateError::Digest {
            path: spath,
            expected: m.state_sha256,
            found: digest,
        });
    }
    f.rewind().map_err(io("rewind", &spath))?;
    let bytes = inputs.memory_mib << 20;
    if let Some(held) = memory::held(dir, bytes) {
        return Ok((f, held));
    }
    let mpath = dir.join("memory");
    let (mem, digest) = memory::load(&mpath, bytes).map_err(io("load", &mpath))?;
    if digest != m.memory_sha256 {
        return Err(TemplateError::Digest {
            path: mpath,
            expected: m.memory_sha256,
            found: digest,
        });
    }
    memory::hold(dir, &mem).map_err(io("hold the memory of", dir))?;
    Ok((f, mem))
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

fn sha256_of(f: &mut File) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), size))
}

/// Boots the template's guest, waits for its agent's hello, saves the VM
/// and stages the result into `dir` atomically.
fn build(
    hv: &dyn Hypervisor,
    state_root: &Path,
    inputs: &Inputs,
    dir: &Path,
) -> Result<(), TemplateError> {
    let stage = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir(&stage).map_err(io("create", &stage))?;
    fs::set_permissions(&stage, fs::Permissions::from_mode(0o700)).map_err(io("chmod", &stage))?;
    let result = build_in(hv, state_root, inputs, &stage);
    let placeholder = stage.join("placeholder.img");
    let _ = fs::remove_file(&placeholder);
    match result {
        Ok(mem) => {
            fs::rename(&stage, dir).map_err(io("rename", dir))?;
            memory::hold(dir, &mem).map_err(io("hold the memory of", dir))
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&stage);
            Err(e)
        }
    }
}

fn build_in(
    hv: &dyn Hypervisor,
    state_root: &Path,
    inputs: &Inputs,
    stage: &Path,
) -> Result<OwnedFd, TemplateError> {
    let bytes = inputs.memory_mib << 20;
    let mem = memory::create(bytes).map_err(io("memfd for", stage))?;
    let placeholder = stage.join("placeholder.img");
    let p = create_private(&placeholder)?;
    p.set_len(PLACEHOLDER_BYTES)
        .map_err(io("truncate", &placeholder))?;
    drop(p);
    let spath = stage.join("state");
    let mut state = create_private(&spath)?;
    let (qmp_host, qmp_guest) = sys::socketpair().map_err(io("socketpair", stage))?;
    let id = format!("{:016x}", sys::getrandom_u64());
    let mut booted = boot::boot(
        hv,
        BootRequest {
            state_root,
            root: None,
            vcpus: inputs.vcpus,
            memory_mib: inputs.memory_mib,
            accel: inputs.accel,
            cpu_millis: None,
            id: &id,
            cleanup: Vec::new(),
            trace: false,
            volumes: Vec::new(),
            host_dirs: (Vec::new(), Vec::new()),
            net: None,
            netns: None,
            template: Some(TemplateBoot::Build {
                qmp: qmp_guest,
                memory: mem.try_clone().map_err(io("dup", stage))?,
                placeholder: &placeholder,
            }),
        },
    )
    .map_err(|e| TemplateError::Boot(Box::new(e)))?;
    wait_for_hello(&mut booted)?;
    save(qmp_host, &state)?;
    // QEMU gone, no shared writable mapping is left: seal, then save.
    drop(booted);
    memory::seal(&mem).map_err(io("seal the memory of", stage))?;
    let mpath = stage.join("memory");
    let memory_sha256 = memory::save(&mem, &mpath, bytes).map_err(io("write", &mpath))?;
    state.flush().map_err(io("write", &spath))?;
    state.sync_all().map_err(io("sync", &spath))?;
    state.rewind().map_err(io("rewind", &spath))?;
    let (digest, size) = sha256_of(&mut state).map_err(io("read", &spath))?;
    let m = Manifest {
        key: inputs.key(),
        inputs: inputs.clone(),
        state_sha256: digest,
        state_size: size,
        memory_sha256,
    };
    let mpath = stage.join("manifest.json");
    let mut mf = create_private(&mpath)?;
    mf.write_all(&serde_json::to_vec_pretty(&m).unwrap_or_default())
        .and_then(|()| mf.sync_all())
        .map_err(io("write", &mpath))?;
    Ok(mem)
}

fn create_private(path: &Path) -> Result<File, TemplateError> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))
}

/// Waits for the template agent's `Hello` (it then blocks waiting for a
/// `Restore`: the point every clone resumes from).
fn wait_for_hello(booted: &mut boot::Booted) -> Result<(), TemplateError> {
    let mut sock = File::from(
        booted
            .control
            .try_clone()
            .map_err(io("dup", Path::new("control channel")))?,
    );
    let _ = sys::set_nonblocking(sock.as_fd(), true);
    let mut decoder = Decoder::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < BOOT_DEADLINE {
        let mut fds = [libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let _ = sys::poll(&mut fds, 100);
        if let Ok(n) = sock.read(&mut buf) {
            decoder.push(&buf[..n]);
            if let Ok(Some(Message::Hello(h))) = decoder.next_message() {
                if h.agent_version != env!("CARGO_PKG_VERSION") {
                    return Err(TemplateError::AgentVersion {
                        agent: h.agent_version,
                        host: env!("CARGO_PKG_VERSION").into(),
                    });
                }
                return Ok(());
            }
        }
        if booted.vmm.try_wait().is_some() {
            break;
        }
    }
    Err(TemplateError::NoHello {
        seconds: BOOT_DEADLINE.as_secs(),
        console: console_tail(&mut booted.vmm.console, 20),
    })
}

/// Over QMP: hand QEMU the state file (`getfd`, the descriptor rides on
/// the message), migrate into it, wait until done.
fn save(qmp: OwnedFd, state: &File) -> Result<(), TemplateError> {
    let err = |reason: String| TemplateError::Save {
        reason: format!("saving: {reason}"),
    };
    let w = File::from(qmp);
    let mut q = Qmp {
        r: BufReader::new(w.try_clone().map_err(|e| err(e.to_string()))?),
        w,
        line: String::new(),
    };
    read_reply(&mut q.r, &mut q.line, true).map_err(err)?;
    q.call(r#"{"execute":"qmp_capabilities"}"#, None)
        .map_err(err)?;
    q.call(IGNORE_SHARED, None).map_err(err)?;
    q.call(
        r#"{"execute":"getfd","arguments":{"fdname":"state"}}"#,
        Some(state),
    )
    .map_err(err)?;
    q.call(
        r#"{"execute":"migrate","arguments":{"uri":"fd:state"}}"#,
        None,
    )
    .map_err(err)?;
    let start = Instant::now();
    while start.elapsed() < MIGRATE_DEADLINE {
        let v = q
            .call(r#"{"execute":"query-migrate"}"#, None)
            .map_err(err)?;
        match v["status"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                return Err(err(format!(
                    "migration {}: {}",
                    v["status"].as_str().unwrap_or_default(),
                    v["error-desc"].as_str().unwrap_or("no reason given")
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    Err(err(format!(
        "not done within {} s",
        MIGRATE_DEADLINE.as_secs()
    )))
}

/// Guest RAM (the template's memfd) stays out of the migration stream.
const IGNORE_SHARED: &str = r#"{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"x-ignore-shared","state":true}]}}"#;

/// A restored VM's QEMU waits (`-incoming defer`) for this: RAM is the
/// template's, so the stream it loads from the inherited state
/// descriptor holds only device state.
pub fn start_incoming(qmp: OwnedFd) -> Result<(), TemplateError> {
    let err = |reason: String| TemplateError::Save {
        reason: format!("restoring: {reason}"),
    };
    let w = File::from(qmp);
    let mut q = Qmp {
        r: BufReader::new(w.try_clone().map_err(|e| err(e.to_string()))?),
        w,
        line: String::new(),
    };
    read_reply(&mut q.r, &mut q.line, true).map_err(err)?;
    q.call(r#"{"execute":"qmp_capabilities"}"#, None)
        .map_err(err)?;
    q.call(IGNORE_SHARED, None).map_err(err)?;
    q.call(
        &format!(
            r#"{{"execute":"migrate-incoming","arguments":{{"uri":"fd:{}"}}}}"#,
            crate::qemu::FD_MIGRATION
        ),
        None,
    )
    .map_err(err)?;
    Ok(())
}

/// A QMP connection (one command at a time).
struct Qmp {
    r: BufReader<File>,
    w: File,
    line: String,
}

impl Qmp {
    fn call(&mut self, cmd: &str, fd: Option<&File>) -> Result<serde_json::Value, String> {
        let mut msg = cmd.as_bytes().to_vec();
        msg.push(b'\n');
        match fd {
            Some(f) => sys::send_with_fds(self.w.as_fd(), &msg, &[f.as_fd()]),
            None => self.w.write_all(&msg),
        }
        .map_err(|e| e.to_string())?;
        read_reply(&mut self.r, &mut self.line, false)
    }
}

/// Reads QMP lines until a reply (`return`, or the greeting), skipping
/// events; an `error` reply is an error.
fn read_reply(
    r: &mut impl BufRead,
    line: &mut String,
    greeting: bool,
) -> Result<serde_json::Value, String> {
    loop {
        line.clear();
        if r.read_line(line).map_err(|e| e.to_string())? == 0 {
            return Err("QEMU closed its monitor".into());
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{e}: {line:?}"))?;
        if greeting && v.get("QMP").is_some() {
            return Ok(v);
        }
        if let Some(e) = v.get("error") {
            return Err(e["desc"].as_str().unwrap_or("error").to_string());
        }
        if let Some(ret) = v.get("return") {
            return Ok(ret.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        let f = |p: &str| FileId {
            path: p.into(),
            size: 1,
            mtime_ns: 2,
        };
        Inputs {
            format: FORMAT.into(),
            kernel: f("/k"),
            agent: f("/a.cpio"),
            vmm: f("/q"),
            vcpus: 1,
            memory_mib: 1,
            accel: Accel::Tcg,
            cmdline: "console=ttyS0 moat.template".into(),
        }
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let base = inputs();
        let k = base.key();
        assert_eq!(k.len(), 16);
        let mut other = base.clone();
        other.kernel.mtime_ns += 1;
        assert_ne!(other.key(), k, "kernel");
        let mut other = base.clone();
        other.agent.path = "/b.cpio".into();
        assert_ne!(other.key(), k, "agent");
        let mut other = base.clone();
        other.memory_mib = 2;
        assert_ne!(other.key(), k, "shape");
        let mut other = base.clone();
        other.accel = Accel::Kvm;
        assert_ne!(other.key(), k, "accelerator");
    }

    #[test]
    fn the_sweep_removes_templates_of_changed_inputs_and_dead_builds_only() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        let files = |tag: &str| {
            let p = |n: &str| {
                let p = base.join(format!("{tag}-{n}"));
                fs::write(&p, tag).unwrap();
                FileId::of(&p).unwrap()
            };
            Inputs {
                kernel: p("kernel"),
                agent: p("agent"),
                vmm: p("qemu"),
                ..inputs()
            }
        };
        let template = |i: &Inputs| {
            let dir = base.join(i.key());
            fs::create_dir(&dir).unwrap();
            let m = Manifest {
                key: i.key(),
                inputs: i.clone(),
                state_sha256: String::new(),
                state_size: 0,
                memory_sha256: String::new(),
            };
            fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
            dir
        };
        let (current, other_shape, rebuilt) = (files("a"), files("b"), files("c"));
        let (keep, kept, gone) = (
            template(&current),
            template(&other_shape),
            template(&rebuilt),
        );
        // The kernel of the third is rebuilt in place (another size).
        fs::write(&rebuilt.kernel.path, "a new kernel").unwrap();
        let in_use = template(&Inputs {
            agent: FileId {
                size: 99,
                ..rebuilt.agent.clone()
            },
            ..rebuilt.clone()
        });
        let held = FileLock::exclusive(&base.join(format!(
            "{}.lock",
            in_use.file_name().unwrap().to_string_lossy()
        )))
        .unwrap();
        let live_stage = base.join(format!("x.tmp-{}", std::process::id()));
        let dead_stage = base.join(format!("x.tmp-{}", i32::MAX));
        fs::create_dir(&live_stage).unwrap();
        fs::create_dir(&dead_stage).unwrap();
        sweep_stale(base, &current.key());
        assert!(keep.exists() && kept.exists(), "current inputs are kept");
        assert!(!gone.exists(), "a changed kernel's template is removed");
        assert!(in_use.exists(), "a locked template is left alone");
        assert!(live_stage.exists() && !dead_stage.exists());
        drop(held);
        // A process another test forks holds a copy of the lock's
        // descriptor until it execs, so the lock frees within moments.
        for _ in 0..100 {
            sweep_stale(base, &current.key());
            if !in_use.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(!in_use.exists(), "an unlocked stale template is removed");
    }

    #[test]
    fn the_hosts_tsc_reading_is_not_an_input() {
        assert_eq!(
            stable_cmdline("console=ttyS0 tsc_early_khz=2399999 quiet moat.template"),
            "console=ttyS0 quiet moat.template"
        );
    }

    #[test]
    fn a_changed_state_or_manifest_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let i = inputs();
        fs::write(d.path().join("state"), b"guest state").unwrap();
        let mem = memory::create(1 << 20).unwrap();
        memory::seal(&mem).unwrap();
        let memory_sha256 = memory::save(&mem, &d.path().join("memory"), 1 << 20).unwrap();
        let m = Manifest {
            key: i.key(),
            inputs: i.clone(),
            state_sha256: hex::encode(Sha256::digest(b"guest state")),
            state_size: 11,
            memory_sha256,
        };
        fs::write(
            d.path().join("manifest.json"),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        let (mut f, _) = open_verified(d.path(), &i).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "guest state");
        let mut other = i.clone();
        other.memory_mib = 2;
        assert!(matches!(
            open_verified(d.path(), &other),
            Err(TemplateError::Stale { .. })
        ));
        // Without a holder the memory file is loaded and checked.
        fs::remove_file(d.path().join("holder.json")).unwrap();
        let f = File::options()
            .write(true)
            .open(d.path().join("memory"))
            .unwrap();
        rustix::io::pwrite(&f, b"x", 4096).unwrap();
        let e = open_verified(d.path(), &i).unwrap_err();
        assert!(
            e.to_string()
                .contains("/memory failed verification: its sha256 is "),
            "{e}"
        );
        fs::write(d.path().join("state"), b"guest statf").unwrap();
        let e = open_verified(d.path(), &i).unwrap_err();
        assert!(
            e.to_string()
                .contains("/state failed verification: its sha256 is "),
            "{e}"
        );
    }
}
