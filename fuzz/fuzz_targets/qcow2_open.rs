#![no_main]
//! See `ocidisk_fuzz::qcow2_open`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ocidisk_fuzz::qcow2_open(data));
