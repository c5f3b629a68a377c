//! bench/pod's measurement (ignored in the normal run; bench/pod runs it):
//! through containerd's CRI plugin, the time from RunPodSandbox through
//! CreateContainer and StartContainer to the container running, and the
//! host memory (PSS) of the idle pod: its shim and every process under it
//! (pause, workload, for a VM the helper and QEMU). For runtime handler
//! `moat` in the sandbox and in a micro-VM, and `runc` through containerd's
//! runc v2 shim on the same containerd, alternating, RUNS times each
//! (default 10; RUNS_VM for the VM, default 3). Medians.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cri::{container_config, pod_config, Cri};
use common::{Containerd, IMAGE};

fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pids of `root` and every descendant.
fn tree(root: i32) -> Vec<i32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        let children = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|s| {
                s.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect::<Vec<i32>>()
            });
        all.extend(children);
        i += 1;
    }
    all
}

fn pss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The shim process serving the pod: a child of nobody we know, found by
/// its `-id` argument (the pod's sandbox id).
fn shim_of(pod: &str) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| String::from_utf8_lossy(a).contains("containerd-shim"));
        if is_shim
            && args
                .windows(2)
                .any(|w| w[0] == b"-id" && w[1] == pod.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

struct Sample {
    ms: f64,
    kib: u64,
}

fn one(c: &Containerd, cri: &Cri, handler: &str, isolation: &str, n: usize) -> Sample {
    let logs = c.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let name = format!("{handler}-{isolation}-{n}");
    let pod = pod_config(&name, &logs, &[("moat.dev/isolation", isolation)]);
    let t = Instant::now();
    let pod_id = cri
        .run_pod(&pod, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox {handler}: {e}\n{}", c.log()));
    let cfg = container_config("app", IMAGE, &["sleep", "600"]);
    let id = cri
        .create_container(&pod_id, cfg, &pod)
        .unwrap_or_else(|e| panic!("CreateContainer {handler}: {e}\n{}", c.log()));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("StartContainer {handler}: {e}\n{}", c.log()));
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_secs(1));
    let kib = shim_of(&pod_id)
        .map(|s| tree(s).into_iter().map(pss_kib).sum())
        .unwrap_or(0);
    cri.stop_pod(&pod_id).unwrap();
    cri.remove_pod(&pod_id).unwrap();
    Sample { ms, kib }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
#[ignore = "a benchmark: run by bench/pod"]
fn bench_pod() {
    if !common::ready("bench_pod", &["ip", "runc"]) || !Path::new("/usr/lib/cni/bridge").exists() {
        panic!("bench/pod needs root, containerd, runc and containernetworking-plugins");
    }
    let c = Containerd::start_with(true, true);
    c.import_cri_images();
    let cri = Cri::connect(&c.socket());
    let runs = env_n("RUNS", 10);
    let mut moat = Vec::new();
    let mut runc = Vec::new();
    // One warm-up each (image unpack, first shim start).
    one(&c, &cri, "moat", "sandbox", 0);
    one(&c, &cri, "runc", "sandbox", 0);
    for n in 1..=runs {
        moat.push(one(&c, &cri, "moat", "sandbox", n));
        runc.push(one(&c, &cri, "runc", "sandbox", n));
    }
    let vm = if common::vm_ready("bench_pod vm", &[]) {
        (1..=env_n("RUNS_VM", 3))
            .map(|n| one(&c, &cri, "moat", "vm", n))
            .collect()
    } else {
        Vec::new()
    };
    let ms = |v: &[Sample]| median(v.iter().map(|s| s.ms).collect());
    let mib = |v: &[Sample]| median(v.iter().map(|s| s.kib as f64 / 1024.0).collect());
    println!(
        "moat-sandbox: {:.0} ms to running, idle pod {:.1} MiB PSS ({} runs)",
        ms(&moat),
        mib(&moat),
        moat.len()
    );
    println!(
        "runc: {:.0} ms to running, idle pod {:.1} MiB PSS ({} runs)",
        ms(&runc),
        mib(&runc),
        runc.len()
    );
    let vm_ms = if vm.is_empty() {
        println!("moat-vm: skipped (no guest kernel or QEMU)");
        "n/a".to_string()
    } else {
        println!(
            "moat-vm: {:.0} ms to running, idle pod {:.1} MiB PSS ({} runs)",
            ms(&vm),
            mib(&vm),
            vm.len()
        );
        format!("{:.0}", ms(&vm))
    };
    println!(
        "pod: moat-sandbox {:.0} ms, runc {:.0} ms, ratio {:.2}; moat-vm {vm_ms} ms",
        ms(&moat),
        ms(&runc),
        ms(&moat) / ms(&runc)
    );
}
