//! The order in which every writer meets the merged tree: the nodes the
//! root reaches, breadth first with children by name, each once, with the
//! number of directory entries that name it (its link count before a
//! writer adds its own rules) and the first directory that names it.
//!
//! Paths are implicit: a node keeps its parent's position and its own
//! name, so the order costs memory linear in the number of entries however
//! deep the tree; [`Order::path`] spells a path out only for a message.

use crate::tree::{NodeId, NodeKind, Tree};

/// No position (the root's parent, a node not reached).
const NONE: u32 = u32::MAX;

/// One reachable node.
#[derive(Debug, Clone, Copy)]
pub struct Placed<'t> {
    /// The node in [`Tree::nodes`].
    pub id: NodeId,
    /// Directory entries naming it (1 for directories and the root).
    pub refs: u32,
    /// Position of the first directory naming it (the root: itself).
    pub parent: u32,
    /// Its name in that directory (the root: empty).
    pub name: &'t [u8],
    /// For directories: how many children are directories.
    pub subdirs: u32,
}

/// Errors ordering a tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OrderError {
    /// More nodes than a 32-bit position holds.
    #[error("the image has {0} files and directories, more than any writer numbers")]
    TooMany(usize),
}

/// The reachable nodes of a tree in writer order; position 0 is the root.
#[derive(Debug)]
pub struct Order<'t> {
    /// The tree.
    pub tree: &'t Tree,
    /// The nodes, breadth first.
    pub nodes: Vec<Placed<'t>>,
    position: Vec<u32>,
}

impl<'t> Order<'t> {
    /// Order the nodes `tree`'s root reaches.
    pub fn new(tree: &'t Tree) -> Result<Order<'t>, OrderError> {
        let reach = tree.reachable();
        if reach.len() >= NONE as usize {
            return Err(OrderError::TooMany(reach.len()));
        }
        let mut position = vec![NONE; tree.nodes.len()];
        for (i, &(id, _)) in reach.iter().enumerate() {
            position[id] = i as u32;
        }
        let mut nodes: Vec<Placed<'t>> = reach
            .iter()
            .map(|&(id, refs)| Placed {
                id,
                refs,
                parent: NONE,
                name: &[],
                subdirs: 0,
            })
            .collect();
        nodes[0].parent = 0;
        for i in 0..nodes.len() {
            if let NodeKind::Dir(children) = &tree.nodes[nodes[i].id].kind {
                let mut subdirs = 0;
                for (name, &c) in children {
                    let p = position[c] as usize;
                    if nodes[p].parent == NONE {
                        nodes[p].parent = i as u32;
                        nodes[p].name = name;
                    }
                    if matches!(tree.nodes[c].kind, NodeKind::Dir(_)) {
                        subdirs += 1;
                    }
                }
                nodes[i].subdirs = subdirs;
            }
        }
        Ok(Order {
            tree,
            nodes,
            position,
        })
    }

    /// Position of a reachable node.
    pub fn position(&self, id: NodeId) -> Option<u32> {
        self.position.get(id).copied().filter(|p| *p != NONE)
    }

    /// The node at a position's kind.
    pub fn kind(&self, i: usize) -> &'t NodeKind {
        &self.tree.nodes[self.nodes[i].id].kind
    }

    /// The path of the node at position `i` (`/` for the root), for
    /// messages.
    pub fn path(&self, i: usize) -> String {
        let mut names = Vec::new();
        let mut at = i;
        while at != 0 {
            names.push(self.nodes[at].name);
            at = self.nodes[at].parent as usize;
        }
        if names.is_empty() {
            return "/".into();
        }
        let mut s = String::new();
        for n in names.iter().rev() {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(n));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{FileData, Metadata, Node};
    use std::collections::BTreeMap;

    fn meta() -> Metadata {
        Metadata {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        }
    }

    fn node(kind: NodeKind) -> Node {
        Node {
            meta: meta(),
            kind,
            implied: false,
        }
    }

    #[test]
    fn breadth_first_with_links_and_implicit_paths() {
        let file = || {
            node(NodeKind::File(FileData {
                size: 0,
                layer: 0,
                offset: 0,
                len: 0,
                sparse: None,
            }))
        };
        // / { a/ { f, g -> same as f }, b/ { h -> f } }, plus an unreachable node.
        let mut nodes = vec![node(NodeKind::Dir(BTreeMap::new()))];
        nodes.push(node(NodeKind::Dir(BTreeMap::new()))); // 1: a
        nodes.push(node(NodeKind::Dir(BTreeMap::new()))); // 2: b
        nodes.push(file()); // 3: f
        nodes.push(file()); // 4: unreachable
        let dir = |entries: &[(&str, NodeId)]| {
            NodeKind::Dir(
                entries
                    .iter()
                    .map(|(n, id)| (n.as_bytes().to_vec(), *id))
                    .collect(),
            )
        };
        nodes[0].kind = dir(&[("a", 1), ("b", 2)]);
        nodes[1].kind = dir(&[("f", 3), ("g", 3)]);
        nodes[2].kind = dir(&[("h", 3)]);
        let tree = Tree { nodes };
        let o = Order::new(&tree).unwrap();
        let ids: Vec<NodeId> = o.nodes.iter().map(|p| p.id).collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        assert_eq!(o.nodes[3].refs, 3);
        assert_eq!(o.nodes[0].subdirs, 2);
        assert_eq!(o.path(3), "/a/f");
        assert_eq!(o.path(2), "/b");
        assert_eq!(o.path(0), "/");
        assert_eq!(o.position(4), None);
    }
}
