//! The one reader of layer tar streams, shared by the unpacker
//! (`crate::unpack`) and the scanner (`moat_scan::inventory`): compression
//! told by magic bytes, entry paths split and checked, whiteouts recognised,
//! and the early end some writers produce told apart from a cut stream.
//!
//! What to do with each entry stays with the caller: the unpacker refuses a
//! bad path or whiteout, the scanner passes over it.

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

/// Compression of a layer stream, by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps a (possibly compressed) reader into a decompressing reader.
pub fn decompress<'a, R: BufRead + 'a>(mut r: R) -> io::Result<(Box<dyn Read + 'a>, Compression)> {
    let c = Compression::sniff(r.fill_buf()?);
    let out: Box<dyn Read + 'a> = match c {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Compression::None => Box::new(r),
    };
    Ok((out, c))
}

/// Why an entry path names no place inside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `..` component.
    DotDot,
    /// An absolute path other than `/` itself.
    Absolute,
}

/// Splits an entry path into its components: `.` and empty components are
/// dropped, `..` and absolute paths refused. `/` alone is the root directory
/// itself (umoci writes it) and gives no components.
pub fn components(raw: &[u8]) -> Result<Vec<&[u8]>, PathError> {
    let only_root = raw.split(|&b| b == b'/').all(|c| c.is_empty() || c == b".");
    if raw.first() == Some(&b'/') && !only_root {
        return Err(PathError::Absolute);
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(PathError::DotDot),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// What a whiteout entry (`.wh.<name>`) hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteout<'p> {
    /// `.wh..wh..opq`: everything lower layers put in the directory.
    Opaque,
    /// `.wh.<name>`: `<name>` from lower layers.
    Name(&'p [u8]),
    /// A name that hides nothing it may (`.wh.`, `.wh..`, `.wh...`,
    /// `.wh..wh.<x>`).
    Invalid,
}

/// An entry's place in the image, by its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node<'p> {
    /// The root directory itself (`/`, `./`).
    Root,
    /// A whiteout in directory `dir`.
    Whiteout {
        dir: Vec<&'p [u8]>,
        target: Whiteout<'p>,
    },
    /// Anything else: a file, directory, link or device at `path`.
    Path(EntryPath<'p>),
}

/// A path inside the image: at least one component, none `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPath<'p> {
    comps: Vec<&'p [u8]>,
}

impl<'p> EntryPath<'p> {
    pub fn components(&self) -> &[&'p [u8]] {
        &self.comps
    }

    /// The directories above it.
    pub fn parent(&self) -> &[&'p [u8]] {
        &self.comps[..self.comps.len() - 1]
    }

    /// Its last component.
    pub fn file_name(&self) -> &'p [u8] {
        self.comps[self.comps.len() - 1]
    }

    /// The components joined by `/`.
    pub fn joined(&self) -> Vec<u8> {
        self.comps.join(&b'/')
    }
}

/// Classifies an entry path: refused (`..`, absolute), the root, a
/// whiteout, or a path.
pub fn classify(raw: &[u8]) -> Result<Node<'_>, PathError> {
    let mut comps = components(raw)?;
    let Some(&file) = comps.last() else {
        return Ok(Node::Root);
    };
    if let Some(target) = file.strip_prefix(b".wh.") {
        comps.pop();
        let target = if target == b".wh..opq" {
            Whiteout::Opaque
        } else if target.is_empty()
            || target == b"."
            || target == b".."
            || target.starts_with(b".wh.")
        {
            Whiteout::Invalid
        } else {
            Whiteout::Name(target)
        };
        return Ok(Node::Whiteout { dir: comps, target });
    }
    Ok(Node::Path(EntryPath { comps }))
}

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// At the end-of-archive blocks, or where the stream ends on a header
    /// boundary.
    Complete,
    /// Inside the last entry's data or padding, after at least one entry:
    /// some writers (umoci 0.4) end a layer right after the last file's data,
    /// with no padding and no end-of-archive blocks. Data the caller reads
    /// from that entry is cut short where the stream is; the unpacker checks
    /// every file's length.
    Early,
}

/// A reader that notes where its stream ended.
pub struct Tracked<R> {
    inner: R,
    pos: u64,
    eof_at: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof_at.set(Some(self.pos));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A layer's (uncompressed) tar stream, read entry by entry.
pub struct LayerTar<R: Read> {
    archive: tar::Archive<Tracked<R>>,
    eof_at: Rc<Cell<Option<u64>>>,
}

impl<R: Read> LayerTar<R> {
    pub fn new(stream: R) -> Self {
        let eof_at = Rc::new(Cell::new(None));
        let tracked = Tracked {
            inner: stream,
            pos: 0,
            eof_at: eof_at.clone(),
        };
        Self {
            archive: tar::Archive::new(tracked),
            eof_at,
        }
    }

    /// The entries, skipping PAX global headers (they describe no file).
    /// The iteration stops at the archive's end, early or not (see [`End`]);
    /// any other stream or format error is an item.
    pub fn entries(&mut self) -> io::Result<Entries<'_, R>> {
        Ok(Entries {
            inner: self.archive.entries()?,
            eof_at: self.eof_at.clone(),
            data_end: None,
            end: None,
            failed: false,
        })
    }

    /// The stream, positioned after what the walk read.
    pub fn into_inner(self) -> R {
        self.archive.into_inner().inner
    }
}

/// An entry of a layer stream.
pub type LayerEntry<'a, R> = tar::Entry<'a, Tracked<R>>;

/// Iterator over a layer's entries (see [`LayerTar::entries`]).
pub struct Entries<'a, R: Read> {
    inner: tar::Entries<'a, Tracked<R>>,
    eof_at: Rc<Cell<Option<u64>>>,
    /// Where the last entry's data and padding end; `None` before the first.
    data_end: Option<u64>,
    end: Option<End>,
    failed: bool,
}

impl<R: Read> Entries<'_, R> {
    /// How the walk ended; `None` while it goes on or after an error.
    pub fn end(&self) -> Option<End> {
        self.end
    }

    /// After a whole entry, the stream stopped before the next header was
    /// due (the tar crate then fails to skip to it), or the decompressor
    /// said its input was cut short: the archive's end. Its own error
    /// reaches whoever reads the stream to its end.
    fn ended_early(&self, e: &io::Error) -> bool {
        let Some(data_end) = self.data_end else {
            return false;
        };
        e.kind() == io::ErrorKind::UnexpectedEof
            || self.eof_at.get().is_some_and(|at| at < data_end)
    }
}

/// Where an entry's data and padding end in the archive. A GNU sparse
/// entry's size is its logical one; the archive holds the header's.
fn data_end<R: Read>(e: &tar::Entry<'_, R>) -> u64 {
    let size = if e.header().entry_type().is_gnu_sparse() {
        e.header().entry_size().unwrap_or(0)
    } else {
        e.size()
    };
    e.raw_file_position()
        .saturating_add(size.saturating_add(511) & !511)
}

impl<'a, R: Read> Iterator for Entries<'a, R> {
    type Item = io::Result<LayerEntry<'a, R>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.inner.next() {
                None => {
                    if !self.failed {
                        self.end.get_or_insert(End::Complete);
                    }
                    return None;
                }
                Some(Ok(e)) => {
                    self.data_end = Some(data_end(&e));
                    if e.header().entry_type().is_pax_global_extensions() {
                        continue;
                    }
                    return Some(Ok(e));
                }
                Some(Err(e)) if self.ended_early(&e) => {
                    self.end = Some(End::Early);
                    return None;
                }
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Names read, how it ended, and the error if any.
    fn walk(stream: &[u8], read_data: bool) -> (Vec<String>, Option<End>, Option<String>) {
        let mut t = LayerTar::new(stream);
        let mut entries = t.entries().unwrap();
        let mut names = Vec::new();
        let mut err = None;
        for e in entries.by_ref() {
            match e {
                Ok(mut e) => {
                    names.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
                    if read_data {
                        io::copy(&mut e, &mut io::sink()).unwrap();
                    }
                }
                Err(e) => err = Some(e.to_string()),
            }
        }
        (names, entries.end(), err)
    }

    #[test]
    fn sniffs_compression() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"usr/"), Compression::None);
    }

    #[test]
    fn paths_are_classified() {
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert_eq!(components(b"a/../b"), Err(PathError::DotDot));
        assert_eq!(components(b"/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(components(b"/./x"), Err(PathError::Absolute));
        assert_eq!(classify(b"./"), Ok(Node::Root));
        assert_eq!(classify(b"/"), Ok(Node::Root));
        let Ok(Node::Path(p)) = classify(b"./usr/bin/sh") else {
            panic!("a path")
        };
        assert_eq!(p.parent(), [&b"usr"[..], b"bin"]);
        assert_eq!(p.file_name(), b"sh");
        assert_eq!(p.joined(), b"usr/bin/sh");
        assert_eq!(
            classify(b"etc/.wh..wh..opq"),
            Ok(Node::Whiteout {
                dir: vec![b"etc"],
                target: Whiteout::Opaque
            })
        );
        assert_eq!(
            classify(b".wh.tmp"),
            Ok(Node::Whiteout {
                dir: vec![],
                target: Whiteout::Name(b"tmp")
            })
        );
        for bad in [&b"a/.wh."[..], b"a/.wh..", b"a/.wh...", b"a/.wh..wh.x"] {
            assert!(
                matches!(
                    classify(bad),
                    Ok(Node::Whiteout {
                        target: Whiteout::Invalid,
                        ..
                    })
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn ends_complete_with_end_blocks_or_on_a_header_boundary() {
        let full = tar(&[("a", b"x"), ("b", &[7u8; 512])]);
        assert_eq!(
            walk(&full, false),
            (vec!["a".into(), "b".into()], Some(End::Complete), None)
        );
        // Cut after b's data, which needs no padding.
        let cut = &full[..512 * 4];
        assert_eq!(
            walk(cut, true),
            (vec!["a".into(), "b".into()], Some(End::Complete), None)
        );
    }

    #[test]
    fn ends_early_inside_the_last_entrys_data_or_padding() {
        let full = tar(&[("a", b"x"), ("b", &[7u8; 69])]);
        // umoci: right after b's data.
        let umoci = &full[..512 * 3 + 69];
        for read_data in [false, true] {
            assert_eq!(
                walk(umoci, read_data),
                (vec!["a".into(), "b".into()], Some(End::Early), None)
            );
        }
        // Inside b's data, not read by the caller: the skip meets the end.
        assert_eq!(
            walk(&full[..512 * 3 + 30], false),
            (vec!["a".into(), "b".into()], Some(End::Early), None)
        );
    }

    #[test]
    fn a_cut_header_or_a_stream_with_no_entry_is_an_error() {
        let full = tar(&[("a", b"x"), ("b", b"y")]);
        let (names, end, err) = walk(&full[..512 * 2 + 100], true);
        assert_eq!(names, ["a"]);
        assert_eq!(end, None);
        assert_eq!(err.as_deref(), Some("failed to read entire block"));
        let (names, end, err) = walk(&full[..300], true);
        assert!(names.is_empty());
        assert_eq!(end, None);
        assert_eq!(err.as_deref(), Some("failed to read entire block"));
        let (names, end, err) = walk(&full[..100], true);
        assert!(names.is_empty());
        assert_eq!(end, None);
        assert!(err.is_some());
    }

    #[test]
    fn a_cut_decompressor_after_an_entry_ends_the_walk() {
        struct Cut<'a>(&'a [u8]);
        impl Read for Cut<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.0.read(buf)
            }
        }
        let full = tar(&[("a", b"x")]);
        let mut t = LayerTar::new(Cut(&full[..1024]));
        let mut entries = t.entries().unwrap();
        assert!(entries.next().unwrap().is_ok());
        assert!(entries.next().is_none());
        assert_eq!(entries.end(), Some(End::Early));
        // Before any entry it is an error.
        let mut t = LayerTar::new(Cut(&[]));
        assert!(t.entries().unwrap().next().unwrap().is_err());
    }

    #[test]
    fn pax_global_headers_are_skipped() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XGlobalHeader);
        let pax = b"19 comment=moat\n";
        h.set_size(pax.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, "pax_global_header", &pax[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_cksum();
        b.append_data(&mut h, "a", &b"x"[..]).unwrap();
        let full = b.into_inner().unwrap();
        assert_eq!(
            walk(&full, true),
            (vec!["a".into()], Some(End::Complete), None)
        );
    }
}
