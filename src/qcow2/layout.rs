//! The qcow2 v3 on-disk format as far as ocidisk writes it: the header,
//! L1/L2 entries, compressed-cluster descriptors, and where the refcount
//! blocks and table go so that they count themselves.

use super::{Codec, Qcow2Error};

/// `QFI\xfb`.
pub(super) const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Bytes of the header ocidisk writes (v3 with the compression type field,
/// padded to 8).
pub(super) const HEADER_LEN: usize = 112;
/// L1/L2 entry flag: the cluster's refcount is exactly one.
pub(super) const COPIED: u64 = 1 << 63;
/// L2 entry flag: a compressed cluster.
pub(super) const COMPRESSED: u64 = 1 << 62;
/// Host offset bits of an L1 entry or a standard L2 entry.
pub(super) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Incompatible feature bit: the header's compression type field is used.
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// QEMU refuses L1 tables larger than this (`QCOW_MAX_L1_SIZE`).
pub(super) const MAX_L1_BYTES: u64 = 32 << 20;
/// Refcounts are 16 bits (`refcount_order` 4), as qemu-img writes them.
pub(super) const REFCOUNT_ORDER: u32 = 4;
/// The largest refcount a 16-bit entry holds.
pub(super) const MAX_REFCOUNT: u16 = u16::MAX;

/// The device's shape in clusters and tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    /// log2 cluster size.
    pub bits: u32,
    /// Virtual size in bytes.
    pub size: u64,
}

impl Geometry {
    /// The geometry for `size` bytes, if qcow2 can hold it.
    pub(super) fn new(size: u64, bits: u32) -> Result<Geometry, Qcow2Error> {
        let g = Geometry { bits, size };
        let l1_bytes = g.l1_entries() * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Qcow2Error::TooLarge {
                size,
                l1_bytes,
                cluster_size: g.cluster_size(),
                max: MAX_L1_BYTES,
            });
        }
        Ok(g)
    }

    /// Cluster size in bytes.
    pub(super) fn cluster_size(&self) -> u64 {
        1 << self.bits
    }

    /// Entries in one L2 table.
    pub(super) fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// Entries in the L1 table.
    pub(super) fn l1_entries(&self) -> u64 {
        self.size.div_ceil(self.cluster_size() * self.l2_entries())
    }

    /// Clusters the L1 table takes.
    pub(super) fn l1_clusters(&self) -> u64 {
        (self.l1_entries() * 8).div_ceil(self.cluster_size()).max(1)
    }

    /// Guest clusters of the device.
    pub(super) fn guest_clusters(&self) -> u64 {
        self.size.div_ceil(self.cluster_size())
    }

    /// Refcount entries in one refcount block.
    pub(super) fn refcounts_per_block(&self) -> u64 {
        (self.cluster_size() * 8) >> REFCOUNT_ORDER
    }

    /// Where an L2 entry's compressed-size field starts.
    fn csize_shift(&self) -> u32 {
        62 - (self.bits - 8)
    }

    /// The L2 entry of compressed bytes `[offset, offset + len)`.
    pub(super) fn compressed_entry(&self, offset: u64, len: u64) -> u64 {
        let sectors = ((offset + len - 1) >> 9) - (offset >> 9);
        COMPRESSED | offset | (sectors << self.csize_shift())
    }

    /// The host bytes a compressed L2 entry covers: from its offset to the
    /// end of its last 512-byte sector, as QEMU reads and counts them.
    pub(super) fn compressed_range(&self, entry: u64) -> (u64, u64) {
        let shift = self.csize_shift();
        let offset = entry & ((1u64 << shift) - 1);
        let sectors = ((entry & !COMPRESSED & !COPIED) >> shift) + 1;
        (offset, sectors * 512 - (offset & 511))
    }
}

/// The header fields that vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    /// Cluster size and virtual size.
    pub geometry: Geometry,
    /// Host offset of the L1 table.
    pub l1_offset: u64,
    /// Host offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Compression type (zlib unless zstd).
    pub codec: Codec,
}

fn be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn be64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn get64(b: &[u8], at: usize) -> u64 {
    (u64::from(get32(b, at)) << 32) | u64::from(get32(b, at + 4))
}

impl Header {
    /// The header and an empty header-extension list (the end marker).
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN + 8];
        b[0..4].copy_from_slice(&MAGIC);
        be32(&mut b, 4, 3);
        be32(&mut b, 20, self.geometry.bits);
        be64(&mut b, 24, self.geometry.size);
        be32(&mut b, 36, self.geometry.l1_entries() as u32);
        be64(&mut b, 40, self.l1_offset);
        be64(&mut b, 48, self.refcount_table_offset);
        be32(&mut b, 56, self.refcount_table_clusters);
        let zstd = self.codec == Codec::Zstd;
        be64(&mut b, 72, if zstd { INCOMPAT_COMPRESSION } else { 0 });
        be32(&mut b, 96, REFCOUNT_ORDER);
        be32(&mut b, 100, HEADER_LEN as u32);
        b[104] = u8::from(zstd);
        b
    }

    /// Read back a header [`Header::encode`] wrote; anything else (another
    /// version, a backing file, snapshots, encryption, other features or
    /// refcount widths) is refused with the reason.
    pub(super) fn parse(b: &[u8]) -> Result<Header, String> {
        if b.len() < HEADER_LEN + 8 || b[0..4] != MAGIC {
            return Err("no qcow2 magic".into());
        }
        if get32(b, 4) != 3 {
            return Err(format!("version {} (ocidisk writes 3)", get32(b, 4)));
        }
        let bits = get32(b, 20);
        if !(super::MIN_CLUSTER_BITS..=super::MAX_CLUSTER_BITS).contains(&bits) {
            return Err(format!("cluster_bits {bits}"));
        }
        if get64(b, 8) != 0 || get32(b, 32) != 0 || get32(b, 60) != 0 {
            return Err("it has a backing file, encryption or snapshots".into());
        }
        if get32(b, 96) != REFCOUNT_ORDER || get32(b, 100) as usize != HEADER_LEN {
            return Err("refcount width or header length differ".into());
        }
        let incompat = get64(b, 72);
        let codec = match (incompat, b[104]) {
            (0, 0) => Codec::Zlib,
            (INCOMPAT_COMPRESSION, 1) => Codec::Zstd,
            _ => return Err(format!("incompatible features {incompat:#x}")),
        };
        if get64(b, 80) != 0 || get64(b, 88) != 0 {
            return Err("compatible or autoclear features are set".into());
        }
        let geometry =
            Geometry::new(get64(b, 24), bits).map_err(|e| format!("virtual size: {e}"))?;
        if u64::from(get32(b, 36)) != geometry.l1_entries() {
            return Err("L1 size does not match the virtual size".into());
        }
        Ok(Header {
            geometry,
            l1_offset: get64(b, 40),
            refcount_table_offset: get64(b, 48),
            refcount_table_clusters: get32(b, 56),
            codec,
        })
    }
}

/// Refcount blocks for the clusters below `first_free` plus the blocks
/// and table themselves, placed from `first_free` on; the table has room
/// for blocks covering at least `reserve` clusters. Returns (blocks,
/// table clusters).
pub(super) fn refcount_plan(g: &Geometry, first_free: u64, reserve: u64) -> (u64, u64) {
    let per_block = g.refcounts_per_block();
    let per_table_cluster = g.cluster_size() / 8;
    let (mut blocks, mut table) = (1u64, 1u64);
    loop {
        let total = first_free + blocks + table;
        let need_blocks = total.div_ceil(per_block);
        let capacity = need_blocks.max(reserve.div_ceil(per_block));
        let need_table = capacity.div_ceil(per_table_cluster).max(1);
        if (need_blocks, need_table) == (blocks, table) {
            return (blocks, table);
        }
        blocks = need_blocks.max(blocks);
        table = need_table.max(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_entries_round_trip_at_every_cluster_size() {
        for bits in 9..=21 {
            let g = Geometry::new(1 << 30, bits).unwrap();
            // A compressed cluster is shorter than a cluster.
            let most = (1u64 << bits) - 1;
            for (off, len) in [
                (65536u64, 1u64),
                (65536 + 511, 2),
                (1 << 40, most),
                (777, most),
            ] {
                let e = g.compressed_entry(off, len);
                let (o, n) = g.compressed_range(e);
                assert_eq!(o, off);
                assert!(o + n >= off + len && (o + n) % 512 == 0, "bits {bits}");
                assert!(n < off % 512 + len + 512);
            }
        }
    }

    #[test]
    fn header_round_trips_and_refuses_what_it_did_not_write() {
        let h = Header {
            geometry: Geometry::new(10 << 30, 16).unwrap(),
            l1_offset: 5 << 16,
            refcount_table_offset: 7 << 16,
            refcount_table_clusters: 1,
            codec: Codec::Zstd,
        };
        let b = h.encode();
        assert_eq!(Header::parse(&b).unwrap(), h);
        let mut bad = b.clone();
        bad[4..8].copy_from_slice(&2u32.to_be_bytes());
        assert!(Header::parse(&bad).unwrap_err().contains("version 2"));
        let mut bad = b;
        bad[8] = 1;
        assert!(Header::parse(&bad).unwrap_err().contains("backing"));
    }

    #[test]
    fn refcount_blocks_count_themselves() {
        let g = Geometry::new(1 << 30, 9).unwrap();
        // 512-byte clusters: 256 refcounts a block, 64 table entries a cluster.
        let (blocks, table) = refcount_plan(&g, 255, 0);
        assert!((255 + blocks + table) <= blocks * 256);
        assert!(blocks <= table * 64);
        let (_, table) = refcount_plan(&g, 10, 1 << 20);
        assert!(table * 64 * 256 >= 1 << 20);
    }

    #[test]
    fn too_large_for_small_clusters() {
        assert!(matches!(
            Geometry::new(4 << 40, 9),
            Err(Qcow2Error::TooLarge { .. })
        ));
        assert!(Geometry::new(4 << 40, 16).is_ok());
    }
}
