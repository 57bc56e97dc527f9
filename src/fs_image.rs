//! The output of a filesystem writer, independent of the filesystem: a
//! device size, the metadata blocks the writer synthesised, and data extents
//! that say which bytes of which layer's uncompressed tar belong where on
//! the device. Everything else reads as zeros.
//!
//! `materialize` writes it to a file; the lazy disk serves reads from it.

use std::collections::BTreeMap;

/// Block size of the metadata map.
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
    /// Device size in bytes.
    pub size: u64,
    /// Non-zero metadata blocks by block number.
    pub metadata: BTreeMap<u64, Box<[u8]>>,
    /// Data extents, sorted by device offset, never overlapping each other
    /// or a metadata block.
    pub data: Vec<DataExtent>,
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
}
