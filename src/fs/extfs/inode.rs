//! The 256-byte ext inode record: fields by offset, nanosecond timestamps
//! with epoch bits, and the checksum `metadata_csum` adds.

use crate::fs::crc32c::crc32c_raw;

/// `i_extra_isize`: the extra fields through `i_crtime_extra`.
pub const EXTRA_ISIZE: u16 = 32;
/// Root directory.
pub const ROOT_INO: u32 = 2;
/// The journal.
pub const JOURNAL_INO: u32 = 8;
/// `lost+found` when ocidisk makes it.
pub const LPF_INO: u32 = 11;
/// First inode for files.
pub const FIRST_INO: u32 = 11;
/// `EXT4_EXTENTS_FL`.
pub const EXTENTS_FL: u32 = 0x0008_0000;
/// `EXT4_INDEX_FL` (an htree directory).
pub const INDEX_FL: u32 = 0x0000_1000;

/// An inode's checksum seed (`metadata_csum`).
pub fn inode_seed(fs_seed: u32, ino: u32) -> u32 {
    crc32c_raw(crc32c_raw(fs_seed, &ino.to_le_bytes()), &0u32.to_le_bytes())
}

/// Timestamp seconds and the `_extra` field (nanoseconds and epoch bits).
pub fn time_fields(secs: i64, nsec: u32) -> (u32, u32) {
    let low = secs as i32;
    let epoch = ((secs - i64::from(low)) >> 32) as u32 & 3;
    (low as u32, (nsec << 2) | epoch)
}

/// One inode being filled in.
pub struct InodeRecord {
    /// The raw record.
    pub bytes: [u8; 256],
}

impl InodeRecord {
    /// A zeroed record with `i_extra_isize` set.
    pub fn new() -> InodeRecord {
        let mut bytes = [0u8; 256];
        bytes[0x80..0x82].copy_from_slice(&EXTRA_ISIZE.to_le_bytes());
        InodeRecord { bytes }
    }

    /// Set a 16-bit field.
    pub fn u16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Set a 32-bit field.
    pub fn u32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// OR bits into `i_flags`.
    pub fn add_flags(&mut self, flags: u32) {
        let old = u32::from_le_bytes(self.bytes[0x20..0x24].try_into().expect("4 bytes"));
        self.u32(0x20, old | flags);
    }

    /// Fill in the checksum (with `metadata_csum`; `fs_seed` `None`
    /// without).
    pub fn seal(&mut self, fs_seed: Option<u32>, ino: u32) {
        let Some(fs_seed) = fs_seed else { return };
        self.bytes[0x7C..0x7E].fill(0);
        self.bytes[0x82..0x84].fill(0);
        let c = crc32c_raw(inode_seed(fs_seed, ino), &self.bytes);
        self.u16(0x7C, c as u16);
        self.u16(0x82, (c >> 16) as u16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_nanoseconds_and_epoch() {
        assert_eq!(time_fields(5, 7), (5, 7 << 2));
        let (low, extra) = time_fields(1 << 32, 0); // 2106
        assert_eq!((low, extra), (0, 1));
        let (low, extra) = time_fields(-1, 0);
        assert_eq!((low, extra & 3), (u32::MAX, 0));
    }

    #[test]
    fn only_checksummed_records_get_a_checksum() {
        let mut a = InodeRecord::new();
        a.seal(None, 12);
        assert_eq!(&a.bytes[0x7C..0x7E], &[0, 0]);
        a.seal(Some(7), 12);
        assert_ne!(&a.bytes[0x7C..0x7E], &[0, 0]);
    }
}
