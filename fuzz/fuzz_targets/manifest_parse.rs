#![no_main]
//! See `ocidisk_fuzz::manifest_parse`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ocidisk_fuzz::manifest_parse(data));
