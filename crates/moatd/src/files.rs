//! ConfigMaps and Secrets as files in replicas, the way the kubelet does
//! it: one directory per replica and volume under moatd's files root (a
//! tmpfs moatd mounts when it is not one already, so Secrets stay off
//! disk), one file per key (or per `items` entry, at its path, with
//! Kubernetes' modes: [`payload`]), written by the atomic writer scheme
//! (`..<hash>/KEY`, `..data -> ..<hash>`, `KEY -> ..data/KEY`, one link
//! per top-level name) so that an update swaps every key at once under a
//! running replica. The
//! replica gets the directory as a read-only volume of a policy derived
//! from its own ([`derived_policy`]), which also carries its `resources`
//! limits. Nothing here prints or logs a value.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::template::{FileVolume, Template};

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("preparing the files root {}", path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {kind} {name} into {}", path.display())]
    Write {
        kind: String,
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} {name} no longer exists (moat apply it again)")]
    Missing { kind: String, name: String },
    #[error("{kind} {name} has no key {key:?}, which the volume's items list (add the key, or mark the volume optional: true)")]
    MissingKey {
        kind: String,
        name: String,
        key: String,
    },
    #[error("{kind} {name}: key {key:?} cannot be a file name")]
    Key {
        kind: String,
        name: String,
        key: String,
    },
    #[error("writing the replica policy {}", path.display())]
    Policy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Makes `root` (mode 0700) and mounts a tmpfs on it unless it is one.
pub fn ensure_tmpfs(root: &Path) -> Result<(), FilesError> {
    let err = |source| FilesError::Root {
        path: root.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(err)?;
    let st = rustix::fs::statfs(root).map_err(|e| err(e.into()))?;
    #[allow(clippy::unnecessary_cast)]
    if st.f_type as i64 != TMPFS_MAGIC {
        use rustix::mount::MountFlags;
        rustix::mount::mount(
            "moatd-files",
            root,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            Some(c"mode=0700,size=256m"),
        )
        .map_err(|e| err(e.into()))?;
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    Ok(())
}

/// Kubernetes' rule for keys of ConfigMaps and Secrets (`[-._a-zA-Z0-9]+`),
/// without the names the atomic writer uses (`..`-prefixed).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && !key.starts_with("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// The directory of one volume of one replica.
pub fn volume_dir(root: &Path, replica: &str, volume: &str) -> PathBuf {
    root.join(replica).join(volume)
}

/// The data a file volume shows: (is a Secret, data).
pub type Source = (bool, BTreeMap<String, String>);

/// What a volume shows: relative file path -> (content, mode).
pub type Payload = BTreeMap<String, (String, u32)>;

/// Mode of a file when neither `defaultMode` nor the item's `mode` says:
/// Kubernetes' 0644 for a ConfigMap; 0400 for a Secret (moat's stricter
/// choice: the file is owned by the replica's user, who alone needs it).
pub fn default_mode(secret: bool) -> u32 {
    if secret {
        0o400
    } else {
        0o644
    }
}

/// Kubernetes' rule for an `items[].path`: relative, not empty, no `..`
/// component, not starting with `..`; moat also refuses empty and `.`
/// components (`a//b`, `./a`), which Kubernetes would normalise.
pub fn valid_item_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("must not be empty: a relative path such as app.conf or conf/app.conf");
    }
    if path.starts_with('/') {
        return Err("must be a relative path (inside the volume), not an absolute one");
    }
    if path.len() > 4096 {
        return Err("is longer than 4096 bytes");
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.contains(&"..") {
        return Err("must not contain a `..` component");
    }
    if path.starts_with("..") {
        return Err("must not start with `..`");
    }
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || c.len() > 255 || c.contains('\0'))
    {
        return Err(
            "every component is a file name (no empty or `.` components, at most 255 bytes)",
        );
    }
    Ok(())
}

/// Kubernetes' projection of `src` for volume `v`: every key at its name
/// with the default mode, or only the `items`, at their paths, with
/// their modes. `None` (an `optional` object that is missing) projects
/// nothing; a listed key the object lacks is an error unless `optional`.
pub fn payload(v: &FileVolume, src: Option<&Source>) -> Result<Payload, FilesError> {
    let secret = v.kind == "Secret";
    let Some((_, data)) = src else {
        return Ok(Payload::new());
    };
    let p = &v.projection;
    let mode = p.default_mode.unwrap_or(default_mode(secret));
    let key_err = |k: &str| FilesError::Key {
        kind: v.kind.clone(),
        name: v.source.clone(),
        key: k.to_string(),
    };
    if let Some(k) = data.keys().find(|k| !valid_key(k)) {
        return Err(key_err(k));
    }
    if p.items.is_empty() {
        return Ok(data
            .iter()
            .map(|(k, val)| (k.clone(), (val.clone(), mode)))
            .collect());
    }
    let mut out = Payload::new();
    for it in &p.items {
        // The parser checked both; a stored template is checked again.
        if valid_item_path(&it.path).is_err() {
            return Err(key_err(&it.path));
        }
        match data.get(&it.key) {
            Some(val) => {
                out.insert(it.path.clone(), (val.clone(), it.mode.unwrap_or(mode)));
            }
            None if p.optional => {}
            None => {
                return Err(FilesError::MissingKey {
                    kind: v.kind.clone(),
                    name: v.source.clone(),
                    key: it.key.clone(),
                })
            }
        }
    }
    Ok(out)
}

/// The top-level names of a payload (`a` for `a/b.conf`): each is a link
/// into `..data`.
fn top_names(payload: &Payload) -> std::collections::BTreeSet<String> {
    payload
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p).to_string())
        .collect()
}

/// Brings one volume's files up to `src` (`None`: an optional object that
/// is missing, an empty volume); whether anything changed. Files get the
/// projection's modes (by default: Secret 0400, ConfigMap 0644); Secret
/// files are owned by the replica's uid:gid (so its non-root user can
/// read them), ConfigMap files by root; directories are 0755.
pub fn write(
    dir: &Path,
    v: &FileVolume,
    src: Option<&Source>,
    owner: (u32, u32),
) -> Result<bool, FilesError> {
    let secret = v.kind == "Secret";
    let payload = payload(v, src)?;
    let werr = |path: &Path, source| FilesError::Write {
        kind: v.kind.clone(),
        name: v.source.clone(),
        path: path.to_path_buf(),
        source,
    };
    let mut h = Sha256::new();
    h.update(format!("{secret} {owner:?}\n"));
    for (k, (val, mode)) in &payload {
        // A default mode is left out: generations written before modes
        // could be chosen keep their name (no needless swap on upgrade).
        if *mode != default_mode(secret) {
            h.update(format!("mode {mode:o}\n"));
        }
        h.update(format!("{}:{k}\n{}:", k.len(), val.len()));
        h.update(val.as_bytes());
    }
    let gen = format!("..{}", &hex::encode(h.finalize())[..16]);
    let link = dir.join("..data");
    let tops = top_names(&payload);
    prune(dir, &gen, SUPERSEDED_GRACE);
    // Current, and every top-level link made (a crash may have come
    // between the switch and the links).
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(&gen))
        && tops
            .iter()
            .all(|k| std::fs::symlink_metadata(dir.join(k)).is_ok())
    {
        return Ok(false);
    }
    // Modes are set, not left to the umask (the unit file's is 0077):
    // the replica's user must traverse the directories.
    let open_dir = |p: &Path| -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).create(p)?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
    };
    if let Some(replica_dir) = dir.parent() {
        open_dir(replica_dir).map_err(|e| werr(replica_dir, e))?;
    }
    open_dir(dir).map_err(|e| werr(dir, e))?;
    let old = std::fs::read_link(&link).ok();
    let target = dir.join(&gen);
    if old.as_deref() == Some(Path::new(&gen)) {
        // Only links were missing: the generation is complete.
        make_links(dir, tops.iter(), &werr)?;
        return Ok(true);
    }
    // The new generation, complete before anything points at it.
    let staging = dir.join(format!("{gen}.tmp"));
    let _ = std::fs::remove_dir_all(&staging);
    open_dir(&staging).map_err(|e| werr(&staging, e))?;
    for (rel, (val, mode)) in &payload {
        // Paths are checked (no `..`, no empty or `.` components) and
        // the staging directory is moatd's own: nothing here is a link.
        let p = staging.join(rel);
        if let Some(parent) = p.parent().filter(|d| *d != staging) {
            let mut d = staging.clone();
            for c in parent.strip_prefix(&staging).unwrap_or(parent).components() {
                d.push(c);
                if !d.is_dir() {
                    open_dir(&d).map_err(|e| werr(&d, e))?;
                }
            }
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| werr(&p, e))?;
        std::io::Write::write_all(&mut f, val.as_bytes()).map_err(|e| werr(&p, e))?;
        if secret {
            std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1)).map_err(|e| werr(&p, e))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(*mode))
            .map_err(|e| werr(&p, e))?;
    }
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&staging, &target).map_err(|e| werr(&target, e))?;
    // One rename switches every key at once.
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    symlink(&gen, &tmp_link).map_err(|e| werr(&tmp_link, e))?;
    std::fs::rename(&tmp_link, &link).map_err(|e| werr(&link, e))?;
    make_links(dir, tops.iter(), &werr)?;
    // Keys gone from the object go from the directory.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !tops.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // The old generation stays a little: a micro-VM's guest may still
    // resolve `..data` to it from its cache for up to a second (virtiofsd
    // `cache=auto`), and must then read the old files, not find none.
    // Its mtime says since when it is superseded; a later pass prunes it.
    if let Some(old) = old.filter(|o| *o != Path::new(&gen)) {
        let old = dir.join(old);
        if let Ok(f) = std::fs::File::open(&old) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }
    Ok(true)
}

/// `NAME -> ..data/NAME` for every top-level name that has no link yet.
fn make_links<'a>(
    dir: &Path,
    keys: impl Iterator<Item = &'a String>,
    werr: &dyn Fn(&Path, std::io::Error) -> FilesError,
) -> Result<(), FilesError> {
    for k in keys {
        let p = dir.join(k);
        if std::fs::symlink_metadata(&p).is_err() {
            symlink(Path::new("..data").join(k), &p).map_err(|e| werr(&p, e))?;
        }
    }
    Ok(())
}

/// How long a superseded generation is kept (well above virtiofsd's
/// one-second name cache under `cache=auto`).
pub const SUPERSEDED_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Removes generations other than `current` and the one `..data` names
/// (and staging directories a crash left) that have not changed for
/// `grace`.
fn prune(dir: &Path, current: &str, grace: std::time::Duration) {
    let linked = std::fs::read_link(dir.join("..data")).ok();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..")
            || name == "..data"
            || name == "..data_tmp"
            || name == current
            || linked.as_deref() == Some(Path::new(&name))
        {
            continue;
        }
        // Never follows a link: only real directories are generations.
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let old = md
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= grace);
        if md.is_dir() && old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The uid:gid a template runs as (restricted pods always set it).
pub fn owner(t: &Template) -> (u32, u32) {
    let mut it = t.user.as_deref().unwrap_or("0:0").split(':');
    let uid = it.next().and_then(|u| u.parse().ok()).unwrap_or(0);
    let gid = it.next().and_then(|g| g.parse().ok()).unwrap_or(uid);
    (uid, gid)
}

/// Where the policy of one replica is kept.
pub fn policy_path(state: &Path, replica: &str) -> PathBuf {
    state
        .join("moatd")
        .join("replicas")
        .join(format!("{replica}.yaml"))
}

/// A policy that extends the template's own and only narrows or adds
/// moatd's own files and scratch space: the `resources` limits, each file
/// volume as a read-only host directory, each `emptyDir` as a tmpfs (it
/// reaches nothing on the host, and its pages count against the
/// replica's memory). `None` when the template needs none of them.
pub fn derived_policy(t: &Template, root: &Path, replica: &str) -> Option<String> {
    if t.files.is_empty() && t.limits.is_empty() && t.scratch.is_empty() {
        return None;
    }
    let mut text = format!(
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: {}\nspec:\n  extends: {}\n",
        t.policy_name, t.policy
    );
    let l = &t.limits;
    if !l.is_empty() {
        text.push_str("  resources:\n");
        if let Some(m) = l.memory_bytes {
            text.push_str(&format!("    memory: {m}\n"));
        }
        if let Some(c) = l.cpu_millis {
            text.push_str(&format!("    cpus: {c}m\n"));
        }
        if let Some(d) = l.disk_bytes {
            text.push_str(&format!("    disk: {d}\n"));
        }
    }
    if !t.files.is_empty() || !t.scratch.is_empty() {
        text.push_str("  filesystem:\n");
    }
    if !t.files.is_empty() {
        text.push_str("    volumes:\n");
        for v in &t.files {
            text.push_str(&format!(
                "      - {{source: {}, path: {}, read_only: true}}\n",
                volume_dir(root, replica, &v.volume).display(),
                v.mount_path
            ));
        }
    }
    if !t.scratch.is_empty() {
        text.push_str("    writable:\n");
        for s in &t.scratch {
            text.push_str(&format!(
                // Sticky and world-writable, as /tmp: the pod's user
                // writes there whoever it is.
                "      - {{path: {}, size: {}, mode: 1777}}\n",
                s.path, s.size_bytes
            ));
        }
    }
    Some(text)
}

/// Writes what `replica` needs before it is created: its file volumes
/// (from `lookup`, the files root made a tmpfs by `tmpfs`) and its
/// derived policy; the policy file to run it
/// under, if not the template's own.
pub fn prepare(
    state: &Path,
    root: &Path,
    replica: &str,
    t: &Template,
    lookup: &dyn Fn(&FileVolume) -> Option<Source>,
    tmpfs: &dyn Fn() -> Result<(), FilesError>,
) -> Result<Option<PathBuf>, FilesError> {
    // Only a moatd that mounts files touches the files root; `tmpfs` is
    // [`ensure_tmpfs`] (through moatd's spawner: the reconcile thread
    // may not mount).
    if !t.files.is_empty() {
        tmpfs()?;
    }
    sync(root, replica, t, lookup)?;
    let Some(text) = derived_policy(t, root, replica) else {
        return Ok(None);
    };
    let path = policy_path(state, replica);
    let perr = |source| FilesError::Policy {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(perr)?;
    }
    std::fs::write(&path, text).map_err(perr)?;
    Ok(Some(path))
}

/// Brings every file volume of `replica` up to its object's current
/// data; a deleted object leaves the files as they were (the kubelet
/// does the same) but refuses a first write, unless the volume is
/// `optional`: then a missing object is an empty volume.
pub fn sync(
    root: &Path,
    replica: &str,
    t: &Template,
    lookup: &dyn Fn(&FileVolume) -> Option<Source>,
) -> Result<bool, FilesError> {
    let mut changed = false;
    for v in &t.files {
        // Admission took a DNS label; a name is never a path.
        if !valid_key(&v.volume) || v.volume.starts_with('.') || replica.contains('/') {
            return Err(FilesError::Key {
                kind: v.kind.clone(),
                name: v.source.clone(),
                key: v.volume.clone(),
            });
        }
        let dir = volume_dir(root, replica, &v.volume);
        let src = lookup(v);
        if src.is_none() && !v.projection.optional {
            if dir.join("..data").exists() {
                continue;
            }
            return Err(FilesError::Missing {
                kind: v.kind.clone(),
                name: v.source.clone(),
            });
        }
        changed |= write(&dir, v, src.as_ref(), owner(t))?;
    }
    Ok(changed)
}

/// Forgets a removed replica's files and policy.
pub fn remove(state: &Path, root: &Path, replica: &str) {
    if !replica.is_empty() && !replica.contains('/') {
        let _ = std::fs::remove_dir_all(root.join(replica));
    }
    let _ = std::fs::remove_file(policy_path(state, replica));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol() -> FileVolume {
        FileVolume {
            volume: "cfg".into(),
            kind: "ConfigMap".into(),
            source: "app".into(),
            mount_path: "/etc/app".into(),
            projection: Default::default(),
            reader: None,
        }
    }

    #[test]
    fn an_update_swaps_every_key_and_drops_removed_ones() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("r").join("cfg");
        let mut data = BTreeMap::new();
        data.insert("a".to_string(), "1".to_string());
        data.insert("b".to_string(), "2".to_string());
        assert!(write(&dir, &vol(), Some(&(false, data.clone())), (0, 0)).unwrap());
        assert!(!write(&dir, &vol(), Some(&(false, data.clone())), (0, 0)).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        // Whatever the umask: directories 0755, ConfigMap files 0644.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o755);
        assert_eq!(mode(dir.parent().unwrap()), 0o755);
        assert_eq!(mode(&dir.join("a")), 0o644);
        let secret = d.path().join("r").join("s");
        let mut v = vol();
        v.kind = "Secret".into();
        write(&secret, &v, Some(&(true, data.clone())), (0, 0)).unwrap();
        assert_eq!(mode(&secret.join("a")), 0o400);
        data.remove("b");
        data.insert("a".to_string(), "3".to_string());
        assert!(write(&dir, &vol(), Some(&(false, data.clone())), (0, 0)).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(dir.join("b")).is_err());
        let gens = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_string_lossy();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(gens, 2, "the old generation stays for a grace period");
        // Once superseded for the grace period, it is pruned.
        let current = std::fs::read_link(dir.join("..data")).unwrap();
        prune(&dir, current.to_str().unwrap(), std::time::Duration::ZERO);
        let left = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != "..data")
            .count();
        assert_eq!(left, 1, "only the current generation is left");
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        // The generation `..data` names is never pruned, whatever is
        // being written (the live files stay until the switch).
        prune(&dir, "..other", std::time::Duration::ZERO);
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        // A crash between the switch and the links: the next pass makes
        // them.
        std::fs::remove_file(dir.join("a")).unwrap();
        assert!(write(&dir, &vol(), Some(&(false, data.clone())), (0, 0)).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert!(!write(&dir, &vol(), Some(&(false, data)), (0, 0)).unwrap());
    }

    #[test]
    fn keys_that_leave_the_directory_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for k in ["../x", "..data", "a/b", ".", ""] {
            let mut data = BTreeMap::new();
            data.insert(k.to_string(), "v".to_string());
            let e = write(d.path(), &vol(), Some(&(false, data)), (0, 0)).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("ConfigMap app: key {k:?} cannot be a file name")
            );
        }
        assert!(valid_key("app.properties") && valid_key(".hidden"));
    }

    #[test]
    fn items_project_listed_keys_at_their_paths_with_their_modes() {
        use crate::manifest::{KeyToPath, Projection};
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("r").join("cfg");
        let mut data = BTreeMap::new();
        data.insert("a".to_string(), "1".to_string());
        data.insert("b".to_string(), "2".to_string());
        data.insert("c".to_string(), "3".to_string());
        let item = |key: &str, path: &str, mode| KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
        };
        let mut v = vol();
        v.projection = Projection {
            items: vec![
                item("a", "conf/d/a.conf", None),
                item("b", "b.txt", Some(0o600)),
            ],
            default_mode: Some(0o440),
            optional: false,
        };
        assert!(write(&dir, &v, Some(&(false, data.clone())), (0, 0)).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            std::fs::read_to_string(dir.join("conf/d/a.conf")).unwrap(),
            "1"
        );
        assert_eq!(mode(&dir.join("conf/d/a.conf")), 0o440);
        assert_eq!(mode(&dir.join("conf/d")), 0o755);
        assert_eq!(mode(&dir.join("b.txt")), 0o600);
        assert_eq!(
            std::fs::read_link(dir.join("conf")).unwrap(),
            Path::new("..data/conf")
        );
        let mut top: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".."))
            .collect();
        top.sort();
        assert_eq!(top, ["b.txt", "conf"], "only the listed keys");
        // A listed key the object lacks: an error, files as they were.
        data.remove("b");
        let e = write(&dir, &v, Some(&(false, data.clone())), (0, 0)).unwrap_err();
        assert_eq!(e.to_string(), "ConfigMap app has no key \"b\", which the volume's items list (add the key, or mark the volume optional: true)");
        assert_eq!(std::fs::read_to_string(dir.join("b.txt")).unwrap(), "2");
        // ... left out when optional.
        v.projection.optional = true;
        assert!(write(&dir, &v, Some(&(false, data)), (0, 0)).unwrap());
        assert!(std::fs::symlink_metadata(dir.join("b.txt")).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.join("conf/d/a.conf")).unwrap(),
            "1"
        );
        // A missing optional object: an empty volume.
        assert!(write(&dir, &v, None, (0, 0)).unwrap());
        assert!(std::fs::symlink_metadata(dir.join("conf")).is_err());
        assert!(dir.join("..data").exists());
        // Without items, defaultMode applies to every key.
        let s = d.path().join("r").join("s");
        let mut v = vol();
        v.kind = "Secret".into();
        v.projection.default_mode = Some(0o444);
        let mut data = BTreeMap::new();
        data.insert("k".to_string(), "v".to_string());
        write(&s, &v, Some(&(true, data)), (0, 0)).unwrap();
        assert_eq!(mode(&s.join("k")), 0o444);
    }

    #[test]
    fn default_modes_keep_the_generation_name_and_a_mode_change_swaps() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("r").join("cfg");
        let mut data = BTreeMap::new();
        data.insert("a".to_string(), "1".to_string());
        write(&dir, &vol(), Some(&(false, data.clone())), (0, 0)).unwrap();
        // The name the writer gave before modes could be chosen.
        let mut h = Sha256::new();
        h.update("false (0, 0)\n1:a\n1:1");
        let old = format!("..{}", &hex::encode(h.finalize())[..16]);
        assert_eq!(
            std::fs::read_link(dir.join("..data")).unwrap(),
            Path::new(&old)
        );
        let mut v = vol();
        v.projection.default_mode = Some(0o640);
        assert!(write(&dir, &v, Some(&(false, data)), (0, 0)).unwrap());
        let mode = std::fs::metadata(dir.join("a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
    }
}
