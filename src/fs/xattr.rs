//! Extended attributes as every writer sees them: the namespace a full name
//! belongs to (`user.`, `trusted.`, `security.`, `system.`) and POSIX ACLs
//! (`system.posix_acl_access` / `_default`) parsed from the user-space xattr
//! format (version 2) that tar carries, so each writer encodes them its
//! own way (ext4's compact ACL, XFS's own ACL attributes).

/// Longest full xattr name Linux accepts (`XATTR_NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// The namespaces Linux stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Namespace {
    /// `user.`
    User,
    /// `trusted.`
    Trusted,
    /// `security.`
    Security,
    /// `system.` other than the ACLs.
    System,
    /// `system.posix_acl_access`.
    AclAccess,
    /// `system.posix_acl_default`.
    AclDefault,
}

/// Errors about an xattr, whatever the writer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XattrError {
    /// A name over [`NAME_MAX`] bytes.
    #[error("extended attribute {name:?} has a name of {len} bytes (the limit is 255)")]
    NameTooLong {
        /// The name (lossy).
        name: String,
        /// Its length.
        len: usize,
    },
    /// A name containing NUL.
    #[error("extended attribute {0:?} has a NUL byte in its name")]
    NameHasNul(String),
    /// A POSIX ACL value that does not parse.
    #[error("malformed POSIX ACL in {0}")]
    BadAcl(String),
}

/// POSIX ACL entry tags (`ACL_USER_OBJ`, …).
pub mod acl_tag {
    /// The owner.
    pub const USER_OBJ: u16 = 0x01;
    /// A named user.
    pub const USER: u16 = 0x02;
    /// The owning group.
    pub const GROUP_OBJ: u16 = 0x04;
    /// A named group.
    pub const GROUP: u16 = 0x08;
    /// The mask.
    pub const MASK: u16 = 0x10;
    /// Everyone else.
    pub const OTHER: u16 = 0x20;
}

/// One POSIX ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclEntry {
    /// One of [`acl_tag`].
    pub tag: u16,
    /// rwx bits.
    pub perm: u16,
    /// uid or gid for USER and GROUP entries (`u32::MAX` otherwise).
    pub id: u32,
}

/// An xattr by namespace: `name` is the part after the prefix (empty for
/// the ACLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr<'a> {
    /// The namespace.
    pub namespace: Namespace,
    /// The name without its prefix.
    pub name: &'a [u8],
    /// The value as tar carries it.
    pub value: &'a [u8],
}

/// The namespace and short name of a full name; `None` for names outside
/// the namespaces Linux stores (or a bare prefix).
pub fn split(full: &[u8]) -> Option<(Namespace, &[u8])> {
    const PREFIXES: [(&[u8], Namespace); 4] = [
        (b"user.", Namespace::User),
        (b"trusted.", Namespace::Trusted),
        (b"security.", Namespace::Security),
        (b"system.", Namespace::System),
    ];
    match full {
        b"system.posix_acl_access" => return Some((Namespace::AclAccess, b"")),
        b"system.posix_acl_default" => return Some((Namespace::AclDefault, b"")),
        _ => {}
    }
    PREFIXES
        .iter()
        .find_map(|(p, ns)| full.strip_prefix(*p).map(|rest| (*ns, rest)))
        .filter(|(_, rest)| !rest.is_empty())
}

/// Classify a node's xattrs (full names, sorted): names that are invalid
/// everywhere are errors; names in namespaces no Linux filesystem stores
/// are skipped with a warning naming them and `path`.
pub fn classify<'a>(
    xattrs: &'a [(Vec<u8>, Vec<u8>)],
    path: &dyn Fn() -> String,
) -> Result<Vec<Attr<'a>>, XattrError> {
    let mut out = Vec::with_capacity(xattrs.len());
    for (full, value) in xattrs {
        let show = || String::from_utf8_lossy(full).into_owned();
        if full.contains(&0) {
            return Err(XattrError::NameHasNul(show()));
        }
        if full.len() > NAME_MAX {
            return Err(XattrError::NameTooLong {
                name: show(),
                len: full.len(),
            });
        }
        let Some((namespace, name)) = split(full) else {
            tracing::warn!(
                name = %show(),
                path = %path(),
                "skipping an extended attribute outside the user/trusted/security/system namespaces"
            );
            continue;
        };
        out.push(Attr {
            namespace,
            name,
            value,
        });
    }
    Ok(out)
}

/// Parse a user-space POSIX ACL xattr value (version 2, 8-byte entries:
/// tag, perm, id). `name` names the attribute in the error.
pub fn parse_acl(value: &[u8], name: &str) -> Result<Vec<AclEntry>, XattrError> {
    let bad = || XattrError::BadAcl(name.to_string());
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
        return Err(bad());
    }
    if value[..4] != 2u32.to_le_bytes() {
        return Err(bad());
    }
    value[4..]
        .chunks_exact(8)
        .map(|e| {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let known = [
                acl_tag::USER_OBJ,
                acl_tag::USER,
                acl_tag::GROUP_OBJ,
                acl_tag::GROUP,
                acl_tag::MASK,
                acl_tag::OTHER,
            ];
            if !known.contains(&tag) {
                return Err(bad());
            }
            Ok(AclEntry {
                tag,
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_namespaces() {
        assert_eq!(split(b"user.foo"), Some((Namespace::User, &b"foo"[..])));
        assert_eq!(
            split(b"system.posix_acl_default"),
            Some((Namespace::AclDefault, &b""[..]))
        );
        assert_eq!(
            split(b"system.nfs4_acl"),
            Some((Namespace::System, &b"nfs4_acl"[..]))
        );
        assert_eq!(split(b"user."), None);
        assert_eq!(split(b"weird.ns"), None);
    }

    #[test]
    fn invalid_names_are_errors_and_foreign_ones_skipped() {
        let none = || "/f".to_string();
        let x = vec![
            (b"user.a".to_vec(), b"1".to_vec()),
            (b"weird.b".to_vec(), b"2".to_vec()),
        ];
        let attrs = classify(&x, &none).unwrap();
        assert_eq!(attrs.len(), 1);
        let long = vec![(format!("user.{}", "n".repeat(251)).into_bytes(), vec![])];
        assert!(matches!(
            classify(&long, &none),
            Err(XattrError::NameTooLong { len: 256, .. })
        ));
        let nul = vec![(b"user.a\0b".to_vec(), vec![])];
        assert!(matches!(
            classify(&nul, &none),
            Err(XattrError::NameHasNul(_))
        ));
    }

    #[test]
    fn acls_parse_and_bad_ones_are_refused() {
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [(1u16, 7u16, u32::MAX), (2, 4, 1000), (0x20, 0, u32::MAX)] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let e = parse_acl(&acl, "a").unwrap();
        assert_eq!(
            e[1],
            AclEntry {
                tag: acl_tag::USER,
                perm: 4,
                id: 1000
            }
        );
        assert!(parse_acl(&acl[..7], "a").is_err());
        let mut v1 = acl.clone();
        v1[0] = 1;
        assert!(parse_acl(&v1, "a").is_err());
        let mut bad_tag = acl;
        bad_tag[4] = 0x40;
        assert!(parse_acl(&bad_tag, "a").is_err());
    }
}
