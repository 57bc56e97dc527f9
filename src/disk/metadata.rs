//! The planned image's metadata blocks while a disk is open. They start in
//! the heap, where the planner left them, so the disk is ready at once; a
//! settle thread then moves them into an unlinked scratch file in the cache
//! (the page cache keeps the hot ones), so an open disk's memory does not
//! grow with the image's inode tables and directories. Reads find them by
//! block number in either place.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::RwLock;

use crate::fs::BLOCK_SIZE;

/// Errors reading a moved metadata block.
#[derive(Debug, thiserror::Error)]
#[error("reading metadata block {block} from the disk's scratch file: {source}")]
pub struct MetadataError {
    /// The device block.
    pub block: u64,
    /// The OS error.
    pub source: io::Error,
}

/// An open disk's metadata blocks: in the heap, then (once
/// [`Metadata::move_to`] ran) in a file.
#[derive(Debug)]
pub(super) struct Metadata {
    state: RwLock<State>,
}

#[derive(Debug)]
enum State {
    Heap(BTreeMap<u64, Box<[u8]>>),
    Moved(MovedMetadata),
}

impl Metadata {
    /// The blocks as the planner made them (`FsImage::metadata`).
    pub(super) fn new(blocks: BTreeMap<u64, Box<[u8]>>) -> Metadata {
        Metadata {
            state: RwLock::new(State::Heap(blocks)),
        }
    }

    /// Move the blocks into `file` and free their heap; returns how many
    /// moved. Reads go on meanwhile (from the heap until the switch). On a
    /// write error nothing moves.
    pub(super) fn move_to(&self, file: File) -> io::Result<usize> {
        let moved = {
            let state = crate::sync::read(&self.state);
            let State::Heap(blocks) = &*state else {
                return Ok(0);
            };
            MovedMetadata::write(blocks, file)?
        };
        let n = moved.blocks.len();
        let old = std::mem::replace(&mut *crate::sync::write(&self.state), State::Moved(moved));
        drop(old);
        Ok(n)
    }

    /// Fill `out`, device bytes from `offset` that the image's regions say
    /// are zeros, with zeros and whatever metadata blocks overlap them.
    pub(super) fn overlay(&self, offset: u64, out: &mut [u8]) -> Result<(), MetadataError> {
        match &*crate::sync::read(&self.state) {
            State::Heap(blocks) => {
                out.fill(0);
                let len = out.len() as u64;
                for (&block, bytes) in in_range(blocks, offset, len) {
                    let start = (block * BLOCK_SIZE).max(offset);
                    let end = ((block + 1) * BLOCK_SIZE).min(offset + len);
                    let from = (start - block * BLOCK_SIZE) as usize;
                    out[(start - offset) as usize..(end - offset) as usize]
                        .copy_from_slice(&bytes[from..from + (end - start) as usize]);
                }
                Ok(())
            }
            State::Moved(m) => m.overlay(offset, out),
        }
    }

    /// Whether any metadata block overlaps `[offset, offset + len)`.
    pub(super) fn touches(&self, offset: u64, len: u64) -> bool {
        match &*crate::sync::read(&self.state) {
            State::Heap(blocks) => in_range(blocks, offset, len).next().is_some(),
            State::Moved(m) => m.touches(offset, len),
        }
    }
}

/// The blocks of `blocks` overlapping device bytes `[offset, offset + len)`.
fn in_range(
    blocks: &BTreeMap<u64, Box<[u8]>>,
    offset: u64,
    len: u64,
) -> std::collections::btree_map::Range<'_, u64, Box<[u8]>> {
    let (first, end) = (offset / BLOCK_SIZE, (offset + len).div_ceil(BLOCK_SIZE));
    blocks.range(first..end.max(first))
}

/// Metadata blocks kept in a file: block `blocks[i]` is at `i * BLOCK_SIZE`.
#[derive(Debug)]
struct MovedMetadata {
    file: File,
    /// Device block numbers, sorted.
    blocks: Vec<u64>,
}

impl MovedMetadata {
    /// Write `blocks` into `file`, in block order, a batch at a time.
    fn write(blocks: &BTreeMap<u64, Box<[u8]>>, file: File) -> io::Result<MovedMetadata> {
        const BATCH: usize = 256;
        let mut numbers = Vec::with_capacity(blocks.len());
        let mut buf = Vec::with_capacity(BATCH * BLOCK_SIZE as usize);
        let mut at = 0u64;
        for (&block, bytes) in blocks {
            buf.extend_from_slice(bytes);
            numbers.push(block);
            if buf.len() == buf.capacity() {
                file.write_all_at(&buf, at)?;
                at += buf.len() as u64;
                buf.clear();
            }
        }
        file.write_all_at(&buf, at)?;
        Ok(MovedMetadata {
            file,
            blocks: numbers,
        })
    }

    /// The moved blocks (block, index) overlapping device bytes
    /// `[offset, offset + len)`.
    fn within(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, usize)> + '_ {
        let (first, end) = (offset / BLOCK_SIZE, (offset + len).div_ceil(BLOCK_SIZE));
        let from = self.blocks.partition_point(|b| *b < first);
        self.blocks[from..]
            .iter()
            .take_while(move |b| **b < end)
            .enumerate()
            .map(move |(k, b)| (*b, from + k))
    }

    /// Fill `out`, device bytes from `offset` that the image's regions say
    /// are zeros, with zeros and whatever moved blocks overlap them.
    fn overlay(&self, offset: u64, out: &mut [u8]) -> Result<(), MetadataError> {
        out.fill(0);
        let len = out.len() as u64;
        for (block, i) in self.within(offset, len) {
            let start = (block * BLOCK_SIZE).max(offset);
            let end = ((block + 1) * BLOCK_SIZE).min(offset + len);
            let piece = &mut out[(start - offset) as usize..(end - offset) as usize];
            let at = i as u64 * BLOCK_SIZE + (start - block * BLOCK_SIZE);
            self.file
                .read_exact_at(piece, at)
                .map_err(|source| MetadataError { block, source })?;
        }
        Ok(())
    }

    /// Whether any moved block overlaps `[offset, offset + len)`.
    fn touches(&self, offset: u64, len: u64) -> bool {
        self.within(offset, len).next().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_read_back_where_they_were_before_and_after_the_move() {
        let mut blocks = BTreeMap::new();
        for b in [2u64, 3, 9] {
            blocks.insert(b, vec![b as u8; 4096].into_boxed_slice());
        }
        // More than one write batch.
        for b in 20..300u64 {
            blocks.insert(b, vec![(b % 251) as u8 + 1; 4096].into_boxed_slice());
        }
        let want: Vec<u8> = (0..320 * BLOCK_SIZE)
            .map(|o| match o / BLOCK_SIZE {
                b @ (2 | 3 | 9) => b as u8,
                b @ 20..300 => (b % 251) as u8 + 1,
                _ => 0,
            })
            .collect();
        let m = Metadata::new(blocks);
        let check = |m: &Metadata| {
            for (offset, len) in [
                (0, 320 * 4096),
                (8000, 5000),
                (4096 * 9 + 7, 1),
                (12, 3),
                (4096 * 10, 4096 * 10),
                (4096 * 299 + 100, 9000),
            ] {
                let mut out = vec![0xffu8; len];
                m.overlay(offset, &mut out).unwrap();
                assert_eq!(
                    out,
                    want[offset as usize..offset as usize + len],
                    "{offset}"
                );
                assert_eq!(
                    m.touches(offset, len as u64),
                    out.iter().any(|b| *b != 0),
                    "{offset}"
                );
            }
        };
        check(&m);
        assert_eq!(m.move_to(tempfile::tempfile().unwrap()).unwrap(), 283);
        assert!(matches!(*crate::sync::read(&m.state), State::Moved(_)));
        check(&m);
        // A second move has nothing left to move.
        assert_eq!(m.move_to(tempfile::tempfile().unwrap()).unwrap(), 0);
        check(&m);
    }
}
