//! The decompression pipeline of a layer blob: a second thread reads,
//! hashes and decompresses the blob and hands 1 MiB chunks to the thread
//! that parses the tar and writes files, so the two halves of the work
//! overlap on a multi-core machine.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use super::{EntryName, UnpackError};
use crate::digest::{Digest, HashingReader};
use crate::layer::decompress;

/// Runs `consume` on the decompressed stream of `blob` while a second thread
/// produces it; `progress` gets the compressed bytes read. Returns (blob
/// digest, diff ID) once `consume` has read what it wants: the producer
/// reads the blob to its end.
pub(super) fn read_blob(
    blob: File,
    progress: &mut dyn FnMut(u64),
    consume: impl FnOnce(&mut dyn Read) -> Result<(), UnpackError>,
) -> Result<(Digest, Digest), UnpackError> {
    let read_bytes = AtomicU64::new(0);
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
        let counter = &read_bytes;
        let producer = s.spawn(move || produce(blob, counter, tx));
        let reader = ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        };
        let mut reported = 0;
        let mut report = |_: ()| {
            let now = counter.load(Ordering::Relaxed);
            progress(now - reported);
            reported = now;
        };
        let result = consume(&mut ProgressReader {
            inner: reader,
            tick: &mut report,
        });
        // On error the reader is dropped, so the producer stops at its
        // next send.
        let produced = producer.join().expect("layer reader thread panicked");
        result?;
        produced.map_err(|source| UnpackError::ReadArchive {
            after: EntryName(b"(end)".to_vec()),
            source: crate::quote::clean_io(source),
        })
    })
}

const CHUNK: usize = 1 << 20;

/// Reads, hashes and decompresses a blob into chunks; returns (blob digest,
/// diff ID). Read errors are passed on through the channel too, so that the
/// tar side reports them with the entry being read.
fn produce(
    blob: File,
    counter: &AtomicU64,
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
) -> io::Result<(Digest, Digest)> {
    let mut compressed = HashingReader::new(CountingReader {
        inner: blob,
        counter,
    });
    let diff_id = {
        let buffered = BufReader::with_capacity(256 << 10, &mut compressed);
        let (stream, _) = match decompress(buffered) {
            Ok(s) => s,
            Err(e) => {
                let kind = e.kind();
                let _ = tx.send(Err(e));
                return Err(kind.into());
            }
        };
        let mut stream = HashingReader::new(stream);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match stream.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let kind = e.kind();
                        let msg = e.to_string();
                        // Hand over what was read first, so the error is
                        // reported at the entry it cuts short.
                        buf.truncate(filled);
                        if filled > 0 {
                            let _ = tx.send(Ok(buf));
                        }
                        let _ = tx.send(Err(e));
                        return Err(io::Error::new(kind, msg));
                    }
                }
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            if tx.send(Ok(buf)).is_err() {
                return Err(io::ErrorKind::BrokenPipe.into()); // consumer gave up
            }
        }
        stream.finish()?.0
    };
    let (digest, _) = compressed.finish()?;
    Ok((digest, diff_id))
}

struct CountingReader<'c, R> {
    inner: R,
    counter: &'c AtomicU64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // producer done
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct ProgressReader<'p, R> {
    inner: R,
    tick: &'p mut dyn FnMut(()),
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.tick)(());
        Ok(n)
    }
}
