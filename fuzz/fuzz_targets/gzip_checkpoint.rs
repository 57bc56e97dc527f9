#![no_main]
//! See `ocidisk_fuzz::gzip_checkpoint`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ocidisk_fuzz::gzip_checkpoint(data));
