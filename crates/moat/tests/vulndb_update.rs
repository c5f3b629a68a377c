//! `moat vulndb update` against OSV-style exports served by a local HTTP
//! server on 127.0.0.1: import, ETag revalidation (304: nothing
//! downloaded), and corrupt or truncated zips leaving the database as it
//! was.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use moat_scan::fixtures;

fn zip_of(records: &[(String, String)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in records {
        w.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Serves `files` (path -> (etag, body, bytes actually sent)); records
/// each request's path and If-None-Match.
/// Path -> (ETag, body, bytes actually sent).
type Files = HashMap<String, (String, Vec<u8>, usize)>;

fn serve(files: Files, log: Arc<Mutex<Vec<(String, String)>>>) -> u16 {
    serve_shared(Arc::new(Mutex::new(files)), log)
}

/// [`serve`] of a map the test may change while it serves.
fn serve_shared(files: Arc<Mutex<Files>>, log: Arc<Mutex<Vec<(String, String)>>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(50) {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut inm = String::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("if-none-match:") {
                    inm = v.trim().to_string();
                }
            }
            log.lock().unwrap().push((path.clone(), inm.clone()));
            let file = files.lock().unwrap().get(&path).cloned();
            match file.as_ref() {
                Some((etag, _, _)) if inm == etag.to_ascii_lowercase() => {
                    let _ = write!(s, "HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n");
                }
                Some((etag, body, sent)) => {
                    let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = s.write_all(&body[..*sent]);
                }
                None => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    port
}

fn moat(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("MOAT_ROOT")
        .output()
        .unwrap()
}

fn advisories(root: &Path) -> u64 {
    let o = moat(root, &["vulndb", "status", "--format", "json"]);
    // No database yet (or one being created): none.
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .ok()
        .and_then(|v| v["advisories"].as_u64())
        .unwrap_or(0)
}

#[test]
fn update_downloads_when_changed_and_keeps_the_database_on_bad_zips() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let records = fixtures::osv_records();
    let good = zip_of(&records);
    let mut garbage = good.clone();
    for b in garbage.iter_mut().skip(30).take(200) {
        *b ^= 0x5a;
    }
    let mut files = HashMap::new();
    files.insert(
        "/Debian/all.zip".to_string(),
        ("\"v1\"".to_string(), good.clone(), good.len()),
    );
    files.insert(
        "/Cut/all.zip".to_string(),
        ("\"c1\"".to_string(), good.clone(), good.len() / 2),
    );
    files.insert(
        "/Bad/all.zip".to_string(),
        ("\"b1\"".to_string(), garbage.clone(), garbage.len()),
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let port = serve(files, log.clone());
    let base = format!("http://127.0.0.1:{port}");

    let o = moat(
        &root,
        &[
            "vulndb",
            "update",
            "--source",
            &base,
            "--ecosystem",
            "Debian",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with(&format!("imported {} records from ", records.len())),
        "{out}"
    );
    let n = advisories(&root);
    assert!(n > 0);

    // Unchanged: revalidated with the ETag, 304, nothing imported.
    let o = moat(
        &root,
        &[
            "vulndb",
            "update",
            "--source",
            &base,
            "--ecosystem",
            "Debian",
        ],
    );
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{base}/Debian/all.zip: unchanged\n")
    );
    assert_eq!(
        log.lock().unwrap()[1],
        ("/Debian/all.zip".to_string(), "\"v1\"".to_string())
    );

    // Truncated and corrupt exports: errors, database unchanged.
    let o = moat(
        &root,
        &["vulndb", "update", "--source", &base, "--ecosystem", "Cut"],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!("{base}/Cut/all.zip: ")) && e.contains("the database is unchanged"),
        "{e}"
    );
    let o = moat(
        &root,
        &["vulndb", "update", "--source", &base, "--ecosystem", "Bad"],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!(
            "{base}/Bad/all.zip: importing the download failed; the database is unchanged"
        )),
        "{e}"
    );
    assert_eq!(advisories(&root), n);
    // No download files left behind.
    let left: Vec<_> = std::fs::read_dir(root.join("vulndb"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".download-"))
        .collect();
    assert!(left.is_empty());
}

#[test]
fn update_defaults_to_the_ecosystems_of_stored_images() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let log = Arc::new(Mutex::new(Vec::new()));
    let good = zip_of(&fixtures::osv_records());
    let mut files = HashMap::new();
    for e in [
        "Debian",
        "PyPI",
        "npm",
        "Go",
        "crates.io",
        "Alpine",
        "Maven",
        "RubyGems",
    ] {
        files.insert(
            format!("/{e}/all.zip"),
            ("\"d\"".to_string(), good.clone(), good.len()),
        );
    }
    let port = serve(files, log.clone());
    let base = format!("http://127.0.0.1:{port}");
    // No images: a clear error, no request.
    let o = moat(&root, &["vulndb", "update", "--source", &base]);
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "moat: error: no stored image has packages of a known ecosystem; name the advisories to fetch with --ecosystem (Debian, Alpine, PyPI, npm, Go, ...)\n"
    );
    assert!(log.lock().unwrap().is_empty());
    // A Debian image: Debian's export is fetched.
    let rootfs = dir.path().join("deb");
    fixtures::write_debian_rootfs(&rootfs).unwrap();
    let tarball = dir.path().join("deb.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let o = moat(
        &root,
        &[
            "image",
            "import",
            tarball.to_str().unwrap(),
            "--name",
            "deb",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = moat(&root, &["vulndb", "update", "--source", &base]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The fixture image has dpkg packages and Python packages.
    let paths: Vec<String> = log.lock().unwrap().iter().map(|(p, _)| p.clone()).collect();
    assert!(paths.contains(&"/Debian/all.zip".to_string()), "{paths:?}");
    assert!(paths.contains(&"/PyPI/all.zip".to_string()), "{paths:?}");
}

#[test]
fn watch_keeps_updating_and_survives_a_bad_round() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let records = fixtures::osv_records();
    let (first, rest) = records.split_at(1);
    let small = zip_of(first);
    let full = zip_of(&records);
    let files = Arc::new(Mutex::new(HashMap::new()));
    let set = |etag: &str, body: &[u8], sent: usize| {
        files.lock().unwrap().insert(
            "/Debian/all.zip".to_string(),
            (format!("\"{etag}\""), body.to_vec(), sent),
        );
    };
    set("v1", &small, small.len());
    let log = Arc::new(Mutex::new(Vec::new()));
    let port = serve_shared(files.clone(), log.clone());
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(&root)
        .args([
            "vulndb",
            "update",
            "--source",
            &base,
            "--ecosystem",
            "Debian",
        ])
        .args(["--watch", "1s"])
        .env_remove("MOAT_ROOT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Waits (at most 20 s) until `done` holds.
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done() {
            assert!(
                std::time::Instant::now() < until,
                "timed out waiting for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let requests = || log.lock().unwrap().len();
    wait("the first import", &|| advisories(&root) > 0);
    let n1 = advisories(&root);
    assert!(!rest.is_empty());
    // A cut-off export: the round fails, the database keeps its records,
    // the watcher goes on.
    set("v2", &full, full.len() / 2);
    let seen = requests();
    wait("two more rounds", &|| requests() >= seen + 2);
    assert_eq!(advisories(&root), n1);
    // A new complete export is imported at the next round.
    set("v3", &full, full.len());
    wait("the second import", &|| advisories(&root) > n1);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("download cut off after")
            && e.contains("the database is unchanged")
            && e.contains("retrying in 1s"),
        "{e}"
    );
    // Revalidation: after v1, the watcher asked with its ETag.
    assert!(
        log.lock().unwrap().iter().any(|(_, inm)| inm == "\"v1\""),
        "no conditional request"
    );
}
