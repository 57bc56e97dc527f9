#![no_main]
//! See `ocidisk_fuzz::virtio_blk_request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ocidisk_fuzz::virtio_blk_request(data));
