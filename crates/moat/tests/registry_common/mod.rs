//! A real registry for the registry tests: Debian's `docker-registry`
//! (distribution 2.8) on 127.0.0.1 with a certificate from a throw-away CA
//! (openssl) and htpasswd auth (`htpasswd -B`). Killed on drop.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "moat-tester";
pub const PASSWORD: &str = "s3cret-pw";

pub struct Registry {
    pub dir: PathBuf,
    pub port: u16,
    /// Directory holding `ca.crt` (for --cert-dir / --dest-cert-dir).
    pub certs: PathBuf,
    child: Child,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn have_tools(test: &str) -> bool {
    for tool in ["docker-registry", "skopeo", "openssl", "htpasswd"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            println!("SKIP: {test}: {tool} is not installed (scripts/bootstrap installs it)");
            return false;
        }
    }
    true
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Makes a CA and a server certificate for 127.0.0.1 under `dir`.
pub fn make_certs(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let o = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir));
    o(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "certs/ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=moat test CA",
    ]);
    o(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    o(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "certs/ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    certs
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let certs = make_certs(dir);
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .unwrap();
        assert!(htpasswd.status.success());
        std::fs::write(dir.join("htpasswd"), &htpasswd.stdout).unwrap();
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\nauth:\n  htpasswd:\n    realm: moat-test\n    path: {d}/htpasswd\n",
            root = dir.join("storage").display(),
            d = dir.display(),
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on 127.0.0.1:{port}: {}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            dir: dir.to_path_buf(),
            port,
            certs,
            child,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy SRC docker://HOST/DEST` with the test's CA and creds.
    pub fn skopeo_push(&self, src: &str, dest: &str, extra: &[&str]) {
        run(Command::new("skopeo")
            .args(["copy", "--quiet"])
            .args(extra)
            .arg("--dest-cert-dir")
            .arg(&self.certs)
            .arg("--dest-creds")
            .arg(format!("{USER}:{PASSWORD}"))
            .arg(src)
            .arg(format!("docker://{}/{dest}", self.host())));
    }

    /// The digest skopeo sees for `repo:tag`.
    pub fn skopeo_digest(&self, name: &str) -> String {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(&self.certs)
            .arg("--creds")
            .arg(format!("{USER}:{PASSWORD}"))
            .arg(format!("docker://{}/{name}", self.host()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout)))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
