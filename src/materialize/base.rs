//! `materialize NEW OUT --base OLD`: an image for a new version from the
//! image of an old one, writing only what differs.
//!
//! OLD's record ([`super::record`]) says which image and options made it;
//! OLD's plan is recomputed from the cached layer indexes and checked
//! against the file (its stamp, and every metadata block byte for byte), so
//! a foreign or modified OLD is refused. The two plans are compared
//! ([`crate::fs::compare`]); OUT starts as a copy of OLD (a reflink where
//! the host filesystem offers one, else `copy_file_range` over OLD's data)
//! and every changed range is punched out and written from NEW's plan,
//! streaming only the layers that have bytes there. The result is the
//! bytes of a fresh `materialize NEW`.
//!
//! OUT may be OLD: then the record first says the update is under way and
//! the first block (the primary superblock) is written last, so a crash
//! leaves an image that neither mounts as OLD nor passes as NEW, and that
//! the next `--base` run with the same NEW finishes (rewriting every changed
//! range is idempotent). Anything else is refused until it is finished.
//!
//! For tests, `OCIDISK_TEST_UPDATE_PAUSE_MS` makes an update pause that
//! long after it has punched and rewritten the metadata, so a test can kill
//! it in the middle.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::MaterializeError;
use super::record::{Made, Record, RecordError, Stamp};
use super::write::{LayerBlob, Sink, copy_layers, write_nonzero};
use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::fs::compare::{self, ChunkCount, Side};
use crate::fs::{self, BLOCK_SIZE, DataExtent, FsImage, LAYOUT_VERSION, Region};
use crate::layer_index::IndexStore;
use crate::partial::{self, PartialFile};
use crate::pull::PullProgress;
use crate::sparse::{copy_file, punch};

/// Errors using an image as a base.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// The record is missing or damaged.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The output is not a raw image.
    #[error("--base updates raw images; write {0} as raw (qcow2 outputs are written whole)")]
    NotRaw(PathBuf),
    /// Written by an ocidisk with another layout.
    #[error(
        "{image} was written with layout {theirs} (ocidisk {version}); this ocidisk writes layout {LAYOUT_VERSION}: materialize it afresh"
    )]
    Layout {
        /// The image.
        image: PathBuf,
        /// Its layout version.
        theirs: u32,
        /// The ocidisk that wrote it.
        version: String,
    },
    /// An unfinished in-place update to another image.
    #[error(
        "{image} is half-way through an update to {target}: finish it first with `ocidisk materialize {target} {image} --base {image}`"
    )]
    Unfinished {
        /// The image.
        image: PathBuf,
        /// The reference it was being updated to.
        target: String,
    },
    /// The file changed since ocidisk wrote it.
    #[error("{image} was modified after ocidisk wrote it ({detail}); it cannot be a --base")]
    Modified {
        /// The image.
        image: PathBuf,
        /// What differs.
        detail: String,
    },
    /// A layer of OLD is no longer in the cache.
    #[error(
        "{image} needs layer {layer}, which is no longer in the cache: materialize without --base"
    )]
    MissingLayer {
        /// The image.
        image: PathBuf,
        /// The layer.
        layer: Digest,
    },
    /// The record names options or layers this ocidisk cannot use.
    #[error("{image}'s record names {what} that this ocidisk does not know")]
    Unknown {
        /// The image.
        image: PathBuf,
        /// What.
        what: String,
    },
    /// Re-planning OLD failed.
    #[error("re-planning {image}: {source}")]
    Plan {
        /// The image.
        image: PathBuf,
        /// The error.
        source: Box<fs::FsError>,
    },
    /// Reading or copying OLD failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// An image to update from.
#[derive(Debug)]
pub struct Base {
    path: PathBuf,
    record: Record,
    /// A copy of OLD under way into OUT's temporary file (OUT is not OLD).
    copy: Option<std::thread::JoinHandle<Result<PartialFile, MaterializeError>>>,
}

/// What an update did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpdateReport {
    /// The base image.
    pub base: PathBuf,
    /// Updated in place (OUT was OLD).
    pub in_place: bool,
    /// Finished an update a crash had interrupted.
    pub resumed: bool,
    /// Device bytes rewritten.
    pub changed_bytes: u64,
    /// NEW's non-zero 512 KiB chunks and those kept from OLD.
    pub chunks: ChunkCount,
}

impl Base {
    /// Open OLD: read its record and check it is one this ocidisk can
    /// update from (before anything is pulled).
    pub fn open(path: &Path) -> Result<Base, BaseError> {
        let record = Record::read(path)?;
        if record.layout != LAYOUT_VERSION {
            return Err(BaseError::Layout {
                image: path.to_path_buf(),
                theirs: record.layout,
                version: record.ocidisk.clone(),
            });
        }
        std::fs::metadata(path).map_err(|source| BaseError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Base {
            path: path.to_path_buf(),
            record,
            copy: None,
        })
    }

    /// Start copying OLD into a temporary file for `output` in the
    /// background (unless `output` is OLD), so the copy overlaps pulling
    /// and planning. Whatever is refused later, the copy is removed.
    pub fn start_copy(&mut self, output: &Path) {
        if same_file(&self.path, output) {
            return;
        }
        let (from, output) = (self.path.clone(), output.to_path_buf());
        self.copy = Some(std::thread::spawn(move || copy_to_partial(&from, &output)));
    }

    /// OLD's plan from the cached layer indexes, with its layers' digests.
    pub fn plan(&self, cache: &BlobCache) -> Result<(FsImage, Vec<Digest>), BaseError> {
        let made = &self.record.made;
        let unknown = |what: String| BaseError::Unknown {
            image: self.path.clone(),
            what,
        };
        let opts = made
            .fs
            .options()
            .ok_or_else(|| unknown(format!("filesystem options {:?}", made.fs)))?;
        let store = IndexStore::new(cache).map_err(|e| BaseError::Io {
            path: cache.root().to_path_buf(),
            source: io::Error::other(e.to_string()),
        })?;
        let mut indexes = Vec::with_capacity(made.layers.len());
        for l in &made.layers {
            let ix = match store.load(&l.digest) {
                Some(ix) => ix,
                None => {
                    let path = cache.blob_path(&l.digest);
                    let compression = l
                        .compression()
                        .ok_or_else(|| unknown(format!("compression {:?}", l.compression)))?;
                    if !path.is_file() {
                        return Err(BaseError::MissingLayer {
                            image: self.path.clone(),
                            layer: l.digest.clone(),
                        });
                    }
                    crate::layer_index::index_blob(&path, &l.digest, &l.diff_id, compression)
                        .map_err(|e| BaseError::Io {
                            path: path.clone(),
                            source: io::Error::other(e.to_string()),
                        })?
                }
            };
            indexes.push(ix);
        }
        let plan =
            fs::plan_layers(&made.image_id, &indexes, &opts).map_err(|e| BaseError::Plan {
                image: self.path.clone(),
                source: Box::new(e),
            })?;
        let digests = made.layers.iter().map(|l| l.digest.clone()).collect();
        Ok((plan, digests))
    }

    /// Check OLD against its plan: for a finished image, the stamp and
    /// every metadata block; for one half-way through an update, that the
    /// update is to `new`. Returns whether the update is a resumed one.
    pub fn check(&self, plan: &FsImage, new: &Made) -> Result<bool, BaseError> {
        let modified = |detail: String| BaseError::Modified {
            image: self.path.clone(),
            detail,
        };
        if let Some(target) = &self.record.updating_to {
            if target != new {
                return Err(BaseError::Unfinished {
                    image: self.path.clone(),
                    target: target.reference.clone(),
                });
            }
            return Ok(true);
        }
        if plan.size != self.record.made.device_size {
            return Err(modified(format!(
                "re-planned, it is {} bytes, not the recorded {}",
                plan.size, self.record.made.device_size
            )));
        }
        let io_err = |source| BaseError::Io {
            path: self.path.clone(),
            source,
        };
        let now = Stamp::of(&self.path).map_err(io_err)?;
        if Some(now) != self.record.stamp {
            return Err(modified(
                "its length or modification time is not what ocidisk left".into(),
            ));
        }
        let file = File::open(&self.path).map_err(io_err)?;
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        for (block, bytes) in &plan.metadata {
            file.read_exact_at(&mut buf, block * BLOCK_SIZE)
                .map_err(io_err)?;
            if buf[..] != bytes[..] {
                return Err(modified(format!(
                    "filesystem block {block} is not what ocidisk wrote"
                )));
            }
        }
        Ok(false)
    }

    /// Write NEW at `output` from OLD: see the module docs.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        mut self,
        old: (&FsImage, &[Digest]),
        new: (&FsImage, &[Digest]),
        made: Made,
        resumed: bool,
        layers: &[LayerBlob],
        output: &Path,
        progress: &dyn PullProgress,
    ) -> Result<UpdateReport, MaterializeError> {
        let werr = |source| MaterializeError::Write {
            path: output.to_path_buf(),
            source,
        };
        let old_side = Side {
            image: old.0,
            layers: old.1,
        };
        let new_side = Side {
            image: new.0,
            layers: new.1,
        };
        let changed = compare::changed_ranges(old_side, new_side);
        let report = UpdateReport {
            base: self.path.clone(),
            in_place: same_file(&self.path, output),
            resumed,
            changed_bytes: changed.iter().map(|r| r.1).sum(),
            chunks: compare::chunk_count(new.0, &changed),
        };
        if report.in_place {
            let mut record = self.record.clone();
            record.stamp = None;
            record.updating_to = Some(made.clone());
            record.write(output).map_err(BaseError::from)?;
            let file = File::options()
                .read(true)
                .write(true)
                .open(output)
                .map_err(werr)?;
            apply(&file, new.0, &changed, layers, output, progress)?;
        } else {
            let partial = match self.copy.take() {
                Some(copy) => copy.join().map_err(|_| {
                    MaterializeError::Internal("copying the base", "the copy panicked".into())
                })??,
                None => copy_to_partial(&self.path, output)?,
            };
            apply(partial.file(), new.0, &changed, layers, output, progress)?;
            Record::remove(output).map_err(BaseError::from)?;
            partial.commit()?;
        }
        let stamp = Stamp::of(output).map_err(werr)?;
        Record::finished(made, stamp)
            .write(output)
            .map_err(BaseError::from)?;
        Ok(report)
    }
}

impl Drop for Base {
    /// A copy still under way when the update is refused or fails is
    /// waited for, so that its temporary file is removed, not left behind.
    fn drop(&mut self) {
        if let Some(copy) = self.copy.take() {
            let _ = copy.join();
        }
    }
}

/// OLD copied into a new temporary file for `output`.
fn copy_to_partial(from: &Path, output: &Path) -> Result<PartialFile, MaterializeError> {
    partial::clean_stale(output);
    let partial = PartialFile::create(output)?;
    copy_file(from, partial.file()).map_err(|source| BaseError::Io {
        path: from.to_path_buf(),
        source,
    })?;
    Ok(partial)
}

/// Whether `a` and `b` name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Turn `file` (OLD's bytes) into NEW: resize, punch every changed range,
/// write NEW's metadata and data there, the first block last.
fn apply(
    file: &File,
    new: &FsImage,
    changed: &[(u64, u64)],
    layers: &[LayerBlob],
    output: &Path,
    progress: &dyn PullProgress,
) -> Result<(), MaterializeError> {
    let werr = |source| MaterializeError::Write {
        path: output.to_path_buf(),
        source,
    };
    file.set_len(new.size).map_err(werr)?;
    for &(s, l) in changed {
        punch(file, s, l).map_err(werr)?;
    }
    let meta_total: u64 = changed
        .iter()
        .flat_map(|&(s, l)| new.regions(s, l))
        .filter(|(_, r)| matches!(r, Region::Metadata(_)))
        .map(|(_, r)| r.len())
        .sum();
    let extents = clip(&new.data, changed);
    let total = meta_total + extents.iter().map(|e| e.len).sum::<u64>();
    let mut written = 0u64;
    progress.writing(0, total);
    let write_meta = |first_block: bool, written: &mut u64| -> Result<(), MaterializeError> {
        for &(s, l) in changed {
            for (off, r) in new.regions(s, l) {
                if let Region::Metadata(bytes) = r
                    && (off < BLOCK_SIZE) == first_block
                {
                    write_nonzero(file, bytes, off).map_err(werr)?;
                    *written += bytes.len() as u64;
                }
            }
        }
        Ok(())
    };
    write_meta(false, &mut written)?;
    progress.writing(written, total);
    if let Some(ms) = std::env::var("OCIDISK_TEST_UPDATE_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        file.sync_all().map_err(werr)?;
        eprintln!("OCIDISK_TEST_UPDATE_PAUSE_MS: pausing {ms} ms half-way");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let mut sink = Sink::Raw(file);
    copy_layers(
        layers,
        |i| {
            let mut v: Vec<DataExtent> = extents.iter().filter(|e| e.layer == i).copied().collect();
            v.sort_by_key(|e| (e.tar_offset, e.device_offset));
            v
        },
        &mut sink,
        output,
        progress,
        (&mut written, total),
    )?;
    file.sync_all().map_err(werr)?;
    write_meta(true, &mut written)?;
    file.sync_all().map_err(werr)?;
    progress.writing(total, total);
    Ok(())
}

/// The parts of `data` (sorted by device offset) inside `ranges` (sorted).
fn clip(data: &[DataExtent], ranges: &[(u64, u64)]) -> Vec<DataExtent> {
    let mut out = Vec::new();
    let mut i = 0;
    for e in data {
        let (es, ee) = (e.device_offset, e.device_offset + e.len);
        while ranges.get(i).is_some_and(|r| r.0 + r.1 <= es) {
            i += 1;
        }
        let mut j = i;
        while let Some(&(rs, rl)) = ranges.get(j) {
            if rs >= ee {
                break;
            }
            let (s, t) = (es.max(rs), ee.min(rs + rl));
            if s < t {
                out.push(DataExtent {
                    device_offset: s,
                    len: t - s,
                    layer: e.layer,
                    tar_offset: e.tar_offset + (s - es),
                });
            }
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_only_the_changed_bytes() {
        let e = |device_offset, len, tar_offset| DataExtent {
            device_offset,
            len,
            layer: 0,
            tar_offset,
        };
        let data = [e(0, 10_000, 100), e(20_000, 100, 0)];
        let got = clip(&data, &[(4096, 4096), (8192 + 4096, 8192)]);
        assert_eq!(got, vec![e(4096, 4096, 4196), e(20_000, 100, 0)]);
    }
}
