//! The scanner reads layers with the unpacker's walker (`moat_image::layer`):
//! what the unpacker ignores or refuses cannot hide a lower layer's packages
//! from the scanner.

use moat_scan::fixtures;
use moat_scan::inventory;

/// A layer whose entries are written with their names as given (no path
/// clean-up by the tar crate).
fn raw_layer(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn package_names(upper: &[u8]) -> Vec<String> {
    let base = raw_layer(&[
        (b"etc/os-release", fixtures::DEBIAN_OS_RELEASE.as_bytes()),
        (b"var/lib/dpkg/status", fixtures::DPKG_STATUS.as_bytes()),
    ]);
    let inv = inventory::from_layers([
        ("sha256:aaaa".to_string(), &base[..]),
        ("sha256:bbbb".to_string(), upper),
    ])
    .unwrap();
    let mut names: Vec<String> = inv.packages.into_iter().map(|p| p.name).collect();
    names.sort();
    names
}

#[test]
fn root_entries_and_bad_whiteouts_hide_nothing() {
    let all = package_names(&raw_layer(&[(b"usr/share/doc", b"")]));
    assert!(all.iter().any(|n| n == "libssl3"), "{all:?}");
    // A file entry named for the root directory: the unpacker passes over
    // it, so the packages below stay in the image.
    assert_eq!(package_names(&raw_layer(&[(b"./", b"x")])), all);
    // `.wh.` names nothing; the unpacker refuses it. It hides nothing here.
    assert_eq!(package_names(&raw_layer(&[(b".wh.", b"")])), all);
    // `..` and absolute paths: refused by the unpacker, passed over here.
    assert_eq!(
        package_names(&raw_layer(&[
            (b"../var/lib/dpkg/status", b""),
            (b"/var/lib/dpkg/status", b"")
        ])),
        all
    );
}

#[test]
fn whiteouts_still_hide_lower_layers() {
    assert!(package_names(&raw_layer(&[(b"var/lib/dpkg/.wh.status", b"")])).is_empty());
    assert!(package_names(&raw_layer(&[(b"var/lib/.wh..wh..opq", b"")])).is_empty());
    assert!(package_names(&raw_layer(&[(b".wh..wh..opq", b"")])).is_empty());
}

#[test]
fn the_inventory_store_takes_only_digests() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    for id in ["sha256:../../../evil", "evil", "sha256:ABC"] {
        let err =
            moat_scan::store::save(&root, id, &[], inventory::Inventory::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("image ID {id:?} is not a sha256 digest (sha256:<64 hex digits>): no inventory is stored under it")
        );
        assert!(moat_scan::store::load(&root, id).unwrap().is_none());
        moat_scan::store::remove(&root, id).unwrap();
    }
    assert!(!t.path().join("evil.json").exists());
    let id = format!("sha256:{}", "ab".repeat(32));
    moat_scan::store::save(&root, &id, &[], inventory::Inventory::default()).unwrap();
    assert!(root
        .join(format!("scan/inventories/{}.json", "ab".repeat(32)))
        .exists());
    assert!(moat_scan::store::load(&root, &id).unwrap().is_some());
}
