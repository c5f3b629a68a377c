//! Inventory + advisory matching over the project's own fixtures; expected
//! findings (and non-findings) asserted exactly.

use std::fs;
use std::io::Write;
use std::path::Path;

use moat_scan::cvss::Severity;
use moat_scan::db::VulnDb;
use moat_scan::fixtures;
use moat_scan::inventory::{self, binary, os, Inventory};
use moat_scan::matcher::match_inventory;
use moat_scan::report::Report;
use moat_scan::store::{self, IgnoreRule};

fn db_with_fixtures(dir: &Path) -> VulnDb {
    let osv = dir.join("osv");
    fixtures::write_osv_dir(&osv).unwrap();
    let mut db = VulnDb::create(&dir.join("root/vulndb")).unwrap();
    db.import(&osv, &mut |_| {}).unwrap();
    db
}

fn summary(
    db: &VulnDb,
    inv: &Inventory,
) -> Vec<(String, String, String, Option<String>, Severity)> {
    match_inventory(db, inv)
        .unwrap()
        .into_iter()
        .map(|f| (f.id, f.package, f.installed, f.fixed, f.severity))
        .collect()
}

fn s(x: &str) -> String {
    x.to_string()
}

#[test]
fn debian_rootfs_findings_are_exact() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    fixtures::write_debian_rootfs(&root).unwrap();
    let db = db_with_fixtures(t.path());
    let inv = inventory::from_rootfs(&root).unwrap();
    assert_eq!(inv.os.as_ref().unwrap().id, "debian");
    let bsd = inv.packages.iter().find(|p| p.name == "bsdutils").unwrap();
    assert_eq!(bsd.source_name.as_deref(), Some("util-linux"));
    assert_eq!(bsd.source_version.as_deref(), Some("2.38.1-5+deb12u3"));
    assert_eq!(bsd.ecosystem, "Debian:12");
    assert!(
        !inv.packages.iter().any(|p| p.name == "libexpat1"),
        "removed package listed"
    );
    assert!(
        !inv.packages.iter().any(|p| p.name == "flask"),
        "unpinned requirement listed"
    );
    assert!(
        !inv.packages.iter().any(|p| p.name == "app"),
        "workspace crate listed"
    );
    assert!(
        !inv.packages.iter().any(|p| p.name == "local-lib"),
        "linked npm package listed"
    );
    assert_eq!(
        inv.packages.len(),
        6 + 2 + 2 + 2 + 2 + 1 + 2 + 2,
        "{:#?}",
        inv.packages
    );
    let got = summary(&db, &inv);
    let want = vec![
        (
            s("GHSA-67hx-6x53-jw92"),
            s("@babel/traverse"),
            s("7.22.5"),
            Some(s("7.23.2")),
            Severity::Critical,
        ),
        (
            s("DSA-5900-1"),
            s("libssl3"),
            s("3.0.15-1~deb12u1"),
            Some(s("3.0.16-1~deb12u1")),
            Severity::Critical,
        ),
        (
            s("RUSTSEC-2021-0003"),
            s("smallvec"),
            s("1.6.0"),
            Some(s("1.6.1")),
            Severity::Critical,
        ),
        (
            s("DLA-3782-1"),
            s("bsdutils"),
            s("1:2.38.1-5+deb12u3"),
            Some(s("2.38.1-5+deb12u4")),
            Severity::High,
        ),
        (
            s("GHSA-35jh-r3h4-6jhm"),
            s("lodash"),
            s("4.17.20"),
            Some(s("4.17.21")),
            Severity::High,
        ),
        (
            s("GHSA-r683-j2x4-v87g"),
            s("node-fetch"),
            s("2.6.6"),
            Some(s("2.6.7")),
            Severity::High,
        ),
        (
            s("GHSA-h5c8-rqwp-cp95"),
            s("Jinja2"),
            s("3.1.2"),
            Some(s("3.1.3")),
            Severity::Medium,
        ),
        (
            s("DEBIAN-CVE-2024-12243"),
            s("libgnutls30"),
            s("3.7.9-2+deb12u3"),
            None,
            Severity::Medium,
        ),
        (
            s("GHSA-9wx4-h78v-vm56"),
            s("requests"),
            s("2.31.0"),
            Some(s("2.32.0")),
            Severity::Medium,
        ),
        (
            s("DEBIAN-CVE-2023-45853"),
            s("zlib1g"),
            s("1:1.2.13.dfsg-1"),
            Some(s("1:1.2.13.dfsg-1+deb12u1")),
            Severity::Unknown,
        ),
    ];
    assert_eq!(got, want);

    let rep = Report::build("fixture", inv.clone(), Some(&db), true, &[]).unwrap();
    assert_eq!(rep.suppressed, 1);
    assert!(!rep.findings.iter().any(|f| f.id == "DEBIAN-CVE-2024-12243"));
    assert!(rep.has_at_least(Severity::Critical));
    let table = rep.table();
    assert!(table.contains("\nCRITICAL (3)\n"), "{table}");
    assert!(table.contains("bsdutils"), "{table}");
    let rules = [IgnoreRule {
        id: s("CVE-2025-0001"),
        expires: Some(s("2999-01-01")),
        reason: None,
    }];
    let rep = Report::build("fixture", inv, Some(&db), false, &rules).unwrap();
    assert!(
        !rep.findings.iter().any(|f| f.id == "DSA-5900-1"),
        "ignored by alias"
    );
}

#[test]
fn alpine_findings_use_origin() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    fixtures::write_alpine_rootfs(&root).unwrap();
    let db = db_with_fixtures(t.path());
    let inv = inventory::from_rootfs(&root).unwrap();
    assert!(inv.packages.iter().all(|p| p.ecosystem == "Alpine:v3.18"));
    assert_eq!(
        summary(&db, &inv),
        vec![
            (
                s("ALPINE-CVE-2025-26519"),
                s("musl"),
                s("1.2.4-r2"),
                Some(s("1.2.4_git20230717-r5")),
                Severity::High
            ),
            (
                s("ALPINE-CVE-2024-0727"),
                s("libcrypto3"),
                s("3.1.4-r5"),
                Some(s("3.1.4-r6")),
                Severity::Medium
            ),
        ]
    );
}

#[test]
fn no_package_database_is_said_plainly() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/sh"), b"#!/bin/true\n").unwrap();
    let db = db_with_fixtures(t.path());
    let inv = inventory::from_rootfs(&root).unwrap();
    let rep = Report::build("empty", inv, Some(&db), false, &[]).unwrap();
    assert_eq!(rep.checked, 0);
    let table = rep.table();
    assert!(
        table.contains("Nothing could be checked: this is not a clean result."),
        "{table}"
    );
    assert!(table.contains("note: no OS package database found (dpkg, apk or rpm) in this image: OS packages were not checked"), "{table}");
    assert!(!table.contains("No known vulnerabilities"), "{table}");

    // An OS no advisory source covers.
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("etc/os-release"),
        "ID=plan9\nVERSION_ID=4\nPRETTY_NAME=\"Plan 9\"\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    fs::write(root.join("var/lib/dpkg/status"), fixtures::DPKG_STATUS).unwrap();
    let inv = inventory::from_rootfs(&root).unwrap();
    assert_eq!(
        inv.notes,
        ["the OS Plan 9 (ID=plan9) is not covered by any advisory source moat knows: its 6 OS packages were not checked"]
    );
}

fn tar_layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, path, *d).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                h.set_cksum();
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn layers_in_order_with_whiteouts() {
    let base = tar_layer(&[
        ("etc/", None),
        ("etc/os-release", Some(fixtures::DEBIAN_OS_RELEASE.as_bytes())),
        ("var/lib/dpkg/status", Some(b"Package: libc6\nStatus: install ok installed\nSource: glibc\nVersion: 2.36-9+deb12u3\n")),
        ("opt/old/Cargo.lock", Some(fixtures::CARGO_LOCK.as_bytes())),
        ("app/package-lock.json", Some(fixtures::PACKAGE_LOCK_V3.as_bytes())),
    ]);
    let upper = tar_layer(&[
        ("opt/.wh.old", Some(b"")),
        ("app/.wh..wh..opq", Some(b"")),
        ("app/yarn.lock", Some(fixtures::YARN_LOCK.as_bytes())),
        (
            "var/lib/dpkg/status",
            Some(fixtures::DPKG_STATUS.as_bytes()),
        ),
    ]);
    let inv = inventory::from_layers([
        (s("sha256:aaaa"), &base[..]),
        (s("sha256:bbbb"), &upper[..]),
    ])
    .unwrap();
    let mut names: Vec<(&str, &str, Option<&str>)> = inv
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str(), p.layer.as_deref()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("@babel/traverse", "7.22.5", Some("sha256:bbbb")),
            ("bsdutils", "1:2.38.1-5+deb12u3", Some("sha256:bbbb")),
            ("libc6", "2.36-9+deb12u7", Some("sha256:bbbb")),
            ("libgnutls30", "3.7.9-2+deb12u3", Some("sha256:bbbb")),
            ("libssl3", "3.0.15-1~deb12u1", Some("sha256:bbbb")),
            ("semver", "7.5.4", Some("sha256:bbbb")),
            ("tzdata", "2024a-0+deb12u1", Some("sha256:bbbb")),
            ("zlib1g", "1:1.2.13.dfsg-1", Some("sha256:bbbb")),
        ]
    );
    assert_eq!(inv.os.unwrap().version_id, "12");
}

#[test]
fn layers_without_padding_or_end_blocks_are_read() {
    // umoci 0.4 ends a layer right after the last file's data: no padding
    // to 512 bytes and no end-of-archive blocks. The unpacker accepts such
    // layers; the scanner must read them too.
    let status = fixtures::DPKG_STATUS.as_bytes();
    assert_ne!(status.len() % 512, 0, "the fixture must need padding");
    let full = tar_layer(&[
        ("bin/tool", Some(&[0u8; 100][..])),
        ("var/lib/dpkg/status", Some(status)),
    ]);
    let end = 512 + 512 + 512 + status.len();
    let cut = &full[..end];
    let inv = inventory::from_layers([(s("sha256:cccc"), cut)]).unwrap();
    assert!(
        inv.packages.iter().any(|p| p.name == "libssl3"),
        "{:?}",
        inv.packages
    );

    // A stream that ends before any entry is still an error.
    let err = inventory::from_layers([(s("sha256:dddd"), &full[..300])]).unwrap_err();
    assert!(err.to_string().contains("sha256:dddd"), "{err}");
}

#[test]
fn layer_attribution_keeps_lower_layer_files() {
    let base = tar_layer(&[("srv/Cargo.lock", Some(fixtures::CARGO_LOCK.as_bytes()))]);
    let upper = tar_layer(&[("srv/poetry.lock", Some(fixtures::POETRY_LOCK.as_bytes()))]);
    let inv = inventory::from_layers([
        (s("sha256:1111"), &base[..]),
        (s("sha256:2222"), &upper[..]),
    ])
    .unwrap();
    let smallvec = inv.packages.iter().find(|p| p.name == "smallvec").unwrap();
    assert_eq!(smallvec.layer.as_deref(), Some("sha256:1111"));
    let idna = inv.packages.iter().find(|p| p.name == "idna").unwrap();
    assert_eq!(idna.layer.as_deref(), Some("sha256:2222"));
}

#[test]
fn go_and_auditable_binaries() {
    let t = tempfile::tempdir().unwrap();
    let db = db_with_fixtures(t.path());
    let modinfo = "path\texample.com/app\nmod\texample.com/app\t(devel)\t\ndep\tgolang.org/x/net\tv0.17.0\th1:abc=\ndep\tgithub.com/old/dep\tv1.0.0\th1:def=\n=>\tgithub.com/new/dep\tv1.2.0\th1:ghi=\nbuild\tGOOS=linux\n";
    let elf = binary::build_elf_with_section(
        ".go.buildinfo",
        &fixtures::go_buildinfo_blob("go1.21.3", modinfo),
    );
    let json = br#"{"packages":[{"name":"app","version":"0.1.0","source":"local","root":true},{"name":"smallvec","version":"1.6.0","source":"crates.io","dependencies":[]}]}"#;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(json).unwrap();
    let auditable = binary::build_elf_with_section(".dep-v0", &z.finish().unwrap());
    let layer = {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [("usr/bin/goapp", &elf), ("usr/bin/rustapp", &auditable)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, path, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    };
    let inv = inventory::from_layers([(s("sha256:cccc"), &layer[..])]).unwrap();
    let mut pk: Vec<(String, String, String)> = inv
        .packages
        .iter()
        .map(|p| (p.ecosystem.clone(), p.name.clone(), p.version.clone()))
        .collect();
    pk.sort();
    assert_eq!(
        pk,
        [
            (s("Go"), s("github.com/new/dep"), s("v1.2.0")),
            (s("Go"), s("golang.org/x/net"), s("v0.17.0")),
            (s("Go"), s("stdlib"), s("1.21.3")),
            (s("crates.io"), s("smallvec"), s("1.6.0")),
        ]
    );
    assert_eq!(
        summary(&db, &inv),
        vec![
            (
                s("RUSTSEC-2021-0003"),
                s("smallvec"),
                s("1.6.0"),
                Some(s("1.6.1")),
                Severity::Critical
            ),
            (
                s("GO-2023-2185"),
                s("stdlib"),
                s("1.21.3"),
                Some(s("1.21.4")),
                Severity::High
            ),
        ]
    );
}

#[test]
fn real_go_binary_on_this_machine() {
    let Some(bin) = ["/usr/bin/podman", "/usr/bin/skopeo", "/usr/bin/umoci"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        println!("SKIP: no Go binary (podman, skopeo, umoci) installed");
        return;
    };
    let data = fs::read(bin).unwrap();
    // Debian builds these in GOPATH mode: build info has the toolchain and
    // the main package path, but no module list.
    let (goversion, modinfo) = binary::go_buildinfo(&data).expect("build info");
    assert!(goversion.starts_with("go1."), "{goversion}");
    assert!(modinfo.starts_with("path\tgithub.com/"), "{modinfo:?}");
    assert!(
        modinfo.ends_with('\n'),
        "sentinels not stripped: {modinfo:?}"
    );
    let pk = binary::go_packages(&data, bin);
    let stdlib = pk
        .iter()
        .find(|p| p.name == "stdlib")
        .expect("stdlib version");
    assert_eq!(format!("go{}", stdlib.version), goversion);
}

#[test]
fn rpm_sqlite_database() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    fs::create_dir_all(root.join("var/lib/rpm")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("etc/os-release"),
        "ID=\"rocky\"\nVERSION_ID=\"9.3\"\n",
    )
    .unwrap();
    let conn = rusqlite::Connection::open(root.join("var/lib/rpm/rpmdb.sqlite")).unwrap();
    conn.execute_batch(
        "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL);",
    )
    .unwrap();
    for blob in [
        os::build_rpm_header(
            "openssl-libs",
            "3.0.7",
            "24.el9",
            Some(1),
            "openssl-3.0.7-24.el9.src.rpm",
        ),
        os::build_rpm_header(
            "bash",
            "5.1.8",
            "6.el9_1",
            None,
            "bash-5.1.8-6.el9_1.src.rpm",
        ),
        os::build_rpm_header("gpg-pubkey", "350d275d", "6279464b", None, ""),
    ] {
        conn.execute("INSERT INTO Packages (blob) VALUES (?1)", [blob])
            .unwrap();
    }
    drop(conn);
    let inv = inventory::from_rootfs(&root).unwrap();
    let pk: Vec<(&str, &str, &str, Option<&str>)> = inv
        .packages
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.version.as_str(),
                p.ecosystem.as_str(),
                p.source_name.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        pk,
        [
            (
                "openssl-libs",
                "1:3.0.7-24.el9",
                "Rocky Linux:9",
                Some("openssl")
            ),
            ("bash", "5.1.8-6.el9_1", "Rocky Linux:9", Some("bash")),
        ]
    );
    let osv = t.path().join("osv");
    fs::create_dir_all(&osv).unwrap();
    fs::write(osv.join("r.json"), r#"{"id": "RLSA-2024:0001", "affected": [{"package": {"ecosystem": "Rocky Linux:9", "name": "openssl-libs"}, "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1:3.0.7-25.el9_3"}]}]}]}"#).unwrap();
    let mut db = VulnDb::create(&t.path().join("db")).unwrap();
    db.import(&osv, &mut |_| {}).unwrap();
    assert_eq!(
        summary(&db, &inv),
        vec![(
            s("RLSA-2024:0001"),
            s("openssl-libs"),
            s("1:3.0.7-24.el9"),
            Some(s("1:3.0.7-25.el9_3")),
            Severity::Unknown
        )]
    );
}

#[test]
fn reimport_changes_only_what_changed() {
    let t = tempfile::tempdir().unwrap();
    let osv = t.path().join("osv");
    fixtures::write_osv_dir(&osv).unwrap();
    let mut db = VulnDb::create(&t.path().join("db")).unwrap();
    let first = db.import(&osv, &mut |_| {}).unwrap();
    let n = fixtures::osv_records().len() as u64;
    assert_eq!(
        (
            first.records,
            first.added,
            first.withdrawn,
            first.git_ranges_skipped
        ),
        (n, n - 1, 1, 1)
    );
    let again = db.import(&osv, &mut |_| {}).unwrap();
    assert_eq!((again.added, again.updated, again.unchanged), (0, 0, n - 1));
    // Withdraw one record and change another.
    fs::write(osv.join("DLA-3782-1.json"), r#"{"id": "DLA-3782-1", "modified": "2024-07-01T00:00:00Z", "withdrawn": "2024-07-01T00:00:00Z"}"#).unwrap();
    fs::write(osv.join("RUSTSEC-2022-0013.json"), r#"{"id": "RUSTSEC-2022-0013", "modified": "2024-07-02T00:00:00Z", "affected": [{"package": {"ecosystem": "crates.io", "name": "regex"}, "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "1.5.6"}]}]}]}"#).unwrap();
    let third = db.import(&osv, &mut |_| {}).unwrap();
    assert_eq!(
        (third.added, third.updated, third.unchanged, third.withdrawn),
        (0, 1, n - 3, 2)
    );
    assert!(db.lookup("Debian:12", "util-linux").unwrap().is_empty());
    assert_eq!(db.lookup("crates.io", "regex").unwrap().len(), 1);
    let st = db.status().unwrap();
    assert_eq!(st.advisories, n - 2);
    assert_eq!(st.newest_modified.as_deref(), Some("2024-07-02T00:00:00Z"));
}

#[test]
fn bad_record_names_the_file_and_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let osv = t.path().join("osv");
    fixtures::write_osv_dir(&osv).unwrap();
    fs::write(osv.join("zz-broken.json"), "{not json").unwrap();
    let mut db = VulnDb::create(&t.path().join("db")).unwrap();
    let err = db.import(&osv, &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not a valid OSV record (fix or remove it, then import again)",
            osv.join("zz-broken.json").display()
        )
    );
    assert_eq!(db.status().unwrap().advisories, 0);
}

#[test]
fn zip_archives_like_osv_all_zip() {
    let t = tempfile::tempdir().unwrap();
    let zpath = t.path().join("all.zip");
    let mut zw = zip::ZipWriter::new(fs::File::create(&zpath).unwrap());
    for (name, text) in fixtures::osv_records() {
        zw.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zw.write_all(text.as_bytes()).unwrap();
    }
    zw.finish().unwrap();
    let mut db = VulnDb::create(&t.path().join("db")).unwrap();
    let rep = db.import(&zpath, &mut |_| {}).unwrap();
    assert_eq!(rep.records, fixtures::osv_records().len() as u64);
    assert_eq!(db.lookup("npm", "lodash").unwrap().len(), 1);
}

#[test]
fn rematch_alerts_and_gate() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let rootfs = t.path().join("rootfs");
    fixtures::write_alpine_rootfs(&rootfs).unwrap();
    let inv = inventory::from_rootfs(&rootfs).unwrap();
    let id = "sha256:1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef";
    // Stored before any advisory exists.
    store::save(&root, id, &[s("alpine:3.18")], inv).unwrap();
    let running = [
        store::ContainerImage {
            container: store::ContainerRef {
                id: s("c1"),
                name: s("web"),
            },
            image_id: id.to_string(),
        },
        store::ContainerImage {
            container: store::ContainerRef {
                id: s("c2"),
                name: s("other"),
            },
            image_id: s("sha256:00"),
        },
    ];
    let osv = t.path().join("osv");
    fixtures::write_osv_dir(&osv).unwrap();
    let mut db = VulnDb::create(&root.join("vulndb")).unwrap();
    db.import(&osv, &mut |_| {}).unwrap();
    let alerts = store::rematch_all(&root, &running, &db).unwrap();
    assert_eq!(alerts.len(), 1);
    let ids: Vec<&str> = alerts[0]
        .new_findings
        .iter()
        .map(|f| f.id.as_str())
        .collect();
    assert_eq!(ids, ["ALPINE-CVE-2025-26519", "ALPINE-CVE-2024-0727"]);
    assert_eq!(
        alerts[0].containers,
        [store::ContainerRef {
            id: s("c1"),
            name: s("web")
        }]
    );
    // Nothing new the second time.
    assert!(store::rematch_all(&root, &running, &db).unwrap().is_empty());
    let log = fs::read_to_string(store::alerts_log(&root)).unwrap();
    assert_eq!(log.lines().count(), 1);

    // The run gate: high blocks; an unexpired ignore entry lifts it, an
    // expired one does not.
    let today = moat_scan::util::parse_date("2025-06-01").unwrap();
    let d = store::gate(&root, id, Severity::High, &[], today, false).unwrap();
    assert_eq!(
        d.refusal("alpine:3.18", Severity::High).unwrap(),
        "image alpine:3.18 has 1 vulnerabilities at or above the policy's fail_on=high: ALPINE-CVE-2025-26519 (high) in musl 1.2.4-r2: fixed in 1.2.4_git20230717-r5"
    );
    let ok = [IgnoreRule {
        id: s("CVE-2025-26519"),
        expires: Some(s("2025-06-01")),
        reason: None,
    }];
    assert!(store::gate(&root, id, Severity::High, &ok, today, false)
        .unwrap()
        .allowed());
    let expired = [IgnoreRule {
        id: s("CVE-2025-26519"),
        expires: Some(s("2025-05-31")),
        reason: None,
    }];
    let d = store::gate(&root, id, Severity::High, &expired, today, false).unwrap();
    assert!(!d.allowed());
    assert!(d
        .refusal("alpine", Severity::High)
        .unwrap()
        .ends_with("(expired ignore entries no longer apply: CVE-2025-26519)"));
    assert!(
        store::gate(&root, id, Severity::Critical, &[], today, false)
            .unwrap()
            .allowed()
    );
    let err = store::gate(&root, "sha256:ffff", Severity::High, &[], today, false).unwrap_err();
    assert_eq!(err.to_string(), "no stored inventory for image sha256:ffff: it was imported before scanning existed; re-import it with `moat image import`");
}

#[test]
fn cyclonedx_output_round_trips_as_sbom_input() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    fixtures::write_debian_rootfs(&root).unwrap();
    let db = db_with_fixtures(t.path());
    let inv = inventory::from_rootfs(&root).unwrap();
    let rep = Report::build("fixture", inv.clone(), Some(&db), false, &[]).unwrap();
    let bom = rep.cyclonedx();
    assert_eq!(bom["specVersion"], "1.5");
    assert_eq!(
        bom["vulnerabilities"].as_array().unwrap().len(),
        rep.findings.len()
    );
    let sarif = rep.sarif();
    assert_eq!(
        sarif["runs"][0]["results"].as_array().unwrap().len(),
        rep.findings.len()
    );
    let path = t.path().join("bom.json");
    fs::write(&path, serde_json::to_vec(&bom).unwrap()).unwrap();
    let back = moat_scan::sbom::read(&path).unwrap();
    // purl lower-cases PyPI names (Jinja2 -> jinja2); everything else is equal.
    let lower = |v: Vec<(String, String, String, Option<String>, Severity)>| {
        v.into_iter()
            .map(|(a, b, c, d, e)| (a, b.to_lowercase(), c, d, e))
            .collect::<Vec<_>>()
    };
    assert_eq!(lower(summary(&db, &back)), lower(summary(&db, &inv)));
    assert_eq!(back.os.as_ref().map(|o| o.id.as_str()), Some("debian"));
}
