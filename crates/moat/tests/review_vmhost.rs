//! The host side of the vm backend under attack, through the `moat` binary
//! (the first and second outside reviews, issues 11, 12 and 23): what a
//! calling shell's descriptors, a compromised supervisor or QEMU, and a
//! planted agent can reach, and what `moat kill`, `--isolation auto` and a
//! memory limit show the user. Skips with `SKIP:` when QEMU or the guest
//! kernel is absent (`make kernel`).

#[path = "sandbox_common/mod.rs"]
mod common;
use moat_testkit::host as vm_host;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{can_sandbox, stderr, vm_ready, Env};
use vm_host::{jailed_processes, vm_lock, VmLock};

fn import_test_image(env: &Env) {
    let archive = env.dir.path().join("busybox.oci.tar");
    let o = env
        .moat(&["dev", "test-image", "-o", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env
        .moat(&["image", "import", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A `moat` process with its stdout read line by line.
struct Running {
    child: Child,
    lines: Receiver<String>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Running { child, lines: rx }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits (up to 3 minutes: TCG on two busy cores) for the line `want`.
    fn wait_line(&mut self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_secs(1)) {
                if l == want {
                    return;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("moat ended ({st}) before the workload printed {want:?}: {err}");
            }
        }
        panic!("the workload never printed {want:?}");
    }

    /// Waits (bounded) for moat to end; its status and stderr.
    fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return (st, err);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("moat did not end within 120 s");
    }

    /// The rest of the workload's output.
    fn rest(&self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            v.push(l);
        }
        v
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `moat --root <env> run --isolation vm --accel tcg ARGS...` as a command.
fn vm_command(env: &Env, args: &[&str]) -> Command {
    let mut c = env.moat(&["run", "--isolation", "vm", "--accel", "tcg"]);
    c.args(args);
    c
}

/// Fields drop in order: moat (killed if still running), the lock, the root.
struct Started {
    r: Running,
    _lock: VmLock,
    env: Env,
}

/// The parent of `pid`.
fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

/// The VMM (QEMU) that the `moat` process `moat` runs: a jailed process
/// descending from it.
fn qemu_of(moat: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for l in jailed_processes() {
            let mut it = l.splitn(2, ' ');
            let pid: i32 = it.next().unwrap().parse().unwrap();
            if !it.next().unwrap_or_default().starts_with("qemu") {
                continue;
            }
            let mut p = pid;
            while let Some(up) = ppid(p) {
                if up == moat {
                    return pid;
                }
                if up <= 1 {
                    break;
                }
                p = up;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no jailed QEMU under moat {moat}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where each open descriptor of `pid` points.
fn fd_targets(pid: i32) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let t = std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), t)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Processes whose command line contains `needle`.
fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

fn status_field(pid: i32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// `kill(2)` through the `kill` command (tests stay free of `unsafe`).
fn send(pid: i32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// Issue 11 item 4. The calling shell holds `/etc/shadow` on fd 7 and the
/// host's `/` on fd 8 (`exec 7</etc/shadow 8</`). Neither reaches QEMU
/// (whose fd 8 once listed the real host root past the tmpfs that hides the
/// state root), the cleanup watcher, or the image tools moat runs on the
/// way (mkfs.erofs and veritysetup, replaced here by wrappers that record
/// their descriptors).
#[test]
fn descriptors_of_the_calling_shell_reach_no_child() {
    let env = Env::new();
    if !vm_ready(&env, "descriptors_of_the_calling_shell_reach_no_child") {
        return;
    }
    let lock = vm_lock();
    import_test_image(&env);
    let bin = env.dir.path().join("fakebin");
    let log = env.dir.path().join("fdlog");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&log).unwrap();
    for (tool, real) in [
        ("mkfs.erofs", "/usr/bin/mkfs.erofs"),
        ("veritysetup", "/usr/sbin/veritysetup"),
    ] {
        let w = bin.join(tool);
        std::fs::write(
            &w,
            format!(
                "#!/bin/sh\nfor f in /proc/$$/fd/*; do echo \"${{f##*/}} $(readlink \"$f\")\"; done > {}/{tool}\nexec {real} \"$@\"\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let inner = vm_command(
        &env,
        &["busybox", "sh", "-c", "echo ready; exec sleep 1000"],
    );
    let mut c = Command::new("/bin/bash");
    c.arg("-c")
        .arg("exec 7</etc/shadow 8</; exec \"$@\"")
        .arg("bash")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .stdin(Stdio::null());
    let mut r = Running::spawn(c);
    r.wait_line("ready");
    let moat = r.pid();
    // moat itself still holds them (close-on-exec): the attack is set up.
    let own = fd_targets(moat);
    assert!(
        own.contains(&("7".into(), "/etc/shadow".into()))
            && own.contains(&("8".into(), "/".into())),
        "{own:?}"
    );
    let qemu = qemu_of(moat);
    let mut holders = vec![("qemu", qemu)];
    holders.extend(
        pids_with_cmdline("moat-reaper")
            .into_iter()
            .map(|p| ("cleanup watcher", p)),
    );
    assert!(holders.len() >= 2, "no cleanup watcher found");
    for (what, pid) in holders {
        let fds = fd_targets(pid);
        assert!(!fds.is_empty(), "{what} {pid}: no descriptors read");
        for (n, t) in &fds {
            assert!(
                t != "/etc/shadow" && t != "/",
                "{what} (pid {pid}) holds fd {n} -> {t}: {fds:?}"
            );
        }
    }
    for tool in ["mkfs.erofs", "veritysetup"] {
        let fds = std::fs::read_to_string(log.join(tool))
            .unwrap_or_else(|e| panic!("{tool} did not run through its wrapper: {e}"));
        for l in fds.lines() {
            let t = l.split_once(' ').map_or("", |(_, t)| t);
            assert!(t != "/etc/shadow" && t != "/", "{tool} held {l}: {fds}");
        }
    }
    send(moat, "TERM");
    let (st, err) = r.wait();
    assert_eq!(st.code(), Some(143), "{err}");
    drop(r);
    assert_nothing_left(&env);
    drop(lock);
}

/// A VM started through the CLI for `test` with `args` after `run
/// --isolation vm --accel tcg`, once its workload printed `ready`.
fn start_ready(test: &str, args: &[&str]) -> Option<Started> {
    let env = Env::new();
    if !vm_ready(&env, test) {
        return None;
    }
    let lock = vm_lock();
    import_test_image(&env);
    let mut r = Running::spawn(vm_command(&env, args));
    r.wait_line("ready");
    Some(Started {
        r,
        _lock: lock,
        env,
    })
}

/// `Uid:`/`Gid:` of a status file: the four ids.
fn ids(line: &str) -> Vec<u32> {
    line.split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

/// The directory of `pid`'s cgroup in the v1 hierarchy or v2 tree that
/// carries `controller`.
fn cgroup_dir(pid: i32, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for l in text.lines() {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if ctrls.split(',').any(|c| c == controller) {
            let mount = std::fs::read_dir("/sys/fs/cgroup")
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .split(',')
                        .any(|c| c == controller)
                })
                .unwrap();
            return mount.join(path.trim_start_matches('/'));
        }
        if ctrls.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            return Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        }
    }
    panic!("no {controller} cgroup for {pid}: {text}");
}

/// Runs `script` with the credentials of a jailed process: `uid`, no
/// groups, no capabilities, `no_new_privs`; optionally inside the
/// namespaces of `target` first (`nsenter`). Returns stdout.
fn as_uid(uid: u32, target: Option<i32>, script: &str) -> String {
    let mut c = match target {
        Some(t) => {
            let mut c = Command::new("nsenter");
            c.arg("-t")
                .arg(t.to_string())
                .args(["-m", "-u", "-i", "-n", "-p", "--"]);
            c.arg("setpriv");
            c
        }
        None => Command::new("setpriv"),
    };
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args([
            "--clear-groups",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--no-new-privs",
            "--",
            "/bin/sh",
            "-c",
            script,
        ]);
    let o = c.stdin(Stdio::null()).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Issue 11 item 6. Once the VM runs, the supervisor that parses the
/// guest's frames is an unprivileged uid of its own with no capability at
/// all (bounding set included), under its seccomp filter; a compromised
/// supervisor, played here by a process with exactly its credentials,
/// cannot signal QEMU, touch the container state or the VM's cgroups, or
/// read the host's secrets. Teardown still leaves nothing, before `moat
/// run` returns.
#[test]
fn the_supervisor_gives_up_root_while_the_vm_runs() {
    let Some(mut vm) = start_ready(
        "the_supervisor_gives_up_root_while_the_vm_runs",
        &[
            "busybox",
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.2; done",
        ],
    ) else {
        return;
    };
    let pid = vm.r.pid();
    let uid = ids(&status_field(pid, "Uid:"));
    assert_eq!(uid.len(), 4);
    assert!(uid.iter().all(|&u| u == uid[0]), "{uid:?}");
    assert!(
        (moat_vm::jail::SUPERVISOR_UID_BASE..moat_vm::jail::SUPERVISOR_UID_BASE + 0x10000)
            .contains(&uid[0]),
        "{uid:?}"
    );
    assert_eq!(ids(&status_field(pid, "Gid:")), uid);
    assert_eq!(status_field(pid, "Groups:"), "");
    for f in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(status_field(pid, f), "0000000000000000", "{f}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    // Its /proc entries stay root's (not dumpable): not ptrace-able by its uid.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid(),
        0
    );

    let qemu = qemu_of(pid);
    assert_ne!(ids(&status_field(qemu, "Uid:"))[0], uid[0]);
    let containers = vm.env.state_root().join("containers");
    let state = std::fs::read_dir(&containers)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let pids_max = cgroup_dir(qemu, "pids").join("pids.max");
    let before = std::fs::read_to_string(&pids_max).unwrap();
    let out = as_uid(
        uid[0],
        None,
        &format!(
            "kill -0 {qemu} 2>/dev/null || echo no-kill
touch {state}/x 2>/dev/null || echo no-state
rm -rf {state} 2>/dev/null
echo 100000 > {pids} 2>/dev/null || echo no-cgroup
cat /etc/shadow >/dev/null 2>&1 || echo no-shadow",
            state = state.display(),
            pids = pids_max.display()
        ),
    );
    assert_eq!(out, "no-kill\nno-state\nno-cgroup\nno-shadow\n");
    // Checked as root: the run root is 0700, so the supervisor's uid cannot
    // even tell whether the state directory exists.
    assert!(state.is_dir(), "{}", state.display());
    assert_eq!(std::fs::read_to_string(&pids_max).unwrap(), before);
    assert!(!state.join("x").exists());

    send(pid, "TERM");
    let (st, err) = vm.r.wait();
    assert!(vm.r.rest().contains(&"got-term".to_string()), "{err}");
    assert_eq!(st.code(), Some(7), "{err}");
    // Nothing to wait for: moat returned after the cleanup watcher was done.
    assert_eq!(leftovers(&vm.env), Vec::<String>::new());
}

/// Issue 11 item 7. A compromised QEMU, played by a process that enters
/// QEMU's namespaces with QEMU's uid, no capabilities and `no_new_privs`,
/// sees no host process in `/proc`, a private `/dev/shm` (the host's files
/// invisible, its own writes never reaching the host), its own IPC
/// namespace (and so its own POSIX message queues and `/dev/mqueue`), and
/// lives under a pids limit.
#[test]
fn a_compromised_qemu_sees_only_its_own_namespace() {
    let marker = format!("/dev/shm/moat-vmhost-{}", std::process::id());
    let Some(mut vm) = start_ready(
        "a_compromised_qemu_sees_only_its_own_namespace",
        &["busybox", "sh", "-c", "echo ready; exec sleep 1000"],
    ) else {
        return;
    };
    std::fs::write(&marker, "host").unwrap();
    let qemu = qemu_of(vm.r.pid());
    let uid = ids(&status_field(qemu, "Uid:"))[0];
    let out = as_uid(
        uid,
        Some(qemu),
        "for p in /proc/[0-9]*; do echo \"proc $(cat $p/comm 2>/dev/null)\"; done
cat /proc/1/cmdline >/dev/null 2>&1 || echo pid1-hidden
echo \"shm $(ls -A /dev/shm | tr '\\n' ' ')\"
echo inside > /dev/shm/from-qemu && echo shm-private-writable
[ -d /dev/mqueue ] && { : > /dev/mqueue/from-qemu && echo mqueue-private-writable; }
true",
    );
    let procs: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("proc "))
        .collect();
    assert!(procs.contains(&"qemu-system-x86"), "{out}");
    for p in &procs {
        assert!(
            ["qemu-system-x86", "sh", "cat", "setpriv", "nsenter"].contains(p),
            "a process outside the VMM's own is visible: {p:?}\n{out}"
        );
    }
    assert!(out.contains("pid1-hidden\n"), "{out}");
    assert!(
        out.contains("shm \n"),
        "the host's /dev/shm shows through: {out}"
    );
    assert!(out.contains("shm-private-writable\n"), "{out}");
    assert!(!Path::new("/dev/shm/from-qemu").exists());
    if Path::new("/dev/mqueue").is_dir() {
        assert!(out.contains("mqueue-private-writable\n"), "{out}");
        assert!(!Path::new("/dev/mqueue/from-qemu").exists());
    }
    assert_ne!(
        std::fs::read_link(format!("/proc/{qemu}/ns/ipc")).unwrap(),
        std::fs::read_link("/proc/self/ns/ipc").unwrap()
    );
    let pids = cgroup_dir(qemu, "pids");
    let max: u64 = std::fs::read_to_string(pids.join("pids.max"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let now: u64 = std::fs::read_to_string(pids.join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(now > 1 && now < max && max <= 200, "{now} of {max}");

    send(vm.r.pid(), "TERM");
    let (st, err) = vm.r.wait();
    assert_eq!(st.code(), Some(143), "{err}");
    assert_eq!(leftovers(&vm.env), Vec::<String>::new());
    // The host's /dev/shm is as it was.
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "host");
    std::fs::remove_file(&marker).unwrap();
    assert!(!Path::new("/dev/shm/from-qemu").exists());
}

/// Issue 11 item 9. `moat kill` reaches the workload of a VM container: its
/// state names the supervisor with its start time, the supervisor forwards
/// the signal (a trap runs in the guest), a signal it cannot forward is
/// refused with a clear error, and SIGKILL ends the VM with nothing left.
#[test]
fn moat_kill_reaches_the_workload_of_a_vm_container() {
    let Some(mut vm) = start_ready(
        "moat_kill_reaches_the_workload_of_a_vm_container",
        &[
            "--name",
            "k1",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.2; done",
        ],
    ) else {
        return;
    };
    let o = vm.env.moat(&["ps"]).output().unwrap();
    assert!(common::stdout(&o).contains("k1"), "{}", common::stdout(&o));
    let o = vm.env.moat(&["kill", "k1", "USR1"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    vm.r.wait_line("got-usr1");
    let o = vm.env.moat(&["kill", "k1", "STOP"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "moat: error: container \"k1\" runs in a micro-VM, whose supervisor forwards only INT, TERM, HUP, QUIT, USR1 and USR2 (KILL ends the VM); signal \"STOP\" cannot reach it\n"
    );
    let o = vm.env.moat(&["kill", "k1"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (st, _) = vm.r.wait();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(9), "{st}");
    assert_nothing_left(&vm.env);
    let o = vm.env.moat(&["kill", "k1"]).output().unwrap();
    assert_eq!(
        stderr(&o),
        "moat: error: no running container named \"k1\" (see `moat ps`)\n"
    );
}

/// Issue 23 item 8, host part. The VMM's host cgroups carry the policy's
/// CPU bandwidth (`cpus: 0.5` is half a CPU, not the whole vCPU), a pids
/// limit and the memory limit (guest memory plus the VMM's overhead).
#[test]
fn the_vmm_cgroups_carry_cpu_pids_and_memory_limits() {
    let env = Env::new();
    if !vm_ready(&env, "the_vmm_cgroups_carry_cpu_pids_and_memory_limits") {
        return;
    }
    let policy = env.dir.path().join("half.yaml");
    std::fs::write(
        &policy,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: half\nspec:\n  extends: baseline\n  resources:\n    memory: 128Mi\n    cpus: 0.5\n",
    )
    .unwrap();
    let lock = vm_lock();
    import_test_image(&env);
    let mut r = Running::spawn(vm_command(
        &env,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "busybox",
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
        ],
    ));
    r.wait_line("ready");
    let qemu = qemu_of(r.pid());
    let read = |dir: &Path, f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()))
            .trim()
            .to_string()
    };
    let cpu = cgroup_dir(qemu, "cpu");
    if cpu.join("cpu.max").exists() {
        assert_eq!(read(&cpu, "cpu.max"), "50000 100000");
    } else {
        assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
    }
    let pids = cgroup_dir(qemu, "pids");
    assert_eq!(read(&pids, "pids.max"), "98");
    let mem = cgroup_dir(qemu, "memory");
    let limit = if mem.join("memory.max").exists() {
        read(&mem, "memory.max")
    } else {
        read(&mem, "memory.limit_in_bytes")
    };
    // 128 MiB of guest memory plus TCG's overhead (2 x 32 MiB translation cache + 128 MiB).
    assert_eq!(limit, ((128 + 192) << 20).to_string());
    send(r.pid(), "TERM");
    let (st, err) = r.wait();
    assert_eq!(st.code(), Some(143), "{err}");
    assert_eq!(leftovers(&env), Vec::<String>::new());
    drop(lock);
}

/// A host user made for one test (`useradd`), removed on drop.
struct TestUser {
    name: String,
    uid: u32,
}

impl TestUser {
    fn new(name: &str) -> TestUser {
        let _ = Command::new("userdel").arg(name).output();
        let o = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/bin/false",
                name,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "useradd {name}: {}", stderr(&o));
        let o = Command::new("id").args(["-u", name]).output().unwrap();
        let uid = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
        TestUser {
            name: name.to_string(),
            uid,
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// Issue 11 item 11. A `moat` binary copied to a directory anyone can write
/// to (as `/tmp/x/`) no longer boots whatever another user planted where it
/// looks for the agent: the agent must be root's, in directories only root
/// can write to, or moat refuses it naming the path and its mode.
#[test]
fn a_planted_agent_is_refused() {
    let env = Env::new();
    if !vm_ready(&env, "a_planted_agent_is_refused") {
        return;
    }
    let _lock = vm_lock();
    import_test_image(&env);
    let user = TestUser::new("moat-vmhost-1");
    let x = tempfile::Builder::new()
        .prefix("moat-vmhost-x-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(x.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = x.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let moat = bin.join("moat");
    std::fs::copy(env!("CARGO_BIN_EXE_moat"), &moat).unwrap();
    // What the other user plants where a build-tree moat looks.
    let planted_dir = x.path().join("x86_64-unknown-linux-gnu/release");
    std::fs::create_dir_all(&planted_dir).unwrap();
    let planted = planted_dir.join("moat-agent");
    std::fs::write(&planted, b"#!/bin/sh\necho pwned\n").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&planted, Some(user.uid), None).unwrap();
    let run = || {
        Command::new(&moat)
            .arg("--root")
            .arg(env.state_root())
            .args([
                "run",
                "--isolation",
                "vm",
                "--accel",
                "tcg",
                "busybox",
                "true",
            ])
            .env_remove("MOAT_AGENT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = run();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "moat: error: refusing guest agent {p}: the file {p} is owned by uid {u} (mode 0755); moat boots only an agent that root owns in directories only root can write to: install it as root (`install -o root -m 0755`) or point MOAT_AGENT at such a copy\n",
            p = planted.display(),
            u = user.uid
        )
    );
    // Root's own file there is no better: anyone may replace it.
    std::os::unix::fs::chown(&planted, Some(0), None).unwrap();
    let o = run();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "moat: error: refusing guest agent {p}: its directory {d} is writable by others (mode 0777); moat boots only an agent that nobody but root can replace: `chmod go-w {d}`, or install the agent elsewhere and point MOAT_AGENT at it\n",
            p = planted.display(),
            d = x.path().display()
        )
    );
    // MOAT_AGENT is checked the same way.
    let o = env
        .moat(&[
            "run",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "busybox",
            "true",
        ])
        .env("MOAT_AGENT", &planted)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!(
            "moat: error: refusing guest agent {}: its directory {} is writable by others (mode 0777)",
            planted.display(),
            x.path().display()
        )),
        "{}",
        stderr(&o)
    );
    assert_eq!(leftovers(&env), Vec::<String>::new());
    drop(user);
}

/// Issue 12 item 5. Where micro-VMs would have no hardware accelerator,
/// `--isolation auto` (the default) runs the sandbox and says so once, in
/// the user's terms (never QEMU's "failed to initialize kvm"), with how to
/// force the VM; `--quiet` and an explicit `--isolation sandbox` print
/// nothing.
#[test]
fn auto_says_once_why_it_runs_the_sandbox() {
    let env = Env::new();
    if !can_sandbox("auto_says_once_why_it_runs_the_sandbox") {
        return;
    }
    if moat_vm::accelerator_works(&env.state_root()) {
        println!(
            "SKIP: auto_says_once_why_it_runs_the_sandbox: KVM works here, so auto picks the vm"
        );
        return;
    }
    import_test_image(&env);
    let o = env
        .moat(&["run", "busybox", "echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(common::stdout(&o), "hi\n");
    let why = moat_vm::why_no_accelerator(&env.state_root()).unwrap();
    assert_eq!(
        stderr(&o),
        format!(
            "moat: --isolation auto runs this container in the sandbox (namespaces on this host's kernel), not in a micro-VM: {why}. `--isolation vm` runs a micro-VM anyway, under software emulation (slower); `--isolation sandbox` or --quiet hides this notice.\n"
        )
    );
    assert!(!why.contains("failed to initialize"), "{why}");
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/dev/kvm") {
        _ if why.starts_with("no guest kernel is built") => {}
        Err(_) => assert!(why.contains("there is no /dev/kvm"), "{why}"),
        Ok(m) if m.mode() & 0o066 == 0 && Path::new("/usr/bin/qemu-system-x86_64").exists() => {
            assert!(
                why.contains(&format!(
                    "/dev/kvm may be opened by root only (mode {:04o})",
                    m.mode() & 0o7777
                )),
                "{why}"
            )
        }
        Ok(_) => {}
    }
    for quiet in [
        &["run", "--quiet", "busybox", "echo", "hi"][..],
        &["run", "-q", "busybox", "echo", "hi"],
        &["run", "--isolation", "sandbox", "busybox", "echo", "hi"],
    ] {
        let o = env.moat(quiet).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{quiet:?}: {}", stderr(&o));
        assert_eq!(
            (common::stdout(&o).as_str(), stderr(&o).as_str()),
            ("hi\n", ""),
            "{quiet:?}"
        );
    }
}

/// A 96 MiB policy for the memory tests.
fn small_policy(env: &Env) -> PathBuf {
    let policy = env.dir.path().join("small.yaml");
    std::fs::write(
        &policy,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: small\nspec:\n  extends: baseline\n  resources:\n    memory: 96Mi\n",
    )
    .unwrap();
    policy
}

/// A workload that doubles a string until memory runs out.
const HOG: &str = "exec awk 'BEGIN { s = \"x\"; while (1) s = s s }'";

/// Issue 12 item 13, VM side. A workload that outgrows the container's
/// memory limit is killed by the guest's OOM killer, and moat says so in
/// the sandbox's words instead of a bare exit 137.
#[test]
fn a_vm_container_killed_by_its_memory_limit_says_so() {
    let env = Env::new();
    if !vm_ready(&env, "a_vm_container_killed_by_its_memory_limit_says_so") {
        return;
    }
    let policy = small_policy(&env);
    let _lock = vm_lock();
    import_test_image(&env);
    let o = vm_command(
        &env,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "busybox",
            "sh",
            "-c",
            &format!("echo start; {HOG}"),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(common::stdout(&o), "start\n");
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "moat: the workload was killed by the container's memory limit of 96 MiB (exit 137); raise resources.memory in the policy\n"
    );
    assert_eq!(leftovers(&env), Vec::<String>::new());
}

/// Issue 12 item 13, host side: when the VMM itself reaches its host
/// cgroup's memory limit (here lowered under it while the guest runs, as
/// a leaking VMM would), the kernel kills QEMU, and moat reads the cgroup's
/// OOM counter and says the memory limit killed the workload.
#[test]
fn a_vmm_killed_by_its_host_memory_limit_says_so() {
    let Some(mut vm) = start_ready(
        "a_vmm_killed_by_its_host_memory_limit_says_so",
        &[
            "busybox",
            "sh",
            "-c",
            &format!("echo ready; sleep 3; {HOG}"),
        ],
    ) else {
        return;
    };
    let qemu = qemu_of(vm.r.pid());
    let mem = cgroup_dir(qemu, "memory");
    let (usage, limit_file) = if mem.join("memory.max").exists() {
        ("memory.current", "memory.max")
    } else {
        ("memory.usage_in_bytes", "memory.limit_in_bytes")
    };
    let used: u64 = std::fs::read_to_string(mem.join(usage))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let lower = used + (8 << 20);
    std::fs::write(mem.join(limit_file), lower.to_string()).unwrap();
    let (st, err) = vm.r.wait();
    assert_eq!(st.code(), Some(137), "{err}");
    assert_eq!(
        err,
        format!(
            "moat: the workload was killed by the container's memory limit of 512 MiB (exit 137: its micro-VM reached the host limit of {} MiB, guest memory plus the VMM's own); raise resources.memory in the policy\n",
            lower >> 20
        )
    );
    assert_eq!(leftovers(&vm.env), Vec::<String>::new());
}

/// What VMs left behind (see `vm_host::leftovers`), records under `env`.
fn leftovers(env: &Env) -> Vec<String> {
    vm_host::leftovers(&env.state_root().join("containers"))
}

fn assert_nothing_left(env: &Env) {
    vm_host::assert_nothing_left(&env.state_root().join("containers"))
}
