//! The checksum primitive of ext4's `metadata_csum`, of jbd2 and of XFS v5
//! metadata: CRC32C updated from a seed without the final inversion, as the
//! kernel's `ext4_chksum()` and `crc32c()` compute it.

/// `crc32c(seed, data)` the way the kernel chains it: no pre- or
/// post-inversion beyond what the seed carries.
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_like_the_kernel() {
        // The standard CRC32C of "123456789" is 0xE3069283; the kernel's raw
        // form started from ~0 is its inversion.
        assert_eq!(crc32c_raw(!0, b"123456789"), !0xE306_9283);
        let whole = crc32c_raw(7, b"hello world");
        let parts = crc32c_raw(crc32c_raw(7, b"hello "), b"world");
        assert_eq!(whole, parts);
    }
}
