//! Big-endian field writers and the v5 checksum every XFS metadata
//! structure carries: the standard CRC32C of the structure with its
//! checksum field zeroed, stored little-endian.

/// Put a big-endian `u16` at `at`.
pub fn be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Put a big-endian `u32` at `at`.
pub fn be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Put a big-endian `u64` at `at`.
pub fn be64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Checksum `b` with its CRC field at `at` (`xfs_update_cksum`).
pub fn set_crc(b: &mut [u8], at: usize) {
    b[at..at + 4].fill(0);
    let crc = crc32c::crc32c(b);
    b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// `NULLAGBLOCK`, `NULLAGINO`: "none" in 32-bit AG-relative fields.
pub const NULL32: u32 = u32::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_standard_crc32c_little_endian_over_the_zeroed_field() {
        let mut b = b"1234XXXX56789".to_vec();
        set_crc(&mut b, 4);
        let mut z = b.clone();
        z[4..8].fill(0);
        assert_eq!(
            u32::from_le_bytes(b[4..8].try_into().unwrap()),
            crc32c::crc32c(&z)
        );
    }
}
