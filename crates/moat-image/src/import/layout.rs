//! OCI layout directories (and an OCI archive's index once its blobs are
//! extracted): the index read, the image picked, blobs staged and checked.

use std::fs::{self};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::fsat::{open_input_file, InputFileError};
use crate::oci::{self, Descriptor, OciError};
use crate::store::Store;

use super::{create_staged, finish_staged, ImportError, Source, MAX_META};

impl Store {
    /// Reads the layout's `oci-layout` and `index.json` and picks the image.
    pub(super) fn layout_manifest(
        &self,
        src: &Source<'_>,
        staging_blobs: &Path,
    ) -> Result<(Descriptor, Option<String>), ImportError> {
        let sp = src.path.to_path_buf();
        // O_PATH first, type checked, then reopened: a FIFO never blocks
        // the import and a symlink (to /etc/shadow, say) is never read.
        let open = |name: &str| match open_input_file(src.path, name) {
            Ok(f) => Ok(f),
            Err(InputFileError::Missing) => Err(ImportError::NotLayout {
                source_path: sp.clone(),
            }),
            Err(InputFileError::NotRegular(kind)) => Err(ImportError::NotRegular {
                source_path: sp.clone(),
                what: name.to_string(),
                kind,
            }),
            Err(InputFileError::Io(source)) => Err(ImportError::Read {
                source_path: sp.clone(),
                what: name.to_string(),
                source: crate::quote::clean_io(source),
            }),
        };
        open("oci-layout")?;
        let index_file = open("index.json")?;
        let mut bytes = Vec::new();
        index_file
            .take(MAX_META + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ImportError::Read {
                source_path: sp.clone(),
                what: "index.json".into(),
                source: crate::quote::clean_io(source),
            })?;
        if bytes.len() as u64 > MAX_META {
            return Err(ImportError::TooBig {
                source_path: sp.clone(),
                what: "index.json".into(),
                limit: MAX_META,
            });
        }
        let index = oci::parse_index("index.json", &bytes).map_err(|source| ImportError::Oci {
            source_path: sp.clone(),
            source,
        })?;
        self.select(src, staging_blobs, &index)
    }

    pub(super) fn select(
        &self,
        src: &Source<'_>,
        staging_blobs: &Path,
        index: &oci::Index,
    ) -> Result<(Descriptor, Option<String>), ImportError> {
        let sp = src.path.to_path_buf();
        let mut err: Option<ImportError> = None;
        let result = oci::select_manifest("index.json", index, &mut |d| match self.small_blob(
            src,
            staging_blobs,
            d,
            "index.json",
        ) {
            Ok(b) => Ok(b),
            Err(e) => {
                let msg = e.to_string();
                err = Some(e);
                Err(OciError::ReadBlob {
                    what: "index".into(),
                    digest: d.digest.to_string(),
                    source: msg.into(),
                })
            }
        });
        match result {
            Ok(r) => Ok(r),
            Err(_) if err.is_some() => Err(err.expect("checked")),
            Err(source) => Err(ImportError::Oci {
                source_path: sp,
                source,
            }),
        }
    }

    /// Brings blob `d` into staging (verified) and returns its content.
    pub(super) fn small_blob(
        &self,
        src: &Source<'_>,
        staging_blobs: &Path,
        d: &Descriptor,
        referrer: &str,
    ) -> Result<Vec<u8>, ImportError> {
        let sp = src.path.to_path_buf();
        if d.size > MAX_META {
            return Err(ImportError::TooBig {
                source_path: sp,
                what: format!("blob {}", d.digest),
                limit: MAX_META,
            });
        }
        let p = self.stage_blob(src, staging_blobs, d, referrer)?;
        fs::read(&p).map_err(|source| ImportError::Read {
            source_path: sp,
            what: format!("blob {}", d.digest),
            source,
        })
    }

    /// Makes blob `d` available for the import: already in the store (no
    /// copy), already extracted to staging, or copied there from the layout
    /// with its digest and size checked. Returns where it now is.
    pub(super) fn stage_blob(
        &self,
        src: &Source<'_>,
        staging_blobs: &Path,
        d: &Descriptor,
        referrer: &str,
    ) -> Result<PathBuf, ImportError> {
        let sp = src.path.to_path_buf();
        let hex = d.digest.hex();
        let staged = staging_blobs.join(hex);
        let check_size = |actual: u64| {
            if actual != d.size {
                Err(ImportError::BlobSize {
                    source_path: sp.clone(),
                    digest: d.digest.to_string(),
                    expected: d.size,
                    actual,
                })
            } else {
                Ok(())
            }
        };
        if let Ok(m) = fs::metadata(&staged) {
            check_size(m.len())?;
            return Ok(staged);
        }
        let in_store = self
            .blob_path(&d.digest)
            .map_err(|source| ImportError::Store {
                source_path: sp.clone(),
                source: Box::new(source),
            })?;
        if let Ok(m) = fs::metadata(&in_store) {
            if m.len() == d.size {
                return Ok(in_store);
            }
        }
        if src.extracted {
            return Err(ImportError::MissingBlob {
                source_path: sp,
                referrer: referrer.to_string(),
                digest: d.digest.to_string(),
            });
        }
        let input = match open_input_file(src.path, &format!("blobs/sha256/{hex}")) {
            Ok(f) => f,
            Err(InputFileError::Missing) => {
                return Err(ImportError::MissingBlob {
                    source_path: sp,
                    referrer: referrer.to_string(),
                    digest: d.digest.to_string(),
                })
            }
            Err(InputFileError::NotRegular(kind)) => {
                return Err(ImportError::NotRegular {
                    source_path: sp,
                    what: format!("blob {}", d.digest),
                    kind,
                })
            }
            Err(InputFileError::Io(source)) => {
                return Err(ImportError::Read {
                    source_path: sp,
                    what: format!("blob {}", d.digest),
                    source,
                })
            }
        };
        let tmp = staging_blobs.join(format!("{hex}.partial"));
        let mut w = create_staged(&tmp, &sp)?;
        io::copy(&mut input.take(d.size.saturating_add(1)), &mut w).map_err(|source| {
            ImportError::Read {
                source_path: sp.clone(),
                what: format!("blob {}", d.digest),
                source,
            }
        })?;
        let (actual, n) = finish_staged(w, &sp)?;
        check_size(n)?;
        if actual != d.digest {
            return Err(ImportError::BlobDigest {
                source_path: sp,
                digest: d.digest.to_string(),
                actual: actual.into(),
            });
        }
        fs::rename(&tmp, &staged).map_err(|source| ImportError::Write {
            source_path: sp,
            what: "staging".into(),
            source,
        })?;
        Ok(staged)
    }
}
