//! The output of a filesystem writer, independent of the filesystem: a
//! device size, the metadata blocks the writer synthesised, and data extents
//! that say which bytes of which layer's uncompressed tar belong where on
//! the device. Everything else reads as zeros.
//!
//! Every consumer walks it the same way, through [`FsImage::regions`]:
//! `materialize` and `--flush-to` to write it, the lazy disk to serve reads.
//! [`FsImage::validate`] checks the rule they all rely on: blocks and
//! extents inside the device, extents sorted and overlapping neither each
//! other nor a metadata block.

use std::collections::BTreeMap;

/// Block size of the metadata map (and of every writer's filesystem).
pub const BLOCK_SIZE: u64 = 4096;

/// Bytes of a layer placed on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataExtent {
    /// Device offset of the first byte.
    pub device_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Which layer (position in the image, bottom = 0).
    pub layer: usize,
    /// Offset in that layer's uncompressed tar.
    pub tar_offset: u64,
}

/// A filesystem image described, not yet written.
#[derive(Debug, Clone, Default)]
pub struct FsImage {
    /// Device size in bytes (a whole number of blocks).
    pub size: u64,
    /// Non-zero metadata blocks by block number, each [`BLOCK_SIZE`] bytes.
    pub metadata: BTreeMap<u64, Box<[u8]>>,
    /// Data extents, sorted by device offset, never overlapping each other
    /// or a metadata block (see [`FsImage::validate`]).
    pub data: Vec<DataExtent>,
}

/// Why an [`FsImage`] breaks its own rules: a writer bug, never input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// The device size is not a whole number of blocks.
    #[error("device size {0} is not a multiple of {BLOCK_SIZE}")]
    Size(u64),
    /// A metadata block of the wrong length or beyond the device.
    #[error("metadata block {block} ({len} bytes) does not fit a {size}-byte device")]
    Block {
        /// The block.
        block: u64,
        /// Its length.
        len: usize,
        /// The device size.
        size: u64,
    },
    /// A data extent that is empty, beyond the device, out of order or
    /// overlapping what comes before it.
    #[error(
        "data extent {index} (device bytes {start}..{end}) is empty, beyond the device or overlaps the one before it"
    )]
    Extent {
        /// Position in `data`.
        index: usize,
        /// First device byte.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// A data extent over a metadata block.
    #[error("data extent {index} (device bytes {start}..{end}) overlaps metadata block {block}")]
    Overlap {
        /// Position in `data`.
        index: usize,
        /// First device byte.
        start: u64,
        /// End (exclusive).
        end: u64,
        /// The metadata block.
        block: u64,
    },
}

/// What a piece of the device holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region<'a> {
    /// Synthesised metadata: these bytes (part of one block).
    Metadata(&'a [u8]),
    /// `len` bytes of layer `layer`'s uncompressed tar from `tar_offset`.
    Data {
        /// The layer.
        layer: usize,
        /// Where in its tar.
        tar_offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// `len` bytes of zeros.
    Zeros(u64),
}

impl Region<'_> {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Region::Metadata(b) => b.len() as u64,
            Region::Data { len, .. } | Region::Zeros(len) => *len,
        }
    }

    /// Whether it is empty (never, from [`FsImage::regions`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The regions of a device range in order: see [`FsImage::regions`].
pub struct Regions<'a> {
    image: &'a FsImage,
    at: u64,
    end: u64,
    next_data: usize,
}

impl<'a> Iterator for Regions<'a> {
    type Item = (u64, Region<'a>);

    fn next(&mut self) -> Option<(u64, Region<'a>)> {
        if self.at >= self.end {
            return None;
        }
        let (at, img) = (self.at, self.image);
        let block = at / BLOCK_SIZE;
        let region = if let Some(bytes) = img.metadata.get(&block) {
            let from = (at - block * BLOCK_SIZE) as usize;
            let to = ((self.end - block * BLOCK_SIZE) as usize).min(bytes.len());
            Region::Metadata(&bytes[from..to])
        } else {
            let data = &img.data;
            while data
                .get(self.next_data)
                .is_some_and(|e| e.device_offset + e.len <= at)
            {
                self.next_data += 1;
            }
            let next_meta = img
                .metadata
                .range(block + 1..)
                .next()
                .map_or(u64::MAX, |(b, _)| b * BLOCK_SIZE);
            match data.get(self.next_data) {
                Some(e) if e.device_offset <= at => {
                    let hi = (e.device_offset + e.len).min(self.end).min(next_meta);
                    Region::Data {
                        layer: e.layer,
                        tar_offset: e.tar_offset + (at - e.device_offset),
                        len: hi - at,
                    }
                }
                next => {
                    let next_data = next.map_or(u64::MAX, |e| e.device_offset);
                    Region::Zeros(self.end.min(next_meta).min(next_data) - at)
                }
            }
        };
        self.at += region.len();
        Some((at, region))
    }
}

impl FsImage {
    /// Store a metadata block (all-zero blocks are dropped).
    pub fn put_block(&mut self, block: u64, bytes: Vec<u8>) {
        debug_assert_eq!(bytes.len() as u64, BLOCK_SIZE);
        if bytes.iter().any(|b| *b != 0) {
            self.metadata.insert(block, bytes.into_boxed_slice());
        } else {
            self.metadata.remove(&block);
        }
    }

    /// Write `bytes` at device offset `offset` into the metadata, merging
    /// with what the blocks already hold: for pieces smaller than a block
    /// (a superblock at byte 1024, sector-sized headers).
    pub fn put_bytes(&mut self, offset: u64, bytes: &[u8]) {
        let mut at = offset;
        let mut rest = bytes;
        while !rest.is_empty() {
            let block = at / BLOCK_SIZE;
            let from = (at % BLOCK_SIZE) as usize;
            let n = (BLOCK_SIZE as usize - from).min(rest.len());
            let piece = &rest[..n];
            let zeros = piece.iter().all(|b| *b == 0);
            // In place: no copy of the block, and no scan of it unless the
            // piece could have left it all zeros.
            match self.metadata.get_mut(&block) {
                Some(b) => {
                    b[from..from + n].copy_from_slice(piece);
                    if zeros && b.iter().all(|x| *x == 0) {
                        self.metadata.remove(&block);
                    }
                }
                None if zeros => {}
                None => {
                    let mut b = vec![0u8; BLOCK_SIZE as usize].into_boxed_slice();
                    b[from..from + n].copy_from_slice(piece);
                    self.metadata.insert(block, b);
                }
            }
            rest = &rest[n..];
            at += n as u64;
        }
    }

    /// The regions of device bytes `[offset, offset + len)`, in order, each
    /// with its device offset: metadata slices, layer data, zero runs. They
    /// cover the range exactly. The range must lie inside the device.
    pub fn regions(&self, offset: u64, len: u64) -> Regions<'_> {
        debug_assert!(offset.checked_add(len).is_some_and(|e| e <= self.size));
        Regions {
            image: self,
            at: offset,
            end: offset + len,
            next_data: self
                .data
                .partition_point(|e| e.device_offset + e.len <= offset),
        }
    }

    /// Data extents of one layer, sorted by tar offset (the order in which
    /// a streaming copy meets them).
    pub fn extents_of_layer(&self, layer: usize) -> Vec<DataExtent> {
        let mut v: Vec<DataExtent> = self
            .data
            .iter()
            .filter(|e| e.layer == layer)
            .copied()
            .collect();
        v.sort_by_key(|e| (e.tar_offset, e.device_offset));
        v
    }

    /// File bytes the image takes from layers.
    pub fn data_bytes(&self) -> u64 {
        self.data.iter().map(|e| e.len).sum()
    }

    /// Write every metadata region into `file`, which reads as zeros
    /// elsewhere already (a fresh sparse file of [`FsImage::size`] bytes).
    pub fn write_metadata(&self, file: &std::fs::File) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        for (offset, region) in self.regions(0, self.size) {
            if let Region::Metadata(bytes) = region {
                file.write_all_at(bytes, offset)?;
            }
        }
        Ok(())
    }

    /// Check the rules every consumer relies on (see [`ImageError`]).
    pub fn validate(&self) -> Result<(), ImageError> {
        if !self.size.is_multiple_of(BLOCK_SIZE) {
            return Err(ImageError::Size(self.size));
        }
        let blocks = self.size / BLOCK_SIZE;
        for (&block, bytes) in &self.metadata {
            if block >= blocks || bytes.len() as u64 != BLOCK_SIZE {
                return Err(ImageError::Block {
                    block,
                    len: bytes.len(),
                    size: self.size,
                });
            }
        }
        let mut prev_end = 0;
        for (index, e) in self.data.iter().enumerate() {
            let (start, end) = (e.device_offset, e.device_offset.saturating_add(e.len));
            if e.len == 0 || end > self.size || start < prev_end {
                return Err(ImageError::Extent { index, start, end });
            }
            if let Some((&block, _)) = self
                .metadata
                .range(start / BLOCK_SIZE..=(end - 1) / BLOCK_SIZE)
                .next()
            {
                return Err(ImageError::Overlap {
                    index,
                    start,
                    end,
                    block,
                });
            }
            prev_end = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FsImage {
        let mut img = FsImage {
            size: 8 * BLOCK_SIZE,
            ..FsImage::default()
        };
        img.put_block(1, vec![1u8; 4096]);
        img.put_bytes(5 * BLOCK_SIZE + 1024, &[2u8; 10]);
        img.data.push(DataExtent {
            device_offset: 2 * BLOCK_SIZE + 100,
            len: 5000,
            layer: 0,
            tar_offset: 512,
        });
        img.data.push(DataExtent {
            device_offset: 6 * BLOCK_SIZE,
            len: 4096,
            layer: 1,
            tar_offset: 0,
        });
        img
    }

    #[test]
    fn regions_cover_the_range_in_order() {
        let img = sample();
        img.validate().unwrap();
        let all: Vec<(u64, Region<'_>)> = img.regions(0, img.size).collect();
        let mut at = 0;
        for (off, r) in &all {
            assert_eq!(*off, at);
            assert!(!r.is_empty());
            at += r.len();
        }
        assert_eq!(at, img.size);
        assert_eq!(all[0], (0, Region::Zeros(4096)));
        assert!(matches!(all[1], (4096, Region::Metadata(b)) if b.len() == 4096));
        assert_eq!(all[2], (8192, Region::Zeros(100)));
        assert_eq!(
            all[3],
            (
                8292,
                Region::Data {
                    layer: 0,
                    tar_offset: 512,
                    len: 5000
                }
            )
        );
        // A range starting inside an extent and ending inside a block.
        let part: Vec<_> = img
            .regions(8292 + 10, 5 * BLOCK_SIZE + 1030 - 8302)
            .collect();
        assert_eq!(
            part[0].1,
            Region::Data {
                layer: 0,
                tar_offset: 522,
                len: 4990
            }
        );
        let Region::Metadata(b) = part.last().unwrap().1 else {
            panic!("{part:?}")
        };
        assert_eq!(b.len(), 1030);
        assert_eq!(&b[1024..], &[2u8; 6]);
    }

    #[test]
    fn sub_block_writes_keep_only_blocks_with_a_nonzero_byte() {
        let mut img = FsImage {
            size: 8 * BLOCK_SIZE,
            ..FsImage::default()
        };
        img.put_bytes(2 * BLOCK_SIZE + 7, &[0, 0, 0]);
        assert!(img.metadata.is_empty(), "zeros make no block");
        img.put_bytes(2 * BLOCK_SIZE + 7, &[0, 5, 0]);
        assert_eq!(img.metadata[&2][7..10], [0, 5, 0]);
        img.put_bytes(2 * BLOCK_SIZE + 100, &[0; 8]);
        assert!(img.metadata.contains_key(&2), "the 5 is still there");
        img.put_bytes(2 * BLOCK_SIZE + 8, &[0]);
        assert!(
            img.metadata.is_empty(),
            "a block written back to zeros goes"
        );
    }

    #[test]
    fn sub_block_writes_merge_and_validate_catches_overlaps() {
        let mut img = sample();
        img.put_bytes(BLOCK_SIZE - 2, &[9, 9, 9, 9]);
        assert_eq!(img.metadata[&0][4094..], [9, 9]);
        assert_eq!(img.metadata[&1][..2], [9, 9]);
        assert_eq!(img.metadata[&1][2], 1);
        img.validate().unwrap();
        let mut bad = sample();
        bad.put_block(3, vec![1u8; 4096]);
        assert!(matches!(
            bad.validate(),
            Err(ImageError::Overlap { block: 3, .. })
        ));
        let mut bad = sample();
        bad.data.swap(0, 1);
        assert!(matches!(
            bad.validate(),
            Err(ImageError::Extent { index: 1, .. })
        ));
        let mut bad = sample();
        bad.data[1].len = 8193; // past the end of the device
        assert!(bad.validate().is_err());
    }
}
