//! Hostile registries: a tiny HTTP registry on 127.0.0.1 that lies in one
//! way per test. Each pull must fail with an error naming the reference and
//! what was wrong, and leave the store without any blob, image or staging
//! leftover. Also the bearer-token flow against the same server, done right.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{gzip, layout, sha256, tar, Layout};

enum Resp {
    Ok(&'static str, Vec<u8>),
    Status(u16, Vec<(String, String)>, Vec<u8>),
    /// Declares `len` bytes, sends `body`, closes.
    Short(usize, Vec<u8>),
    /// Sends headers for `len` bytes, then nothing for a long time.
    Stall(usize),
}

type Handler = dyn Fn(&str, &str, &HashMap<String, String>) -> Resp + Send + Sync;

struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(handler: Arc<Handler>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let h = handler.clone();
                        let st = st.clone();
                        std::thread::spawn(move || serve(s, &*h, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { port, stop }
    }
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(s: TcpStream, h: &Handler, stop: &AtomicBool) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || !line.ends_with("HTTP/1.1\r\n") {
        return; // e.g. a TLS hello while the client probes https
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).is_err() || l == "\r\n" || l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.trim_end().split_once(':') {
            headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut w = s;
    let head = |status: u16, len: usize, extra: &[(String, String)]| {
        let mut h =
            format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n");
        for (k, v) in extra {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    };
    match h(&method, &path, &headers) {
        Resp::Ok(ct, body) => {
            let _ = w.write_all(&head(
                200,
                body.len(),
                &[("Content-Type".into(), ct.into())],
            ));
            if method != "HEAD" {
                let _ = w.write_all(&body);
            }
        }
        Resp::Status(code, extra, body) => {
            let _ = w.write_all(&head(code, body.len(), &extra));
            let _ = w.write_all(&body);
        }
        Resp::Short(len, body) => {
            let _ = w.write_all(&head(200, len, &[]));
            let _ = w.write_all(&body);
        }
        Resp::Stall(len) => {
            let _ = w.write_all(&head(200, len, &[]));
            let _ = w.flush();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// An image in a layout whose blobs the server serves by digest.
struct Img {
    l: Layout,
    manifest: Vec<u8>,
}

fn image(dir: &Path) -> Img {
    let raw = tar(&[common::file("hello.txt", b"hello\n")]);
    let l = layout(&dir.join("layout"), &[(gzip(&raw), raw)], None);
    let manifest = std::fs::read(
        dir.join("layout/blobs/sha256")
            .join(&l.manifest_digest[7..]),
    )
    .unwrap();
    Img { l, manifest }
}

fn blob(img: &Img, digest: &str) -> Option<Vec<u8>> {
    std::fs::read(img.l.dir.join("blobs/sha256").join(digest.get(7..)?)).ok()
}

/// The honest part of a registry: `/v2/`, the manifest by tag, blobs.
fn honest(img: &Img, method: &str, path: &str) -> Resp {
    let _ = method;
    if path == "/v2/" {
        return Resp::Ok("application/json", b"{}".to_vec());
    }
    if path == "/v2/t/img/manifests/1"
        || path == format!("/v2/t/img/manifests/{}", img.l.manifest_digest)
    {
        return Resp::Ok(
            "application/vnd.oci.image.manifest.v1+json",
            img.manifest.clone(),
        );
    }
    if let Some(d) = path.strip_prefix("/v2/t/img/blobs/") {
        if let Some(b) = blob(img, d) {
            return Resp::Ok("application/octet-stream", b);
        }
    }
    Resp::Status(
        404,
        vec![],
        br#"{"errors":[{"code":"NOT_FOUND","message":"no such thing"}]}"#.to_vec(),
    )
}

fn moat(root: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("MOAT_ROOT")
        .env("REGISTRY_AUTH_FILE", root.with_extension("auth.json"))
        .env("HOME", root.with_extension("home"))
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap()
}

/// Pulls `t/img:1` (or `what`) from `srv`, expecting failure; checks the
/// store is empty afterwards and returns the error text.
fn pull_fails(srv: &Server, what: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let reference = format!("{}/{what}", srv.host());
    let mut args = vec!["pull", &reference, "--tls-verify=false"];
    args.extend(extra);
    let o = moat(&root, &args);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "pull should fail: {e}");
    assert!(
        e.starts_with(&format!("moat: error: pull failed: {reference}")),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "blobs stored: {e}"
    );
    assert!(!root.join("images/names.json").exists());
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "staging left"
    );
    assert_eq!(std::fs::read_dir(root.join("rootfs")).unwrap().count(), 0);
    e
}

#[test]
fn blob_whose_digest_does_not_match_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let layer = img.l.layer_digests[0].clone();
    let i = img.clone();
    let srv = Server::start(Arc::new(move |m, p, _| {
        if p.ends_with(&layer) {
            let mut b = blob(&i, &layer).unwrap();
            b[20] ^= 0xff;
            return Resp::Ok("application/octet-stream", b);
        }
        honest(&i, m, p)
    }));
    let e = pull_fails(&srv, "t/img:1", &[]);
    let l = &img.l.layer_digests[0];
    assert!(e.contains(&format!("blob {l} hashes to sha256:")), "{e}");
    assert!(
        e.contains(&format!(
            ", not {l}: the registry sent corrupt or tampered data"
        )),
        "{e}"
    );
}

#[test]
fn oversize_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let i = img.clone();
    let srv = Server::start(Arc::new(move |m, p, _| {
        if p.contains("/manifests/") {
            let mut big = b"{\"schemaVersion\":2,\"x\":\"".to_vec();
            big.resize(5 << 20, b'a');
            return Resp::Ok("application/vnd.oci.image.manifest.v1+json", big);
        }
        honest(&i, m, p)
    }));
    let e = pull_fails(&srv, "t/img:1", &[]);
    assert_eq!(
        e,
        format!("moat: error: pull failed: {}/t/img:1: the manifest is larger than 4194304 bytes; refused\n", srv.host())
    );
}

#[test]
fn redirect_loop_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let i = img.clone();
    let srv = Server::start(Arc::new(move |m, p, _| {
        if p.contains("/manifests/") || p.starts_with("/loop") {
            let next = if p == "/loop-a" { "/loop-b" } else { "/loop-a" };
            return Resp::Status(302, vec![("Location".into(), next.into())], vec![]);
        }
        honest(&i, m, p)
    }));
    let e = pull_fails(&srv, "t/img:1", &[]);
    assert!(
        e.contains("redirects more than 5 times (a redirect loop?)"),
        "{e}"
    );
}

#[test]
fn token_realm_on_another_host_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    // Something listening where the realm points, to see that moat never calls.
    let other = TcpListener::bind("127.0.0.2:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let realm = format!(
        "http://127.0.0.2:{}/token",
        other.local_addr().unwrap().port()
    );
    let i = img.clone();
    let r = realm.clone();
    let srv = Server::start(Arc::new(move |m, p, _| {
        if p.starts_with("/v2/") {
            return Resp::Status(
                401,
                vec![(
                    "WWW-Authenticate".into(),
                    format!("Bearer realm=\"{r}\",service=\"x\""),
                )],
                vec![],
            );
        }
        honest(&i, m, p)
    }));
    let e = pull_fails(&srv, "t/img:1", &["--creds", "alice:secret"]);
    assert_eq!(
        e,
        format!("moat: error: pull failed: {}/t/img:1: token realm {realm:?} is on another host than the registry; moat sends no credentials there\n", srv.host())
    );
    assert!(
        other.accept().is_err(),
        "moat connected to the foreign realm"
    );
}

#[test]
fn truncated_blob_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let layer = img.l.layer_digests[0].clone();
    let i = img.clone();
    let srv = Server::start(Arc::new(move |m, p, _| {
        if p.ends_with(&layer) {
            let b = blob(&i, &layer).unwrap();
            return Resp::Short(b.len(), b[..b.len() / 2].to_vec());
        }
        honest(&i, m, p)
    }));
    let e = pull_fails(&srv, "t/img:1", &[]);
    let l = &img.l.layer_digests[0];
    let half = blob(&img, l).unwrap().len() / 2;
    let full = blob(&img, l).unwrap().len();
    assert!(
        e.contains(&format!("reading blob {l} after {half} of {full} bytes: ")),
        "{e}"
    );
}

#[test]
fn stalled_connection_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let layer = img.l.layer_digests[0].clone();
    let i = img.clone();
    let srv = Server::start(Arc::new(move |m, p, _| {
        if p.ends_with(&layer) {
            return Resp::Stall(blob(&i, &layer).unwrap().len());
        }
        honest(&i, m, p)
    }));
    let start = Instant::now();
    let e = pull_fails(&srv, "t/img:1", &["--timeout", "2"]);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    let l = &img.l.layer_digests[0];
    assert!(
        e.ends_with(&format!("reading blob {l} after 0 of {} bytes: no data for 2 s; the connection stalled (raise --timeout for slow links)\n", blob(&img, l).unwrap().len())),
        "{e}"
    );
}

#[test]
fn index_without_linux_amd64_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#,
        img.l.manifest_digest,
        img.manifest.len()
    );
    let i = img.clone();
    let srv = Server::start(Arc::new(move |m, p, _| {
        if p == "/v2/t/img/manifests/multi" {
            return Resp::Ok(
                "application/vnd.oci.image.index.v1+json",
                index.clone().into_bytes(),
            );
        }
        honest(&i, m, p)
    }));
    let e = pull_fails(&srv, "t/img:multi", &[]);
    assert!(
        e.contains("has no linux/amd64 image (it has: linux/arm64)"),
        "{e}"
    );
}

#[test]
fn manifest_not_matching_the_pinned_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let i = img.clone();
    let wanted = sha256(b"something else");
    let w = wanted.clone();
    let srv = Server::start(Arc::new(move |m, p, _| {
        if p == format!("/v2/t/img/manifests/{w}") {
            return Resp::Ok(
                "application/vnd.oci.image.manifest.v1+json",
                i.manifest.clone(),
            );
        }
        honest(&i, m, p)
    }));
    let e = pull_fails(&srv, &format!("t/img@{wanted}"), &[]);
    assert!(
        e.contains(&format!(
            "the manifest hashes to {}, not {wanted}",
            img.l.manifest_digest
        )),
        "{e}"
    );
}

#[test]
fn bearer_token_flow_pulls_with_the_token_only() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let i = img.clone();
    let port = Arc::new(std::sync::OnceLock::<u16>::new());
    let pp = port.clone();
    let srv = Server::start(Arc::new(move |m, p, h| {
        let port = pp.get().copied().unwrap_or(0);
        if p.starts_with("/token?") {
            // alice:secret, base64
            assert_eq!(
                h.get("authorization").map(String::as_str),
                Some("Basic YWxpY2U6c2VjcmV0")
            );
            assert!(p.contains("scope=repository:t/img:pull"), "{p}");
            assert!(p.contains("service=test-registry"), "{p}");
            return Resp::Ok("application/json", br#"{"token":"tok-123"}"#.to_vec());
        }
        if p.starts_with("/v2/")
            && h.get("authorization").map(String::as_str) != Some("Bearer tok-123")
        {
            return Resp::Status(
                401,
                vec![("WWW-Authenticate".into(), format!("Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test-registry\",scope=\"repository:t/img:pull\""))],
                vec![],
            );
        }
        honest(&i, m, p)
    }));
    port.set(srv.port).unwrap();
    let root = dir.path().join("root");
    let reference = format!("{}/t/img:1", srv.host());
    let o = moat(
        &root,
        &[
            "pull",
            &reference,
            "--tls-verify=false",
            "--creds",
            "alice:secret",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        out,
        format!(
            "pulled {reference}@{} (image ID {}, manifest {})\n",
            img.l.manifest_digest, img.l.config_digest, img.l.manifest_digest
        )
    );
    let o = moat(&root, &["image", "inspect", &reference, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["manifest_digest"].as_str(),
        Some(img.l.manifest_digest.as_str())
    );
    let o = moat(&root, &["image", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn interrupted_pull_resumes_with_a_range_request() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let layer = img.l.layer_digests[0].clone();
    let full = blob(&img, &layer).unwrap();
    let half = full.len() / 2;
    let ranges = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (i, rg, l) = (img.clone(), ranges.clone(), layer.clone());
    let srv = Server::start(Arc::new(move |m, p, h| {
        if p.ends_with(&l) {
            let b = blob(&i, &l).unwrap();
            let mut seen = rg.lock().unwrap();
            seen.push(h.get("range").cloned().unwrap_or_default());
            if seen.len() == 1 {
                return Resp::Short(b.len(), b[..b.len() / 2].to_vec());
            }
            let from = b.len() / 2;
            return Resp::Status(
                206,
                vec![(
                    "Content-Range".into(),
                    format!("bytes {from}-{}/{}", b.len() - 1, b.len()),
                )],
                b[from..].to_vec(),
            );
        }
        honest(&i, m, p)
    }));
    let root = dir.path().join("root");
    let reference = format!("{}/t/img:1", srv.host());
    let o = moat(&root, &["pull", &reference, "--tls-verify=false"]);
    assert_eq!(o.status.code(), Some(1));
    let partial = root
        .join("downloads")
        .join(format!("{}.partial", &layer[7..]));
    assert_eq!(std::fs::metadata(&partial).unwrap().len() as usize, half);
    assert!(!root.join("images/names.json").exists());

    let o = moat(&root, &["pull", &reference, "--tls-verify=false"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        *ranges.lock().unwrap(),
        vec![String::new(), format!("bytes={half}-")]
    );
    assert!(!partial.exists());
    let o = moat(&root, &["image", "inspect", &reference, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["manifest_digest"].as_str(),
        Some(img.l.manifest_digest.as_str())
    );
}

/// A blob request with `Range: bytes=N-`, answered 206.
fn ranged(img: &Img, p: &str, h: &HashMap<String, String>) -> Option<Resp> {
    let d = p.strip_prefix("/v2/t/img/blobs/")?;
    let from: usize = h
        .get("range")?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()?;
    let b = blob(img, d)?;
    Some(Resp::Status(
        206,
        vec![(
            "Content-Range".into(),
            format!("bytes {from}-{}/{}", b.len() - 1, b.len()),
        )],
        b[from..].to_vec(),
    ))
}

#[test]
fn resumed_prefix_that_does_not_verify_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let l = img.l.layer_digests[0].clone();
    let i = img.clone();
    let srv = Server::start(Arc::new(move |m, p, h| {
        ranged(&i, p, h).unwrap_or_else(|| honest(&i, m, p))
    }));
    let root = dir.path().join("root");
    // A poisoned partial, as a lying server could have left it.
    std::fs::create_dir_all(root.join("downloads")).unwrap();
    let partial = root.join("downloads").join(format!("{}.partial", &l[7..]));
    std::fs::write(&partial, vec![0u8; blob(&img, &l).unwrap().len() / 2]).unwrap();
    let reference = format!("{}/t/img:1", srv.host());
    let o = moat(&root, &["pull", &reference, "--tls-verify=false"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(e.contains(&format!("blob {l} hashes to sha256:")), "{e}");
    assert!(!partial.exists(), "the poisoned partial is discarded");
    assert_eq!(
        std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    // The next pull starts over and succeeds.
    let o = moat(&root, &["pull", &reference, "--tls-verify=false"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn server_ignoring_range_restarts_the_download() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let l = img.l.layer_digests[0].clone();
    let i = img.clone();
    let srv = Server::start(Arc::new(move |m, p, _| honest(&i, m, p)));
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("downloads")).unwrap();
    let partial = root.join("downloads").join(format!("{}.partial", &l[7..]));
    std::fs::write(&partial, vec![0u8; blob(&img, &l).unwrap().len() / 2]).unwrap();
    let reference = format!("{}/t/img:1", srv.host());
    let o = moat(&root, &["pull", &reference, "--tls-verify=false"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!partial.exists());
}

/// A server that counts requests and fails them all.
fn broken(count: Arc<std::sync::atomic::AtomicUsize>) -> Server {
    Server::start(Arc::new(move |_, _, _| {
        count.fetch_add(1, Ordering::Relaxed);
        Resp::Status(500, vec![], b"down".to_vec())
    }))
}

#[test]
fn registries_conf_mirrors_insecure_and_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let i = img.clone();
    let good = Server::start(Arc::new(move |m, p, _| honest(&i, m, p)));
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bad = broken(hits.clone());
    let conf = dir.path().join("registries.conf");
    let root = dir.path().join("root");

    // Plain HTTP without `insecure`: refused (moat speaks TLS unless told).
    let r = format!("{}/t/img:1", good.host());
    let o = moat(&root, &["pull", &r, "--registries-conf", "/dev/null"]);
    assert_eq!(o.status.code(), Some(1));

    // The mirror is tried first; the registry itself is never contacted.
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
            bad.host(),
            good.host()
        ),
    )
    .unwrap();
    let r = format!("{}/t/img:1", bad.host());
    let o = moat(
        &root,
        &["pull", &r, "--registries-conf", conf.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(&format!("pulled {r}@")));
    assert_eq!(hits.load(Ordering::Relaxed), 0);

    // A failing mirror falls back to the registry (insecure = plain HTTP).
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"{g}/t\"\nlocation = \"{g}/t\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{}/t\"\ninsecure = true\n",
            bad.host(),
            g = good.host()
        ),
    )
    .unwrap();
    let root2 = dir.path().join("root2");
    let r = format!("{}/t/img:1", good.host());
    let o = moat(
        &root2,
        &["pull", &r, "--registries-conf", conf.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(hits.load(Ordering::Relaxed) > 0);

    // A blocked registry is refused before any request.
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{}\"\nblocked = true\n",
            good.host()
        ),
    )
    .unwrap();
    let o = moat(
        &root2,
        &["pull", &r, "--registries-conf", conf.to_str().unwrap()],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "moat: error: pull failed: {r}: blocked by [[registry]] \"{}\" in {}\n",
            good.host(),
            conf.display()
        )
    );
    // A typo is an error naming the file.
    std::fs::write(&conf, "[[registry]]\nlocation = \"x\"\ninsecur = true\n").unwrap();
    let o = moat(
        &root2,
        &["pull", &r, "--registries-conf", conf.to_str().unwrap()],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.starts_with(&format!("moat: error: {}: ", conf.display())) && e.contains("insecur"),
        "{e}"
    );
}

#[test]
fn progress_bar_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let i = img.clone();
    let srv = Server::start(Arc::new(move |m, p, _| honest(&i, m, p)));
    let root = dir.path().join("root");
    let r = format!("{}/t/img:1", srv.host());
    // Not a terminal: stderr stays empty.
    let o = moat(&root, &["pull", &r, "--tls-verify=false"]);
    assert!(o.status.success());
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // On a terminal (script(1) gives it a pty): a bar with the byte counts.
    let cmd = format!(
        "{} --root {} pull {r} --tls-verify=false --registries-conf /dev/null",
        env!("CARGO_BIN_EXE_moat"),
        dir.path().join("root2").display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("REGISTRY_AUTH_FILE", dir.path().join("auth.json"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("downloading ["), "{text}");
    assert!(text.contains(&format!("pulled {r}@")), "{text}");
}

#[test]
fn pull_policy_image_rules_refuse_before_download() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(image(dir.path()));
    let i = img.clone();
    let blob_gets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bg = blob_gets.clone();
    let srv = Server::start(Arc::new(move |m, p, _| {
        if p.contains("/blobs/") {
            bg.fetch_add(1, Ordering::Relaxed);
        }
        honest(&i, m, p)
    }));
    let write = |name: &str, image: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!("apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n  extends: baseline\n  image:\n{image}"),
        )
        .unwrap();
        p
    };
    let host = srv.host();
    let r = format!("{host}/t/img:1");
    let root = dir.path().join("root");
    let pull = |policy: &Path, reference: &str| {
        moat(
            &root,
            &[
                "pull",
                reference,
                "--tls-verify=false",
                "--policy",
                policy.to_str().unwrap(),
            ],
        )
    };

    // A registry the policy does not list.
    let p = write("only-other.yaml", "    allowed: [\"registry.example/*\"]\n");
    let o = pull(&p, &r);
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!("moat: error: pull failed: {r}: refused by the policy {}: spec.image.allowed does not list {r} (allowed: registry.example/*)\n", p.display())
    );
    // Digest pinning required: the tag is refused, the digest accepted.
    let p = write(
        "pinned.yaml",
        &format!("    allowed: [\"{host}/t/*\"]\n    require_digest: true\n"),
    );
    let o = pull(&p, &r);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&format!(
            "spec.image.require_digest: {r} is not pinned; name it as {host}/t/img@sha256:<digest>"
        )),
        "{e}"
    );
    assert_eq!(blob_gets.load(Ordering::Relaxed), 0);
    // Only listed digests: resolved, then refused before any blob.
    let p = write(
        "digests.yaml",
        &format!("    digests: [\"sha256:{}\"]\n", "0".repeat(64)),
    );
    let o = pull(&p, &r);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&format!(
            "refused by the policy {}: spec.image.digests lists none of {}",
            p.display(),
            img.l.manifest_digest
        )),
        "{e}"
    );
    assert_eq!(blob_gets.load(Ordering::Relaxed), 0, "nothing downloaded");
    assert!(!root.join("images/names.json").exists());
    // The pinned reference passes.
    let p = write(
        "pinned.yaml",
        &format!(
            "    allowed: [\"{host}/t/*\"]\n    require_digest: true\n    digests: [\"{}\"]\n",
            img.l.manifest_digest
        ),
    );
    let o = pull(&p, &format!("{host}/t/img@{}", img.l.manifest_digest));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
