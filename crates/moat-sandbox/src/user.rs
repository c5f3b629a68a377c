//! Resolving a `--user`/image `User` value (`uid`, `uid:gid`, `name`,
//! `name:group`) against the image's `/etc/passwd` and `/etc/group`,
//! which are read through `openat2(RESOLVE_IN_ROOT)` so that a symlinked
//! `/etc/passwd` in a hostile image cannot make moat read a host file.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} not found in the image's /etc/passwd; use a numeric --user UID[:GID]")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group; use a numeric GID")]
    UnknownGroup(String),
    #[error("cannot open the rootfs {path}")]
    OpenRoot {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

fn read_in_root(rootfs: &Path, path: &str) -> Result<String, UserError> {
    let root = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(rootfs)
        .map_err(|source| UserError::OpenRoot {
            path: rootfs.display().to_string(),
            source,
        })?;
    let resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    let mut text = String::new();
    if let Ok(fd) = sys::openat2(root.as_fd(), path, libc::O_RDONLY | libc::O_NOCTTY, resolve) {
        let mut f = File::from(fd);
        let meta_ok = f
            .metadata()
            .map(|m| m.is_file() && m.len() < 16 << 20)
            .unwrap_or(false);
        if meta_ok {
            let _ = f.read_to_string(&mut text);
        }
    }
    Ok(text)
}

/// Resolves `spec` (empty means root) inside `rootfs`.
pub fn resolve(rootfs: &Path, spec: &str) -> Result<Identity, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let passwd = read_in_root(rootfs, "/etc/passwd")?;
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let matches = match user.parse::<u32>() {
            Ok(n) => f[2].parse::<u32>().ok() == Some(n),
            Err(_) => f[0] == user,
        };
        matches.then(|| {
            (
                f[0].to_string(),
                f[2].parse::<u32>().ok(),
                f[3].parse::<u32>().ok(),
            )
        })
    });
    let (name, uid, primary_gid) = match (user.parse::<u32>(), entry) {
        (Ok(n), Some((name, _, g))) => (Some(name), n, g.unwrap_or(0)),
        (Ok(n), None) => (None, n, 0),
        (Err(_), Some((name, Some(u), g))) => (Some(name), u, g.unwrap_or(0)),
        (Err(_), _) => return Err(UserError::UnknownUser(user.to_string())),
    };
    let groups_text = read_in_root(rootfs, "/etc/group")?;
    let groups: Vec<(String, u32, Vec<String>)> = groups_text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4).then(|| {
                (
                    f[0].to_string(),
                    f[2].parse().unwrap_or(u32::MAX),
                    f[3].split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            })
        })
        .collect();
    let gid = match group {
        None | Some("") => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|(n, _, _)| n == g)
                .map(|(_, id, _)| *id)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        },
    };
    let additional_gids = match (&name, group) {
        (Some(name), None) => groups
            .iter()
            .filter(|(_, id, members)| {
                *id != gid && *id != u32::MAX && members.iter().any(|m| m == name)
            })
            .map(|(_, id, _)| *id)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Identity {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_numbers_and_symlinked_passwd() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwww:x:34:\nadm:x:4:www\n",
        )
        .unwrap();
        let id = |s| resolve(d.path(), s).unwrap();
        assert_eq!(
            id(""),
            Identity {
                uid: 0,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            id("www"),
            Identity {
                uid: 33,
                gid: 34,
                additional_gids: vec![4]
            }
        );
        assert_eq!(
            id("1000:1000"),
            Identity {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![]
            }
        );
        assert_eq!(id("33:adm").gid, 4);
        assert_eq!(
            resolve(d.path(), "nobody").unwrap_err().to_string(),
            "user \"nobody\" not found in the image's /etc/passwd; use a numeric --user UID[:GID]"
        );
        // An absolute symlink resolves inside the root, not on the host.
        std::fs::remove_file(d.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/passwd")).unwrap();
        assert!(resolve(d.path(), "root").is_err());
    }
}
