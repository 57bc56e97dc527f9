//! The stable data layout every writer follows: where a file's data goes
//! depends only on its layer and the layers below, never on what later
//! layers add, replace or delete. That is what lets a new image version
//! share the blocks of the old one (`materialize --base`, the chunk store).
//!
//! The rule: each layer gets a region of the *data zone*, in layer order,
//! each region starting on a 512 KiB boundary. Inside a region, every
//! regular file the layer's tar stores gets a slot, in tar order, as many
//! blocks long as the blocks its data covers: also the files a later layer
//! (or a later entry of the same tar) replaces or deletes. Their slots stay
//! unused: free in the bitmaps, a hole in the image. Slots are numbered in
//! *zone blocks*, which a writer maps to device blocks by skipping the
//! fixed headers the filesystem keeps at known places (superblock copies,
//! ext3's per-group bitmaps and inode tables). Those skips are rounded up
//! to 512 KiB too, so a header that grows a little moves nothing.
//!
//! Writers: ext4 and ext3 ([`crate::fs::extfs`]) always; XFS
//! ([`crate::fs::xfs`]) unless its free space would need more than one
//! leaf per group.
//!
//! Everything else (inode tables, directories, extent and indirect blocks,
//! the journal) goes after the data zone, from the next 8 MiB boundary
//! ([`metadata_start`]): a version that adds less than the room left before
//! that boundary keeps even the metadata's places (its bytes change: inode
//! numbers, checksums), and one that adds more moves only the metadata.

use crate::fs::extents::{Run, data_ranges, file_ranges};
use crate::tar::{EntryKind, TarEntry};
use crate::tree::{FileData, NodeId, NodeKind, Tree};

/// Blocks in 512 KiB: regions and skips start and end on this boundary.
pub const ALIGN: u64 = (512 * 1024) / crate::fs::BLOCK_SIZE;

/// Blocks in 8 MiB: the metadata after the data zone starts on this
/// boundary.
pub const META_ALIGN: u64 = (8 << 20) / crate::fs::BLOCK_SIZE;

/// Where the metadata after a data zone ending at device block `data_end`
/// starts.
pub fn metadata_start(data_end: u64) -> u64 {
    data_end.next_multiple_of(META_ALIGN)
}

/// One layer's region of the zone.
#[derive(Debug, Default)]
struct Region {
    /// (tar offset of a file's data, first zone block of its slot), sorted.
    slots: Vec<(u64, u64)>,
}

/// Zone blocks for every file the layers store.
#[derive(Debug, Default)]
pub struct DataZone {
    regions: Vec<Region>,
    blocks: u64,
}

impl DataZone {
    /// The zone of a tree: every file node, reachable or not (the tree
    /// keeps the nodes later layers replaced or deleted).
    pub fn new(tree: &Tree) -> DataZone {
        let mut files: Vec<(usize, u64, u64)> = tree
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(id, n)| match &n.kind {
                NodeKind::File(f) => {
                    let blocks: u64 = file_ranges(tree, id).iter().map(|r| r.1).sum();
                    (blocks > 0).then_some((f.layer, f.offset, blocks))
                }
                _ => None,
            })
            .collect();
        files.sort_unstable();
        files.dedup_by_key(|f| (f.0, f.1));
        let mut zone = DataZone::default();
        let mut at = 0u64;
        for (layer, offset, blocks) in files {
            while zone.regions.len() <= layer {
                at = next_region(at, 0);
                zone.regions.push(Region::default());
            }
            zone.regions[layer].slots.push((offset, at));
            at += blocks;
        }
        zone.blocks = at.next_multiple_of(ALIGN);
        zone
    }

    /// Zone blocks in all (the end of the last region, aligned).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The first zone block of the slot of the file whose data starts at
    /// `offset` in layer `layer`'s tar.
    pub fn slot(&self, layer: usize, offset: u64) -> Option<u64> {
        let r = self.regions.get(layer)?;
        let i = r.slots.binary_search_by_key(&offset, |s| s.0).ok()?;
        Some(r.slots[i].1)
    }
}

/// The data a tar entry of layer `layer` stores, as the tree keeps it for
/// a regular file (`None` for other entries).
pub fn entry_file(layer: usize, e: &TarEntry) -> Option<FileData> {
    (e.kind == EntryKind::File).then(|| FileData {
        size: e.size,
        layer,
        offset: e.data_offset,
        len: e.data_len,
        sparse: e.sparse.clone(),
    })
}

/// Zone blocks of a file's slot: the blocks its data covers.
pub fn slot_blocks(f: &FileData) -> u64 {
    data_ranges(f).iter().map(|r| r.1).sum()
}

/// Zone blocks a layer's region takes if every regular file its tar
/// stores becomes a node of the tree (as it does unless the layer
/// breaks the tree's rules): known as soon as the layer is indexed,
/// before the tree is.
pub fn region_blocks(layer: usize, entries: &[TarEntry]) -> u64 {
    entries
        .iter()
        .filter_map(|e| entry_file(layer, e))
        .map(|f| slot_blocks(&f))
        .sum()
}

/// Where the region after one starting at zone block `start` and taking
/// `blocks` starts.
pub fn next_region(start: u64, blocks: u64) -> u64 {
    (start + blocks).next_multiple_of(ALIGN)
}

/// Zone blocks on device blocks: the device from block 0, less the skipped
/// ranges.
#[derive(Debug, Clone)]
pub struct ZoneMap {
    /// Skipped (first device block, blocks), sorted, not overlapping, with
    /// the zone blocks before each.
    skips: Vec<(u64, u64, u64)>,
}

impl ZoneMap {
    /// A map skipping `headers` (first block, blocks), each rounded up to
    /// [`ALIGN`] blocks from its start.
    pub fn new(headers: impl IntoIterator<Item = (u64, u64)>) -> ZoneMap {
        let mut ranges: Vec<(u64, u64)> = headers
            .into_iter()
            .filter(|h| h.1 > 0)
            .map(|(s, l)| (s, l.next_multiple_of(ALIGN)))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, l) in ranges {
            match merged.last_mut() {
                Some(m) if m.0 + m.1 >= s => m.1 = m.1.max(s + l - m.0),
                _ => merged.push((s, l)),
            }
        }
        let mut skipped = 0;
        let skips = merged
            .into_iter()
            .map(|(s, l)| {
                let before = s - skipped;
                skipped += l;
                (s, l, before)
            })
            .collect();
        ZoneMap { skips }
    }

    /// The device block of zone block `z`.
    pub fn device(&self, z: u64) -> u64 {
        let i = self.skips.partition_point(|s| s.2 <= z);
        match i.checked_sub(1).map(|i| self.skips[i]) {
            Some((s, l, before)) => s + l + (z - before),
            None => z,
        }
    }

    /// Device runs (first block, count) for `n` zone blocks from `z`.
    pub fn runs(&self, z: u64, n: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let (mut z, mut n) = (z, n);
        while n > 0 {
            let d = self.device(z);
            // Zone blocks until the next skip.
            let i = self.skips.partition_point(|s| s.0 <= d);
            let room = self.skips.get(i).map_or(u64::MAX, |s| s.0 - d);
            let take = n.min(room);
            out.push((d, take));
            z += take;
            n -= take;
        }
        out
    }

    /// Where file `node`'s data goes: its data ranges mapped from its slot,
    /// in order (no run crosses a skip). `None` for a file with data but no
    /// slot (a tree the zone was not made from).
    pub fn file_runs(&self, zone: &DataZone, tree: &Tree, node: NodeId) -> Option<Vec<Run>> {
        let NodeKind::File(f) = &tree.nodes[node].kind else {
            return Some(Vec::new());
        };
        let ranges = file_ranges(tree, node);
        if ranges.is_empty() {
            return Some(Vec::new());
        }
        let mut z = zone.slot(f.layer, f.offset)?;
        let mut runs = Vec::new();
        for (first, count) in ranges {
            let mut logical = first;
            for (physical, len) in self.runs(z, count) {
                runs.push(Run {
                    logical,
                    physical,
                    len,
                });
                logical += len;
            }
            z += count;
        }
        Some(runs)
    }

    /// The first device block after zone block `z - 1` (for `z` = 0: the
    /// first data block).
    pub fn end(&self, z: u64) -> u64 {
        match z.checked_sub(1) {
            Some(last) => self.device(last) + 1,
            None => self.device(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{FileData, Metadata, Node};

    fn file(layer: usize, offset: u64, len: u64) -> Node {
        Node {
            meta: Metadata {
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                xattrs: Vec::new(),
            },
            kind: NodeKind::File(FileData {
                size: len,
                layer,
                offset,
                len,
                sparse: None,
            }),
            implied: false,
        }
    }

    #[test]
    fn slots_depend_only_on_the_layers_below() {
        let v1 = Tree {
            nodes: vec![file(0, 512, 5000), file(0, 6144, 1), file(1, 512, 100)],
        };
        let mut nodes = v1.nodes.clone();
        nodes.push(file(2, 512, 1 << 20));
        let v2 = Tree { nodes };
        let (a, b) = (DataZone::new(&v1), DataZone::new(&v2));
        for (l, o) in [(0, 512), (0, 6144), (1, 512)] {
            assert_eq!(a.slot(l, o), b.slot(l, o));
        }
        assert_eq!(a.slot(0, 512), Some(0));
        assert_eq!(a.slot(0, 6144), Some(2), "5000 bytes take two blocks");
        assert_eq!(a.slot(1, 512), Some(ALIGN), "regions start aligned");
        assert_eq!(b.slot(2, 512), Some(2 * ALIGN));
        assert_eq!(a.slot(0, 100), None);
        assert_eq!(b.blocks(), 2 * ALIGN + 256);
    }

    #[test]
    fn zone_blocks_skip_headers_rounded_up() {
        let m = ZoneMap::new([(0, 3), (1000, 130), (1100, 10)]);
        assert_eq!(m.device(0), ALIGN);
        assert_eq!(m.runs(0, 2), vec![(ALIGN, 2)]);
        // Zone blocks ALIGN..1000 then the skip [1000, 1256).
        let before = 1000 - ALIGN;
        assert_eq!(m.device(before - 1), 999);
        assert_eq!(m.device(before), 1256);
        assert_eq!(m.runs(before - 2, 4), vec![(998, 2), (1256, 2)]);
        assert_eq!(m.end(before), 1000);
        assert_eq!(m.end(before + 1), 1257);
        assert_eq!(ZoneMap::new([]).runs(5, 3), vec![(5, 3)]);
    }
}
