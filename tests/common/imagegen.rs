//! Deterministic OCI image generator with an independent oracle of the
//! expected root filesystem.
//!
//! Layers are described as data ([`LayerSpec`] = list of [`EntrySpec`]) and
//! serialised to tar with the `tar` crate's low-level API (GNU headers, GNU
//! `././@LongLink` and PAX `path`/`linkpath` long names, PAX `SCHILY.xattr.*`
//! and fractional `mtime` records, base-256 numeric fields for huge ids).
//! [`write_image`] / [`write_image_with`] put a complete OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`) on disk;
//! [`write_multiarch`] adds an image index with linux/amd64 and linux/arm64.
//! All bytes are deterministic: the same specs always give the same digests.
//!
//! [`oracle`] applies the layer specs to an in-memory tree following the OCI
//! image spec's "Applying Changesets" rules (whiteouts and opaque whiteouts
//! only hide lower layers, a non-directory entry replaces whatever was at its
//! path including whole directory trees, directory-over-directory only
//! replaces attributes, hard links share one inode, missing parents are
//! implied as `0755 root:root` directories with mtime 0 and
//! [`OracleEntry::implied`] set). A directory's mtime is the one of the last
//! header for it: adding or removing children in later layers does not
//! change it (umoci behaves the same way). It never reads the tars back, so
//! it is an independent statement of what the merged tree must be.
//! [`scan_tree`] reads a real directory tree into the same shape and
//! [`compare_trees`] lists the differences, which is how tests check an
//! unpacked or mounted root filesystem.
//!
//! [`standard_layers`] is the three-layer test image that covers what real
//! images contain; see its documentation for the inventory.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// mtime of layer-1 entries (2020-09-13T12:26:40Z).
pub const T1: u64 = 1_600_000_000;
/// mtime of layer-2 entries.
pub const T2: u64 = 1_650_000_000;
/// mtime of layer-3 entries.
pub const T3: u64 = 1_700_000_000;

/// Number of entries in `/big-dir` of the merged standard image.
pub const BIG_DIR_ENTRIES: usize = 2000;

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    /// OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_OCI_LAYER,
            Compression::Gzip => MEDIA_TYPE_OCI_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_OCI_LAYER_ZSTD,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// Compresses `data` deterministically (gzip: level 6, mtime 0, no file
    /// name; zstd: level 3, single-threaded).
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                encoder.write_all(data).expect("gzip");
                encoder.finish().expect("gzip finish")
            }
            Compression::Zstd => zstd::encode_all(data, 3).expect("zstd"),
        }
    }
}

/// Target platform of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        }
    }

    pub fn linux_arm64() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "arm64".into(),
            variant: Some("v8".into()),
        }
    }

    /// OCI descriptor `platform` object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = json!({ "architecture": self.arch, "os": self.os });
        if let Some(variant) = &self.variant {
            value["variant"] = json!(variant);
        }
        value
    }
}

/// Contents of a regular file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    /// Literal bytes.
    Bytes(Vec<u8>),
    /// `len` pseudo-random bytes from `seed` (xorshift64*).
    Pattern { len: u64, seed: u64 },
    /// `len` zero bytes except the given `(offset, bytes)` patches.
    Zeros {
        len: u64,
        patches: Vec<(u64, Vec<u8>)>,
    },
}

impl Content {
    pub fn text(s: &str) -> Content {
        Content::Bytes(s.as_bytes().to_vec())
    }

    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Pattern { len, .. } | Content::Zeros { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(length, hex sha256)` of the content, memoised per process (the
    /// 16 MiB file would otherwise be hashed by every oracle call).
    pub fn sha256(&self) -> (u64, String) {
        static CACHE: OnceLock<Mutex<HashMap<Content, (u64, String)>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(hit) = cache.lock().unwrap().get(self) {
            return hit.clone();
        }
        let bytes = self.bytes();
        let value = (bytes.len() as u64, hex::encode(Sha256::digest(&bytes)));
        cache.lock().unwrap().insert(self.clone(), value.clone());
        value
    }

    /// The materialised bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Content::Bytes(b) => b.clone(),
            Content::Pattern { len, seed } => {
                let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut out = Vec::with_capacity(*len as usize + 8);
                while (out.len() as u64) < *len {
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
                }
                out.truncate(*len as usize);
                out
            }
            Content::Zeros { len, patches } => {
                let mut out = vec![0u8; *len as usize];
                for (offset, bytes) in patches {
                    let start = *offset as usize;
                    out[start..start + bytes.len()].copy_from_slice(bytes);
                }
                out
            }
        }
    }
}

/// What a tar entry is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File(Content),
    Dir,
    /// Symbolic link with this target (written verbatim).
    Symlink(String),
    /// Hard link to this absolute path (an earlier entry of this or a lower
    /// layer). The entry's metadata must equal the target's (see
    /// [`EntrySpec::hardlink_of`]): extractors disagree on whether a link
    /// header's metadata is applied to the shared inode.
    Hardlink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    /// Deletes `path` of lower layers: written as `DIR/.wh.NAME`.
    Whiteout,
    /// Hides all lower-layer children of the directory `path`: written as
    /// `path/.wh..wh..opq`.
    OpaqueWhiteout,
}

/// How names that do not fit the 100-byte header fields are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LongNames {
    /// GNU `././@LongLink` entries (type `L` for the path, `K` for the link).
    Gnu,
    /// PAX `path` / `linkpath` records.
    Pax,
}

/// One tar entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntrySpec {
    /// Absolute path in the image, e.g. `/etc/passwd` (no trailing slash).
    pub path: String,
    pub kind: EntryKind,
    /// Permission and setuid/setgid/sticky bits (`0o7777` mask).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: u64,
    /// Nanoseconds; non-zero emits a PAX `mtime` record with a fraction.
    pub mtime_nsec: u32,
    /// Extended attributes, written as PAX `SCHILY.xattr.NAME` records.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub long_names: LongNames,
}

impl EntrySpec {
    fn new(path: &str, kind: EntryKind, mode: u32) -> EntrySpec {
        assert!(
            path.starts_with('/') && path.len() > 1 && !path.ends_with('/'),
            "entry paths are absolute, not the root, without trailing slash: {path:?}"
        );
        EntrySpec {
            path: path.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: T1,
            mtime_nsec: 0,
            xattrs: BTreeMap::new(),
            long_names: LongNames::Gnu,
        }
    }

    pub fn file(path: &str, content: Content, mode: u32) -> EntrySpec {
        Self::new(path, EntryKind::File(content), mode)
    }

    pub fn text(path: &str, text: &str, mode: u32) -> EntrySpec {
        Self::file(path, Content::text(text), mode)
    }

    pub fn dir(path: &str, mode: u32) -> EntrySpec {
        Self::new(path, EntryKind::Dir, mode)
    }

    pub fn symlink(path: &str, target: &str) -> EntrySpec {
        Self::new(path, EntryKind::Symlink(target.to_string()), 0o777)
    }

    /// A hard link to `target_path` with default metadata (`0644 root:root`,
    /// mtime [`T1`]), which must then be set to the target's; prefer
    /// [`EntrySpec::hardlink_of`].
    pub fn hardlink(path: &str, target_path: &str) -> EntrySpec {
        Self::new(path, EntryKind::Hardlink(target_path.to_string()), 0o644)
    }

    /// A hard link to `target` carrying the target's metadata.
    pub fn hardlink_of(path: &str, target: &EntrySpec) -> EntrySpec {
        EntrySpec {
            path: path.to_string(),
            kind: EntryKind::Hardlink(target.path.clone()),
            long_names: LongNames::Gnu,
            ..target.clone()
        }
    }

    pub fn char_device(path: &str, major: u32, minor: u32, mode: u32) -> EntrySpec {
        Self::new(path, EntryKind::CharDevice { major, minor }, mode)
    }

    pub fn block_device(path: &str, major: u32, minor: u32, mode: u32) -> EntrySpec {
        Self::new(path, EntryKind::BlockDevice { major, minor }, mode)
    }

    pub fn fifo(path: &str, mode: u32) -> EntrySpec {
        Self::new(path, EntryKind::Fifo, mode)
    }

    pub fn whiteout(path: &str) -> EntrySpec {
        Self::new(path, EntryKind::Whiteout, 0o644)
    }

    pub fn opaque(dir: &str) -> EntrySpec {
        Self::new(dir, EntryKind::OpaqueWhiteout, 0o644)
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, secs: u64) -> Self {
        self.mtime = secs;
        self
    }

    pub fn mtime_nsec(mut self, nsec: u32) -> Self {
        assert!(nsec < 1_000_000_000);
        self.mtime_nsec = nsec;
        self
    }

    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.xattrs.insert(name.to_string(), value.to_vec());
        self
    }

    pub fn pax_names(mut self) -> Self {
        self.long_names = LongNames::Pax;
        self
    }
}

/// One layer: entries in tar order plus writing style.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayerSpec {
    /// Used as the config history's `created_by`.
    pub comment: String,
    pub entries: Vec<EntrySpec>,
    /// Prefix member names with `./` (like `tar -C rootfs -c .`).
    pub dot_slash: bool,
    /// Include `S_IFMT` type bits in the header mode field (e.g. `0o100644`),
    /// as some non-Go tar writers do.
    pub mode_type_bits: bool,
}

impl LayerSpec {
    pub fn new(comment: &str, entries: Vec<EntrySpec>) -> LayerSpec {
        LayerSpec {
            comment: comment.to_string(),
            entries,
            dot_slash: false,
            mode_type_bits: false,
        }
    }

    /// The uncompressed tar (deterministic).
    pub fn tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            write_entry(&mut builder, self, entry).unwrap_or_else(|e| {
                panic!("writing tar entry {}: {e}", entry.path);
            });
        }
        builder.into_inner().expect("finish tar")
    }
}

fn set_raw_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&value[..n]);
}

/// GNU `././@LongLink` pseudo-entry of type `L` (path) or `K` (link target).
fn append_gnu_longlink(
    builder: &mut tar::Builder<Vec<u8>>,
    kind: u8,
    name: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    set_raw_field(&mut header.as_old_mut().name, b"././@LongLink");
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(name.len() as u64 + 1);
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_cksum();
    let mut data = name.to_vec();
    data.push(0);
    builder.append(&header, data.as_slice())
}

/// Header name fields are 100 bytes; like the `tar` crate and GNU tar, use
/// an extension from 100 bytes on.
const NAME_FIELD: usize = 100;

fn write_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    layer: &LayerSpec,
    entry: &EntrySpec,
) -> std::io::Result<()> {
    let prefix = if layer.dot_slash { "./" } else { "" };
    let rel = entry.path.trim_start_matches('/');
    let (name, link) = match &entry.kind {
        EntryKind::Whiteout => {
            let (parent, base) = match rel.rsplit_once('/') {
                Some((parent, base)) => (format!("{parent}/"), base),
                None => (String::new(), rel),
            };
            (format!("{parent}.wh.{base}"), None)
        }
        EntryKind::OpaqueWhiteout => (format!("{rel}/.wh..wh..opq"), None),
        EntryKind::Dir => (format!("{rel}/"), None),
        EntryKind::Hardlink(target) => (
            rel.to_string(),
            Some(format!("{prefix}{}", target.trim_start_matches('/'))),
        ),
        EntryKind::Symlink(target) => (rel.to_string(), Some(target.clone())),
        _ => (rel.to_string(), None),
    };
    let name = format!("{prefix}{name}");

    let (entry_type, type_bits, data) = match &entry.kind {
        EntryKind::File(content) => (tar::EntryType::Regular, 0o100000, content.bytes()),
        EntryKind::Dir => (tar::EntryType::Directory, 0o040000, Vec::new()),
        EntryKind::Symlink(_) => (tar::EntryType::Symlink, 0o120000, Vec::new()),
        EntryKind::Hardlink(_) => (tar::EntryType::Link, 0o100000, Vec::new()),
        EntryKind::CharDevice { .. } => (tar::EntryType::Char, 0o020000, Vec::new()),
        EntryKind::BlockDevice { .. } => (tar::EntryType::Block, 0o060000, Vec::new()),
        EntryKind::Fifo => (tar::EntryType::Fifo, 0o010000, Vec::new()),
        EntryKind::Whiteout | EntryKind::OpaqueWhiteout => {
            (tar::EntryType::Regular, 0o100000, Vec::new())
        }
    };

    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let long_name = name.len() >= NAME_FIELD;
    let long_link = link.as_ref().is_some_and(|l| l.len() >= NAME_FIELD);
    if entry.long_names == LongNames::Pax {
        if long_name {
            pax.push(("path".into(), name.as_bytes().to_vec()));
        }
        if let (true, Some(link)) = (long_link, &link) {
            pax.push(("linkpath".into(), link.as_bytes().to_vec()));
        }
    }
    if entry.mtime_nsec != 0 {
        pax.push((
            "mtime".into(),
            format!("{}.{:09}", entry.mtime, entry.mtime_nsec).into_bytes(),
        ));
    }
    for (key, value) in &entry.xattrs {
        pax.push((format!("SCHILY.xattr.{key}"), value.clone()));
    }
    if !pax.is_empty() {
        builder.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    if entry.long_names == LongNames::Gnu {
        if long_name {
            append_gnu_longlink(builder, b'L', name.as_bytes())?;
        }
        if let (true, Some(link)) = (long_link, &link) {
            append_gnu_longlink(builder, b'K', link.as_bytes())?;
        }
    }

    let mut header = tar::Header::new_gnu();
    set_raw_field(&mut header.as_old_mut().name, name.as_bytes());
    if let Some(link) = &link {
        set_raw_field(&mut header.as_old_mut().linkname, link.as_bytes());
    }
    let type_bits = if layer.mode_type_bits { type_bits } else { 0 };
    header.set_mode((entry.mode & 0o7777) | type_bits);
    header.set_uid(entry.uid.into());
    header.set_gid(entry.gid.into());
    header.set_mtime(entry.mtime);
    header.set_entry_type(entry_type);
    header.set_size(data.len() as u64);
    if let EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } =
        &entry.kind
    {
        header.set_device_major(*major)?;
        header.set_device_minor(*minor)?;
    }
    header.set_cksum();
    builder.append(&header, data.as_slice())
}

// ---------------------------------------------------------------------------
// The standard image
// ---------------------------------------------------------------------------

/// A valid v2 `security.capability` blob (`VFS_CAP_REVISION_2`, effective
/// flag, permitted = `CAP_NET_RAW`): 20 bytes.
pub fn capability_net_raw() -> Vec<u8> {
    let mut blob = Vec::with_capacity(20);
    blob.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes()); // magic_etc
    blob.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted[0]: CAP_NET_RAW
    blob.extend_from_slice(&0u32.to_le_bytes()); // inheritable[0]
    blob.extend_from_slice(&0u32.to_le_bytes()); // permitted[1]
    blob.extend_from_slice(&0u32.to_le_bytes()); // inheritable[1]
    blob
}

/// Name (not path) of the >100-byte file in `/opt`.
pub fn long_file_name() -> String {
    format!("long-file-name-{}", "abcdefghij".repeat(14))
}

/// Path (>255 bytes) of the deeply nested file under `/opt/deep`.
pub fn long_path_file() -> String {
    let mut path = String::from("/opt/deep");
    for level in 1..=4 {
        path.push_str(&format!("/level-{level}-{}", "d".repeat(52)));
    }
    path.push_str(&format!("/file-{}.txt", "f".repeat(40)));
    path
}

/// Layer 1: the base. Covers directories (incl. sticky `/tmp` and a setgid
/// dir), regular files of sizes 0, 1, 4095, 4096, 4097, 1 MiB+3 and a 16 MiB
/// mostly-zero file, setuid/setgid files, non-root and huge (>2^21, base-256
/// encoded) owners, a hard-link pair, a hard-link triple, a hard link to a
/// symlink, absolute/relative/dangling symlinks and targets of 80 (inline
/// header), 150 (GNU `K`) and 200 (PAX `linkpath`) bytes, char/block devices
/// and a fifo, xattrs (`security.capability` v2, `user.*`, on a directory),
/// a 155-byte file name (GNU `L`), a >255-byte path (PAX `path`), UTF-8 and
/// emoji names, a fractional PAX mtime, `/big-dir` with 2,000 entries, and
/// everything later layers delete or replace.
pub fn standard_layer1() -> LayerSpec {
    use EntrySpec as E;
    let mut e = vec![
        E::dir("/bin", 0o755),
        E::file(
            "/bin/busybox",
            Content::Pattern {
                len: 300_000,
                seed: 1,
            },
            0o755,
        ),
        E::dir("/dev", 0o755),
        E::char_device("/dev/null", 1, 3, 0o666),
        E::char_device("/dev/zero", 1, 5, 0o666),
        E::block_device("/dev/loop0", 7, 0, 0o660).owner(0, 6),
        E::dir("/etc", 0o755),
        E::text("/etc/hostname", "ocidisk-layer1\n", 0o644),
        E::text(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
            0o644,
        ),
        E::text(
            "/etc/group",
            "root:x:0:\ntty:x:5:\ndisk:x:6:\nuser:x:1000:\n",
            0o644,
        ),
        E::file("/etc/empty", Content::Bytes(Vec::new()), 0o644),
        E::text("/etc/one-byte", "1", 0o644),
        E::text("/etc/delete-me", "deleted in layer 2\n", 0o644),
        E::text("/etc/os-release", "ID=ocidisk-test\n", 0o644),
        E::text("/etc/owned", "ownership changes in layer 3\n", 0o640),
        E::text("/etc/nanotime", "fractional mtime\n", 0o644).mtime_nsec(123_456_789),
        E::symlink("/etc/dangling", "/nonexistent/target"),
        E::dir("/etc/opaque-b", 0o755),
        E::text("/etc/opaque-b/old-1", "hidden by layer 2\n", 0o644),
        E::dir("/etc/opaque-b/old-dir", 0o755),
        E::text("/etc/opaque-b/old-dir/old-2", "hidden by layer 2\n", 0o644),
        E::dir("/home", 0o755),
        E::dir("/home/user", 0o750).owner(1000, 1000),
        E::text("/home/user/.profile", "export PS1='$ '\n", 0o644).owner(1000, 1000),
        E::dir("/opt", 0o755),
        E::text("/opt/bigid", "uid/gid 100000\n", 0o640).owner(100_000, 100_000),
        E::text("/opt/hugeid", "uid/gid above 2^21\n", 0o600).owner(3_000_000_000, 3_000_000_001),
        E::text(&format!("/opt/{}", long_file_name()), "long name\n", 0o644),
        E::dir("/opt/ünïcødé", 0o755),
        E::text("/opt/ünïcødé/файл.txt", "unicode\n", 0o644),
        E::text("/opt/ünïcødé/🦀-crab.txt", "emoji\n", 0o644),
        E::dir("/opt/opaque-a", 0o755),
        E::text("/opt/opaque-a/x", "hidden by layer 2\n", 0o644),
        E::text("/opt/opaque-a/y", "hidden by layer 2\n", 0o644),
        E::dir("/opt/opaque-a/sub", 0o700),
        E::text("/opt/opaque-a/sub/z", "hidden by layer 2\n", 0o644),
        E::dir("/opt/was-dir", 0o755),
        E::text("/opt/was-dir/a", "removed with its directory\n", 0o644),
        E::dir("/opt/was-dir/child-dir", 0o755),
        E::text(
            "/opt/was-dir/child-dir/b",
            "removed with its directory\n",
            0o644,
        ),
        E::text("/opt/was-file", "a file that becomes a directory\n", 0o644),
        E::dir("/opt/xattr-dir", 0o755).xattr("user.dirattr", b"on a directory"),
        E::text("/opt/xattr-dir/inside", "inside\n", 0o644),
        E::dir("/opt/deep", 0o755),
    ];
    // >255-byte path: nested directories, long ones written with PAX `path`.
    let deep = long_path_file();
    let mut dir = String::new();
    for component in deep.trim_start_matches('/').split('/') {
        dir.push('/');
        dir.push_str(component);
        if dir == deep {
            e.push(E::text(&dir, "deep\n", 0o644).pax_names());
        } else if dir.len() > "/opt/deep".len() {
            e.push(E::dir(&dir, 0o755).pax_names());
        }
    }
    let busybox_link_target = E::symlink("/usr/bin/sh", "/bin/busybox");
    let hl_a = E::file(
        "/usr/bin/hl-a",
        Content::Pattern { len: 5000, seed: 7 },
        0o755,
    );
    let triple = E::text("/usr/lib/triple-1", "triple\n", 0o644);
    e.extend([
        E::dir("/run", 0o755),
        E::fifo("/run/initctl", 0o600),
        E::dir("/srv", 0o755),
        E::dir("/srv/shared", 0o2775).owner(0, 50),
        E::text("/srv/shared/file", "group shared\n", 0o664).owner(0, 50),
        E::dir("/tmp", 0o1777),
        E::dir("/usr", 0o755),
        E::dir("/usr/bin", 0o755),
        busybox_link_target.clone(),
        E::hardlink_of("/usr/bin/sh-hardlink", &busybox_link_target),
        E::symlink("/usr/bin/rel-lib", "../lib/libfoo.so.1"),
        hl_a.clone(),
        E::hardlink_of("/usr/bin/hl-b", &hl_a),
        E::file(
            "/usr/bin/su",
            Content::Pattern { len: 2000, seed: 8 },
            0o4755,
        ),
        E::file(
            "/usr/bin/wall",
            Content::Pattern { len: 2100, seed: 9 },
            0o2755,
        )
        .owner(0, 5),
        E::file(
            "/usr/bin/ping",
            Content::Pattern {
                len: 3000,
                seed: 10,
            },
            0o755,
        )
        .xattr("security.capability", &capability_net_raw())
        .xattr("user.foo", b"bar"),
        E::dir("/usr/lib", 0o755),
        E::file(
            "/usr/lib/size-4095",
            Content::Pattern { len: 4095, seed: 2 },
            0o644,
        ),
        E::file(
            "/usr/lib/size-4096",
            Content::Pattern { len: 4096, seed: 3 },
            0o644,
        ),
        E::file(
            "/usr/lib/size-4097",
            Content::Pattern { len: 4097, seed: 4 },
            0o644,
        ),
        E::file(
            "/usr/lib/size-1m-plus-3",
            Content::Pattern {
                len: (1 << 20) + 3,
                seed: 5,
            },
            0o644,
        ),
        E::file(
            "/usr/lib/mostly-zero-16m",
            Content::Zeros {
                len: 16 << 20,
                patches: vec![
                    (0, b"HEAD".to_vec()),
                    (8 << 20, b"MIDDLE".to_vec()),
                    ((16 << 20) - 3, b"END".to_vec()),
                ],
            },
            0o644,
        ),
        E::file(
            "/usr/lib/libfoo.so.1",
            Content::Pattern {
                len: 10_000,
                seed: 6,
            },
            0o755,
        ),
        E::symlink("/usr/lib/libfoo.so", "libfoo.so.1"),
        triple.clone(),
        E::hardlink_of("/usr/lib/triple-2", &triple),
        E::hardlink_of("/usr/lib/triple-3", &triple),
        E::dir("/usr/share", 0o755),
        E::symlink("/usr/share/dangling-rel", "../missing/file"),
        E::symlink(
            "/usr/share/long-target-80",
            &format!("/usr/share/{}", "t".repeat(69)),
        ),
        E::symlink(
            "/usr/share/long-target-gnu",
            &format!("../lib/{}", "k".repeat(143)),
        ),
        E::symlink(
            "/usr/share/long-target-pax",
            &format!("/opt/{}/{}", "p".repeat(100), "q".repeat(94)),
        )
        .pax_names(),
        E::dir("/var", 0o755),
        E::dir("/var/cache", 0o755),
        E::dir("/var/cache/app", 0o755),
        E::text("/var/cache/app/data.txt", "v1\n", 0o644),
        E::dir("/var/cache/app/sub", 0o755),
        E::text("/var/cache/app/sub/deep.txt", "deleted with app/\n", 0o644),
        E::dir("/var/log", 0o755),
        E::text(
            "/var/log/old.log",
            "survives the dir attribute change\n",
            0o640,
        ),
        E::dir("/big-dir", 0o755),
    ]);
    for i in 0..BIG_DIR_ENTRIES {
        e.push(E::text(
            &format!("/big-dir/entry-{i:04}"),
            &format!("entry {i}\n"),
            0o644,
        ));
    }
    LayerSpec::new("layer 1: base", e)
}

/// Layer 2: whiteouts of a file and of a whole directory tree, an opaque
/// directory with its marker right after the directory header plus new
/// children (including a re-created subdirectory), a second opaque directory
/// whose marker comes *after* a new child and that has no directory header
/// in this layer, a file replacing a directory tree, a directory replacing a
/// file, a modified file (content and mode), a symlink replacing a file, a
/// replaced member of a hard-link triple (the others stay linked), a hard
/// link to a layer-1 file, an attribute-only change of a populated
/// directory, and a whiteout plus an addition in `/big-dir`.
pub fn standard_layer2() -> LayerSpec {
    use EntrySpec as E;
    let busybox = E::file(
        "/bin/busybox",
        Content::Pattern {
            len: 300_000,
            seed: 1,
        },
        0o755,
    );
    let entries = vec![
        E::whiteout("/etc/delete-me"),
        E::whiteout("/var/cache/app"),
        E::dir("/opt/opaque-a", 0o750),
        E::opaque("/opt/opaque-a"),
        E::text(
            "/opt/opaque-a/new.txt",
            "added with the opaque marker\n",
            0o644,
        ),
        E::dir("/opt/opaque-a/sub", 0o755),
        E::text(
            "/opt/opaque-a/sub/fresh.txt",
            "new child of re-created dir\n",
            0o644,
        ),
        E::text(
            "/etc/opaque-b/kept.txt",
            "written before the marker\n",
            0o644,
        ),
        E::opaque("/etc/opaque-b"),
        E::text("/opt/was-dir", "a file replacing a directory\n", 0o644),
        E::dir("/opt/was-file", 0o755),
        E::text(
            "/opt/was-file/inner.txt",
            "in a directory that replaced a file\n",
            0o644,
        ),
        E::text("/etc/hostname", "ocidisk-layer2-modified\n", 0o600),
        E::symlink("/etc/os-release", "../usr/lib/os-release"),
        E::text(
            "/usr/lib/os-release",
            "ID=ocidisk-test\nVERSION_ID=2\n",
            0o644,
        ),
        E::text("/usr/lib/triple-2", "triple-2 replaced\n", 0o644),
        E::hardlink_of("/usr/bin/busybox-hardlink", &busybox),
        E::dir("/var/log", 0o750),
        E::text("/var/log/new.log", "added in layer 2\n", 0o640),
        E::whiteout("/big-dir/entry-0007"),
        E::text(
            &format!("/big-dir/entry-{BIG_DIR_ENTRIES:04}"),
            "added in layer 2\n",
            0o644,
        ),
    ];
    let entries = entries
        .into_iter()
        .map(|e| match e.kind {
            // A hard link carries its target's (layer-1) metadata.
            EntryKind::Hardlink(_) => e,
            _ => e.mtime(T2),
        })
        .collect();
    LayerSpec::new("layer 2: whiteouts and replacements", entries)
}

/// Layer 3 (member names `./`-prefixed, type bits in the mode field):
/// re-creates a path whited out in layer 2, re-creates a file under a
/// directory whited out in layer 2 *without* a directory entry (implied
/// parent), and changes the ownership of a layer-1 file. `extra` entries are
/// appended (e.g. a per-platform marker file).
pub fn standard_layer3(extra: Vec<EntrySpec>) -> LayerSpec {
    use EntrySpec as E;
    let mut entries = vec![
        E::text("/etc/delete-me", "re-created in layer 3\n", 0o644).mtime(T3),
        E::text(
            "/var/cache/app/data.txt",
            "v3 under an implied parent\n",
            0o644,
        )
        .mtime(T3),
        E::text("/etc/owned", "ownership changes in layer 3\n", 0o640)
            .owner(1000, 1000)
            .mtime(T3),
    ];
    entries.extend(extra);
    let mut layer = LayerSpec::new("layer 3: small changes", entries);
    layer.dot_slash = true;
    layer.mode_type_bits = true;
    layer
}

/// The standard 3-layer image content.
pub fn standard_layers() -> Vec<LayerSpec> {
    standard_layers_with(Vec::new())
}

/// The standard layers with `extra` entries appended to the top layer.
pub fn standard_layers_with(extra: Vec<EntrySpec>) -> Vec<LayerSpec> {
    vec![standard_layer1(), standard_layer2(), standard_layer3(extra)]
}

/// Layers of a second image that shares layer 1 (byte-identical blob for
/// the same compression) with the standard image but has a different top.
pub fn sharing_layers() -> Vec<LayerSpec> {
    use EntrySpec as E;
    let top = LayerSpec::new(
        "second image top layer",
        vec![
            E::text("/etc/second-image", "yes\n", 0o644).mtime(T3),
            E::file(
                "/usr/lib/second-payload",
                Content::Pattern {
                    len: 256 * 1024,
                    seed: 99,
                },
                0o644,
            )
            .mtime(T3),
            E::whiteout("/etc/passwd").mtime(T3),
        ],
    );
    vec![standard_layer1(), top]
}

// ---------------------------------------------------------------------------
// OCI layout writing
// ---------------------------------------------------------------------------

/// A layer blob as referenced by a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    pub media_type: String,
    /// `sha256:HEX` of the (compressed) blob.
    pub digest: String,
    /// `sha256:HEX` of the uncompressed tar.
    pub diff_id: String,
    /// Blob size in bytes.
    pub size: u64,
}

/// A layer serialised and compressed, see [`build_layer`].
#[derive(Debug)]
pub struct CompressedLayer {
    /// `sha256:HEX` of the uncompressed tar.
    pub diff_id: String,
    pub tar_size: u64,
    /// `sha256:HEX` of `blob`.
    pub digest: String,
    pub blob: Vec<u8>,
}

/// Serialises and compresses `layer`, memoised per process: debug builds of
/// gzip and sha256 are slow and tests write the same layers many times.
pub fn build_layer(layer: &LayerSpec, compression: Compression) -> Arc<CompressedLayer> {
    type Slot = Arc<OnceLock<Arc<CompressedLayer>>>;
    static CACHE: OnceLock<Mutex<HashMap<(LayerSpec, Compression), Slot>>> = OnceLock::new();
    let slot = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry((layer.clone(), compression))
        .or_default()
        .clone();
    // Concurrent callers for the same layer wait here instead of redoing it.
    slot.get_or_init(|| {
        let tar = layer.tar();
        let blob = compression.compress(&tar);
        Arc::new(CompressedLayer {
            diff_id: sha256_digest(&tar),
            tar_size: tar.len() as u64,
            digest: sha256_digest(&blob),
            blob,
        })
    })
    .clone()
}

/// What [`write_image`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    pub config_size: u64,
    pub layers: Vec<LayerBlob>,
    pub platform: Platform,
}

impl BuiltImage {
    /// Digests of the config and all layers.
    pub fn blob_digests(&self) -> Vec<String> {
        let mut digests = vec![self.config_digest.clone()];
        digests.extend(self.layers.iter().map(|l| l.digest.clone()));
        digests
    }
}

/// What [`write_multiarch`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltIndex {
    pub digest: String,
    pub size: u64,
    /// linux/amd64 then linux/arm64.
    pub images: Vec<BuiltImage>,
}

/// Runtime configuration written to the image config's `config` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "OCIDISK_TEST=1".into(),
            ],
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["sh".into(), "-c".into(), "echo hello".into()],
            user: "1000:1000".into(),
            working_dir: "/home/user".into(),
            labels: BTreeMap::from([("org.example.test".into(), "ocidisk".into())]),
        }
    }
}

/// Knobs for [`write_image_with`], including ways to build bad images.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    pub compression: Compression,
    pub platform: Platform,
    pub config: RuntimeConfig,
    /// Make the last `rootfs.diff_ids` entry the sha256 of something else.
    pub wrong_diff_id: bool,
    /// Leave the last layer's diff_id out of `rootfs.diff_ids`.
    pub missing_diff_id: bool,
    /// Use this media type for every layer descriptor (blob bytes unchanged).
    pub layer_media_type_override: Option<String>,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
}

impl ImageOptions {
    pub fn new(compression: Compression, platform: Platform) -> ImageOptions {
        ImageOptions {
            compression,
            platform,
            config: RuntimeConfig::default(),
            wrong_diff_id: false,
            missing_diff_id: false,
            layer_media_type_override: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// `sha256:HEX` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Path of blob `digest` inside the layout at `dir`.
pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest
        .split_once(':')
        .unwrap_or_else(|| panic!("bad digest {digest}"));
    dir.join("blobs").join(algorithm).join(hex)
}

/// Stores `data` as a blob of the layout at `dir`; returns its digest.
pub fn write_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    store_blob(dir, &digest, data);
    digest
}

/// Stores `data` under the (already computed) `digest`.
fn store_blob(dir: &Path, digest: &str, data: &[u8]) {
    let path = blob_path(dir, digest);
    if !path.exists() {
        fs::create_dir_all(path.parent().unwrap()).expect("create blobs dir");
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, data).expect("write blob");
        fs::rename(&tmp, &path).expect("rename blob");
    }
}

fn ensure_layout(dir: &Path) {
    fs::create_dir_all(dir.join("blobs/sha256")).expect("create layout");
    let marker = dir.join("oci-layout");
    if !marker.exists() {
        fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write oci-layout");
    }
}

/// Adds (or replaces) the `index.json` entry annotated with `tag`.
pub fn add_to_index(dir: &Path, tag: &str, mut descriptor: serde_json::Value) {
    ensure_layout(dir);
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = match fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).expect("index.json is JSON"),
        Err(_) => json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": [],
        }),
    };
    descriptor["annotations"] = json!({ REF_NAME_ANNOTATION: tag });
    let manifests = index["manifests"].as_array_mut().expect("manifests array");
    manifests.retain(|m| m["annotations"][REF_NAME_ANNOTATION] != json!(tag));
    manifests.push(descriptor);
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).expect("write index.json");
}

/// Writes (or adds to) an OCI layout at `dir` and tags the image `tag` in
/// `index.json`.
pub fn write_image(
    dir: &Path,
    tag: &str,
    layers: &[LayerSpec],
    compression: Compression,
    platform: &Platform,
) -> BuiltImage {
    write_image_with(
        dir,
        Some(tag),
        layers,
        &ImageOptions::new(compression, platform.clone()),
    )
}

/// Writes an image's blobs (layers, config, manifest) to the layout at
/// `dir`; with `Some(tag)` also tags the manifest in `index.json`.
pub fn write_image_with(
    dir: &Path,
    tag: Option<&str>,
    layers: &[LayerSpec],
    options: &ImageOptions,
) -> BuiltImage {
    ensure_layout(dir);
    let mut blobs = Vec::new();
    for layer in layers {
        let built = build_layer(layer, options.compression);
        store_blob(dir, &built.digest, &built.blob);
        blobs.push(LayerBlob {
            media_type: options
                .layer_media_type_override
                .clone()
                .unwrap_or_else(|| options.compression.media_type().to_string()),
            digest: built.digest.clone(),
            diff_id: built.diff_id.clone(),
            size: built.blob.len() as u64,
        });
    }
    let mut diff_ids: Vec<String> = blobs.iter().map(|b| b.diff_id.clone()).collect();
    if options.wrong_diff_id {
        let last = diff_ids.last_mut().expect("at least one layer");
        *last = sha256_digest(format!("not the diff_id of {last}").as_bytes());
    }
    if options.missing_diff_id {
        diff_ids.pop();
    }
    let rc = &options.config;
    let mut config = json!({
        "created": "2024-01-02T03:04:05Z",
        "author": "ocidisk test image generator",
        "architecture": options.platform.arch,
        "os": options.platform.os,
        "config": {
            "Env": rc.env,
            "Entrypoint": rc.entrypoint,
            "Cmd": rc.cmd,
            "User": rc.user,
            "WorkingDir": rc.working_dir,
            "Labels": rc.labels,
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|l| json!({
            "created": "2024-01-02T03:04:05Z",
            "created_by": l.comment,
        })).collect::<Vec<_>>(),
    });
    if let Some(variant) = &options.platform.variant {
        config["variant"] = json!(variant);
    }
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = write_blob(dir, &config_bytes);
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_OCI_CONFIG,
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": blobs.iter().map(|b| json!({
            "mediaType": b.media_type,
            "digest": b.digest,
            "size": b.size,
        })).collect::<Vec<_>>(),
    });
    if !options.annotations.is_empty() {
        manifest["annotations"] = json!(options.annotations);
    }
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = write_blob(dir, &manifest_bytes);
    if let Some(tag) = tag {
        add_to_index(
            dir,
            tag,
            json!({
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_bytes.len(),
                "platform": options.platform.to_json(),
            }),
        );
    }
    BuiltImage {
        manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        config_digest,
        config_size: config_bytes.len() as u64,
        layers: blobs,
        platform: options.platform.clone(),
    }
}

/// Layers of the per-platform images of [`write_multiarch`]: the standard
/// layers plus `/etc/arch` containing `ARCH\n` in the top layer.
pub fn multiarch_layers(platform: &Platform) -> Vec<LayerSpec> {
    standard_layers_with(vec![
        EntrySpec::text("/etc/arch", &format!("{}\n", platform.arch), 0o644).mtime(T3),
    ])
}

/// An image index with linux/amd64 and linux/arm64 (variant v8) images,
/// tagged `tag` in `index.json`. Layers 1 and 2 are the same blobs in both;
/// the configs and the top layers (with `/etc/arch`) differ per platform.
pub fn write_multiarch(dir: &Path, tag: &str, compression: Compression) -> BuiltIndex {
    let images: Vec<BuiltImage> = [Platform::linux_amd64(), Platform::linux_arm64()]
        .iter()
        .map(|platform| {
            write_image_with(
                dir,
                None,
                &multiarch_layers(platform),
                &ImageOptions::new(compression, platform.clone()),
            )
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": images.iter().map(|image| json!({
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "digest": image.manifest_digest,
            "size": image.manifest_size,
            "platform": image.platform.to_json(),
        })).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = write_blob(dir, &bytes);
    add_to_index(
        dir,
        tag,
        json!({
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "digest": digest,
            "size": bytes.len(),
        }),
    );
    BuiltIndex {
        digest,
        size: bytes.len() as u64,
        images,
    }
}

/// The standard 3-layer image for linux/amd64, tagged `tag` in the layout at `dir`.
pub fn write_standard(dir: &Path, tag: &str, compression: Compression) -> BuiltImage {
    write_image(
        dir,
        tag,
        &standard_layers(),
        compression,
        &Platform::linux_amd64(),
    )
}

/// The second image of [`sharing_layers`], tagged `tag`.
pub fn write_sharing_image(dir: &Path, tag: &str, compression: Compression) -> BuiltImage {
    write_image(
        dir,
        tag,
        &sharing_layers(),
        compression,
        &Platform::linux_amd64(),
    )
}

// ---------------------------------------------------------------------------
// Oracle
// ---------------------------------------------------------------------------

/// File type of an oracle entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
}

/// Expected (or scanned) state of one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OracleEntry {
    pub kind: Kind,
    /// Permission and setuid/setgid/sticky bits; `0o777` for symlinks.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Content length for files, target length for symlinks, else 0.
    pub size: u64,
    /// Hex sha256 of the content (files).
    pub sha256: Option<String>,
    /// Symlink target.
    pub target: Option<String>,
    /// `(major, minor)` of char/block devices.
    pub rdev: Option<(u32, u32)>,
    /// Extended attributes, values hex-encoded.
    pub xattrs: BTreeMap<String, String>,
    /// Same number for all names of one inode (non-directories with more
    /// than one name); numbered 0, 1, … in order of each group's first path.
    pub link_group: Option<u32>,
    /// Link count: names of the inode, or `2 + subdirectories` for dirs.
    pub nlink: u32,
    /// A directory that no layer has an entry for (created as an implied
    /// parent, `0755 root:root`, mtime 0). Always false in scanned trees.
    pub implied: bool,
}

/// Path (`/`, `/etc`, `/etc/passwd`, …) → expected entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Oracle {
    pub entries: BTreeMap<String, OracleEntry>,
}

impl Oracle {
    pub fn get(&self, path: &str) -> Option<&OracleEntry> {
        self.entries.get(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("oracle serialises")
    }

    /// Paths whose parent is `dir`.
    pub fn children(&self, dir: &str) -> Vec<&str> {
        self.entries
            .keys()
            .filter(|p| p.as_str() != "/" && parent_of(p) == dir)
            .map(String::as_str)
            .collect()
    }
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// An inode of the in-memory tree.
#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    size: u64,
    sha256: Option<String>,
    target: Option<String>,
    rdev: Option<(u32, u32)>,
    xattrs: BTreeMap<String, String>,
    implied: bool,
}

impl Node {
    fn implied_dir() -> Node {
        Node {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            sha256: None,
            target: None,
            rdev: None,
            xattrs: BTreeMap::new(),
            implied: true,
        }
    }

    fn from_spec(spec: &EntrySpec) -> Node {
        let (kind, size, sha256, target, rdev) = match &spec.kind {
            EntryKind::File(content) => {
                let (len, sha256) = content.sha256();
                (Kind::File, len, Some(sha256), None, None)
            }
            EntryKind::Dir => (Kind::Dir, 0, None, None, None),
            EntryKind::Symlink(t) => (Kind::Symlink, t.len() as u64, None, Some(t.clone()), None),
            EntryKind::CharDevice { major, minor } => {
                (Kind::Char, 0, None, None, Some((*major, *minor)))
            }
            EntryKind::BlockDevice { major, minor } => {
                (Kind::Block, 0, None, None, Some((*major, *minor)))
            }
            EntryKind::Fifo => (Kind::Fifo, 0, None, None, None),
            EntryKind::Hardlink(_) | EntryKind::Whiteout | EntryKind::OpaqueWhiteout => {
                unreachable!("not a node-creating entry")
            }
        };
        Node {
            kind,
            mode: if kind == Kind::Symlink {
                0o777
            } else {
                spec.mode & 0o7777
            },
            uid: spec.uid,
            gid: spec.gid,
            mtime: spec.mtime as i64,
            mtime_nsec: spec.mtime_nsec,
            size,
            sha256,
            target,
            rdev,
            xattrs: spec
                .xattrs
                .iter()
                .map(|(k, v)| (k.clone(), hex::encode(v)))
                .collect(),
            implied: false,
        }
    }
}

/// The merged tree while layers are applied.
struct Tree {
    paths: BTreeMap<String, usize>,
    nodes: Vec<Node>,
}

impl Tree {
    fn new() -> Tree {
        Tree {
            paths: BTreeMap::from([("/".to_string(), 0)]),
            nodes: vec![Node::implied_dir()],
        }
    }

    fn kind_at(&self, path: &str) -> Option<Kind> {
        self.paths.get(path).map(|&n| self.nodes[n].kind)
    }

    /// Unbinds `path` and everything below it (no-op if absent).
    fn remove_tree(&mut self, path: &str) {
        assert_ne!(path, "/", "cannot remove the root");
        self.paths.remove(path);
        self.remove_descendants(path);
    }

    fn remove_descendants(&mut self, path: &str) {
        let prefix = if path == "/" {
            "/".to_string()
        } else {
            format!("{path}/")
        };
        let doomed: Vec<String> = self
            .paths
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.paths.remove(&p);
        }
    }

    fn ensure_parents(&mut self, path: &str) {
        let parent = parent_of(path);
        if parent == "/" {
            return;
        }
        match self.kind_at(parent) {
            Some(Kind::Dir) => {}
            Some(other) => panic!("parent {parent} of {path} is a {other:?}, not a directory"),
            None => {
                self.ensure_parents(parent);
                self.nodes.push(Node::implied_dir());
                self.paths.insert(parent.to_string(), self.nodes.len() - 1);
            }
        }
    }

    fn apply_layer(&mut self, layer: &LayerSpec) {
        // Whiteouts only hide lower layers, whatever their position in the tar.
        for entry in &layer.entries {
            match entry.kind {
                EntryKind::Whiteout => self.remove_tree(&entry.path),
                EntryKind::OpaqueWhiteout => {
                    self.remove_descendants(&entry.path);
                    if self.kind_at(&entry.path) != Some(Kind::Dir) {
                        self.remove_tree(&entry.path);
                        self.ensure_parents(&entry.path);
                        self.nodes.push(Node::implied_dir());
                        self.paths.insert(entry.path.clone(), self.nodes.len() - 1);
                    }
                }
                _ => {}
            }
        }
        for entry in &layer.entries {
            match &entry.kind {
                EntryKind::Whiteout | EntryKind::OpaqueWhiteout => {}
                EntryKind::Hardlink(target) => {
                    let node = *self
                        .paths
                        .get(target)
                        .unwrap_or_else(|| panic!("hard link {} to missing {target}", entry.path));
                    let existing = &self.nodes[node];
                    assert_ne!(existing.kind, Kind::Dir, "hard link to directory {target}");
                    let mode = if existing.kind == Kind::Symlink {
                        0o777
                    } else {
                        entry.mode & 0o7777
                    };
                    let xattrs: BTreeMap<String, String> = entry
                        .xattrs
                        .iter()
                        .map(|(k, v)| (k.clone(), hex::encode(v)))
                        .collect();
                    assert!(
                        (
                            mode,
                            entry.uid,
                            entry.gid,
                            entry.mtime as i64,
                            entry.mtime_nsec,
                            &xattrs
                        ) == (
                            existing.mode,
                            existing.uid,
                            existing.gid,
                            existing.mtime,
                            existing.mtime_nsec,
                            &existing.xattrs
                        ),
                        "hard link {} must carry the metadata of {target} \
                         (use EntrySpec::hardlink_of)",
                        entry.path
                    );
                    assert_ne!(&entry.path, target, "hard link to itself");
                    self.remove_tree(&entry.path);
                    self.ensure_parents(&entry.path);
                    self.paths.insert(entry.path.clone(), node);
                }
                EntryKind::Dir if self.kind_at(&entry.path) == Some(Kind::Dir) => {
                    let node = self.paths[&entry.path];
                    self.nodes[node] = Node::from_spec(entry);
                }
                _ => {
                    self.remove_tree(&entry.path);
                    self.ensure_parents(&entry.path);
                    self.nodes.push(Node::from_spec(entry));
                    self.paths.insert(entry.path.clone(), self.nodes.len() - 1);
                }
            }
        }
    }

    fn into_oracle(self) -> Oracle {
        let mut names: HashMap<usize, u32> = HashMap::new();
        let mut subdirs: HashMap<String, u32> = HashMap::new();
        for (path, &node) in &self.paths {
            *names.entry(node).or_default() += 1;
            if path != "/" && self.nodes[node].kind == Kind::Dir {
                *subdirs.entry(parent_of(path).to_string()).or_default() += 1;
            }
        }
        let mut groups: HashMap<usize, u32> = HashMap::new();
        let mut entries = BTreeMap::new();
        for (path, &node) in &self.paths {
            let n = &self.nodes[node];
            let (nlink, link_group) = if n.kind == Kind::Dir {
                (2 + subdirs.get(path).copied().unwrap_or(0), None)
            } else if names[&node] > 1 {
                let next = groups.len() as u32;
                (names[&node], Some(*groups.entry(node).or_insert(next)))
            } else {
                (1, None)
            };
            entries.insert(
                path.clone(),
                OracleEntry {
                    kind: n.kind,
                    mode: n.mode,
                    uid: n.uid,
                    gid: n.gid,
                    mtime: n.mtime,
                    mtime_nsec: n.mtime_nsec,
                    size: n.size,
                    sha256: n.sha256.clone(),
                    target: n.target.clone(),
                    rdev: n.rdev,
                    xattrs: n.xattrs.clone(),
                    link_group,
                    nlink,
                    implied: n.implied,
                },
            );
        }
        Oracle { entries }
    }
}

/// The merged tree after applying `layers` bottom to top.
pub fn oracle(layers: &[LayerSpec]) -> Oracle {
    let mut tree = Tree::new();
    for layer in layers {
        tree.apply_layer(layer);
    }
    tree.into_oracle()
}

// ---------------------------------------------------------------------------
// Scanning real trees and comparing
// ---------------------------------------------------------------------------

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

/// All extended attributes of `path` (not following symlinks), hex values.
pub fn read_xattrs(path: &Path) -> BTreeMap<String, String> {
    let c_path = cstring(path);
    let mut out = BTreeMap::new();
    // SAFETY: c_path is NUL-terminated; a null buffer with size 0 queries the size.
    let size = unsafe { libc::llistxattr(c_path.as_ptr(), std::ptr::null_mut(), 0) };
    if size <= 0 {
        return out;
    }
    let mut names = vec![0u8; size as usize];
    // SAFETY: the buffer is valid for names.len() bytes.
    let size = unsafe {
        libc::llistxattr(
            c_path.as_ptr(),
            names.as_mut_ptr().cast::<libc::c_char>(),
            names.len(),
        )
    };
    assert!(size >= 0, "llistxattr {}", path.display());
    for name in names[..size as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let c_name = CString::new(name).expect("xattr name");
        // SAFETY: as above.
        let len =
            unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(len >= 0, "lgetxattr {} {:?}", path.display(), c_name);
        let mut value = vec![0u8; len as usize];
        // SAFETY: the buffer is valid for value.len() bytes.
        let len = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                value.as_mut_ptr().cast::<libc::c_void>(),
                value.len(),
            )
        };
        assert!(len >= 0, "lgetxattr {} {:?}", path.display(), c_name);
        value.truncate(len as usize);
        out.insert(
            String::from_utf8_lossy(name).into_owned(),
            hex::encode(value),
        );
    }
    out
}

fn file_sha256(path: &Path) -> String {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).expect("read file");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// glibc's `gnu_dev_major` / `gnu_dev_minor`.
pub fn dev_major_minor(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// Reads the tree under `root` (not following symlinks) into an [`Oracle`]
/// (`/` is `root` itself). Hard-link groups are found by inode number and
/// numbered like the oracle's; xattrs are read with `llistxattr`.
pub fn scan_tree(root: &Path) -> Oracle {
    let mut raw: Vec<(String, OracleEntry, u64)> = Vec::new();
    let mut stack = vec![("/".to_string(), root.to_path_buf())];
    while let Some((path, fs_path)) = stack.pop() {
        let meta = fs::symlink_metadata(&fs_path)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", fs_path.display()));
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            panic!("unexpected file type at {}", fs_path.display())
        };
        let target = (kind == Kind::Symlink).then(|| {
            let t = fs::read_link(&fs_path).expect("readlink");
            String::from_utf8(t.as_os_str().as_bytes().to_vec()).expect("UTF-8 symlink target")
        });
        let entry = OracleEntry {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            size: match kind {
                Kind::File | Kind::Symlink => meta.size(),
                _ => 0,
            },
            sha256: (kind == Kind::File).then(|| file_sha256(&fs_path)),
            target,
            rdev: matches!(kind, Kind::Char | Kind::Block).then(|| dev_major_minor(meta.rdev())),
            xattrs: read_xattrs(&fs_path),
            link_group: None,
            nlink: meta.nlink() as u32,
            implied: false,
        };
        raw.push((path.clone(), entry, meta.ino()));
        if kind == Kind::Dir {
            for child in fs::read_dir(&fs_path).expect("read_dir") {
                let child = child.expect("dir entry");
                let name = String::from_utf8(child.file_name().as_bytes().to_vec())
                    .expect("UTF-8 file name");
                let child_path = if path == "/" {
                    format!("/{name}")
                } else {
                    format!("{path}/{name}")
                };
                stack.push((child_path, child.path()));
            }
        }
    }
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    let mut names: HashMap<u64, u32> = HashMap::new();
    for (_, entry, ino) in &raw {
        if entry.kind != Kind::Dir {
            *names.entry(*ino).or_default() += 1;
        }
    }
    let mut groups: HashMap<u64, u32> = HashMap::new();
    let mut entries = BTreeMap::new();
    for (path, mut entry, ino) in raw {
        if entry.kind != Kind::Dir && names[&ino] > 1 {
            let next = groups.len() as u32;
            entry.link_group = Some(*groups.entry(ino).or_insert(next));
        }
        entries.insert(path, entry);
    }
    Oracle { entries }
}

/// What [`compare_trees`] checks. `Default` checks everything.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    pub mode: bool,
    pub owner: bool,
    /// mtime seconds and nanoseconds of non-symlinks.
    pub mtime: bool,
    /// mtime of symlinks.
    pub symlink_mtime: bool,
    /// Metadata (mode, owner, mtime) of implied directories and of `/`.
    pub implied_metadata: bool,
    pub xattrs: bool,
    /// xattr names ignored on both sides (e.g. `security.selinux`).
    pub ignore_xattrs: Vec<String>,
    pub nlink: bool,
    pub link_groups: bool,
    /// Paths (and everything below them) that are not compared at all.
    pub skip_paths: Vec<String>,
    /// Paths (exactly these) whose mtime is not compared.
    pub ignore_mtime: Vec<String>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            mode: true,
            owner: true,
            mtime: true,
            symlink_mtime: true,
            implied_metadata: true,
            xattrs: true,
            ignore_xattrs: Vec::new(),
            nlink: true,
            link_groups: true,
            skip_paths: Vec::new(),
            ignore_mtime: Vec::new(),
        }
    }
}

/// Human-readable differences between `expected` and `actual` (empty when
/// they match under `options`).
pub fn compare_trees(expected: &Oracle, actual: &Oracle, options: &CompareOptions) -> Vec<String> {
    let skipped = |path: &str| {
        options
            .skip_paths
            .iter()
            .any(|s| path == s || path.starts_with(&format!("{s}/")))
    };
    let mut diffs = Vec::new();
    for (path, want) in &expected.entries {
        if skipped(path) {
            continue;
        }
        let Some(got) = actual.entries.get(path) else {
            diffs.push(format!("{path}: missing (expected {:?})", want.kind));
            continue;
        };
        let mut field = |name: &str, w: String, g: String| {
            if w != g {
                diffs.push(format!("{path}: {name} expected {w}, got {g}"));
            }
        };
        if want.kind != got.kind {
            field(
                "kind",
                format!("{:?}", want.kind),
                format!("{:?}", got.kind),
            );
            continue;
        }
        let meta = !(want.implied || path == "/") || options.implied_metadata;
        if options.mode && meta {
            field(
                "mode",
                format!("{:o}", want.mode),
                format!("{:o}", got.mode),
            );
        }
        if options.owner && meta {
            field(
                "owner",
                format!("{}:{}", want.uid, want.gid),
                format!("{}:{}", got.uid, got.gid),
            );
        }
        let mtime = if want.kind == Kind::Symlink {
            options.symlink_mtime
        } else {
            options.mtime
        };
        if mtime && meta && !options.ignore_mtime.contains(path) {
            field(
                "mtime",
                format!("{}.{:09}", want.mtime, want.mtime_nsec),
                format!("{}.{:09}", got.mtime, got.mtime_nsec),
            );
        }
        if matches!(want.kind, Kind::File | Kind::Symlink) {
            field("size", want.size.to_string(), got.size.to_string());
        }
        field(
            "sha256",
            format!("{:?}", want.sha256),
            format!("{:?}", got.sha256),
        );
        field(
            "target",
            format!("{:?}", want.target),
            format!("{:?}", got.target),
        );
        field(
            "rdev",
            format!("{:?}", want.rdev),
            format!("{:?}", got.rdev),
        );
        if options.xattrs {
            let filter = |x: &BTreeMap<String, String>| {
                x.iter()
                    .filter(|(k, _)| !options.ignore_xattrs.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<BTreeMap<_, _>>()
            };
            field(
                "xattrs",
                format!("{:?}", filter(&want.xattrs)),
                format!("{:?}", filter(&got.xattrs)),
            );
        }
        if options.nlink {
            field("nlink", want.nlink.to_string(), got.nlink.to_string());
        }
        if options.link_groups {
            field(
                "link_group",
                format!("{:?}", want.link_group),
                format!("{:?}", got.link_group),
            );
        }
    }
    for path in actual.entries.keys() {
        if !expected.entries.contains_key(path) && !skipped(path) {
            diffs.push(format!("{path}: unexpected entry"));
        }
    }
    diffs
}
