//! Issue 21, measured against real software: a corpus of images built from
//! this machine's installed Debian packages (`scripts/corpus`, never
//! downloaded), each analysed (`moat profile static --rootfs DIR --all`)
//! and its workload run under `auto` (the default) in the sandbox; two
//! small ones in the VM too. Prints `auto-corpus: NAME N calls allowed`.
//! Needs root; an image whose packages are missing is skipped (`SKIP:`).

mod sandbox_common;

use std::path::{Path, PathBuf};

use sandbox_common::images::corpus;
use sandbox_common::{can_sandbox, stderr, stdout, Env};

use moat_testkit::host as vm_host;

/// Builds corpus image `name` under the test's directory; `None` (after a
/// `SKIP:` line) when its packages are not installed.
/// The calls `auto` allows for the image in `dir`, with no fallback to baseline.
fn auto_allowed(env: &Env, name: &str, dir: &Path) -> u64 {
    let out = env
        .moat(&[
            "profile",
            "static",
            "--rootfs",
            dir.to_str().unwrap(),
            "--all",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !v["fallback_grants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "baseline"),
        "{name} fell back to baseline: {}",
        v["fallbacks"]
    );
    let n = v["auto"]["allowed_count"].as_u64().unwrap();
    println!(
        "auto-corpus: {name} {n} calls allowed ({} ELF objects)",
        v["objects"]
    );
    assert!(n < 301, "{name}: {n}");
    n
}

/// The corpus workloads, the same in both backends.
const COREUTILS_WORK: &str = "echo b > /tmp/x; echo a >> /tmp/x; cp /tmp/x /tmp/y; sort /tmp/y; mkdir /tmp/d; mv /tmp/y /tmp/d/; ls /tmp/d; wc -l < /tmp/d/y";
const SQL_WORK: &str = "create table t(a); insert into t values (1),(2); select sum(a) from t;";
const NGINX_WORK: &str = "/usr/sbin/nginx -e stderr -c /etc/nginx/mini.conf & for i in 1 2 3 4 5 6 7 8 9 10; do curl -sS http://127.0.0.1:8080/index.html 2>/dev/null && exit 0; sleep 0.5; done; exit 1";
const PY_WORK: &str = r#"import json, sqlite3, ssl, subprocess, sys, threading
db = sqlite3.connect("/tmp/w.db")
db.execute("create table t (k text, v integer)")
db.executemany("insert into t values (?, ?)", [("a", 1), ("b", 2)])
rows = db.execute("select k, v from t order by k").fetchall()
ctx = ssl.create_default_context()
sub = subprocess.run([sys.executable, "-c", "print(6*7)"], capture_output=True, text=True, check=True).stdout.strip()
results = []
def work(n):
    results.append(sum(range(n)))
ts = [threading.Thread(target=work, args=(i * 1000,)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"rows": rows, "tls": ctx.protocol.name, "sub": sub, "threads": sorted(results)}))
"#;
const PY_EXPECT: &str = "{\"rows\": [[\"a\", 1], [\"b\", 2]], \"tls\": \"PROTOCOL_TLS_CLIENT\", \"sub\": \"42\", \"threads\": [0, 499500, 1999000, 4498500]}\n";

fn loopback_policy(env: &Env) -> PathBuf {
    let p = env.dir.path().join("auto-loopback.yaml");
    std::fs::write(
        &p,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: auto-loopback\nspec:\n  extends: auto\n  network: loopback\n",
    )
    .unwrap();
    p
}

/// Runs `argv` in `dir` under auto (or `policy`, which extends it).
fn run(
    env: &Env,
    isolation: &str,
    dir: &Path,
    policy: Option<&Path>,
    argv: &[&str],
) -> (i32, String, String) {
    let mut args = vec!["run", "--isolation", isolation];
    if isolation == "vm" {
        args.extend(["--accel", "tcg"]);
    }
    if let Some(p) = policy {
        args.extend(["--policy", p.to_str().unwrap()]);
    }
    args.extend(["--rootfs", dir.to_str().unwrap()]);
    args.extend(argv);
    let out = env.moat(&args).output().unwrap();
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

#[test]
fn busybox_and_coreutils_pass_under_auto() {
    if !can_sandbox("busybox_and_coreutils_pass_under_auto") {
        return;
    }
    let env = Env::new();
    let Some(bb) = corpus(&env, "busybox") else {
        return;
    };
    auto_allowed(&env, "busybox", &bb);
    let (code, out, err) = run(
        &env,
        "sandbox",
        &bb,
        None,
        &["/bin/sh", "-c", "echo a > /tmp/x; cat /tmp/x; ls /bin"],
    );
    assert_eq!((code, out.as_str()), (0, "a\nbusybox\nsh\n"), "{err}");

    let Some(cu) = corpus(&env, "coreutils") else {
        return;
    };
    auto_allowed(&env, "coreutils", &cu);
    let (code, out, err) = run(
        &env,
        "sandbox",
        &cu,
        None,
        &["/bin/sh", "-c", COREUTILS_WORK],
    );
    assert_eq!((code, out.as_str()), (0, "a\nb\ny\n2\n"), "{err}");
}

#[test]
fn sqlite3_passes_under_auto() {
    if !can_sandbox("sqlite3_passes_under_auto") {
        return;
    }
    let env = Env::new();
    let Some(dir) = corpus(&env, "sqlite3") else {
        return;
    };
    auto_allowed(&env, "sqlite3", &dir);
    let (code, out, err) = run(
        &env,
        "sandbox",
        &dir,
        None,
        &["/usr/bin/sqlite3", "/tmp/t.db", SQL_WORK],
    );
    assert_eq!((code, out.as_str()), (0, "3\n"), "{err}");
}

#[test]
fn python3_with_sqlite3_json_ssl_subprocess_threads_passes_under_auto() {
    if !can_sandbox("python3_with_sqlite3_json_ssl_subprocess_threads_passes_under_auto") {
        return;
    }
    let env = Env::new();
    let Some(dir) = corpus(&env, "python3") else {
        return;
    };
    std::fs::create_dir_all(dir.join("srv")).unwrap();
    std::fs::write(dir.join("srv/work.py"), PY_WORK).unwrap();
    auto_allowed(&env, "python3", &dir);
    let (code, out, err) = run(
        &env,
        "sandbox",
        &dir,
        None,
        &["/usr/bin/python3", "/srv/work.py"],
    );
    assert_eq!((code, out.as_str()), (0, PY_EXPECT), "{err}");
}

#[test]
fn nginx_serves_a_file_to_curl_on_loopback_under_auto() {
    if !can_sandbox("nginx_serves_a_file_to_curl_on_loopback_under_auto") {
        return;
    }
    let env = Env::new();
    let Some(dir) = corpus(&env, "nginx") else {
        return;
    };
    auto_allowed(&env, "nginx", &dir);
    let policy = loopback_policy(&env);
    let (code, out, err) = run(
        &env,
        "sandbox",
        &dir,
        Some(&policy),
        &["/bin/sh", "-c", NGINX_WORK],
    );
    assert_eq!((code, out.as_str()), (0, "hello from nginx\n"), "{err}");
}

#[test]
fn static_go_binary_does_file_and_network_io_under_auto() {
    if !can_sandbox("static_go_binary_does_file_and_network_io_under_auto") {
        return;
    }
    let env = Env::new();
    let Some(dir) = corpus(&env, "go-static") else {
        return;
    };
    auto_allowed(&env, "go-static", &dir);
    let policy = loopback_policy(&env);
    let (code, out, err) = run(
        &env,
        "sandbox",
        &dir,
        Some(&policy),
        &["/usr/local/bin/gotool"],
    );
    assert_eq!((code, out.as_str()), (0, "file ok\nnet ok\n"), "{err}");
}

/// The VM runs on TCG here: two small images only. (The guest does not
/// bring up loopback yet, under any policy: the Go binary does file I/O.)
#[test]
fn busybox_and_go_pass_under_auto_in_the_vm() {
    let env = Env::new();
    if !can_sandbox("busybox_and_go_pass_under_auto_in_the_vm") {
        return;
    }
    if !Path::new("/usr/bin/qemu-system-x86_64").is_file()
        || !env
            .moat(&["kernel", "path"])
            .output()
            .unwrap()
            .status
            .success()
    {
        println!(
            "SKIP: busybox_and_go_pass_under_auto_in_the_vm: QEMU or the guest kernel is missing"
        );
        return;
    }
    let _l = vm_host::vm_lock();
    let Some(bb) = corpus(&env, "busybox") else {
        return;
    };
    let (code, out, err) = run(
        &env,
        "vm",
        &bb,
        None,
        &["/bin/sh", "-c", "echo a > /tmp/x; cat /tmp/x"],
    );
    assert_eq!((code, out.as_str()), (0, "a\n"), "{err}");
    let Some(go) = corpus(&env, "go-static") else {
        return;
    };
    let (code, out, err) = run(&env, "vm", &go, None, &["/usr/local/bin/gotool", "file"]);
    assert_eq!((code, out.as_str()), (0, "file ok\n"), "{err}");
}

/// The larger images in a micro-VM (TCG): the same workloads under `auto`,
/// with the guest's loopback for nginx and the Go binary.
#[test]
fn coreutils_sqlite3_nginx_python3_and_go_pass_under_auto_in_the_vm() {
    let test = "coreutils_sqlite3_nginx_python3_and_go_pass_under_auto_in_the_vm";
    let env = Env::new();
    if !sandbox_common::vm_ready(&env, test) {
        return;
    }
    let _l = vm_host::vm_lock();
    let loopback = loopback_policy(&env);
    let Some(cu) = corpus(&env, "coreutils") else {
        return;
    };
    let (code, out, err) = run(&env, "vm", &cu, None, &["/bin/sh", "-c", COREUTILS_WORK]);
    assert_eq!((code, out.as_str()), (0, "a\nb\ny\n2\n"), "{err}");
    let Some(sq) = corpus(&env, "sqlite3") else {
        return;
    };
    let (code, out, err) = run(
        &env,
        "vm",
        &sq,
        None,
        &["/usr/bin/sqlite3", "/tmp/t.db", SQL_WORK],
    );
    assert_eq!((code, out.as_str()), (0, "3\n"), "{err}");
    let Some(ng) = corpus(&env, "nginx") else {
        return;
    };
    let (code, out, err) = run(
        &env,
        "vm",
        &ng,
        Some(&loopback),
        &["/bin/sh", "-c", NGINX_WORK],
    );
    assert_eq!((code, out.as_str()), (0, "hello from nginx\n"), "{err}");
    let Some(go) = corpus(&env, "go-static") else {
        return;
    };
    let (code, out, err) = run(&env, "vm", &go, Some(&loopback), &["/usr/local/bin/gotool"]);
    assert_eq!((code, out.as_str()), (0, "file ok\nnet ok\n"), "{err}");
    let Some(py) = corpus(&env, "python3") else {
        return;
    };
    std::fs::create_dir_all(py.join("srv")).unwrap();
    std::fs::write(py.join("srv/work.py"), PY_WORK).unwrap();
    let (code, out, err) = run(&env, "vm", &py, None, &["/usr/bin/python3", "/srv/work.py"]);
    assert_eq!((code, out.as_str()), (0, PY_EXPECT), "{err}");
}
