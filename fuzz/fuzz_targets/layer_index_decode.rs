#![no_main]
//! See `ocidisk_fuzz::layer_index_decode`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ocidisk_fuzz::layer_index_decode(data));
