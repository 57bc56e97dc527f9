//! The planned image's metadata blocks while a disk is open: moved out of
//! the heap into an unlinked scratch file in the cache (the page cache keeps
//! the hot ones), so an open disk's memory does not grow with the image's
//! inode tables and directories. Reads find them by block number.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::fs::{BLOCK_SIZE, FsImage};

/// Errors reading a moved metadata block.
#[derive(Debug, thiserror::Error)]
#[error("reading metadata block {block} from the disk's scratch file: {source}")]
pub struct MetadataError {
    /// The device block.
    pub block: u64,
    /// The OS error.
    pub source: io::Error,
}

/// Metadata blocks kept in a file: block `blocks[i]` is at `i * BLOCK_SIZE`.
#[derive(Debug, Default)]
pub(super) struct MovedMetadata {
    file: Option<File>,
    /// Device block numbers, sorted.
    blocks: Vec<u64>,
}

impl MovedMetadata {
    /// Move `image`'s metadata blocks into `file`; its map is left empty
    /// (its regions then read as zeros there: [`MovedMetadata::overlay`]
    /// fills them in). On a write error nothing moves.
    pub(super) fn take(image: &mut FsImage, file: File) -> io::Result<MovedMetadata> {
        let mut blocks = Vec::with_capacity(image.metadata.len());
        for (i, (&block, bytes)) in image.metadata.iter().enumerate() {
            file.write_all_at(bytes, i as u64 * BLOCK_SIZE)?;
            blocks.push(block);
        }
        image.metadata.clear();
        Ok(MovedMetadata {
            file: Some(file),
            blocks,
        })
    }

    /// Blocks moved.
    pub(super) fn len(&self) -> usize {
        self.blocks.len()
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
    pub(super) fn overlay(&self, offset: u64, out: &mut [u8]) -> Result<(), MetadataError> {
        out.fill(0);
        let Some(file) = &self.file else {
            return Ok(());
        };
        let len = out.len() as u64;
        for (block, i) in self.within(offset, len) {
            let start = (block * BLOCK_SIZE).max(offset);
            let end = ((block + 1) * BLOCK_SIZE).min(offset + len);
            let piece = &mut out[(start - offset) as usize..(end - offset) as usize];
            let at = i as u64 * BLOCK_SIZE + (start - block * BLOCK_SIZE);
            file.read_exact_at(piece, at)
                .map_err(|source| MetadataError { block, source })?;
        }
        Ok(())
    }

    /// Whether any moved block overlaps `[offset, offset + len)`.
    pub(super) fn touches(&self, offset: u64, len: u64) -> bool {
        self.within(offset, len).next().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_blocks_read_back_where_they_were() {
        let mut image = FsImage {
            size: 16 * BLOCK_SIZE,
            ..FsImage::default()
        };
        image.metadata.insert(2, vec![2u8; 4096].into());
        image.metadata.insert(3, vec![3u8; 4096].into());
        image.metadata.insert(9, vec![9u8; 4096].into());
        let want: Vec<u8> = (0..16 * BLOCK_SIZE)
            .map(|o| match o / BLOCK_SIZE {
                b @ (2 | 3 | 9) => b as u8,
                _ => 0,
            })
            .collect();
        let m = MovedMetadata::take(&mut image, tempfile::tempfile().unwrap()).unwrap();
        assert!(image.metadata.is_empty());
        assert_eq!(m.len(), 3);
        for (offset, len) in [(0, 16 * 4096), (8000, 5000), (4096 * 9 + 7, 1), (12, 3)] {
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
    }
}
