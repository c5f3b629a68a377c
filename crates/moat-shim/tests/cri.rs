//! Kubernetes as the kubelet drives it, at the CRI level (no kubelet can
//! be installed here): a CRI client calls containerd 1.6's CRI plugin,
//! which runs pods with runtime handler `moat` through the shim. The pod
//! network is CNI's bridge inside containerd's own network namespace
//! (addresses in 10.231.0.0/24), the pause image is busybox waiting for a
//! signal. Needs root, containerd and containernetworking-plugins.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cri::{container_config, pod_config, Cri, CONTAINER_EXITED, CONTAINER_RUNNING};
use common::{wait_until, Containerd, IMAGE};

fn start(test: &str) -> Option<(Containerd, Cri)> {
    if !common::ready(test, &["ip"]) {
        return None;
    }
    if !Path::new("/usr/lib/cni/bridge").exists() {
        println!(
            "SKIP: {test}: containernetworking-plugins is not installed (run scripts/bootstrap)"
        );
        return None;
    }
    let c = Containerd::start(true);
    c.import_cri_images();
    let cri = Cri::connect(&c.socket());
    Some((c, cri))
}

fn exec_out(cri: &Cri, id: &str, cmd: &[&str]) -> String {
    let r = cri
        .exec_sync(id, cmd)
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {id}: {e}"));
    assert_eq!(
        r.exit_code,
        0,
        "ExecSync {cmd:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// A pod of two containers with isolation `sandbox`: one shim for the pod,
/// the containers share the pod's network (its CNI address) and IPC
/// namespaces and have their own mount and PID namespaces; ExecSync,
/// ContainerStatus, exit codes; stop and remove end the shim.
#[test]
fn sandbox_pod_two_containers_share_network_and_ipc() {
    let Some((c, cri)) = start("sandbox_pod_two_containers_share_network_and_ipc") else {
        return;
    };
    let logs = c.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = pod_config("web", &logs, &[("moat.dev/isolation", "sandbox")]);
    let pod_id = cri
        .run_pod(&pod, "moat")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\ncontainerd: {}", c.log()));
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let cfg = container_config(
            name,
            IMAGE,
            &[
                "sh",
                "-c",
                &format!("echo {name} > /tmp/me; exec sleep 600"),
            ],
        );
        let id = cri
            .create_container(&pod_id, cfg, &pod)
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\ncontainerd: {}", c.log()));
        cri.start_container(&id)
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\ncontainerd: {}", c.log()));
        ids.push(id);
    }
    for id in &ids {
        let st = cri.status(id).unwrap();
        assert_eq!(st.state, CONTAINER_RUNNING, "{st:?}");
    }
    assert_eq!(c.shims().len(), 1, "one shim per pod: {:?}", c.shims());
    let ns =
        |id: &str, kind: &str| exec_out(&cri, id, &["readlink", &format!("/proc/self/ns/{kind}")]);
    assert_eq!(
        ns(&ids[0], "net"),
        ns(&ids[1], "net"),
        "network namespace not shared"
    );
    assert_eq!(
        ns(&ids[0], "ipc"),
        ns(&ids[1], "ipc"),
        "IPC namespace not shared"
    );
    assert_ne!(
        ns(&ids[0], "mnt"),
        ns(&ids[1], "mnt"),
        "mount namespace shared"
    );
    let addr = exec_out(&cri, &ids[0], &["ip", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains("inet 10.231.0."), "no CNI address: {addr}");
    assert_eq!(exec_out(&cri, &ids[1], &["cat", "/tmp/me"]), "two\n");
    let r = cri
        .exec_sync(&ids[1], &["sh", "-c", "echo err >&2; exit 7"])
        .unwrap();
    assert_eq!(r.exit_code, 7);
    assert_eq!(String::from_utf8_lossy(&r.stderr), "err\n");
    cri.stop_pod(&pod_id)
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\ncontainerd: {}", c.log()));
    for id in &ids {
        let st = cri.status(id).unwrap();
        assert_eq!(st.state, CONTAINER_EXITED, "{st:?}");
    }
    cri.remove_pod(&pod_id)
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\ncontainerd: {}", c.log()));
    let gone = wait_until(Duration::from_secs(15), || {
        c.shims().is_empty().then_some(())
    });
    assert!(gone.is_some(), "the pod's shim still runs: {:?}", c.shims());
}

/// A pod annotation asking for a policy the node does not have: the pod
/// is refused with the shim's message naming it.
#[test]
fn pod_policy_annotation_is_checked() {
    let Some((c, cri)) = start("pod_policy_annotation_is_checked") else {
        return;
    };
    let logs = c.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = pod_config("bad", &logs, &[("moat.dev/policy", "no-such-policy")]);
    let e = cri.run_pod(&pod, "moat").unwrap_err();
    assert!(
        e.message().contains("no-such-policy"),
        "RunPodSandbox: {}",
        e.message()
    );
}

/// Two pods with isolation `vm`: the pause container boots the pod's
/// micro-VM, attached to the pod's CNI network; both application
/// containers of the first pod run in that one guest kernel, each with its
/// own root, mount and PID namespaces; the second pod has a kernel of its
/// own. ExecSync into either container, exit codes, a container that ends
/// while the pod runs on, stop and remove.
#[test]
fn vm_pod_containers_share_one_guest_kernel_and_pods_do_not() {
    let test = "vm_pod_containers_share_one_guest_kernel_and_pods_do_not";
    if !common::vm_ready(test, &[]) {
        return;
    }
    let Some((c, cri)) = start(test) else {
        return;
    };
    let logs = c.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = pod_config("vmpod", &logs, &[("moat.dev/isolation", "vm")]);
    let pod_id = cri
        .run_pod(&pod, "moat")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\ncontainerd: {}", c.log()));
    // A host directory (as the kubelet's emptyDir): read-write in one
    // container, read-only in the other.
    let volume = c.path().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let mut ids = Vec::new();
    for name in ["app", "second"] {
        let mut cfg = container_config(
            name,
            IMAGE,
            &[
                "sh",
                "-c",
                &format!("echo {name} > /tmp/me; exec sleep 600"),
            ],
        );
        cfg.mounts.push(common::cri::Mount {
            container_path: "/data".into(),
            host_path: volume.display().to_string(),
            readonly: name == "app",
        });
        let id = cri
            .create_container(&pod_id, cfg, &pod)
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\ncontainerd: {}", c.log()));
        cri.start_container(&id)
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\ncontainerd: {}", c.log()));
        ids.push(id);
    }
    for id in &ids {
        let st = cri.status(id).unwrap();
        assert_eq!(st.state, CONTAINER_RUNNING, "{st:?}");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boot = |id: &str| exec_out(&cri, id, &["cat", "/proc/sys/kernel/random/boot_id"]);
    let kernel = boot(&ids[0]);
    assert_ne!(kernel, host, "the container shares the host's kernel");
    assert_eq!(
        boot(&ids[1]),
        kernel,
        "the pod's containers run in two kernels"
    );
    // Own roots and PID namespaces; the pod's network.
    assert_eq!(exec_out(&cri, &ids[0], &["cat", "/tmp/me"]), "app\n");
    assert_eq!(exec_out(&cri, &ids[1], &["cat", "/tmp/me"]), "second\n");
    let ns =
        |id: &str, kind: &str| exec_out(&cri, id, &["readlink", &format!("/proc/self/ns/{kind}")]);
    assert_ne!(
        ns(&ids[0], "pid"),
        ns(&ids[1], "pid"),
        "PID namespace shared"
    );
    assert_ne!(
        ns(&ids[0], "mnt"),
        ns(&ids[1], "mnt"),
        "mount namespace shared"
    );
    assert_eq!(ns(&ids[0], "net"), ns(&ids[1], "net"), "network not shared");
    let ps = exec_out(&cri, &ids[1], &["ps", "-o", "pid,args"]);
    assert!(!ps.contains("echo app") && !ps.contains("pause"), "{ps}");
    // A hostile container of the pod tries to reach the pod's share (the
    // other containers' roots) and the agent: nothing of them is in its
    // namespaces, and it may not mount the share itself.
    let r = cri
        .exec_sync(
            &ids[1],
            &[
                "sh",
                "-c",
                "ls /pod || mkdir -p /tmp/m && mount -t virtiofs moat-pod /tmp/m && ls /tmp/m",
            ],
        )
        .unwrap();
    assert_ne!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stdout));
    let mounts = exec_out(&cri, &ids[1], &["cat", "/proc/self/mountinfo"]);
    assert!(
        !mounts.contains(&ids[0]) && !mounts.contains(" /pod"),
        "another container's root is visible: {mounts}"
    );
    for id in &ids {
        let addr = exec_out(&cri, id, &["ip", "-4", "addr"]);
        assert!(
            addr.contains("inet 10.231.0."),
            "no CNI address in the guest: {addr}"
        );
    }
    let r = cri
        .exec_sync(&ids[1], &["sh", "-c", "echo err >&2; exit 7"])
        .unwrap();
    assert_eq!(r.exit_code, 7);
    assert_eq!(String::from_utf8_lossy(&r.stderr), "err\n");
    // The volume: written by one, read by the other and on the host;
    // read-only where mounted so (in the guest and on the host side).
    exec_out(&cri, &ids[1], &["sh", "-c", "echo shared > /data/note"]);
    assert_eq!(exec_out(&cri, &ids[0], &["cat", "/data/note"]), "shared\n");
    assert_eq!(
        std::fs::read_to_string(volume.join("note")).unwrap(),
        "shared\n"
    );
    let r = cri
        .exec_sync(&ids[0], &["sh", "-c", "echo no > /data/other"])
        .unwrap();
    assert_ne!(r.exit_code, 0, "a read-only volume took a write");
    assert!(!volume.join("other").exists());
    // A container that ends leaves the pod and its other container running.
    let cfg = container_config("brief", IMAGE, &["sh", "-c", "exit 3"]);
    let brief = cri.create_container(&pod_id, cfg, &pod).unwrap();
    cri.start_container(&brief).unwrap();
    let ended = wait_until(Duration::from_secs(60), || {
        let st = cri.status(&brief).ok()?;
        (st.state == CONTAINER_EXITED).then_some(st)
    })
    .expect("the brief container did not end");
    assert_eq!(ended.exit_code, 3, "{ended:?}");
    assert_eq!(boot(&ids[1]), kernel);
    // A second pod: a kernel of its own.
    let other = pod_config("vmpod2", &logs, &[("moat.dev/isolation", "vm")]);
    let other_id = cri.run_pod(&other, "moat").unwrap();
    let cfg = container_config("lone", IMAGE, &["sleep", "600"]);
    let lone = cri.create_container(&other_id, cfg, &other).unwrap();
    cri.start_container(&lone).unwrap();
    assert_ne!(boot(&lone), kernel, "two pods share one guest kernel");
    for p in [&pod_id, &other_id] {
        cri.stop_pod(p)
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\ncontainerd: {}", c.log()));
    }
    for id in &ids {
        let st = cri.status(id).unwrap();
        assert_eq!(st.state, CONTAINER_EXITED, "{st:?}");
    }
    for p in [&pod_id, &other_id] {
        cri.remove_pod(p)
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\ncontainerd: {}", c.log()));
    }
    let gone = wait_until(Duration::from_secs(20), || {
        c.shims().is_empty().then_some(())
    });
    assert!(gone.is_some(), "a pod's shim still runs: {:?}", c.shims());
}

/// A pod without `moat.dev/*` annotations gets the shim config's
/// isolation (ConfigPath): `isolation: vm` boots its container in a guest.
#[test]
fn isolation_default_comes_from_the_shim_config() {
    if !common::vm_ready("isolation_default_comes_from_the_shim_config", &[]) {
        return;
    }
    let Some((c, cri)) = start("isolation_default_comes_from_the_shim_config") else {
        return;
    };
    let config = std::fs::read_to_string(c.shim_config()).unwrap();
    std::fs::write(
        c.shim_config(),
        config.replace("isolation: sandbox", "isolation: vm"),
    )
    .unwrap();
    let logs = c.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = pod_config("plain", &logs, &[]);
    let pod_id = cri
        .run_pod(&pod, "moat")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\ncontainerd: {}", c.log()));
    let cfg = container_config("app", IMAGE, &["sleep", "600"]);
    let id = cri
        .create_container(&pod_id, cfg, &pod)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\ncontainerd: {}", c.log()));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("StartContainer: {e}\ncontainerd: {}", c.log()));
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let guest = exec_out(&cri, &id, &["cat", "/proc/sys/kernel/random/boot_id"]);
    assert_ne!(
        guest, host,
        "the shim config's isolation: vm was not applied"
    );
    cri.stop_pod(&pod_id).unwrap();
    cri.remove_pod(&pod_id).unwrap();
}
