//! Replays every committed fuzz corpus file (`fuzz/corpus/TARGET/*`)
//! through the functions the fuzz targets run, with stable `cargo test`:
//! what the fuzzer once found stays fixed.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(n >= 10, "{target}: only {n} corpus files");
}

#[test]
fn tar_indexer_corpus() {
    replay("tar_indexer", targets::tar_indexer);
}

#[test]
fn tar_tree_fs_corpus() {
    replay("tar_tree_fs", targets::tar_tree_fs);
}
