#![no_main]
//! See `ocidisk_fuzz::toc_parse`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ocidisk_fuzz::toc_parse(data));
