//! Running client commands in tests: output with a deadline (the whole
//! process group killed on it), leftover mounts, waiting for a condition.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `cmd` (stdin null, its own process group) and collects its output;
/// on `limit` the whole group is killed and the error says so. A descendant
/// still holding the output pipes 10 s after the command exited is an error
/// too: go-runc and conmon would wait forever on it.
pub fn try_run(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{desc}: cannot start: {e}"))?;
    let (tx, rx) = mpsc::channel();
    for (i, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        let mut pipe = pipe.unwrap();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((i, buf));
        });
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| format!("{desc}: wait: {e}"))? {
            break st;
        }
        if Instant::now() > deadline {
            kill_group(&child);
            let _ = child.wait();
            let (out, err, _) = collect(&rx, Duration::from_secs(2));
            return Err(format!(
                "{desc} did not finish within {limit:?}; its output so far:\n{}{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out, err, held) = collect(&rx, Duration::from_secs(10));
    if held {
        return Err(format!(
            "{desc} exited ({status}) but a process it left still holds its output pipes; \
             output so far:\n{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ));
    }
    Ok(Output {
        status,
        stdout: out,
        stderr: err,
    })
}

/// Gathers both pipes for up to `wait`; also whether one was still open
/// then (held by a leftover descendant).
fn collect(rx: &mpsc::Receiver<(usize, Vec<u8>)>, wait: Duration) -> (Vec<u8>, Vec<u8>, bool) {
    let mut bufs = [None, None];
    let deadline = Instant::now() + wait;
    while bufs.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, b)) => bufs[i] = Some(b),
            Err(_) => break,
        }
    }
    let held = bufs.iter().any(Option::is_none);
    let [out, err] = bufs;
    (out.unwrap_or_default(), err.unwrap_or_default(), held)
}

fn kill_group(child: &Child) {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// [`try_run`] that panics with the command and its output on a deadline
/// or held pipes.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    try_run(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// Lazily unmounts whatever the host mount table still has under `dir`
/// (nothing, unless a client leaked a mount out of its namespace).
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_str().unwrap_or("/nonexistent");
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(prefix))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = Command::new("umount")
            .args(["-l", m])
            .stderr(Stdio::null())
            .status();
    }
}

/// Waits up to `limit` for `f` to return `Some`.
pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The exit code of `status`, or 128+N for signal N as a shell shows it.
pub fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
