//! ext4/ext3 extended attributes on disk: in the inode's spare space when
//! they fit, otherwise in one xattr block. Names are stored with a
//! namespace index (`user.` = 1, `trusted.` = 4, `security.` = 6, …);
//! POSIX ACLs become ext4's compact on-disk ACL (version 1, short entries
//! for the *_OBJ/MASK/OTHER tags).

use crate::fs::crc32c::crc32c_raw;
use crate::fs::xattr::{Attr, Namespace, acl_tag, parse_acl};

const ENTRY_HEADER: usize = 16;
/// Magic of the in-inode and block xattr headers.
pub const MAGIC: u32 = 0xEA02_0000;
/// Bytes available for in-inode xattrs (256-byte inode, 32 extra bytes),
/// after the 4-byte magic.
pub const IBODY_SPACE: usize = 256 - 128 - 32 - 4;
const BLOCK_SIZE: usize = 4096;
const BLOCK_HEADER: usize = 32;

/// Errors encoding xattrs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XattrError {
    /// More than fits in one 4 KiB block.
    #[error("extended attributes need {0} bytes; at most one 4 KiB block is supported")]
    TooLarge(usize),
    /// An attribute the model refuses (bad name, malformed ACL).
    #[error(transparent)]
    Model(#[from] crate::fs::xattr::XattrError),
}

/// One attribute ready to store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Stored {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

/// Where an inode's xattrs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// No xattrs.
    None,
    /// In the inode: the bytes from offset 160 to 256 (magic included).
    Inode(Vec<u8>),
    /// In a block: call [`seal_block`] with its block number.
    Block(Vec<u8>),
}

/// ext4's name index of a namespace.
fn index_of(ns: Namespace) -> u8 {
    match ns {
        Namespace::User => 1,
        Namespace::AclAccess => 2,
        Namespace::AclDefault => 3,
        Namespace::Trusted => 4,
        Namespace::Security => 6,
        Namespace::System => 7,
    }
}

/// A POSIX ACL in ext4's on-disk form (version 1; ids only for named
/// users and groups).
fn acl_to_disk(value: &[u8], name: &str) -> Result<Vec<u8>, XattrError> {
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in parse_acl(value, name)? {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        if e.tag == acl_tag::USER || e.tag == acl_tag::GROUP {
            out.extend_from_slice(&e.id.to_le_bytes());
        }
    }
    Ok(out)
}

fn entry_hash(a: &Stored) -> u32 {
    let mut h: u32 = 0;
    for &c in &a.name {
        h = (h << 5) ^ (h >> 27) ^ u32::from(c);
    }
    for w in a.value.chunks(4) {
        let mut word = [0u8; 4];
        word[..w.len()].copy_from_slice(w);
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes(word);
    }
    h
}

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Lay out entries and values in `space` bytes; `value_base` is added to
/// value offsets (0 for inode bodies: offsets are relative to the first
/// entry; for blocks the entries start at 32 and offsets are from the block
/// start). Returns `None` if they do not fit.
fn layout(
    attrs: &[Stored],
    space: usize,
    entry_start: usize,
    value_base: usize,
) -> Option<Vec<u8>> {
    let entries: usize = attrs
        .iter()
        .map(|a| ENTRY_HEADER + pad4(a.name.len()))
        .sum();
    let values: usize = attrs.iter().map(|a| pad4(a.value.len())).sum();
    if entry_start + entries + 4 + values > space {
        return None;
    }
    let mut b = vec![0u8; space];
    let mut at = entry_start;
    let mut vend = space;
    for a in attrs {
        let vlen = pad4(a.value.len());
        vend -= vlen;
        b[vend..vend + a.value.len()].copy_from_slice(&a.value);
        b[at] = a.name.len() as u8;
        b[at + 1] = a.index;
        let offs = if a.value.is_empty() {
            0
        } else {
            vend - value_base
        };
        b[at + 2..at + 4].copy_from_slice(&(offs as u16).to_le_bytes());
        // e_value_inum stays 0
        b[at + 8..at + 12].copy_from_slice(&(a.value.len() as u32).to_le_bytes());
        b[at + 12..at + 16].copy_from_slice(&entry_hash(a).to_le_bytes());
        b[at + 16..at + 16 + a.name.len()].copy_from_slice(&a.name);
        at += ENTRY_HEADER + pad4(a.name.len());
    }
    Some(b)
}

/// Decide where a node's attributes go and encode them.
pub fn encode(xattrs: &[Attr<'_>]) -> Result<Placement, XattrError> {
    let mut attrs = Vec::with_capacity(xattrs.len());
    for a in xattrs {
        let value = match a.namespace {
            Namespace::AclAccess => acl_to_disk(a.value, "system.posix_acl_access")?,
            Namespace::AclDefault => acl_to_disk(a.value, "system.posix_acl_default")?,
            _ => a.value.to_vec(),
        };
        attrs.push(Stored {
            index: index_of(a.namespace),
            name: a.name.to_vec(),
            value,
        });
    }
    if attrs.is_empty() {
        return Ok(Placement::None);
    }
    // ext4 keeps block entries sorted by (index, name length, name).
    attrs.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    if let Some(body) = layout(&attrs, IBODY_SPACE, 0, 0) {
        let mut out = MAGIC.to_le_bytes().to_vec();
        out.extend_from_slice(&body);
        return Ok(Placement::Inode(out));
    }
    match layout(&attrs, BLOCK_SIZE, BLOCK_HEADER, 0) {
        Some(mut b) => {
            b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            b[4..8].copy_from_slice(&1u32.to_le_bytes()); // refcount
            b[8..12].copy_from_slice(&1u32.to_le_bytes()); // blocks
            let mut h: u32 = 0;
            for a in &attrs {
                h = (h << 16) ^ (h >> 16) ^ entry_hash(a);
            }
            b[12..16].copy_from_slice(&h.to_le_bytes());
            Ok(Placement::Block(b))
        }
        None => Err(XattrError::TooLarge(
            BLOCK_HEADER
                + attrs
                    .iter()
                    .map(|a| ENTRY_HEADER + pad4(a.name.len()) + pad4(a.value.len()))
                    .sum::<usize>()
                + 4,
        )),
    }
}

/// Fill in an xattr block's checksum (`metadata_csum`), which covers its
/// block number.
pub fn seal_block(b: &mut [u8], block: u64, fs_csum_seed: u32) {
    b[16..20].fill(0);
    let c = crc32c_raw(crc32c_raw(fs_csum_seed, &block.to_le_bytes()), b);
    b[16..20].copy_from_slice(&c.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::xattr::classify;

    fn enc(x: &[(Vec<u8>, Vec<u8>)]) -> Result<Placement, XattrError> {
        let attrs = classify(x, &|| "/f".to_string())?;
        encode(&attrs)
    }

    #[test]
    fn small_xattrs_live_in_the_inode() {
        let cap = vec![1u8; 20];
        let p = enc(&[
            (b"security.capability".to_vec(), cap),
            (b"user.foo".to_vec(), b"bar".to_vec()),
        ])
        .unwrap();
        let Placement::Inode(b) = p else {
            panic!("{p:?}")
        };
        assert_eq!(b.len(), 96);
        assert_eq!(u32::from_le_bytes(b[..4].try_into().unwrap()), MAGIC);
        // First entry (user, index 1) comes first after sorting.
        assert_eq!((b[4], b[5]), (3, 1));
        assert_eq!(&b[4 + 16..4 + 19], b"foo");
    }

    #[test]
    fn large_xattrs_go_to_a_block_and_too_large_is_an_error() {
        let p = enc(&[(b"user.big".to_vec(), vec![7u8; 2000])]).unwrap();
        let Placement::Block(mut b) = p else { panic!() };
        seal_block(&mut b, 1234, 99);
        assert_ne!(u32::from_le_bytes(b[16..20].try_into().unwrap()), 0);
        let e = enc(&[(b"user.huge".to_vec(), vec![0u8; 5000])]).unwrap_err();
        assert!(matches!(e, XattrError::TooLarge(_)));
    }

    #[test]
    fn acls_are_converted_and_unknown_namespaces_skipped() {
        // user::rwx user:1000:r-- group::r-x mask::r-x other::---
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 7u16, u32::MAX),
            (2, 4, 1000),
            (4, 5, u32::MAX),
            (0x10, 5, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let disk = acl_to_disk(&acl, "system.posix_acl_access").unwrap();
        assert_eq!(disk.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert!(acl_to_disk(&acl[..7], "x").is_err());
        let p = enc(&[
            (b"system.posix_acl_access".to_vec(), acl),
            (b"weird.ns".to_vec(), b"x".to_vec()),
        ])
        .unwrap();
        let Placement::Inode(b) = p else { panic!() };
        assert_eq!((b[4], b[5]), (0, 2));
    }
}
