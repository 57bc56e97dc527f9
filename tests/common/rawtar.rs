//! Hand-made tar streams for hostile-input tests: every header field is
//! set byte by byte (GNU sparse maps in any order, PAX records holding NUL,
//! device numbers no tool would write), and [`write_layout`] wraps raw
//! layers in a valid OCI layout so that the only thing wrong is the layer.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::imagegen::{self, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST};

/// One 512-byte header with the common fields set.
pub struct Header(pub [u8; 512]);

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{v:0w$o}");
    assert!(s.len() <= w, "{v} does not fit a {w}-digit field");
    field[..w].copy_from_slice(s.as_bytes());
    field[w] = 0;
}

impl Header {
    /// A POSIX ustar header of type `flag` for `name` (≤ 100 bytes).
    pub fn ustar(name: &[u8], flag: u8, size: u64) -> Header {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 1_600_000_000);
        h[156] = flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        Header(h)
    }

    /// A GNU header (`ustar  \0` magic), as GNU tar writes for sparse files.
    pub fn gnu(name: &[u8], flag: u8, size: u64) -> Header {
        let mut h = Header::ustar(name, flag, size);
        h.0[257..265].copy_from_slice(b"ustar  \0");
        h
    }

    pub fn mode(mut self, mode: u32) -> Header {
        octal(&mut self.0[100..108], u64::from(mode));
        self
    }

    pub fn link(mut self, target: &[u8]) -> Header {
        self.0[157..157 + target.len()].copy_from_slice(target);
        self
    }

    pub fn device(mut self, major: u64, minor: u64) -> Header {
        octal(&mut self.0[329..337], major);
        octal(&mut self.0[337..345], minor);
        self
    }

    /// GNU sparse: up to 4 (offset, length) pairs in the header, the real
    /// size, and whether extension blocks follow.
    pub fn sparse(mut self, segments: &[(u64, u64)], realsize: u64, extended: bool) -> Header {
        assert!(segments.len() <= 4);
        for (i, (o, l)) in segments.iter().enumerate() {
            let at = 386 + i * 24;
            octal(&mut self.0[at..at + 12], *o);
            octal(&mut self.0[at + 12..at + 24], *l);
        }
        self.0[482] = u8::from(extended);
        octal(&mut self.0[483..495], realsize);
        self
    }

    /// The header with its checksum.
    pub fn bytes(mut self) -> [u8; 512] {
        self.0[148..156].copy_from_slice(b"        ");
        let sum: u64 = self.0.iter().map(|b| u64::from(*b)).sum();
        octal(&mut self.0[148..155], sum);
        self.0[155] = b' ';
        self.0
    }
}

/// A tar stream being built.
#[derive(Default)]
pub struct RawTar(pub Vec<u8>);

impl RawTar {
    pub fn new() -> RawTar {
        RawTar(Vec::new())
    }

    /// A header, then `data` padded to a block.
    pub fn entry(&mut self, h: Header, data: &[u8]) -> &mut RawTar {
        self.0.extend_from_slice(&h.bytes());
        self.block_data(data)
    }

    /// Raw bytes padded to a block (file data, a GNU sparse extension).
    pub fn block_data(&mut self, data: &[u8]) -> &mut RawTar {
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0, pad));
        self
    }

    /// A PAX extended header (`x`) with `records` (values may hold any byte).
    pub fn pax(&mut self, records: &[(&[u8], &[u8])]) -> &mut RawTar {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            write!(body, "{len} ").unwrap();
            body.extend_from_slice(k);
            body.push(b'=');
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let h = Header::ustar(b"PaxHeaders/x", b'x', body.len() as u64);
        self.entry(h, &body)
    }

    /// A regular file.
    pub fn file(&mut self, name: &[u8], data: &[u8]) -> &mut RawTar {
        self.entry(Header::ustar(name, b'0', data.len() as u64), data)
    }

    /// A directory.
    pub fn dir(&mut self, name: &[u8]) -> &mut RawTar {
        self.entry(Header::ustar(name, b'5', 0).mode(0o755), &[])
    }

    /// The two zero blocks that end an archive.
    pub fn finish(&mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0, 1024));
        std::mem::take(&mut self.0)
    }
}

/// Write an OCI layout at `dir` tagged `tag` whose layers are these tars,
/// gzip-compressed, with correct digests, diff_ids and sizes.
pub fn write_layout(dir: &Path, tag: &str, tars: &[Vec<u8>]) {
    let layers: Vec<(Vec<u8>, String)> = tars
        .iter()
        .map(|tar| {
            (
                imagegen::Compression::Gzip.compress(tar),
                imagegen::sha256_digest(tar),
            )
        })
        .collect();
    write_layout_blobs(dir, tag, &layers);
}

/// Write an OCI layout at `dir` tagged `tag` whose layers are these gzip
/// blobs with these diff_ids.
pub fn write_layout_blobs(dir: &Path, tag: &str, blobs: &[(Vec<u8>, String)]) {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (blob, diff_id) in blobs {
        layers.push(json!({
            "mediaType": imagegen::MEDIA_TYPE_OCI_LAYER_GZIP,
            "digest": imagegen::write_blob(dir, blob),
            "size": blob.len(),
        }));
        diff_ids.push(diff_id.clone());
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_OCI_CONFIG,
            "digest": imagegen::write_blob(dir, &config),
            "size": config.len(),
        },
        "layers": layers,
    }))
    .unwrap();
    let digest = imagegen::write_blob(dir, &manifest);
    imagegen::add_to_index(
        dir,
        tag,
        json!({
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "digest": digest,
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
        }),
    );
}
