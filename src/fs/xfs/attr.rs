//! Extended attributes in the inode's attribute fork, shortform: a 4-byte
//! header, then (name length, value length, namespace flags, name, value)
//! entries. `user.` has no flag, `trusted.` is `XFS_ATTR_ROOT`,
//! `security.` is `XFS_ATTR_SECURE`; POSIX ACLs become XFS's own
//! `SGI_ACL_FILE` / `SGI_ACL_DEFAULT` root attributes in its big-endian
//! ACL format. What does not fit the inode goes to one attribute leaf
//! block (`XFS_ATTR3_LEAF_MAGIC`), values of half a block or more to
//! remote value blocks (`XARM`) after it.

use super::dir::hash;
use super::disk::{be16, be32, be64, set_crc};
use super::geometry::{BLOCK, SECTOR};
use crate::fs::xattr::{AclEntry, Attr, Namespace, XattrError, parse_acl};

/// `XFS_ATTR_LOCAL`: the value is in the leaf.
const LOCAL: u8 = 1;
/// Bytes of the v5 attribute leaf header (`xfs_attr3_leaf_hdr`).
const LEAF_HDR: usize = 80;
/// Bytes of a remote value block's header (`xfs_attr3_rmt_hdr`).
const RMT_HDR: usize = 56;
/// Value bytes a remote block holds.
const RMT_DATA: usize = BLOCK as usize - RMT_HDR;

/// `XFS_ATTR_ROOT`.
const ROOT: u8 = 1 << 1;
/// `XFS_ATTR_SECURE`.
const SECURE: u8 = 1 << 2;
/// `ACL_UNDEFINED_ID`.
const UNDEFINED_ID: u32 = u32::MAX;

/// An attribute as XFS stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Namespace flags.
    pub flags: u8,
    /// Name within the namespace.
    pub name: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
}

/// XFS's on-disk ACL (`struct xfs_acl`): a count, then 12-byte entries of
/// tag, id and permissions, big-endian.
fn acl_to_disk(entries: &[AclEntry]) -> Vec<u8> {
    let mut b = (entries.len() as u32).to_be_bytes().to_vec();
    for e in entries {
        let id = match e.tag {
            crate::fs::xattr::acl_tag::USER | crate::fs::xattr::acl_tag::GROUP => e.id,
            _ => UNDEFINED_ID,
        };
        b.extend_from_slice(&u32::from(e.tag).to_be_bytes());
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&e.perm.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
    }
    b
}

/// The attributes as XFS stores them; `system.` names other than the
/// ACLs have no place in XFS and are skipped with a warning naming them.
pub fn stored(attrs: &[Attr<'_>], path: &dyn Fn() -> String) -> Result<Vec<Stored>, XattrError> {
    let mut out = Vec::with_capacity(attrs.len());
    for a in attrs {
        let (flags, name, value) = match a.namespace {
            Namespace::User => (0, a.name.to_vec(), a.value.to_vec()),
            Namespace::Trusted => (ROOT, a.name.to_vec(), a.value.to_vec()),
            Namespace::Security => (SECURE, a.name.to_vec(), a.value.to_vec()),
            Namespace::AclAccess => (
                ROOT,
                b"SGI_ACL_FILE".to_vec(),
                acl_to_disk(&parse_acl(a.value, "system.posix_acl_access")?),
            ),
            Namespace::AclDefault => (
                ROOT,
                b"SGI_ACL_DEFAULT".to_vec(),
                acl_to_disk(&parse_acl(a.value, "system.posix_acl_default")?),
            ),
            Namespace::System => {
                tracing::warn!(
                    name = %format!("system.{}", String::from_utf8_lossy(a.name)),
                    path = %path(),
                    "skipping a system. attribute xfs has no place for"
                );
                continue;
            }
        };
        out.push(Stored { flags, name, value });
    }
    Ok(out)
}

/// The shortform attribute fork, if every value is under 256 bytes.
pub fn shortform(attrs: &[Stored]) -> Option<Vec<u8>> {
    let size = 4 + attrs
        .iter()
        .map(|a| 3 + a.name.len() + a.value.len())
        .sum::<usize>();
    if attrs.len() > 255 || size > usize::from(u16::MAX) {
        return None;
    }
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(&(size as u16).to_be_bytes());
    b.push(attrs.len() as u8);
    b.push(0);
    for a in attrs {
        let (Ok(nl), Ok(vl)) = (u8::try_from(a.name.len()), u8::try_from(a.value.len())) else {
            return None;
        };
        b.extend_from_slice(&[nl, vl, a.flags]);
        b.extend_from_slice(&a.name);
        b.extend_from_slice(&a.value);
    }
    Some(b)
}

/// Whether a value stays in the leaf (`xfs_attr_leaf_newentsize`: local
/// while the entry is under half a block).
fn is_local(a: &Stored) -> bool {
    local_size(a) < BLOCK as usize / 2
}

fn local_size(a: &Stored) -> usize {
    (3 + a.name.len() + a.value.len()).next_multiple_of(4)
}

/// `xfs_attr_leaf_entsize_remote`: the historical padded struct size of
/// 12, less one, plus the name, rounded to 4 (fixed in the format).
fn remote_size(a: &Stored) -> usize {
    (11 + a.name.len()).next_multiple_of(4)
}

/// Remote blocks of a value.
fn remote_blocks(a: &Stored) -> usize {
    a.value.len().div_ceil(RMT_DATA)
}

/// Blocks the leaf form takes (the leaf, then every remote value's
/// blocks), or `None` if the entries do not fit one leaf.
pub fn leaf_form_blocks(attrs: &[Stored]) -> Option<usize> {
    let names: usize = attrs
        .iter()
        .map(|a| {
            if is_local(a) {
                local_size(a)
            } else {
                remote_size(a)
            }
        })
        .sum();
    if LEAF_HDR + 8 * attrs.len() + names > BLOCK as usize {
        return None;
    }
    Some(
        1 + attrs
            .iter()
            .filter(|a| !is_local(a))
            .map(remote_blocks)
            .sum::<usize>(),
    )
}

/// The leaf at `devs[0]` and the remote value blocks at the rest (as many
/// as [`leaf_form_blocks`] says), for inode `owner`.
pub fn leaf_form(attrs: &[Stored], owner: u64, devs: &[u64], uuid: &[u8; 16]) -> Vec<Vec<u8>> {
    let mut leaf = vec![0u8; BLOCK as usize];
    be16(&mut leaf, 8, 0x3bee); // XFS_ATTR3_LEAF_MAGIC
    be64(&mut leaf, 16, devs[0] * (BLOCK / SECTOR));
    leaf[32..48].copy_from_slice(uuid);
    be64(&mut leaf, 48, owner);
    let mut out = vec![];
    // Name structures from the block's end down; entries sorted by hash.
    let mut at = BLOCK as usize;
    let mut next_remote = 1usize;
    let mut entries: Vec<(u32, u16, u8)> = Vec::with_capacity(attrs.len());
    for a in attrs {
        let flags = a.flags | if is_local(a) { LOCAL } else { 0 };
        if is_local(a) {
            at -= local_size(a);
            be16(&mut leaf, at, a.value.len() as u16);
            leaf[at + 2] = a.name.len() as u8;
            leaf[at + 3..at + 3 + a.name.len()].copy_from_slice(&a.name);
            let v = at + 3 + a.name.len();
            leaf[v..v + a.value.len()].copy_from_slice(&a.value);
        } else {
            at -= remote_size(a);
            be32(&mut leaf, at, next_remote as u32);
            be32(&mut leaf, at + 4, a.value.len() as u32);
            leaf[at + 8] = a.name.len() as u8;
            leaf[at + 9..at + 9 + a.name.len()].copy_from_slice(&a.name);
            for (k, piece) in a.value.chunks(RMT_DATA).enumerate() {
                let dev = devs[next_remote + k];
                let mut b = vec![0u8; BLOCK as usize];
                be32(&mut b, 0, 0x5841_524d); // XARM
                be32(&mut b, 4, (k * RMT_DATA) as u32);
                be32(&mut b, 8, piece.len() as u32);
                b[16..32].copy_from_slice(uuid);
                be64(&mut b, 32, owner);
                be64(&mut b, 40, dev * (BLOCK / SECTOR));
                b[RMT_HDR..RMT_HDR + piece.len()].copy_from_slice(piece);
                set_crc(&mut b, 12);
                out.push(b);
            }
            next_remote += remote_blocks(a);
        }
        entries.push((hash(&a.name), at as u16, flags));
    }
    entries.sort_by_key(|e| e.0);
    for (i, (h, idx, flags)) in entries.iter().enumerate() {
        let e = LEAF_HDR + 8 * i;
        be32(&mut leaf, e, *h);
        be16(&mut leaf, e + 4, *idx);
        leaf[e + 6] = *flags;
    }
    let base = LEAF_HDR + 8 * attrs.len();
    be16(&mut leaf, 56, attrs.len() as u16); // count
    be16(&mut leaf, 58, (BLOCK as usize - at) as u16); // usedbytes
    be16(&mut leaf, 60, at as u16); // firstused
    be16(&mut leaf, 64, base as u16); // freemap[0]
    be16(&mut leaf, 66, (at - base) as u16);
    set_crc(&mut leaf, 12);
    out.insert(0, leaf);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::xattr::acl_tag;

    #[test]
    fn namespaces_flags_and_acls() {
        let acl = [
            2u32.to_le_bytes().to_vec(),
            [1u16.to_le_bytes(), 6u16.to_le_bytes()].concat(),
            u32::MAX.to_le_bytes().to_vec(),
            [2u16.to_le_bytes(), 4u16.to_le_bytes()].concat(),
            1000u32.to_le_bytes().to_vec(),
            [4u16.to_le_bytes(), 4u16.to_le_bytes()].concat(),
            u32::MAX.to_le_bytes().to_vec(),
            [0x20u16.to_le_bytes(), 0u16.to_le_bytes()].concat(),
            u32::MAX.to_le_bytes().to_vec(),
        ]
        .concat();
        let attrs = [
            Attr {
                namespace: Namespace::User,
                name: b"a",
                value: b"1",
            },
            Attr {
                namespace: Namespace::Security,
                name: b"capability",
                value: b"cap",
            },
            Attr {
                namespace: Namespace::AclAccess,
                name: b"",
                value: &acl,
            },
        ];
        let s = stored(&attrs, &|| "/f".into()).unwrap();
        assert_eq!((s[0].flags, s[1].flags, s[2].flags), (0, SECURE, ROOT));
        assert_eq!(s[2].name, b"SGI_ACL_FILE");
        // Four entries of 12 bytes after the count; the named user keeps
        // its id, the others get ACL_UNDEFINED_ID.
        assert_eq!(s[2].value.len(), 4 + 4 * 12);
        assert_eq!(&s[2].value[..4], &4u32.to_be_bytes());
        assert_eq!(
            &s[2].value[4..8],
            &u32::from(acl_tag::USER_OBJ).to_be_bytes()
        );
        assert_eq!(&s[2].value[8..12], &u32::MAX.to_be_bytes());
        assert_eq!(&s[2].value[20..24], &1000u32.to_be_bytes());
        let sf = shortform(&s).unwrap();
        assert_eq!(u16::from_be_bytes([sf[0], sf[1]]) as usize, sf.len());
        assert_eq!(sf[2], 3);
        assert_eq!(&sf[4..8], &[1, 1, 0, b'a']);
    }
}
