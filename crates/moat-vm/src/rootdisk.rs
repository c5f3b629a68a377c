//! The root disk of a VM container created through the OCI interface
//! (`moat-oci`): the bundle's rootfs (podman's overlay `merged`, a
//! directory the caller may change) copied at create into a per-container
//! ext4 image, with the small files the caller bind-mounts
//! (`/etc/hosts`, `/etc/resolv.conf`, ...) written into it. The guest
//! mounts it read-write (or read-only for `root.readonly`), so writes land
//! in the image, never in the caller's directory. No verity: the disk is
//! the container's own and changes as it runs. See docs/vm.md.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::rootfs::{self, RootFs, RootImage, RootfsError};

/// Writable space the disk has beyond the rootfs's own size (sparse: only
/// what the container writes takes host disk).
pub const HEADROOM_BYTES: u64 = 1 << 30;

/// A host file to place in the image: `source` copied to `destination`
/// (absolute, inside the root).
#[derive(Debug, Clone)]
pub struct FileCopy {
    pub source: PathBuf,
    pub destination: String,
}

/// Size of the tree (bytes, each file rounded up to 4 KiB) and its entries.
fn measure(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            entries += 1;
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            bytes += m.len().div_ceil(rootfs::BLOCK) * rootfs::BLOCK;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, entries)
}

/// Builds the disk from `rootfs` and `files` in a staging directory under
/// `<state root>/vm/tmp` that lives as long as the returned image (and is
/// swept once its owner is dead).
pub fn build(
    state_root: &Path,
    rootfs: &Path,
    files: &[FileCopy],
    mount_points: &[String],
    read_only: bool,
) -> Result<RootImage, RootfsError> {
    if !rootfs.is_dir() {
        return Err(RootfsError::NotADirectory {
            path: rootfs.to_path_buf(),
        });
    }
    rootfs::private_parent(state_root)?;
    let stage = rootfs::staging(state_root, "oci")?;
    let img = stage.path().join("root.img");
    let (bytes, entries) = measure(rootfs);
    let size = bytes + bytes / 4 + HEADROOM_BYTES;
    let f = fs::File::create(&img).map_err(rootfs::io("create", &img))?;
    f.set_len(size).map_err(rootfs::io("size", &img))?;
    drop(f);
    // No journal (the disk lives and dies with the container); inode
    // tables initialised lazily, and never by the guest (`noinit_itable`).
    rootfs::tool(
        "mkfs.ext4",
        "e2fsprogs",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-O", "^has_journal"])
            .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
            .arg("-N")
            .arg((entries * 2 + 16384).to_string())
            .arg("-d")
            .arg(rootfs)
            .arg(&img),
        rootfs,
    )?;
    let mut script = String::new();
    for d in rootfs::MOUNT_POINTS {
        script.push_str(&format!("mkdir /{d}\n"));
    }
    for m in mount_points {
        let comps: Vec<&str> = m.split('/').filter(|c| !c.is_empty()).collect();
        if comps.is_empty() || comps.iter().any(|c| *c == ".." || *c == ".") {
            return Err(RootfsError::Tool {
                tool: "debugfs",
                path: PathBuf::from(m),
                detail: format!("mount point {m:?} is not a clean absolute path"),
            });
        }
        let mut dir = String::new();
        for c in comps {
            dir.push('/');
            dir.push_str(c);
            script.push_str(&format!("mkdir {}\n", quote(&dir)));
        }
    }
    for f in files {
        let dst = f.destination.trim_end_matches('/');
        let mut parent = String::new();
        let comps: Vec<&str> = dst.split('/').filter(|c| !c.is_empty()).collect();
        if comps.is_empty() || comps.iter().any(|c| *c == ".." || *c == ".") {
            return Err(RootfsError::Tool {
                tool: "debugfs",
                path: f.source.clone(),
                detail: format!(
                    "destination {:?} is not a clean absolute path",
                    f.destination
                ),
            });
        }
        for c in &comps[..comps.len() - 1] {
            parent.push('/');
            parent.push_str(c);
            script.push_str(&format!("mkdir {}\n", quote(&parent)));
        }
        script.push_str(&format!("rm {}\n", quote(dst)));
        script.push_str(&format!(
            "write {} {}\n",
            quote(&f.source.display().to_string()),
            quote(dst)
        ));
    }
    let cmds = stage.path().join("debugfs.cmds");
    fs::File::create(&cmds)
        .and_then(|mut c| c.write_all(script.as_bytes()))
        .map_err(rootfs::io("write", &cmds))?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(&img)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| RootfsError::Tool {
            tool: "debugfs",
            path: img.clone(),
            detail: e.to_string(),
        })?;
    // debugfs exits 0 whatever its commands did: read its complaints.
    // Expected ones: a directory that exists, a file that does not.
    let err = String::from_utf8_lossy(&out.stderr);
    let bad: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .filter(|l| !l.contains("Ext2 directory already exists"))
        .filter(|l| !(l.starts_with("rm: ") && l.contains("not found")))
        .collect();
    if !out.status.success() || !bad.is_empty() {
        return Err(RootfsError::Tool {
            tool: "debugfs",
            path: img,
            detail: format!("{}: {}", out.status, bad.join("; ")),
        });
    }
    let _ = fs::remove_file(&cmds);
    Ok(RootImage::per_run(img, RootFs::Ext4 { read_only }, stage))
}

/// A debugfs argument: quoted, with `"` and `\` escaped.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_holds_the_tree_and_the_copied_files() {
        if Command::new("debugfs").arg("-V").output().is_err() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        let root = t.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hosts"), "old\n").unwrap();
        std::os::unix::fs::symlink("../nowhere", root.join("etc/resolv.conf")).unwrap();
        let src = t.path().join("hosts");
        fs::write(&src, "127.0.0.1 new\n").unwrap();
        let img = build(
            &state,
            &root,
            &[
                FileCopy {
                    source: src.clone(),
                    destination: "/etc/hosts".into(),
                },
                FileCopy {
                    source: src.clone(),
                    destination: "/etc/resolv.conf".into(),
                },
                FileCopy {
                    source: src,
                    destination: "/run/sub/.containerenv".into(),
                },
            ],
            &["/srv/data/deep".to_string(), "/etc".to_string()],
            false,
        )
        .unwrap();
        assert_eq!(img.fs, RootFs::Ext4 { read_only: false });
        let cat = |p: &str| {
            let o = Command::new("debugfs")
                .arg("-R")
                .arg(format!("cat {p}"))
                .arg(&img.path)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        assert_eq!(cat("/etc/hosts"), "127.0.0.1 new\n");
        assert_eq!(cat("/etc/resolv.conf"), "127.0.0.1 new\n");
        assert_eq!(cat("/run/sub/.containerenv"), "127.0.0.1 new\n");
        let stat = Command::new("debugfs")
            .args(["-R", "stat /srv/data/deep"])
            .arg(&img.path)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&stat.stdout).contains("Type: directory"),
            "{}",
            String::from_utf8_lossy(&stat.stdout)
        );
        let dir = img.per_run_dir().unwrap();
        drop(img);
        assert!(!dir.exists(), "the per-run disk outlived its image");
    }
}
