//! The layer indexer and the merged tree against the generator's oracle:
//! index every generated layer (in each compression, through the same
//! function pull uses for cached blobs), flatten, and compare every field of
//! every path, including file contents read back through the index offsets.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::imagegen::{self, Compression, Kind, Oracle, OracleEntry};
use ocidisk::Digest;
use ocidisk::layer_index::{LayerIndex, index_blob};
use ocidisk::source::manifest::Compression as Comp;
use ocidisk::tree::{NodeId, NodeKind, Tree};
use sha2::Digest as _;

/// Index the layers as blobs on disk, as `pull` does for cached blobs.
fn index_layers(layers: &[imagegen::LayerSpec], c: Compression) -> (Vec<LayerIndex>, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let mut indexes = Vec::new();
    let mut tars = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let built = imagegen::build_layer(l, c);
        let path = dir.path().join(format!("layer{i}"));
        std::fs::write(&path, &built.blob).unwrap();
        let comp = match c {
            Compression::None => Comp::None,
            Compression::Gzip => Comp::Gzip,
            Compression::Zstd => Comp::Zstd,
        };
        let digest: Digest = built.digest.parse().unwrap();
        let diff_id: Digest = built.diff_id.parse().unwrap();
        indexes.push(index_blob(&path, &digest, &diff_id, comp).unwrap());
        tars.push(l.tar());
    }
    (indexes, tars)
}

/// The merged tree as an oracle, file contents read through the index.
fn tree_to_oracle(t: &Tree, tars: &[Vec<u8>]) -> Oracle {
    let refs: HashMap<NodeId, u32> = t.reachable().into_iter().collect();
    let mut paths: BTreeMap<String, NodeId> = BTreeMap::new();
    fn walk(t: &Tree, id: NodeId, path: &str, out: &mut BTreeMap<String, NodeId>) {
        out.insert(
            if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            id,
        );
        if let NodeKind::Dir(children) = &t.nodes[id].kind {
            for (name, &c) in children {
                walk(
                    t,
                    c,
                    &format!("{path}/{}", String::from_utf8(name.clone()).unwrap()),
                    out,
                );
            }
        }
    }
    walk(t, 0, "", &mut paths);
    let mut groups: HashMap<NodeId, u32> = HashMap::new();
    let mut entries = BTreeMap::new();
    for (path, &id) in &paths {
        let n = &t.nodes[id];
        let (kind, size, sha256, target, rdev) = match &n.kind {
            NodeKind::Dir(_) => (Kind::Dir, 0, None, None, None),
            NodeKind::File(f) => {
                let mut content = vec![0u8; f.size as usize];
                for (file_off, tar_off, len) in f.runs() {
                    let src = &tars[f.layer][tar_off as usize..(tar_off + len) as usize];
                    content[file_off as usize..(file_off + len) as usize].copy_from_slice(src);
                }
                (
                    Kind::File,
                    f.size,
                    Some(hex::encode(sha2::Sha256::digest(&content))),
                    None,
                    None,
                )
            }
            NodeKind::Symlink(target) => (
                Kind::Symlink,
                target.len() as u64,
                None,
                Some(String::from_utf8(target.clone()).unwrap()),
                None,
            ),
            NodeKind::CharDevice(a, b) => (Kind::Char, 0, None, None, Some((*a, *b))),
            NodeKind::BlockDevice(a, b) => (Kind::Block, 0, None, None, Some((*a, *b))),
            NodeKind::Fifo => (Kind::Fifo, 0, None, None, None),
        };
        let is_dir = kind == Kind::Dir;
        let nlink = if is_dir {
            let NodeKind::Dir(c) = &n.kind else {
                unreachable!()
            };
            2 + c
                .values()
                .filter(|&&c| matches!(t.nodes[c].kind, NodeKind::Dir(_)))
                .count() as u32
        } else {
            refs[&id]
        };
        let link_group = (!is_dir && refs[&id] > 1).then(|| {
            let next = groups.len() as u32;
            *groups.entry(id).or_insert(next)
        });
        entries.insert(
            path.clone(),
            OracleEntry {
                kind,
                mode: if kind == Kind::Symlink {
                    0o777
                } else {
                    n.meta.mode
                },
                uid: n.meta.uid,
                gid: n.meta.gid,
                mtime: n.meta.mtime,
                mtime_nsec: n.meta.mtime_nsec,
                size,
                sha256,
                target,
                rdev,
                xattrs: n
                    .meta
                    .xattrs
                    .iter()
                    .map(|(k, v)| (String::from_utf8(k.clone()).unwrap(), hex::encode(v)))
                    .collect(),
                link_group,
                nlink,
                implied: n.implied,
            },
        );
    }
    Oracle { entries }
}

#[test]
fn merged_tree_matches_the_oracle_in_every_field() {
    let layers = imagegen::standard_layers();
    let expected = imagegen::oracle(&layers);
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let (indexes, tars) = index_layers(&layers, c);
        let tree = Tree::flatten(&indexes).unwrap();
        let got = tree_to_oracle(&tree, &tars);
        let diffs = imagegen::compare_trees(&expected, &got, &Default::default());
        assert!(
            diffs.is_empty(),
            "{c:?}: {} differences:\n{}",
            diffs.len(),
            diffs.join("\n")
        );
        assert_eq!(got.entries.len(), expected.entries.len());
        // Implied flags agree too (the comparison only uses them to skip metadata).
        for (p, e) in &expected.entries {
            assert_eq!(e.implied, got.entries[p].implied, "{p}");
        }
    }
}

#[test]
fn sharing_and_multiarch_images_flatten_to_their_oracles() {
    for layers in [
        imagegen::sharing_layers(),
        imagegen::multiarch_layers(&imagegen::Platform::linux_arm64()),
    ] {
        let (indexes, tars) = index_layers(&layers, Compression::Gzip);
        let got = tree_to_oracle(&Tree::flatten(&indexes).unwrap(), &tars);
        let diffs = imagegen::compare_trees(&imagegen::oracle(&layers), &got, &Default::default());
        assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    }
}
