//! `moat_image::fsat::open_under`, the one helper that opens a path below a
//! root without following links elsewhere, in each mode its callers use:
//! the unpacker (refuse links, under a directory, making directories), the
//! sandbox's and the micro-VM's host directories (refuse links, from the
//! host's root) and OCI mount targets (links resolved inside the root,
//! making directories and a file).

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{symlink, MetadataExt};

use moat_image::fsat::{open_under, Access, Create, Links, Root, WalkError};

fn ino(fd: impl AsFd) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_ino
}

fn host(path: &std::path::Path) -> Result<std::os::fd::OwnedFd, WalkError> {
    open_under(
        Root::Host,
        path.as_os_str().as_encoded_bytes(),
        Links::Refuse,
        Create::No,
        Access::PathDir,
    )
}

#[test]
fn a_host_directory_is_opened_only_through_real_directories() {
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("real/data");
    fs::create_dir_all(&real).unwrap();
    fs::write(d.path().join("file"), b"").unwrap();
    symlink(d.path().join("real"), d.path().join("link")).unwrap();
    symlink("/proc/self/root", d.path().join("magic")).unwrap();

    let fd = host(&real).unwrap();
    assert_eq!(ino(&fd), fs::metadata(&real).unwrap().ino());
    for through_a_link in [
        d.path().join("link/data"),
        d.path().join("link"),
        d.path().join("magic/etc"),
    ] {
        assert!(
            matches!(host(&through_a_link), Err(WalkError::Symlink(_))),
            "{}",
            through_a_link.display()
        );
    }
    assert!(matches!(
        host(&d.path().join("file")),
        Err(WalkError::NotDir(_))
    ));
    assert!(matches!(
        host(&d.path().join("missing/x")),
        Err(WalkError::Missing(_))
    ));
}

#[test]
fn under_a_root_links_are_refused_and_directories_made() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let outside = d.path().join("outside");
    fs::create_dir_all(root.join("usr")).unwrap();
    fs::create_dir(&outside).unwrap();
    symlink(&outside, root.join("evil")).unwrap();
    let rootfd = fs::File::open(&root).unwrap();
    let open = |path: &[u8], create| {
        open_under(
            Root::Dir(rootfd.as_fd()),
            path,
            Links::Refuse,
            create,
            Access::ReadDir,
        )
    };
    let made = open(b"usr/local/bin", Create::Dirs).unwrap();
    assert_eq!(
        ino(&made),
        fs::metadata(root.join("usr/local/bin")).unwrap().ino()
    );
    match open(b"evil/sub", Create::Dirs) {
        Err(WalkError::Symlink(p)) => assert_eq!(p, b"evil"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert!(matches!(open(b"none/x", Create::No), Err(WalkError::Missing(p)) if p == b"none"));
    // No component: the root itself.
    assert_eq!(ino(open(b"", Create::No).unwrap()), ino(&rootfd));
}

#[test]
fn in_root_links_resolve_inside_the_root_and_targets_are_made() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let outside = d.path().join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    // An absolute link that would lead out of the root on the host.
    symlink(&outside, root.join("evil")).unwrap();
    symlink("/", root.join("up")).unwrap();
    let rootfd = fs::File::open(&root).unwrap();
    let open = |path: &str, create| {
        open_under(
            Root::Dir(rootfd.as_fd()),
            path.as_bytes(),
            Links::InRoot,
            create,
            Access::Path,
        )
    };
    // A file target under missing directories, reached through `/` → root.
    let fd = open("/up/etc/hosts", Create::DirsAndFile).unwrap();
    let made = root.join("etc/hosts");
    assert!(fs::metadata(&made).unwrap().is_file());
    assert_eq!(ino(&fd), fs::metadata(&made).unwrap().ino());
    assert_eq!(
        fs::metadata(&made).unwrap().mode() & 0o7777,
        0o644 & !umask()
    );
    // A directory target through the absolute link: made inside the root,
    // never in the directory the link names on the host.
    let e = open("/evil/x", Create::Dirs).unwrap_err();
    match e {
        WalkError::Io {
            at: Some(at),
            source,
        } => {
            assert_eq!(at, b"/evil");
            assert_eq!(source.raw_os_error(), Some(libc_enoent()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    fs::create_dir_all(root.join(outside.strip_prefix("/").unwrap())).unwrap();
    open("/evil/x", Create::Dirs).unwrap();
    assert!(root
        .join(outside.strip_prefix("/").unwrap())
        .join("x")
        .is_dir());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    // Without creating, a missing target is the path's own error.
    assert!(matches!(
        open("/nothing", Create::No),
        Err(WalkError::Io { at: None, .. })
    ));
}

fn umask() -> u32 {
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    rustix::process::umask(old);
    old.bits()
}

fn libc_enoent() -> i32 {
    rustix::io::Errno::NOENT.raw_os_error()
}
