//! The merged tree: an image's layers applied in order, as the OCI image
//! spec's "applying changesets" says, without extracting anything.
//!
//! - `.wh.NAME` removes NAME of lower layers; `DIR/.wh..wh..opq` hides every
//!   lower entry of DIR. Entries of the same layer are never hidden,
//!   whatever their position in the tar.
//! - A file replaces a directory and vice versa; a directory over a
//!   directory takes the new metadata and keeps the children.
//! - Missing parents are created as `0755 root:root` directories with mtime
//!   0 (a parent that exists as a non-directory is replaced, as overlayfs
//!   shows it).
//! - Hard links (to entries of the same or lower layers, also to symlinks)
//!   share one node; a link to a missing path is an error naming both.
//! - Paths are normalised (`./`, leading `/`, repeated `/`); a path that
//!   climbs above `/`, contains NUL, or has a component longer than 255
//!   bytes is an error naming the layer and the entry.
//! - So is what no Linux filesystem can hold, so that every writer gets a
//!   valid tree: a symlink target that is empty, holds NUL or passes
//!   `PATH_MAX`; a device number beyond Linux's 12-bit major and 20-bit
//!   minor; a sparse map out of order, overlapping or past the file's end.
//! - A file with an access ACL gets the permission bits the ACL implies,
//!   as extracting it does (setting the ACL sets them).
//!
//! File nodes say where their bytes are: layer number, offset and length in
//! that layer's uncompressed tar, and the sparse map if any.

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::layer_index::LayerIndex;
use crate::tar::{EntryKind, MAX_PATH, SparseSegment, TarEntry, check_map};

/// Longest name component Linux filesystems accept.
pub const NAME_MAX: usize = 255;

/// Errors flattening layers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    /// A path climbs above the root.
    #[error("layer {layer}: entry {path:?} escapes the root")]
    Escapes {
        /// The layer.
        layer: Digest,
        /// The entry's path.
        path: String,
    },
    /// A path contains NUL.
    #[error("layer {layer}: entry {path:?} contains a NUL byte")]
    Nul {
        /// The layer.
        layer: Digest,
        /// The entry's path.
        path: String,
    },
    /// A name longer than 255 bytes.
    #[error("layer {layer}: entry {path:?} has a name of {len} bytes (the limit is 255)")]
    NameTooLong {
        /// The layer.
        layer: Digest,
        /// The entry's path.
        path: String,
        /// The component's length.
        len: usize,
    },
    /// A hard link to a path that does not exist.
    #[error("layer {layer}: hard link {path:?} points to {target:?}, which does not exist")]
    LinkTargetMissing {
        /// The layer.
        layer: Digest,
        /// The link's path.
        path: String,
        /// Its target.
        target: String,
    },
    /// A hard link to a directory.
    #[error("layer {layer}: hard link {path:?} points to the directory {target:?}")]
    LinkToDirectory {
        /// The layer.
        layer: Digest,
        /// The link's path.
        path: String,
        /// Its target.
        target: String,
    },
    /// A symlink whose target no filesystem can store.
    #[error("layer {layer}: symlink {path:?} has {problem}")]
    BadSymlink {
        /// The layer.
        layer: Digest,
        /// The symlink's path.
        path: String,
        /// What is wrong with the target.
        problem: &'static str,
    },
    /// A device number beyond what Linux represents.
    #[error(
        "layer {layer}: device {path:?} is {major}:{minor}; Linux device numbers go up to \
         {MAX_MAJOR}:{MAX_MINOR}"
    )]
    DeviceNumber {
        /// The layer.
        layer: Digest,
        /// The device's path.
        path: String,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A sparse map that does not describe the file.
    #[error("layer {layer}: file {path:?} has a bad sparse map: {detail}")]
    BadSparseMap {
        /// The layer.
        layer: Digest,
        /// The file's path.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// An entry for the root that is not a directory.
    #[error("layer {layer}: entry {path:?} would replace the root directory")]
    ReplacesRoot {
        /// The layer.
        layer: Digest,
        /// The entry's path.
        path: String,
    },
}

/// Largest device major number Linux has (`dev_t` keeps 12 bits).
pub const MAX_MAJOR: u32 = (1 << 12) - 1;
/// Largest device minor number Linux has (`dev_t` keeps 20 bits).
pub const MAX_MINOR: u32 = (1 << 20) - 1;

/// Why a symlink target is unusable, or `Ok`.
fn check_symlink(target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        Err("an empty target")
    } else if target.contains(&0) {
        Err("a target containing a NUL byte")
    } else if target.len() > MAX_PATH {
        Err("a target longer than PATH_MAX allows (4095 bytes)")
    } else {
        Ok(())
    }
}

/// Index of a node in [`Tree::nodes`].
pub type NodeId = usize;

/// Ownership, permissions, times and xattrs of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Permission bits with setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: i64,
    /// Nanoseconds.
    pub mtime_nsec: u32,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileData {
    /// Logical size.
    pub size: u64,
    /// Which layer (position in the image, bottom = 0).
    pub layer: usize,
    /// Offset of the stored bytes in the layer's uncompressed tar.
    pub offset: u64,
    /// Stored bytes.
    pub len: u64,
    /// For sparse files, where the stored bytes go (stored consecutively).
    pub sparse: Option<Vec<SparseSegment>>,
}

impl FileData {
    /// The file's data as (file offset, tar offset, length) runs; the gaps
    /// between them are holes.
    pub fn runs(&self) -> Vec<(u64, u64, u64)> {
        match &self.sparse {
            None if self.len == 0 => Vec::new(),
            None => vec![(0, self.offset, self.len)],
            Some(segs) => {
                let mut at = self.offset;
                let mut out = Vec::with_capacity(segs.len());
                for s in segs {
                    if s.len > 0 {
                        out.push((s.offset, at, s.len));
                    }
                    at = at.saturating_add(s.len);
                }
                out
            }
        }
    }
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory: children by name, sorted by bytes.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// A regular file.
    File(FileData),
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A character device (major, minor).
    CharDevice(u32, u32),
    /// A block device (major, minor).
    BlockDevice(u32, u32),
    /// A named pipe.
    Fifo,
}

/// One inode of the merged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Metadata.
    pub meta: Metadata,
    /// Kind and content.
    pub kind: NodeKind,
    /// A directory no layer has an entry for.
    pub implied: bool,
}

/// The merged tree. Node 0 is the root. Nodes no longer reachable from the
/// root (replaced or whited out) stay in `nodes` but are never visited.
#[derive(Debug, Clone)]
pub struct Tree {
    /// All nodes.
    pub nodes: Vec<Node>,
}

fn implied_dir() -> Node {
    Node {
        meta: Metadata {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        },
        kind: NodeKind::Dir(BTreeMap::new()),
        implied: true,
    }
}

/// The permission bits an access ACL implies, as setting it on an
/// extracted file does (the kernel's `posix_acl_update_mode`): owner from
/// `ACL_USER_OBJ`, group from `ACL_MASK` (`ACL_GROUP_OBJ` without a mask),
/// others from `ACL_OTHER`. A missing or malformed ACL changes nothing
/// (the writers refuse a malformed one by name).
fn mode_with_acl(mode: u32, xattrs: &[(Vec<u8>, Vec<u8>)]) -> u32 {
    let Some((_, v)) = xattrs
        .iter()
        .find(|(k, _)| k.as_slice() == b"system.posix_acl_access")
    else {
        return mode;
    };
    if v.len() < 4 || !(v.len() - 4).is_multiple_of(8) || v[..4] != 2u32.to_le_bytes() {
        return mode;
    }
    let (mut user, mut group, mut mask, mut other) = (None, None, None, None);
    for e in v[4..].chunks(8) {
        let perm = u32::from(u16::from_le_bytes([e[2], e[3]]) & 7);
        match u16::from_le_bytes([e[0], e[1]]) {
            0x01 => user = Some(perm),
            0x04 => group = Some(perm),
            0x10 => mask = Some(perm),
            0x20 => other = Some(perm),
            _ => {}
        }
    }
    match (user, mask.or(group), other) {
        (Some(u), Some(g), Some(o)) => (mode & 0o7000) | (u << 6) | (g << 3) | o,
        _ => mode,
    }
}

fn meta_of(e: &TarEntry) -> Metadata {
    let mut xattrs = e.xattrs.clone();
    xattrs.sort();
    xattrs.dedup_by(|a, b| a.0 == b.0);
    Metadata {
        mode: mode_with_acl(e.mode & 0o7777, &xattrs),
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        mtime_nsec: e.mtime_nsec,
        xattrs,
    }
}

enum Action {
    Whiteout,
    Opaque,
    Skip,
    Add,
}

impl Tree {
    /// An empty tree: an implied root.
    pub fn new() -> Tree {
        Tree {
            nodes: vec![implied_dir()],
        }
    }

    /// Apply `layers` (bottom first) and return the merged tree.
    pub fn flatten(layers: &[LayerIndex]) -> Result<Tree, TreeError> {
        let mut t = Tree::new();
        t.nodes
            .reserve(layers.iter().map(|l| l.entries().len()).sum::<usize>());
        for (i, l) in layers.iter().enumerate() {
            t.apply(i, l)?;
        }
        Ok(t)
    }

    /// The node at `path` (components), if any.
    pub fn lookup<C: AsRef<[u8]>>(&self, components: &[C]) -> Option<NodeId> {
        let mut cur = 0;
        for c in components {
            match &self.nodes[cur].kind {
                NodeKind::Dir(children) => cur = *children.get(c.as_ref())?,
                _ => return None,
            }
        }
        Some(cur)
    }

    fn children_mut(&mut self, id: NodeId) -> &mut BTreeMap<Vec<u8>, NodeId> {
        match &mut self.nodes[id].kind {
            NodeKind::Dir(c) => c,
            _ => unreachable!("caller checked that {id} is a directory"),
        }
    }

    fn is_dir(&self, id: NodeId) -> bool {
        matches!(self.nodes[id].kind, NodeKind::Dir(_))
    }

    /// The directory for `components`, creating implied directories (and
    /// replacing non-directories) on the way.
    fn make_dirs(&mut self, components: &[&[u8]]) -> NodeId {
        let mut cur = 0;
        for &c in components {
            let existing = match &self.nodes[cur].kind {
                NodeKind::Dir(children) => children.get(c).copied(),
                _ => unreachable!("make_dirs only descends into directories"),
            };
            cur = match existing {
                Some(id) if self.is_dir(id) => id,
                _ => {
                    self.nodes.push(implied_dir());
                    let id = self.nodes.len() - 1;
                    self.children_mut(cur).insert(c.to_vec(), id);
                    id
                }
            };
        }
        cur
    }

    fn remove(&mut self, components: &[&[u8]]) {
        if let Some((&name, parent)) = components.split_last()
            && let Some(p) = self.lookup(parent)
            && self.is_dir(p)
        {
            self.children_mut(p).remove(name);
        }
    }

    fn apply(&mut self, layer_no: usize, layer: &LayerIndex) -> Result<(), TreeError> {
        // Whiteouts hide lower layers only: apply them all first. Paths are
        // normalised in each pass rather than kept, so that memory stays
        // linear in the entries however deep the paths go.
        let action = |comps: &[&[u8]]| match comps.last() {
            Some(&n) if n == b".wh..wh..opq" => Action::Opaque,
            Some(n) if n.starts_with(b".wh..wh.") => Action::Skip,
            Some(n) if n.starts_with(b".wh.") => Action::Whiteout,
            _ => Action::Add,
        };
        for e in layer.entries() {
            // Only a path with ".wh." in it can be a whiteout.
            if !e.path.windows(4).any(|w| w == b".wh.") {
                continue;
            }
            let mut comps = normalize(&e.path, layer.layer())?;
            match action(&comps) {
                Action::Whiteout => {
                    if let Some(name) = comps.pop() {
                        comps.push(&name[4..]);
                        self.remove(&comps);
                    }
                }
                Action::Opaque => {
                    let dir = &comps[..comps.len() - 1];
                    let id = self.make_dirs(dir);
                    self.children_mut(id).clear();
                }
                Action::Skip | Action::Add => {}
            }
        }
        let mut last = LastDir::default();
        for e in layer.entries() {
            let comps = normalize(&e.path, layer.layer())?;
            if matches!(action(&comps), Action::Add) {
                self.add(layer_no, layer, e, &comps, &mut last)?;
            }
        }
        Ok(())
    }

    fn add(
        &mut self,
        layer_no: usize,
        layer: &LayerIndex,
        e: &TarEntry,
        comps: &[&[u8]],
        last: &mut LastDir,
    ) -> Result<(), TreeError> {
        let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
        let Some((name, parent)) = comps.split_last() else {
            // The root itself.
            if e.kind != EntryKind::Dir {
                return Err(TreeError::ReplacesRoot {
                    layer: layer.layer().clone(),
                    path: show(&e.path),
                });
            }
            self.nodes[0].meta = meta_of(e);
            self.nodes[0].implied = false;
            return Ok(());
        };
        let node = match e.kind {
            EntryKind::Hardlink => {
                let target = normalize(&e.link, layer.layer())?;
                let id = self
                    .lookup(&target)
                    .ok_or_else(|| TreeError::LinkTargetMissing {
                        layer: layer.layer().clone(),
                        path: show(&e.path),
                        target: show(&e.link),
                    })?;
                if self.is_dir(id) {
                    return Err(TreeError::LinkToDirectory {
                        layer: layer.layer().clone(),
                        path: show(&e.path),
                        target: show(&e.link),
                    });
                }
                if target.as_slice() == comps {
                    return Ok(()); // a link to itself changes nothing
                }
                let dir = self.dir_of(parent, last);
                self.link(dir, name, id, last);
                return Ok(());
            }
            EntryKind::Dir => {
                let dir = self.dir_of(parent, last);
                let existing = match &self.nodes[dir].kind {
                    NodeKind::Dir(c) => c.get(*name).copied(),
                    _ => None,
                };
                if let Some(id) = existing.filter(|id| self.is_dir(*id)) {
                    self.nodes[id].meta = meta_of(e);
                    self.nodes[id].implied = false;
                    return Ok(());
                }
                Node {
                    meta: meta_of(e),
                    kind: NodeKind::Dir(BTreeMap::new()),
                    implied: false,
                }
            }
            EntryKind::File => Node {
                meta: {
                    if let Some(segs) = &e.sparse {
                        let total =
                            check_map(segs, e.size).map_err(|detail| TreeError::BadSparseMap {
                                layer: layer.layer().clone(),
                                path: show(&e.path),
                                detail,
                            })?;
                        if total != e.data_len {
                            return Err(TreeError::BadSparseMap {
                                layer: layer.layer().clone(),
                                path: show(&e.path),
                                detail: format!(
                                    "its segments hold {total} bytes, the entry {}",
                                    e.data_len
                                ),
                            });
                        }
                    }
                    meta_of(e)
                },
                kind: NodeKind::File(FileData {
                    size: e.size,
                    layer: layer_no,
                    offset: e.data_offset,
                    len: e.data_len,
                    sparse: e.sparse.clone(),
                }),
                implied: false,
            },
            EntryKind::Symlink => Node {
                meta: {
                    check_symlink(&e.link).map_err(|problem| TreeError::BadSymlink {
                        layer: layer.layer().clone(),
                        path: show(&e.path),
                        problem,
                    })?;
                    meta_of(e)
                },
                kind: NodeKind::Symlink(e.link.clone()),
                implied: false,
            },
            EntryKind::CharDevice | EntryKind::BlockDevice
                if e.dev_major > MAX_MAJOR || e.dev_minor > MAX_MINOR =>
            {
                return Err(TreeError::DeviceNumber {
                    layer: layer.layer().clone(),
                    path: show(&e.path),
                    major: e.dev_major,
                    minor: e.dev_minor,
                });
            }
            EntryKind::CharDevice => Node {
                meta: meta_of(e),
                kind: NodeKind::CharDevice(e.dev_major, e.dev_minor),
                implied: false,
            },
            EntryKind::BlockDevice => Node {
                meta: meta_of(e),
                kind: NodeKind::BlockDevice(e.dev_major, e.dev_minor),
                implied: false,
            },
            EntryKind::Fifo => Node {
                meta: meta_of(e),
                kind: NodeKind::Fifo,
                implied: false,
            },
        };
        let dir = self.dir_of(parent, last);
        self.nodes.push(node);
        let id = self.nodes.len() - 1;
        self.link(dir, name, id, last);
        Ok(())
    }

    /// [`Tree::make_dirs`] through `last`.
    fn dir_of(&mut self, parent: &[&[u8]], last: &mut LastDir) -> NodeId {
        if let Some(id) = last.id
            && last.path.len() == parent.len()
            && last
                .path
                .iter()
                .zip(parent)
                .all(|(a, b)| a.as_slice() == *b)
        {
            return id;
        }
        let id = self.make_dirs(parent);
        last.path.clear();
        last.path.extend(parent.iter().map(|c| c.to_vec()));
        last.id = Some(id);
        id
    }

    /// Name `id` `name` in directory `dir`. A directory it replaces takes
    /// its subtree away, maybe the one `last` names.
    fn link(&mut self, dir: NodeId, name: &[u8], id: NodeId, last: &mut LastDir) {
        if let Some(old) = self.children_mut(dir).insert(name.to_vec(), id)
            && old != id
            && self.is_dir(old)
        {
            last.id = None;
        }
    }

    /// Reachable nodes in a deterministic order (breadth first, children by
    /// name), each once, with the number of directory entries naming it.
    /// The root comes first.
    pub fn reachable(&self) -> Vec<(NodeId, u32)> {
        let mut refs = vec![0u32; self.nodes.len()];
        let mut order = vec![0];
        refs[0] = 1;
        let mut i = 0;
        while i < order.len() {
            if let NodeKind::Dir(children) = &self.nodes[order[i]].kind {
                for &c in children.values() {
                    if refs[c] == 0 {
                        order.push(c);
                    }
                    refs[c] += 1;
                }
            }
            i += 1;
        }
        order.into_iter().map(|id| (id, refs[id])).collect()
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

/// The directory the last entry went into, by its components: a tar
/// stream lists a directory's entries together, so most entries go where
/// the one before went, without a walk from the root.
#[derive(Default)]
struct LastDir {
    path: Vec<Vec<u8>>,
    id: Option<NodeId>,
}

/// Split a tar path into components: drop empty and `.` parts, resolve `..`
/// (an error above the root), refuse NUL and names over [`NAME_MAX`].
pub fn normalize<'a>(path: &'a [u8], layer: &Digest) -> Result<Vec<&'a [u8]>, TreeError> {
    let show = || String::from_utf8_lossy(path).into_owned();
    if path.contains(&0) {
        return Err(TreeError::Nul {
            layer: layer.clone(),
            path: show(),
        });
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(TreeError::Escapes {
                        layer: layer.clone(),
                        path: show(),
                    });
                }
            }
            name if name.len() > NAME_MAX => {
                return Err(TreeError::NameTooLong {
                    layer: layer.clone(),
                    path: show(),
                    len: name.len(),
                });
            }
            name => out.push(name),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> TarEntry {
        TarEntry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 7,
            mtime_nsec: 0,
            size: 0,
            link: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
            data_offset: 0,
            data_len: 0,
            sparse: None,
        }
    }

    fn symlink(path: &str, target: &str) -> TarEntry {
        let mut e = entry(path, EntryKind::Symlink);
        e.link = target.as_bytes().to_vec();
        e
    }

    fn link(path: &str, target: &str) -> TarEntry {
        let mut e = entry(path, EntryKind::Hardlink);
        e.link = target.as_bytes().to_vec();
        e
    }

    /// A layer of `entries` (planning reads only the entries; the span
    /// covers their data so the index is consistent).
    fn layer(n: u8, entries: Vec<TarEntry>) -> LayerIndex {
        let end = entries
            .iter()
            .map(|e| e.data_offset + e.data_len)
            .max()
            .unwrap_or(0);
        let span = crate::layer_index::Span {
            start: 0,
            sha256: [0; 32],
            cend: end + 1,
        };
        LayerIndex::new(
            Digest::sha256_of(&[n]),
            Digest::sha256_of(&[n, n]),
            end + 1,
            entries,
            crate::layer_index::Access::Tar,
            vec![span],
        )
        .unwrap()
    }

    fn paths(t: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(t: &Tree, id: NodeId, prefix: &str, out: &mut Vec<String>) {
            if let NodeKind::Dir(c) = &t.nodes[id].kind {
                for (name, &child) in c {
                    let p = format!("{prefix}/{}", String::from_utf8_lossy(name));
                    out.push(p.clone());
                    walk(t, child, &p, out);
                }
            }
        }
        walk(t, 0, "", &mut out);
        out
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_only_lower_layers() {
        let l1 = layer(
            1,
            vec![
                entry("a/", EntryKind::Dir),
                entry("a/x", EntryKind::File),
                entry("a/y", EntryKind::File),
                entry("b/", EntryKind::Dir),
                entry("b/old", EntryKind::File),
                entry("gone", EntryKind::File),
            ],
        );
        let l2 = layer(
            2,
            vec![
                entry("b/new", EntryKind::File), // before the opaque marker
                entry("b/.wh..wh..opq", EntryKind::File),
                entry("a/.wh.x", EntryKind::File),
                entry("./gone/", EntryKind::Dir), // a dir replaces a file
                entry(".wh.gone", EntryKind::File),
                entry("deep/er/file", EntryKind::File), // implied parents
            ],
        );
        let t = Tree::flatten(&[l1, l2]).unwrap();
        assert_eq!(
            paths(&t),
            [
                "/a",
                "/a/y",
                "/b",
                "/b/new",
                "/deep",
                "/deep/er",
                "/deep/er/file",
                "/gone"
            ]
        );
        let deep = t.lookup(&[b"deep".to_vec()]).unwrap();
        assert!(t.nodes[deep].implied && t.nodes[deep].meta.mode == 0o755);
        assert!(t.is_dir(t.lookup(&[b"gone".to_vec()]).unwrap()));
    }

    #[test]
    fn what_no_filesystem_holds_is_refused_by_the_tree() {
        let flat = |e: TarEntry| Tree::flatten(&[layer(1, vec![e])]).unwrap_err();
        for (target, problem) in [
            (&b"a\0b"[..], "NUL"),
            (b"", "empty"),
            (&[b'x'; MAX_PATH + 1][..], "PATH_MAX"),
        ] {
            let mut e = entry("s", EntryKind::Symlink);
            e.link = target.to_vec();
            let err = flat(e);
            assert!(matches!(err, TreeError::BadSymlink { .. }), "{err}");
            assert!(err.to_string().contains(problem), "{err}");
        }
        for (major, minor) in [(MAX_MAJOR + 1, 0), (0, MAX_MINOR + 1)] {
            let mut e = entry("d", EntryKind::BlockDevice);
            (e.dev_major, e.dev_minor) = (major, minor);
            assert!(matches!(flat(e), TreeError::DeviceNumber { .. }));
        }
        let mut e = entry("f", EntryKind::File);
        e.size = 100;
        e.data_len = 8;
        e.sparse = Some(vec![
            SparseSegment { offset: 50, len: 4 },
            SparseSegment { offset: 10, len: 4 },
        ]);
        assert!(matches!(flat(e), TreeError::BadSparseMap { .. }));
    }

    #[test]
    fn hardlinks_share_a_node_and_survive_replacement_of_one_name() {
        let l1 = layer(
            1,
            vec![
                entry("f", EntryKind::File),
                link("g", "f"),
                link("./h", "/f"),
                symlink("s", "f"),
                link("s2", "s"),
            ],
        );
        let l2 = layer(2, vec![entry("f", EntryKind::File)]);
        let t = Tree::flatten(&[l1, l2]).unwrap();
        let g = t.lookup(&[b"g".to_vec()]).unwrap();
        assert_eq!(t.lookup(&[b"h".to_vec()]), Some(g));
        assert_ne!(t.lookup(&[b"f".to_vec()]), Some(g));
        let counts: std::collections::HashMap<_, _> = t.reachable().into_iter().collect();
        assert_eq!(counts[&g], 2);
        assert_eq!(counts[&t.lookup(&[b"s".to_vec()]).unwrap()], 2);
    }

    #[test]
    fn bad_paths_and_links_name_layer_and_entry() {
        let bad = |e: TarEntry| Tree::flatten(&[layer(1, vec![e])]).unwrap_err();
        assert!(matches!(
            bad(entry("../etc/passwd", EntryKind::File)),
            TreeError::Escapes { .. }
        ));
        assert!(matches!(
            bad(entry("a/../../x", EntryKind::File)),
            TreeError::Escapes { .. }
        ));
        assert!(matches!(
            bad(entry("a\0b", EntryKind::File)),
            TreeError::Nul { .. }
        ));
        let long = format!("d/{}", "n".repeat(256));
        assert!(matches!(
            bad(entry(&long, EntryKind::File)),
            TreeError::NameTooLong { len: 256, .. }
        ));
        let e = bad(link("a", "missing"));
        assert!(
            e.to_string().contains("\"a\"") && e.to_string().contains("missing"),
            "{e}"
        );
        let e = Tree::flatten(&[layer(1, vec![entry("d/", EntryKind::Dir), link("l", "d")])]);
        assert!(matches!(e, Err(TreeError::LinkToDirectory { .. })));
        assert!(matches!(
            bad(entry("/", EntryKind::File)),
            TreeError::ReplacesRoot { .. }
        ));
        // `..` inside the tree is fine.
        Tree::flatten(&[layer(1, vec![entry("a/b/../c", EntryKind::File)])]).unwrap();
    }

    #[test]
    fn sparse_runs_skip_holes() {
        let f = FileData {
            size: 100,
            layer: 0,
            offset: 1000,
            len: 10,
            sparse: Some(vec![
                SparseSegment { offset: 0, len: 4 },
                SparseSegment { offset: 50, len: 0 },
                SparseSegment { offset: 94, len: 6 },
            ]),
        };
        assert_eq!(f.runs(), vec![(0, 1000, 4), (94, 1004, 6)]);
    }
}
