//! The cgroup layer on this host's real cgroupfs, with real processes:
//! the v1 hierarchies alone (limits, figures, freezer, kill, removal),
//! the unified hierarchy alone (`cgroup.freeze`, `cgroup.kill`,
//! `cpu.stat`; on a hybrid host it carries no controller), and the
//! host's own mix through the by-ID functions. Needs root; skipped
//! (with a notice) without it or without the hierarchy a test needs.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_cgroup::{Cgroup, Hierarchies, KillMethod, Name, Version};
use moat_policy::plan::CgroupLimits;

fn root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A fresh container ID for each test (tests run in parallel).
fn new_id(tag: u64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!("{:016x}{:016x}", std::process::id() as u64 * 1000 + tag, t)
}

fn alive(c: &mut Child) -> bool {
    matches!(c.try_wait(), Ok(None))
}

/// A shell that joins the groups itself (before its first fork), then
/// counts into `counter` and keeps forking sleepers.
fn busy_shell(cg: &Cgroup, counter: &Path) -> Child {
    let joins: Vec<String> = cg
        .procs_files()
        .iter()
        .map(|p| format!("echo $$ > {} || exit 1;", p.display()))
        .collect();
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} i=0; while :; do i=$((i+1)); echo $i > {}; (sleep 600 &); sleep 0.01; done",
            joins.join(" "),
            counter.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn count(counter: &Path) -> u64 {
    fs::read_to_string(counter)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Freeze stops the shell (its counter stands still), thaw lets it go
/// on, kill_all empties the groups (the forked sleepers too) without
/// touching a bystander, remove leaves nothing.
fn freeze_thaw_kill_remove(cg: &Cgroup, tmp: &Path) {
    let counter = tmp.join("counter");
    let mut bystander = Command::new("sleep").arg("600").spawn().unwrap();
    let mut shell = busy_shell(cg, &counter);
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&counter) < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(count(&counter) >= 5, "the shell did not start counting");
    assert!(cg.stats().pids.is_none_or(|p| p > 1), "{:?}", cg.stats());

    cg.freeze().unwrap();
    assert!(cg.is_frozen());
    let at_freeze = count(&counter);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&counter), at_freeze, "a frozen shell kept counting");
    cg.thaw().unwrap();
    assert!(!cg.is_frozen());
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&counter) <= at_freeze && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(count(&counter) > at_freeze, "a thawed shell did not go on");

    cg.kill_all().unwrap();
    for f in cg.procs_files() {
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            "",
            "{} not empty",
            f.display()
        );
    }
    let status = shell.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(
        alive(&mut bystander),
        "a process outside the group was killed"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();

    cg.remove().unwrap();
    for d in cg.paths() {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn v1_hierarchies_for_real() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let host = Hierarchies::host().unwrap();
    let h = Hierarchies::new(None, host.v1().to_vec());
    let (Some((Version::V1, _)), Some((Version::V1, _)), Some((Version::V1, _))) =
        (h.find("memory"), h.find("pids"), h.find("freezer"))
    else {
        eprintln!("skipped: no v1 memory, pids and freezer hierarchies here");
        return;
    };
    let id = new_id(1);
    let limits = CgroupLimits {
        memory_bytes: Some(64 << 20),
        pids: Some(50),
        cpu_millis: h.find("cpu").map(|_| 500),
    };
    let cg = Cgroup::create(&h, &Name::sandbox(&id).unwrap(), &limits).unwrap();
    let dir = |c: &str| h.find(c).unwrap().1.join("moat").join(&id);
    let read = |p: std::path::PathBuf| fs::read_to_string(&p).unwrap().trim().to_string();
    assert_eq!(
        read(dir("memory").join("memory.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(read(dir("pids").join("pids.max")), "50");
    if limits.cpu_millis.is_some() {
        assert_eq!(read(dir("cpu").join("cpu.cfs_quota_us")), "50000");
    }
    assert_eq!(
        cg.kill_method(),
        KillMethod::Freeze(Version::V1, dir("freezer"))
    );

    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    cg.add(sleeper.id() as i32).unwrap();
    let s = cg.stats();
    assert_eq!(s.pids, Some(1), "{s:?}");
    assert!(s.memory_bytes.is_some(), "{s:?}");
    if h.find("cpuacct").is_some() {
        assert!(s.cpu_usec.is_some(), "{s:?}");
    }
    assert_eq!(cg.oom_kills(), 0);
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    let tmp = tempfile::tempdir().unwrap();
    freeze_thaw_kill_remove(&cg, tmp.path());
}

#[test]
fn unified_hierarchy_for_real() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let host = Hierarchies::host().unwrap();
    let Some(v2) = host.v2() else {
        eprintln!("skipped: no cgroup2 mount here");
        return;
    };
    let h = Hierarchies::new(Some(v2.to_path_buf()), Vec::new());
    let id = new_id(2);
    let cg = Cgroup::create(&h, &Name::vm(&id).unwrap(), &CgroupLimits::default()).unwrap();
    let dir = v2.join("moat").join(format!("vm-{id}"));
    assert_eq!(cg.paths(), vec![dir.clone()]);
    if !dir.join("cgroup.kill").exists() {
        eprintln!("skipped: no cgroup.kill (Linux < 5.14)");
        cg.remove().unwrap();
        return;
    }
    assert_eq!(cg.kill_method(), KillMethod::CgroupKill(dir.clone()));
    let mut spinner = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs || exit 1; while :; do :; done",
            dir.display()
        ))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let s = cg.stats();
    assert!(s.cpu_usec.is_some_and(|u| u > 0), "cpu.stat: {s:?}");
    let _ = spinner.kill();
    let _ = spinner.wait();

    let tmp = tempfile::tempdir().unwrap();
    freeze_thaw_kill_remove(&cg, tmp.path());
}

#[test]
fn by_id_on_the_host_mix() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let h = Hierarchies::host().unwrap();
    let id = new_id(3);
    assert!(moat_cgroup::stats_for(&id).is_none());
    moat_cgroup::cleanup(&id).unwrap();
    let cg = Cgroup::create(&h, &Name::vm(&id).unwrap(), &CgroupLimits::default()).unwrap();
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    cg.add(sleeper.id() as i32).unwrap();
    let found = moat_cgroup::find(&id).unwrap().expect("found by ID");
    assert_eq!(found.paths(), cg.paths());
    for d in cg.paths() {
        assert_eq!(moat_cgroup::confined(&d), Some(d.clone()));
    }
    let s = moat_cgroup::stats_for(&id).unwrap();
    if h.find("pids").is_some() {
        assert_eq!(s.pids, Some(1), "{s:?}");
    }
    // Cleanup by ID kills what is inside and removes every group.
    moat_cgroup::cleanup(&id).unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&sleeper.wait().unwrap()),
        Some(9)
    );
    for d in cg.paths() {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(moat_cgroup::find(&id).unwrap().is_none());
    // Nothing outside `<hierarchy>/moat/<name>` is confined.
    let memory = h.find("memory").map(|(_, m)| m.to_path_buf()).unwrap();
    for p in [
        memory.join("moat/../x"),
        memory.join("moat"),
        "/tmp".into(),
        memory.join("moat").join(&id),
    ] {
        assert_eq!(moat_cgroup::confined(&p), None, "{}", p.display());
    }
}
