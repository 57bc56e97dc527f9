//! Builds `init/ocidisk-init.c`, the static PID 1 that `--init` puts on a
//! disk at /.ocidisk/init, for x86-64 images: with `musl-gcc -static`
//! (about 60 KiB; scripts/setup.sh installs musl-tools) or else
//! `cc -static` (glibc, about 700 KiB). Without either, ocidisk still
//! builds and `--init` reports that it has no init.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "init/ocidisk-init.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=OCIDISK_INIT_CC");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bin = out.join("ocidisk-init-x86_64");
    let host_x86 = std::env::var("HOST").is_ok_and(|h| h.starts_with("x86_64-"));
    let mut compilers: Vec<String> = std::env::var("OCIDISK_INIT_CC").into_iter().collect();
    if host_x86 {
        compilers.extend(["musl-gcc".into(), "cc".into(), "gcc".into()]);
    }
    let mut built = false;
    for cc in &compilers {
        let ok = Command::new(cc)
            .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&bin)
            .arg(src)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            built = true;
            break;
        }
    }
    if !built {
        println!(
            "cargo:warning=no static C compiler for {src} (tried {compilers:?}); --init will be unavailable"
        );
        std::fs::write(&bin, b"").expect("write an empty init placeholder in OUT_DIR");
    }
}
