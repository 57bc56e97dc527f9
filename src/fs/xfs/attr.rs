//! Extended attributes in the inode's attribute fork, shortform: a 4-byte
//! header, then (name length, value length, namespace flags, name, value)
//! entries. `user.` has no flag, `trusted.` is `XFS_ATTR_ROOT`,
//! `security.` is `XFS_ATTR_SECURE`; POSIX ACLs become XFS's own
//! `SGI_ACL_FILE` / `SGI_ACL_DEFAULT` root attributes in its big-endian
//! ACL format. Attribute leaf blocks (for what does not fit the inode)
//! come later.

use crate::fs::xattr::{AclEntry, Attr, Namespace, XattrError, parse_acl};

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
