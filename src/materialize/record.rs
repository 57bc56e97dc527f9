//! The record beside a raw image (`IMG.ocidisk.json`) that says which
//! image and options made it, so that `materialize --base IMG` can re-plan
//! it from the cached layer indexes and check that it is updating what it
//! thinks it is. It also stamps the file (length, modification time) as it
//! was when ocidisk finished it, and marks an in-place update under way
//! until it is done. Written with temp file + rename; a missing or
//! unreadable record makes the image foreign.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::fs::{Filesystem, FsOptions, LAYOUT_VERSION};
use crate::source::manifest::Compression;

/// The record's format version.
const VERSION: u32 = 1;

/// Errors reading or writing a record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// No record: the image was not written by ocidisk (or not by one
    /// that records).
    #[error(
        "{image} has no {record}: it was not written by ocidisk materialize, so it cannot be a --base"
    )]
    Missing {
        /// The image.
        image: PathBuf,
        /// The record's file name.
        record: String,
    },
    /// The record does not parse.
    #[error("{path} is damaged ({detail}); {image} cannot be a --base")]
    Damaged {
        /// The record.
        path: PathBuf,
        /// The image.
        image: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One layer as the plan used it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLayer {
    /// The blob's digest.
    pub digest: Digest,
    /// Its uncompressed tar's digest.
    pub diff_id: Digest,
    /// `none`, `gzip` or `zstd`.
    pub compression: String,
}

impl RecordLayer {
    /// The record of a layer.
    pub fn new(digest: &Digest, diff_id: &Digest, compression: Compression) -> RecordLayer {
        RecordLayer {
            digest: digest.clone(),
            diff_id: diff_id.clone(),
            compression: match compression {
                Compression::None => "none",
                Compression::Gzip => "gzip",
                Compression::Zstd => "zstd",
            }
            .into(),
        }
    }

    /// Its compression, if the name is one ocidisk knows.
    pub fn compression(&self) -> Option<Compression> {
        match self.compression.as_str() {
            "none" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// The filesystem options as given (before UUID and seed are derived).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordFs {
    /// `ext4`, `ext3`, `xfs`.
    pub filesystem: String,
    /// `--size` in bytes, if given.
    pub size: Option<u64>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--uuid` as hex, if given.
    pub uuid: Option<String>,
    /// The seed as hex, if given.
    pub seed: Option<String>,
}

impl RecordFs {
    /// The record of `opts`.
    pub fn new(opts: &FsOptions) -> RecordFs {
        RecordFs {
            filesystem: opts.filesystem.name().into(),
            size: opts.size,
            read_only: opts.read_only,
            uuid: opts.uuid.map(hex::encode),
            seed: opts.seed.map(hex::encode),
        }
    }

    /// The options back, if they parse.
    pub fn options(&self) -> Option<FsOptions> {
        let bytes16 = |s: &Option<String>| -> Option<Option<[u8; 16]>> {
            match s {
                None => Some(None),
                Some(h) => hex::decode(h).ok()?.try_into().ok().map(Some),
            }
        };
        Some(FsOptions {
            filesystem: self.filesystem.parse::<Filesystem>().ok()?,
            size: self.size,
            read_only: self.read_only,
            uuid: bytes16(&self.uuid)?,
            seed: bytes16(&self.seed)?,
        })
    }
}

/// The file as ocidisk left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Length in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: u128,
}

impl Stamp {
    /// The stamp of the file at `path` now.
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        let m = std::fs::metadata(path)?;
        let mtime_ns = m
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Stamp {
            len: m.len(),
            mtime_ns,
        })
    }
}

/// What made an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    /// The reference as resolved.
    pub reference: String,
    /// The image digest.
    pub image_id: Digest,
    /// The layers, bottom first (with the `--init` layer if any).
    pub layers: Vec<RecordLayer>,
    /// The filesystem options as given.
    pub fs: RecordFs,
    /// The device size the plan gave.
    pub device_size: u64,
}

/// The record of one image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Record format version.
    pub version: u32,
    /// The ocidisk that wrote the image, for people.
    pub ocidisk: String,
    /// The writers' layout version ([`LAYOUT_VERSION`]).
    pub layout: u32,
    /// What the image holds.
    pub made: Made,
    /// The file when ocidisk finished it (`None` while an update runs).
    pub stamp: Option<Stamp>,
    /// An in-place update to this image under way: until it finishes the
    /// file is neither `made` nor this.
    pub updating_to: Option<Made>,
}

impl Record {
    /// A record of a finished image.
    pub fn finished(made: Made, stamp: Stamp) -> Record {
        Record {
            version: VERSION,
            ocidisk: env!("CARGO_PKG_VERSION").into(),
            layout: LAYOUT_VERSION,
            made,
            stamp: Some(stamp),
            updating_to: None,
        }
    }

    /// Where the record of `image` lives.
    pub fn path_of(image: &Path) -> PathBuf {
        let mut name = image.file_name().unwrap_or_default().to_os_string();
        name.push(".ocidisk.json");
        image.with_file_name(name)
    }

    /// Read the record of `image`.
    pub fn read(image: &Path) -> Result<Record, RecordError> {
        let path = Record::path_of(image);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RecordError::Missing {
                    image: image.to_path_buf(),
                    record: path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                });
            }
            Err(source) => return Err(RecordError::Io { path, source }),
        };
        let damaged = |detail: String| RecordError::Damaged {
            path: path.clone(),
            image: image.to_path_buf(),
            detail,
        };
        let r: Record = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        if r.version != VERSION {
            return Err(damaged(format!("record version {}", r.version)));
        }
        Ok(r)
    }

    /// Write the record of `image` (temp file + rename, synced).
    pub fn write(&self, image: &Path) -> Result<(), RecordError> {
        let path = Record::path_of(image);
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| RecordError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        crate::cache::write_atomic(dir, &path, &bytes).map_err(|e| RecordError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        sync_dir(dir);
        Ok(())
    }

    /// Remove the record of `image`, if any.
    pub fn remove(image: &Path) -> Result<(), RecordError> {
        let path = Record::path_of(image);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RecordError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

/// Make a rename in `dir` durable (best effort: some filesystems refuse
/// fsync on directories).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_options_come_back() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.img");
        assert!(matches!(
            Record::read(&img),
            Err(RecordError::Missing { .. })
        ));
        let opts = FsOptions {
            filesystem: Filesystem::Ext3,
            size: Some(1 << 30),
            read_only: true,
            uuid: Some([7; 16]),
            seed: None,
        };
        let made = Made {
            reference: "oci:x:v1".into(),
            image_id: Digest::sha256_of(b"i"),
            layers: vec![RecordLayer::new(
                &Digest::sha256_of(b"l"),
                &Digest::sha256_of(b"t"),
                Compression::Gzip,
            )],
            fs: RecordFs::new(&opts),
            device_size: 4096,
        };
        let r = Record::finished(
            made,
            Stamp {
                len: 1,
                mtime_ns: 2,
            },
        );
        r.write(&img).unwrap();
        assert_eq!(
            Record::path_of(&img),
            d.path().join("disk.img.ocidisk.json")
        );
        let back = Record::read(&img).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.made.fs.options(), Some(opts));
        assert_eq!(back.made.layers[0].compression(), Some(Compression::Gzip));
        std::fs::write(Record::path_of(&img), b"{").unwrap();
        assert!(matches!(
            Record::read(&img),
            Err(RecordError::Damaged { .. })
        ));
        Record::remove(&img).unwrap();
        Record::remove(&img).unwrap();
    }
}
