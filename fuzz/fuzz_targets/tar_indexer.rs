#![no_main]
//! Arbitrary bytes into the tar indexer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ocidisk_fuzz::tar_indexer(data));
