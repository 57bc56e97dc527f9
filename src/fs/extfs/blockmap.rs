//! ext2/ext3 block maps: the inode's 15 block pointers are 12 direct
//! blocks, then one indirect, one double-indirect and one triple-indirect
//! block (1,024 pointers each with 4 KiB blocks). A hole is a zero pointer,
//! and an indirect block exists only where something under it is mapped,
//! so sparse files stay sparse.
//!
//! Indirect blocks are numbered in pre-order (a parent before its
//! children, children in logical order), the order debugfs lists them in.

use super::Run;

/// Direct pointers in the inode.
pub const DIRECT: u64 = 12;
/// Pointers per indirect block.
pub const PER_BLOCK: u64 = 1024;

/// The inode slot, first logical block and depth of each indirect tree.
const TREES: [(usize, u64, u32); 3] = [
    (12, DIRECT, 1),
    (13, DIRECT + PER_BLOCK, 2),
    (14, DIRECT + PER_BLOCK + PER_BLOCK * PER_BLOCK, 3),
];

/// Walks the trees in pre-order; with `out`, encodes them too.
struct Walk<'a> {
    runs: &'a [Run],
    tree_blocks: &'a [u64],
    used: usize,
    out: Option<Vec<(u64, Vec<u8>)>>,
}

impl Walk<'_> {
    /// The runs overlapping logical blocks `[lo, hi)`.
    fn overlapping(&self, lo: u64, hi: u64) -> &[Run] {
        let first = self.runs.partition_point(|r| r.logical + r.len <= lo);
        let last = self.runs.partition_point(|r| r.logical < hi);
        &self.runs[first..last.max(first)]
    }

    /// The block of the node of `depth` covering `[base, base + 1024^depth)`
    /// (0: nothing under it is mapped).
    fn node(&mut self, depth: u32, base: u64) -> u64 {
        let span = PER_BLOCK.pow(depth);
        let child_span = span / PER_BLOCK;
        if self.overlapping(base, base + span).is_empty() {
            return 0;
        }
        let me = if self.out.is_some() {
            self.tree_blocks[self.used]
        } else {
            0
        };
        self.used += 1;
        let mut ptrs = vec![0u32; PER_BLOCK as usize];
        let runs: Vec<Run> = self.overlapping(base, base + span).to_vec();
        let mut last_child = None;
        for r in &runs {
            let lo = r.logical.max(base);
            let hi = (r.logical + r.len).min(base + span);
            if depth == 1 {
                for l in lo..hi {
                    ptrs[(l - base) as usize] = (r.physical + (l - r.logical)) as u32;
                }
                continue;
            }
            for k in (lo - base) / child_span..=(hi - 1 - base) / child_span {
                if last_child == Some(k) {
                    continue;
                }
                last_child = Some(k);
                ptrs[k as usize] = self.node(depth - 1, base + k * child_span) as u32;
            }
        }
        if let Some(out) = &mut self.out {
            let bytes = ptrs.iter().flat_map(|p| p.to_le_bytes()).collect();
            out.push((me, bytes));
        }
        me
    }
}

/// Indirect blocks needed to map `runs` (sorted by logical block, not
/// overlapping, all below [`MAX_BLOCKS`]).
pub fn blocks_needed(runs: &[Run]) -> usize {
    let mut w = Walk {
        runs,
        tree_blocks: &[],
        used: 0,
        out: None,
    };
    for (_, base, depth) in TREES {
        w.node(depth, base);
    }
    w.used
}

/// Build the map: the 60-byte `i_block` and the indirect blocks, placed at
/// `tree_blocks` (exactly [`blocks_needed`] of them, in pre-order).
pub fn build(runs: &[Run], tree_blocks: &[u64]) -> ([u8; 60], Vec<(u64, Vec<u8>)>) {
    assert_eq!(
        tree_blocks.len(),
        blocks_needed(runs),
        "planner reserved the indirect blocks"
    );
    let mut root = [0u8; 60];
    for r in runs.iter().take_while(|r| r.logical < DIRECT) {
        for l in r.logical..(r.logical + r.len).min(DIRECT) {
            let p = (r.physical + (l - r.logical)) as u32;
            root[l as usize * 4..l as usize * 4 + 4].copy_from_slice(&p.to_le_bytes());
        }
    }
    let mut w = Walk {
        runs,
        tree_blocks,
        used: 0,
        out: Some(Vec::new()),
    };
    for (slot, base, depth) in TREES {
        let b = w.node(depth, base) as u32;
        root[slot * 4..slot * 4 + 4].copy_from_slice(&b.to_le_bytes());
    }
    let mut out = w.out.unwrap_or_default();
    out.sort_by_key(|(b, _)| *b);
    (root, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptr(b: &[u8], i: usize) -> u32 {
        u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
    }

    #[test]
    fn small_files_need_no_indirect_block() {
        let runs = [Run {
            logical: 0,
            physical: 100,
            len: 12,
        }];
        assert_eq!(blocks_needed(&runs), 0);
        let (root, blocks) = build(&runs, &[]);
        assert!(blocks.is_empty());
        assert_eq!(ptr(&root, 0), 100);
        assert_eq!(ptr(&root, 11), 111);
        assert_eq!(ptr(&root, 12), 0);
    }

    #[test]
    fn dense_and_sparse_files_map_through_every_level() {
        // 2,000 dense blocks: direct, the IND, then a DIND with 1 IND.
        let dense = [Run {
            logical: 0,
            physical: 5000,
            len: 2000,
        }];
        assert_eq!(blocks_needed(&dense), 3);
        let (root, blocks) = build(&dense, &[10, 11, 12]);
        assert_eq!(
            (ptr(&root, 12), ptr(&root, 13), ptr(&root, 14)),
            (10, 11, 0)
        );
        assert_eq!(ptr(&blocks[0].1, 0), 5012);
        assert_eq!(ptr(&blocks[1].1, 0), 12, "the DIND points at its IND");
        assert_eq!(ptr(&blocks[2].1, 0), 5000 + 1036);
        assert_eq!(ptr(&blocks[2].1, 2000 - 1036), 0, "beyond the file: a hole");

        // One block far into the triple-indirect range, one in the double.
        let far = DIRECT + PER_BLOCK + PER_BLOCK * PER_BLOCK + 3 * PER_BLOCK * PER_BLOCK + 7;
        let sparse = [
            Run {
                logical: 2000,
                physical: 77,
                len: 1,
            },
            Run {
                logical: far,
                physical: 88,
                len: 1,
            },
        ];
        // DIND + IND; TIND + DIND + IND.
        assert_eq!(blocks_needed(&sparse), 5);
        let (root, blocks) = build(&sparse, &[1, 2, 3, 4, 5]);
        assert_eq!((ptr(&root, 12), ptr(&root, 13), ptr(&root, 14)), (0, 1, 3));
        assert_eq!(ptr(&blocks[1].1, 2000 - 1036), 77);
        let (tind, dind, ind) = (&blocks[2], &blocks[3], &blocks[4]);
        assert_eq!((tind.0, dind.0, ind.0), (3, 4, 5));
        assert_eq!(ptr(&tind.1, 3), 4);
        assert_eq!(ptr(&dind.1, 0), 5);
        assert_eq!(ptr(&ind.1, 7), 88);
        assert_eq!(ptr(&ind.1, 6), 0);
    }
}
