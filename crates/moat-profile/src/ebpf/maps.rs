//! The recorder's kernel maps, created with `bpf(2)` and read back once
//! the workload is over.

use std::os::fd::{AsRawFd, OwnedFd};

use super::{sys, EbpfError, EXECS_MAX, NR_MAX, PATHS_MAX, PATH_MAX, STATS, TRACKED_MAX};

/// A (key, value) pair read back from a map.
pub(super) type Entry = (Vec<u8>, Vec<u8>);

pub(super) struct Map {
    name: &'static str,
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

impl Map {
    pub(super) fn create(
        name: &'static str,
        kind: u32,
        key_size: u32,
        value_size: u32,
        max: u32,
    ) -> Result<Map, EbpfError> {
        let fd = sys::map_create(kind, key_size, value_size, max, name).map_err(|source| {
            EbpfError::MapCreate {
                name: name.to_string(),
                source,
            }
        })?;
        Ok(Map {
            name,
            fd,
            key_size: key_size as usize,
            value_size: value_size as usize,
        })
    }

    pub(super) fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn err(&self, source: std::io::Error) -> EbpfError {
        EbpfError::MapAccess {
            name: self.name.to_string(),
            source,
        }
    }

    pub(super) fn update(&self, key: &[u8], value: &[u8]) -> Result<(), EbpfError> {
        sys::map_update(self.raw(), key, value).map_err(|e| self.err(e))
    }

    pub(super) fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EbpfError> {
        let mut v = vec![0u8; self.value_size];
        Ok(sys::map_lookup(self.raw(), key, &mut v)
            .map_err(|e| self.err(e))?
            .then_some(v))
    }

    /// Every (key, value) of a hash map.
    pub(super) fn entries(&self) -> Result<Vec<Entry>, EbpfError> {
        let mut out = Vec::new();
        let mut key: Option<Vec<u8>> = None;
        loop {
            let mut next = vec![0u8; self.key_size];
            if !sys::map_next_key(self.raw(), key.as_deref(), &mut next).map_err(|e| self.err(e))? {
                break;
            }
            if let Some(v) = self.lookup(&next)? {
                out.push((next.clone(), v));
            }
            key = Some(next);
        }
        Ok(out)
    }
}

pub(super) fn u64_of(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
    u64::from_le_bytes(a)
}

pub(super) fn cstr_of(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub(super) struct Maps {
    pub(super) tracked: Map,
    pub(super) counts: Map,
    pub(super) families: Map,
    pub(super) ioctls: Map,
    pub(super) failures: Map,
    pub(super) paths: Map,
    pub(super) stats: Map,
    pub(super) execs: Map,
}

impl Maps {
    pub(super) fn create() -> Result<Maps, EbpfError> {
        use sys::{MAP_TYPE_ARRAY as A, MAP_TYPE_HASH as H};
        Ok(Maps {
            tracked: Map::create("moat_tracked", H, 4, 4, TRACKED_MAX)?,
            counts: Map::create("moat_counts", A, 4, 8, NR_MAX)?,
            families: Map::create("moat_families", H, 8, 8, 256)?,
            ioctls: Map::create("moat_ioctls", H, 8, 8, 4096)?,
            failures: Map::create("moat_failures", H, 8, 8, 4096)?,
            paths: Map::create("moat_paths", H, PATH_MAX, 8, PATHS_MAX)?,
            stats: Map::create("moat_stats", A, 4, 8, STATS)?,
            execs: Map::create("moat_execs", A, 4, PATH_MAX, EXECS_MAX)?,
        })
    }

    pub(super) fn stat(&self, idx: i32) -> Result<u64, EbpfError> {
        Ok(self
            .stats
            .lookup(&(idx as u32).to_le_bytes())?
            .map(|v| u64_of(&v))
            .unwrap_or(0))
    }

    pub(super) fn set_stat(&self, idx: i32, v: u64) -> Result<(), EbpfError> {
        self.stats
            .update(&(idx as u32).to_le_bytes(), &v.to_le_bytes())
    }
}
