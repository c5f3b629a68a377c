//! The cgroup layer against fake cgroupfs trees in a temporary directory
//! (the kernel's file names, plain files): what is written where on a pure
//! v2 host and on a hybrid one. Runs without root.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moat_cgroup::{Cgroup, CgroupError, Hierarchies, KillMethod, Name, Stats, Version};
use moat_policy::plan::CgroupLimits;

const ID: &str = "0123456789abcdef0123456789abcdef";

fn read(p: impl AsRef<Path>) -> String {
    fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

/// A unified hierarchy at `<tmp>/v2` offering `controllers`.
fn v2_root(tmp: &Path, controllers: &str) -> PathBuf {
    let root = tmp.join("v2");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("cgroup.controllers"), controllers).unwrap();
    fs::write(root.join("cgroup.subtree_control"), "").unwrap();
    root
}

fn limits(memory: Option<u64>, pids: Option<u64>, cpu: Option<u64>) -> CgroupLimits {
    CgroupLimits {
        memory_bytes: memory,
        pids,
        cpu_millis: cpu,
    }
}

fn fast(h: Hierarchies) -> Hierarchies {
    h.with_patience(Duration::from_millis(100))
}

#[test]
fn pure_v2_writes_limits_and_enables_controllers_on_both_levels() {
    let tmp = tempfile::tempdir().unwrap();
    let root = v2_root(tmp.path(), "cpuset cpu io memory hugetlb pids rdma misc\n");
    let h = fast(Hierarchies::new(Some(root.clone()), Vec::new()));
    let name = Name::sandbox(ID).unwrap();
    let cg = Cgroup::create(&h, &name, &limits(Some(64 << 20), Some(40), Some(500))).unwrap();
    let dir = root.join("moat").join(ID);
    assert_eq!(cg.paths(), vec![dir.clone()], "one directory on pure v2");
    assert_eq!(
        read(root.join("cgroup.subtree_control")),
        "+memory +pids +cpu"
    );
    assert_eq!(
        read(root.join("moat/cgroup.subtree_control")),
        "+memory +pids +cpu"
    );
    assert_eq!(read(dir.join("memory.max")), "67108864");
    assert_eq!(read(dir.join("pids.max")), "40");
    assert_eq!(read(dir.join("cpu.max")), "50000 100000");
    // No swap accounting in this tree: memory.swap.max is not invented.
    assert!(!dir.join("memory.swap.max").exists());
    assert!(!dir.join("memory.limit_in_bytes").exists());
    assert_eq!(cg.memory_limit_path(), Some(dir.join("memory.max")));
    assert_eq!(cg.oom_events_path(), Some(dir.join("memory.events")));

    cg.add(4242).unwrap();
    assert_eq!(read(dir.join("cgroup.procs")), "4242");
    assert_eq!(cg.procs_files(), vec![dir.join("cgroup.procs")]);

    fs::write(dir.join("memory.current"), "123456\n").unwrap();
    fs::write(dir.join("pids.current"), "3\n").unwrap();
    fs::write(
        dir.join("cpu.stat"),
        "usage_usec 98765\nuser_usec 90000\nsystem_usec 8765\n",
    )
    .unwrap();
    fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\n",
    )
    .unwrap();
    let want = Stats {
        memory_bytes: Some(123456),
        cpu_usec: Some(98765),
        pids: Some(3),
    };
    assert_eq!(cg.stats(), want);
    assert_eq!(cg.oom_kills(), 2);
    // The same figures for a cgroup found by name, as after a restart.
    let again = Cgroup::open(&h, &name).expect("found by name");
    assert_eq!(again.paths(), cg.paths());
    assert_eq!(again.stats(), want);
    assert!(Cgroup::open(&h, &Name::vm(ID).unwrap()).is_none());
}

#[test]
fn v2_enables_only_what_is_missing_and_cpu_only_for_a_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = v2_root(tmp.path(), "cpu memory pids\n");
    fs::write(root.join("cgroup.subtree_control"), "memory\n").unwrap();
    let h = fast(Hierarchies::new(Some(root.clone()), Vec::new()));
    let cg = Cgroup::create(
        &h,
        &Name::vm(ID).unwrap(),
        &limits(Some(1 << 30), None, Some(5)),
    )
    .unwrap();
    let dir = root.join("moat").join(format!("vm-{ID}"));
    assert_eq!(read(root.join("cgroup.subtree_control")), "+pids +cpu");
    // Below 1 ms the kernel refuses a quota: 5 millicpus become 1 ms.
    assert_eq!(read(dir.join("cpu.max")), "1000 100000");
    assert!(
        !dir.join("pids.max").exists(),
        "no pids limit, nothing written"
    );
    drop(cg);

    let tmp = tempfile::tempdir().unwrap();
    let root = v2_root(tmp.path(), "cpu memory pids\n");
    let h = fast(Hierarchies::new(Some(root.clone()), Vec::new()));
    Cgroup::create(&h, &Name::sandbox(ID).unwrap(), &CgroupLimits::default()).unwrap();
    assert_eq!(read(root.join("cgroup.subtree_control")), "+memory +pids");
}

#[test]
fn a_limit_without_its_controller_is_refused_with_the_remedy() {
    let tmp = tempfile::tempdir().unwrap();
    let root = v2_root(tmp.path(), "memory pids\n");
    let h = fast(Hierarchies::new(Some(root.clone()), Vec::new()));
    let err = Cgroup::create(
        &h,
        &Name::sandbox(ID).unwrap(),
        &limits(None, None, Some(500)),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no cgroup hierarchy (v1 or v2) offers the cpu controller, which the cpu limit needs; enable it (mount it on v1, or add it to cgroup.subtree_control on v2), or remove the limit from the policy if it sets one"
    );
    assert!(!root.join("moat").exists(), "nothing created");
}

/// Plays the kernel's part for `cgroup.freeze`: mirrors it into
/// `cgroup.events` until dropped.
struct FakeFreezer(Arc<AtomicBool>);

impl FakeFreezer {
    fn start(dir: PathBuf) -> FakeFreezer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(v) = fs::read_to_string(dir.join("cgroup.freeze")) {
                    let _ = fs::write(
                        dir.join("cgroup.events"),
                        format!("populated 1\nfrozen {}\n", v.trim()),
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        FakeFreezer(stop)
    }
}

impl Drop for FakeFreezer {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn v2_freezes_through_cgroup_freeze_and_kills_through_cgroup_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let root = v2_root(tmp.path(), "memory pids\n");
    let h = fast(Hierarchies::new(Some(root.clone()), Vec::new()));
    let name = Name::sandbox(ID).unwrap();
    let cg = Cgroup::create(&h, &name, &CgroupLimits::default()).unwrap();
    let dir = root.join("moat").join(ID);

    // A kernel before 5.2 (no cgroup.freeze) and no v1 freezer.
    assert_eq!(
        cg.freeze().unwrap_err().to_string(),
        format!("cgroup {ID} has no freezer: neither cgroup.freeze (cgroup v2, Linux 5.2) nor a v1 freezer hierarchy is available; mount the v1 freezer or use cgroup v2")
    );
    assert_eq!(cg.kill_method(), KillMethod::Procs(dir.clone()));

    fs::write(dir.join("cgroup.freeze"), "0\n").unwrap();
    fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    let fake = FakeFreezer::start(dir.clone());
    cg.freeze().unwrap();
    assert_eq!(read(dir.join("cgroup.freeze")), "1");
    assert!(cg.is_frozen());
    cg.thaw().unwrap();
    assert_eq!(read(dir.join("cgroup.freeze")), "0");
    assert!(!cg.is_frozen());
    assert_eq!(
        cg.kill_method(),
        KillMethod::Freeze(Version::V2, dir.clone())
    );
    drop(fake);
    std::thread::sleep(Duration::from_millis(20));

    // A freeze the kernel never confirms is an error naming the group.
    fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    assert_eq!(
        cg.freeze().unwrap_err().to_string(),
        format!(
            "cgroup {} did not reach the frozen state within 100ms",
            dir.display()
        )
    );

    fs::write(dir.join("cgroup.kill"), "").unwrap();
    fs::write(dir.join("cgroup.procs"), "").unwrap();
    assert_eq!(cg.kill_method(), KillMethod::CgroupKill(dir.clone()));
    cg.kill_all().unwrap();
    assert_eq!(read(dir.join("cgroup.kill")), "1");

    // A member that never goes away: the error names the group.
    fs::write(dir.join("cgroup.procs"), "2147483000\n").unwrap();
    let err: CgroupError = cg.kill_all().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "processes of cgroup {} are still running 100ms after SIGKILL",
            dir.display()
        )
    );
}

#[test]
fn hybrid_puts_controllers_on_v1_and_kill_and_freeze_on_whatever_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let root = v2_root(tmp.path(), "hugetlb\n");
    let v1 = |c: &str| {
        let d = tmp.path().join(c);
        fs::create_dir_all(&d).unwrap();
        (d, c.split(',').map(str::to_string).collect::<Vec<_>>())
    };
    let h = fast(Hierarchies::new(
        Some(root.clone()),
        vec![
            v1("memory"),
            v1("pids"),
            v1("cpu,cpuacct"),
            v1("freezer"),
            v1("devices"),
        ],
    ));
    let name = Name::vm(ID).unwrap();
    let cg = Cgroup::create(&h, &name, &limits(Some(256 << 20), Some(100), Some(2000))).unwrap();
    let at = |h: &str| tmp.path().join(h).join("moat").join(format!("vm-{ID}"));
    assert_eq!(
        cg.paths(),
        vec![at("memory"), at("pids"), at("cpu,cpuacct"), at("v2"), at("freezer")],
        "one group per controller, the unified group, and the v1 freezer (this unified group cannot freeze)"
    );
    // The unified hierarchy offers none of them: nothing enabled there.
    assert_eq!(read(root.join("cgroup.subtree_control")), "");
    assert_eq!(
        read(at("memory").join("memory.limit_in_bytes")),
        "268435456"
    );
    assert_eq!(read(at("pids").join("pids.max")), "100");
    assert_eq!(read(at("cpu,cpuacct").join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(at("cpu,cpuacct").join("cpu.cfs_quota_us")), "200000");
    assert_eq!(
        cg.oom_events_path(),
        Some(at("memory").join("memory.oom_control"))
    );

    cg.add(77).unwrap();
    for f in cg.procs_files() {
        assert_eq!(read(&f), "77", "{}", f.display());
    }
    fs::write(at("memory").join("memory.usage_in_bytes"), "4096\n").unwrap();
    fs::write(
        at("memory").join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    )
    .unwrap();
    fs::write(at("v2").join("cpu.stat"), "usage_usec 5\n").unwrap();
    assert_eq!(
        cg.stats(),
        Stats {
            memory_bytes: Some(4096),
            cpu_usec: Some(5),
            pids: None
        }
    );
    assert_eq!(cg.oom_kills(), 1);

    // The v1 freezer freezes; cgroup.kill in the unified group kills.
    fs::write(at("freezer").join("freezer.state"), "THAWED\n").unwrap();
    assert_eq!(
        cg.kill_method(),
        KillMethod::Freeze(Version::V1, at("freezer"))
    );
    cg.freeze().unwrap();
    assert_eq!(read(at("freezer").join("freezer.state")), "FROZEN");
    cg.thaw().unwrap();
    assert_eq!(read(at("freezer").join("freezer.state")), "THAWED");
    fs::write(at("v2").join("cgroup.kill"), "").unwrap();
    assert_eq!(cg.kill_method(), KillMethod::CgroupKill(at("v2")));
    for f in cg.procs_files() {
        fs::write(f, "").unwrap();
    }
    cg.kill_all().unwrap();
    assert_eq!(read(at("v2").join("cgroup.kill")), "1");
}

#[test]
fn pure_v1_takes_cpu_time_from_cpuacct() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = |c: &str| {
        let d = tmp.path().join(c);
        fs::create_dir_all(&d).unwrap();
        (d, vec![c.to_string()])
    };
    let h = fast(Hierarchies::new(
        None,
        vec![v1("memory"), v1("cpuacct"), v1("freezer")],
    ));
    let cg = Cgroup::create(&h, &Name::sandbox(ID).unwrap(), &CgroupLimits::default()).unwrap();
    let at = |h: &str| tmp.path().join(h).join("moat").join(ID);
    assert_eq!(cg.paths(), vec![at("memory"), at("cpuacct"), at("freezer")]);
    fs::write(at("cpuacct").join("cpuacct.usage"), "7000000\n").unwrap();
    assert_eq!(cg.stats().cpu_usec, Some(7000));
    assert_eq!(
        Cgroup::create(&h, &Name::sandbox(ID).unwrap(), &limits(None, Some(1), None))
            .unwrap_err()
            .to_string(),
        "no cgroup hierarchy (v1 or v2) offers the pids controller, which the pids limit needs; enable it (mount it on v1, or add it to cgroup.subtree_control on v2), or remove the limit from the policy if it sets one"
    );
}

#[test]
fn removal_retries_then_names_the_group_it_could_not_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let root = v2_root(tmp.path(), "memory pids\n");
    let h = fast(Hierarchies::new(Some(root.clone()), Vec::new()));
    let cg = Cgroup::create(
        &h,
        &Name::sandbox(ID).unwrap(),
        &limits(Some(1 << 20), None, None),
    )
    .unwrap();
    // A plain directory with files cannot be removed (on cgroupfs the
    // kernel's interface files go with the directory).
    let err = cg.remove().unwrap_err();
    let dir = root.join("moat").join(ID);
    assert_eq!(
        err.to_string(),
        format!("cannot remove cgroup {}", dir.display())
    );
    fs::remove_file(dir.join("memory.max")).unwrap();
    cg.remove().unwrap();
    assert!(!dir.exists());
    cg.remove().unwrap();
    assert!(Cgroup::open(&h, cg.name()).is_none());
}
