#![no_main]
//! A tar into the merged tree and every filesystem writer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ocidisk_fuzz::tar_tree_fs(data));
