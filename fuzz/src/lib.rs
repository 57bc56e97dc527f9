//! What the fuzz targets run, shared with `tests/fuzz_corpus.rs`, which
//! replays every committed corpus file through the same functions with
//! stable `cargo test`. Each function panics only on a broken invariant.

use std::io::Write;

use ocidisk::digest::Digest;
use ocidisk::fs::{self, Filesystem, FsOptions};
use ocidisk::layer_index::{Access, LayerIndex};
use ocidisk::tar::{TarEntry, TarIndexer, check_map};
use ocidisk::tree::Tree;

/// Index `data` as a tar stream, fed in pieces whose size the first byte
/// picks (so that block boundaries fall everywhere). `None` if the stream
/// is refused; the entries, checked, if it is accepted.
pub fn index(data: &[u8]) -> Option<Vec<TarEntry>> {
    let (chunk, tar) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c).max(1) * 7, rest),
        None => (1, data),
    };
    let mut ix = TarIndexer::new();
    for piece in tar.chunks(chunk) {
        if ix.write_all(piece).is_err() {
            return None;
        }
    }
    let entries = ix.finish().ok()?;
    for e in &entries {
        // Every entry's data lies inside the stream.
        let end = e.data_offset.checked_add(e.data_len);
        assert!(
            end.is_some_and(|end| end <= tar.len() as u64),
            "data of {:?} runs past the stream",
            e.path
        );
        if let Some(s) = &e.sparse {
            let total = check_map(s, e.size).expect("an accepted sparse map is valid");
            assert_eq!(total, e.data_len, "sparse map and stored length agree");
        }
        assert!(e.mtime_nsec < 1_000_000_000, "nanoseconds below a second");
    }
    Some(entries)
}

/// Fuzz target `tar_indexer`: arbitrary bytes into the tar indexer.
pub fn tar_indexer(data: &[u8]) {
    let _ = index(data);
}

/// Fuzz target `tar_tree_fs`: an accepted tar becomes a one-layer image,
/// its merged tree and then each filesystem (ext4, ext3, xfs), read-only
/// and writable; every
/// image the writers produce must pass `FsImage::validate`.
pub fn tar_tree_fs(data: &[u8]) {
    let Some(entries) = index(data) else {
        return;
    };
    let digest = Digest::sha256_of(data);
    let layer = LayerIndex {
        layer: digest.clone(),
        diff_id: digest.clone(),
        tar_size: data.len() as u64,
        entries,
        access: Access::Tar,
        spans: Vec::new(),
    };
    let Ok(tree) = Tree::flatten(&[layer]) else {
        return;
    };
    for filesystem in Filesystem::ALL {
        for read_only in [true, false] {
            let opts = FsOptions {
                filesystem,
                size: None,
                read_only,
                uuid: None,
                seed: None,
            }
            .for_image(&digest);
            if let Ok(image) = fs::plan(&tree, &opts) {
                image
                    .validate()
                    .expect("a planned filesystem is consistent");
            }
        }
    }
}
