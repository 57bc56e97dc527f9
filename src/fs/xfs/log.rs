//! The internal log as mkfs.xfs leaves it: one record at block 0, cycle 1,
//! holding an unmount operation, and zeros after it, so that the kernel
//! and xfs_repair find a cleanly unmounted log.

use super::disk::{be16, be32, be64};
use super::geometry::SECTOR;

/// `XLOG_HEADER_MAGIC_NUM`.
const MAGIC: u32 = 0xfeed_babe;
/// The transaction id mkfs writes (`XLOG_UNMOUNT_TYPE` record).
const TID: u32 = 0xb0c0_d0d0;

/// The log's first two sectors: the record header and its one data
/// sector.
pub fn unmount_record(uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; 2 * SECTOR as usize];
    be32(&mut b, 0, MAGIC);
    be32(&mut b, 4, 1); // h_cycle
    be32(&mut b, 8, 2); // h_version
    be32(&mut b, 12, SECTOR as u32); // h_len: one sector of data
    be64(&mut b, 16, 1 << 32); // h_lsn: cycle 1, block 0
    be64(&mut b, 24, 1 << 32); // h_tail_lsn
    be32(&mut b, 36, u32::MAX); // h_prev_block
    be32(&mut b, 40, 1); // h_num_logops
    be32(&mut b, 44, TID); // h_cycle_data[0]: the word the cycle replaced
    be32(&mut b, 300, 1); // h_fmt: XLOG_FMT_LINUX_LE
    b[304..320].copy_from_slice(uuid);
    be32(&mut b, 320, 32 << 10); // h_size: the log buffer size
    // The data sector: an operation header whose first word (the tid)
    // carries the cycle number, then the unmount payload.
    let d = SECTOR as usize;
    be32(&mut b, d, 1);
    be32(&mut b, d + 4, 8); // oh_len
    b[d + 8] = 0xaa; // oh_clientid: XFS_LOG
    b[d + 9] = 0x20; // oh_flags: XLOG_UNMOUNT_TRANS
    be16(&mut b, d + 12, 0x6e55); // XLOG_UNMOUNT_TYPE
    b
}
