//! Which file format a disk image is written in — raw or qcow2 — chosen the
//! way users of qemu-img expect: `--format` when given, else the output's
//! extension (`.qcow2`), else raw.

use std::path::Path;

use crate::qcow2::{Codec, DEFAULT_CLUSTER_BITS, Qcow2Error, Qcow2Options};

/// The file format of an image written to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// A sparse raw image: the device's bytes as they are.
    #[default]
    Raw,
    /// A qcow2 v3 file.
    Qcow2(Qcow2Options),
}

impl ImageFormat {
    /// Its name, as `qemu-img info` prints it.
    pub fn name(&self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2(_) => "qcow2",
        }
    }
}

/// Errors choosing a format.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Not a format ocidisk writes.
    #[error("unknown image format {0:?}: use raw or qcow2")]
    Unknown(String),
    /// Compression or a cluster size asked of a raw image.
    #[error(
        "{0} needs {1} qcow2 (or an output name ending in .qcow2): a raw image is the device's bytes as they are"
    )]
    RawOption(&'static str, &'static str),
    /// A bad qcow2 option.
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
}

/// What the user asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormatRequest {
    /// `--format raw|qcow2`.
    pub format: Option<String>,
    /// `--compress[=zlib|zstd]`: `Some("")` for the bare flag.
    pub compress: Option<String>,
    /// `--cluster-size BYTES`.
    pub cluster_size: Option<u64>,
    /// The flags' names, for errors: (format, compress, cluster size).
    pub names: FlagNames,
}

/// What the format flags are called where they were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagNames {
    /// The format flag.
    pub format: &'static str,
    /// The compression flag.
    pub compress: &'static str,
    /// The cluster size flag.
    pub cluster_size: &'static str,
}

impl FlagNames {
    /// `materialize`'s flags.
    pub const MATERIALIZE: FlagNames = FlagNames {
        format: "--format",
        compress: "--compress",
        cluster_size: "--cluster-size",
    };
    /// The `--flush-to` flags of `mount` and `serve`.
    pub const FLUSH_TO: FlagNames = FlagNames {
        format: "--flush-format",
        compress: "--flush-compress",
        cluster_size: "--flush-cluster-size",
    };
}

impl Default for FlagNames {
    fn default() -> FlagNames {
        FlagNames::MATERIALIZE
    }
}

impl FormatRequest {
    /// The format for an image written to `output`.
    pub fn resolve(&self, output: &Path) -> Result<ImageFormat, FormatError> {
        let qcow2 = match self.format.as_deref() {
            Some("raw") => false,
            Some("qcow2") => true,
            Some(other) => return Err(FormatError::Unknown(other.to_string())),
            None => output
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("qcow2")),
        };
        if !qcow2 {
            let n = self.names;
            if self.compress.is_some() {
                return Err(FormatError::RawOption(n.compress, n.format));
            }
            if self.cluster_size.is_some() {
                return Err(FormatError::RawOption(n.cluster_size, n.format));
            }
            return Ok(ImageFormat::Raw);
        }
        let compression = match self.compress.as_deref() {
            None => None,
            Some("") => Some(Codec::default()),
            Some(name) => Some(name.parse()?),
        };
        let cluster_bits = match self.cluster_size {
            Some(bytes) => Qcow2Options::cluster_bits_for(bytes)?,
            None => DEFAULT_CLUSTER_BITS,
        };
        Ok(ImageFormat::Qcow2(Qcow2Options {
            cluster_bits,
            compression,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(format: Option<&str>, compress: Option<&str>, cluster: Option<u64>) -> FormatRequest {
        FormatRequest {
            format: format.map(String::from),
            compress: compress.map(String::from),
            cluster_size: cluster,
            names: FlagNames::MATERIALIZE,
        }
    }

    #[test]
    fn extension_flag_and_errors() {
        let q = |c, b| {
            ImageFormat::Qcow2(Qcow2Options {
                cluster_bits: b,
                compression: c,
            })
        };
        let none = req(None, None, None);
        assert_eq!(none.resolve(Path::new("a.img")).unwrap(), ImageFormat::Raw);
        assert_eq!(none.resolve(Path::new("a.QCOW2")).unwrap(), q(None, 16));
        let raw = req(Some("raw"), None, None);
        assert_eq!(raw.resolve(Path::new("a.qcow2")).unwrap(), ImageFormat::Raw);
        let c = req(None, Some(""), Some(2 << 20));
        assert_eq!(
            c.resolve(Path::new("x.qcow2")).unwrap(),
            q(Some(Codec::Zlib), 21)
        );
        let z = req(Some("qcow2"), Some("zstd"), None);
        assert_eq!(z.resolve(Path::new("x")).unwrap(), q(Some(Codec::Zstd), 16));
        let e = |r: FormatRequest, p: &str| r.resolve(Path::new(p)).unwrap_err().to_string();
        assert!(e(req(Some("vmdk"), None, None), "x").contains("unknown image format \"vmdk\""));
        assert!(e(req(None, Some(""), None), "x.img").contains("--compress needs --format qcow2"));
        assert!(e(req(None, Some("lz4"), None), "x.qcow2").contains("unknown qcow2 compression"));
        assert!(e(req(None, None, Some(3000)), "x.qcow2").contains("cluster size 3000"));
        assert!(e(req(None, None, Some(4096)), "x.img").contains("--cluster-size needs"));
    }
}
