//! Driver for `bench/scan`: generates OSV-shaped advisories and a rootfs
//! with about 1,000 packages, and times matching through the library.
//!
//! ```text
//! scan_bench gen OUT ADVISORIES       # OUT/osv/<ecosystem>/all.zip, OUT/rootfs
//! scan_bench match STATE_ROOT ROOTFS  # cold and warm match times
//! ```

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use moat_scan::db::VulnDb;
use moat_scan::inventory;
use moat_scan::matcher::match_inventory;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// (OSV ecosystem, directory name, installed packages of that kind)
const ECOS: [(&str, &str, u64); 5] = [
    ("Debian:12", "Debian", 500),
    ("npm", "npm", 250),
    ("PyPI", "PyPI", 100),
    ("crates.io", "crates.io", 100),
    ("Go", "Go", 50),
];

fn name(eco: &str, i: u64) -> String {
    match eco {
        "Debian:12" => format!("src-{i}"),
        "npm" => format!("npm-{i}"),
        "PyPI" => format!("py-{i}"),
        "crates.io" => format!("crate-{i}"),
        _ => format!("example.com/mod{i}"),
    }
}

fn version(eco: &str, a: u64, b: u64) -> String {
    match eco {
        "Debian:12" => format!("1.{a}.{b}-1+deb12u1"),
        "Go" => format!("v1.{a}.{b}"),
        _ => format!("1.{a}.{b}"),
    }
}

const VECTORS: [&str; 4] = [
    "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
    "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H",
    "CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N",
    "CVSS:3.1/AV:L/AC:H/PR:L/UI:N/S:U/C:N/I:N/A:L",
];

fn record(r: &mut Rng, eco: &str, n: u64, names: u64) -> String {
    let pkg = name(eco, r.below(names));
    let (a, b) = (r.below(10), r.below(10));
    let id = match eco {
        "Debian:12" => format!("DEBIAN-CVE-2099-{n}"),
        "Go" => format!("GO-2099-{n}"),
        "crates.io" => format!("RUSTSEC-2099-{n}"),
        _ => format!("GHSA-bench-{n:08x}"),
    };
    let ty = if eco == "Debian:12" {
        "ECOSYSTEM"
    } else {
        "SEMVER"
    };
    let mut events = format!(
        r#"{{"introduced": "0"}}, {{"fixed": "{}"}}"#,
        version(eco, a, b)
    );
    if r.below(4) == 0 {
        events.push_str(&format!(
            r#", {{"introduced": "{}"}}, {{"fixed": "{}"}}"#,
            version(eco, a + 1, 0),
            version(eco, a + 1, b + 1)
        ));
    }
    let git = if r.below(8) == 0 {
        r#", {"type": "GIT", "repo": "https://example.invalid/repo.git", "events": [{"introduced": "0"}, {"fixed": "0123456789abcdef0123456789abcdef01234567"}]}"#
    } else {
        ""
    };
    format!(
        r#"{{"schema_version": "1.6.0", "id": "{id}", "modified": "2024-0{m}-1{d}T12:00:00Z", "published": "2023-01-01T00:00:00Z",
"aliases": ["CVE-2099-{n}"], "summary": "Generated advisory {n} for {pkg}",
"details": "A generated advisory shaped like a real OSV record: an attacker who can reach the affected component can cause memory corruption, denial of service or information disclosure. Upgrade to the fixed version.",
"severity": [{{"type": "CVSS_V3", "score": "{vec}"}}],
"affected": [{{"package": {{"ecosystem": "{eco}", "name": "{pkg}", "purl": "pkg:generic/{pkg}"}},
  "ranges": [{{"type": "{ty}", "events": [{events}]}}{git}],
  "database_specific": {{"source": "https://example.invalid/{id}.json"}}}}],
"references": [{{"type": "ADVISORY", "url": "https://example.invalid/advisories/{id}"}}, {{"type": "WEB", "url": "https://example.invalid/CVE-2099-{n}"}}]}}"#,
        m = 1 + r.below(9),
        d = r.below(10),
        vec = VECTORS[r.below(4) as usize],
    )
}

fn gen(out: &Path, total: u64) {
    let mut r = Rng(0x2545_f491_4f6c_dd1d ^ total);
    let osv = out.join("osv");
    for (e, (eco, dir, _)) in ECOS.iter().enumerate() {
        let count = total / ECOS.len() as u64 + u64::from((e as u64) < total % ECOS.len() as u64);
        // About five advisories per package name, whatever the DB size, as in
        // real data: a bigger database covers more packages.
        let names = (count / 5).max(1000);
        let d = osv.join(dir);
        fs::create_dir_all(&d).unwrap();
        let mut zw = zip::ZipWriter::new(std::io::BufWriter::new(
            fs::File::create(d.join("all.zip")).unwrap(),
        ));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1));
        for k in 0..count {
            let n = e as u64 * 10_000_000 + k;
            let rec = record(&mut r, eco, n, names);
            zw.start_file(format!("{n}.json"), opts).unwrap();
            zw.write_all(rec.as_bytes()).unwrap();
        }
        zw.finish().unwrap();
    }
    // The rootfs: ~1,000 packages over five ecosystems.
    let root = out.join("rootfs");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    fs::create_dir_all(root.join("app")).unwrap();
    fs::write(
        root.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
    )
    .unwrap();
    let mut status = String::new();
    for i in 0..ECOS[0].2 {
        let src = i / 2;
        let (a, b) = (r.below(10), r.below(10));
        status.push_str(&format!(
            "Package: bin-{i}\nStatus: install ok installed\nArchitecture: amd64\nSource: {} ({})\nVersion: 1:{}\n\n",
            name("Debian:12", src),
            version("Debian:12", a, b),
            version("Debian:12", a, b)
        ));
    }
    fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
    let mut lock =
        String::from(r#"{"name": "app", "lockfileVersion": 3, "packages": {"": {"name": "app"}"#);
    for i in 0..ECOS[1].2 {
        lock.push_str(&format!(
            r#", "node_modules/{}": {{"version": "{}"}}"#,
            name("npm", i),
            version("npm", r.below(10), r.below(10))
        ));
    }
    lock.push_str("}}");
    fs::write(root.join("app/package-lock.json"), lock).unwrap();
    let mut req = String::new();
    for i in 0..ECOS[2].2 {
        req.push_str(&format!(
            "{}=={}\n",
            name("PyPI", i),
            version("PyPI", r.below(10), r.below(10))
        ));
    }
    fs::write(root.join("app/requirements.txt"), req).unwrap();
    let mut cargo = String::from("version = 3\n");
    for i in 0..ECOS[3].2 {
        cargo.push_str(&format!(
            "\n[[package]]\nname = \"{}\"\nversion = \"{}\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n",
            name("crates.io", i),
            version("crates.io", r.below(10), r.below(10))
        ));
    }
    fs::write(root.join("app/Cargo.lock"), cargo).unwrap();
    // Go modules through a Go binary's build info.
    let mut modinfo = String::from("path\texample.com/app\nmod\texample.com/app\t(devel)\t\n");
    for i in 0..ECOS[4].2 - 1 {
        modinfo.push_str(&format!(
            "dep\t{}\t{}\th1:x=\n",
            name("Go", i),
            version("Go", r.below(10), r.below(10))
        ));
    }
    let blob = go_buildinfo(&modinfo);
    let elf = moat_scan::inventory::binary::build_elf_with_section(".go.buildinfo", &blob);
    let bin = root.join("app/server");
    fs::write(&bin, elf).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
}

fn go_buildinfo(modinfo: &str) -> Vec<u8> {
    moat_scan::fixtures::go_buildinfo_blob("go1.21.3", modinfo)
}

/// On-CPU time of this thread in ns (`/proc/thread-self/schedstat`): on a
/// busy shared machine, wall time mostly measures the other tenants.
fn cpu_ns() -> u64 {
    fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn bench_match(state: &Path, rootfs: &Path) {
    let inv = inventory::from_rootfs(rootfs).unwrap();
    let db = VulnDb::open(&state.join("vulndb")).unwrap();
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let mut findings = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let c = cpu_ns();
        findings = match_inventory(&db, &inv).unwrap().len();
        cpu.push((cpu_ns() - c) as f64 / 1e6);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut wcpu = cpu[1..].to_vec();
    wcpu.sort_by(|a, b| a.total_cmp(b));
    let cold = times[0];
    let mut warm = times[1..].to_vec();
    warm.sort_by(|a, b| a.total_cmp(b));
    println!("packages {}", inv.packages.len());
    println!("advisories {}", db.count().unwrap());
    println!("findings {findings}");
    println!("match_cold_ms {cold:.1}");
    println!("match_warm_ms {:.1}", warm[warm.len() / 2]);
    println!("match_warm_cpu_ms {:.1}", wcpu[wcpu.len() / 2]);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") if args.len() == 4 => gen(
            Path::new(&args[2]),
            args[3].parse().expect("advisory count"),
        ),
        Some("match") if args.len() == 4 => bench_match(Path::new(&args[2]), Path::new(&args[3])),
        _ => {
            eprintln!("usage: scan_bench gen OUT ADVISORIES | scan_bench match STATE_ROOT ROOTFS");
            std::process::exit(2);
        }
    }
}
