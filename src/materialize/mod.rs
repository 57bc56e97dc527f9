//! `materialize`: write an image's complete filesystem to a disk file, raw
//! or qcow2.
//!
//! Pull (verify, index) → flatten → plan the filesystem → write the metadata
//! blocks → stream each layer once, copying every file's bytes from the
//! decompressed stream straight to its planned place. A raw output is a
//! sparse file (all-zero chunks are not written); a qcow2 output gets each
//! cluster the moment it is whole ([`crate::qcow2::Assembler`]), compressed
//! on every core. Either is built as a [`PartialFile`] next to OUTPUT,
//! fsynced and renamed: an interrupted run leaves nothing at OUTPUT, and a
//! symlink planted at any name it uses is never followed. File data is
//! never held in memory.

mod base;
mod early;
mod record;
mod write;

pub use base::{Base, BaseError, UpdateReport};
pub use record::{Made, Record, RecordError};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::fs::{self, FsError, FsOptions};
use crate::image_format::ImageFormat;
use crate::partial::PartialError;
use crate::partial::PartialFile;
use crate::pull::{PullError, PullOptions, PullProgress, pull_image, pull_image_tapped};
use crate::qcow2::Qcow2Error;
use early::Early;
use record::{RecordFs, RecordLayer, Stamp};
use write::{LayerBlob, finish_early, write_image};

/// Errors materializing an image.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// Pulling failed.
    #[error(transparent)]
    Pull(#[from] Box<PullError>),
    /// The filesystem cannot be built.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading a cached layer failed.
    #[error("reading layer {layer}: {source}")]
    ReadLayer {
        /// The layer.
        layer: Digest,
        /// The error.
        source: io::Error,
    },
    /// The output file could not be created or put in place.
    #[error(transparent)]
    Partial(#[from] PartialError),
    /// A worker thread panicked: a bug, reported instead of a crash.
    #[error("internal error while {0}: {1}")]
    Internal(&'static str, String),
    /// The output path is not usable.
    #[error("output {0}: {1}")]
    Output(PathBuf, &'static str),
    /// Writing the qcow2 file failed.
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
    /// Adding the `--init` layer failed.
    #[error(transparent)]
    Init(#[from] crate::init_layer::InitError),
    /// The `--base` image cannot be used.
    #[error(transparent)]
    Base(#[from] BaseError),
}

/// What to materialize and how.
#[derive(Debug, Clone)]
pub struct MaterializeOptions {
    /// The image.
    pub pull: PullOptions,
    /// Output file.
    pub output: PathBuf,
    /// The filesystem to write.
    pub fs: FsOptions,
    /// The file format of the output.
    pub format: ImageFormat,
    /// Add `/.ocidisk/init` and its config ([`crate::init_layer`]).
    pub init: bool,
    /// An image ocidisk wrote for an earlier version to update from
    /// (`--base`; may be `output` itself).
    pub base: Option<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct MaterializeReport {
    /// The image.
    pub reference: String,
    /// Its digest.
    pub image_id: Digest,
    /// Output file.
    pub output: PathBuf,
    /// Device size.
    pub size: u64,
    /// Output file format (`raw`, `qcow2`).
    pub format: &'static str,
    /// Bytes the output file takes on disk (allocated, not apparent).
    pub file_bytes: u64,
    /// File bytes copied from layers.
    pub data_bytes: u64,
    /// Of those, the bytes written while the layers streamed in the pull's
    /// pass (a cold raw ext4 image: all of them, unless a guess was
    /// wrong); the rest took a second pass over cached layers.
    pub streamed_bytes: u64,
    /// Metadata blocks written.
    pub metadata_blocks: usize,
    /// What `--base` kept and rewrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateReport>,
}

/// Materialize an image into a raw disk file.
pub async fn materialize(
    opts: &MaterializeOptions,
    cache: &BlobCache,
    progress: Arc<dyn PullProgress>,
) -> Result<MaterializeReport, MaterializeError> {
    check_output(&opts.output)?;
    // Check the base before pulling anything.
    let base = match &opts.base {
        Some(path) => {
            if opts.format != ImageFormat::Raw {
                return Err(BaseError::NotRaw(opts.output.clone()).into());
            }
            let mut base = Base::open(path)?;
            base.start_copy(&opts.output);
            Some(base)
        }
        None => None,
    };
    // One pass: file data goes to its place while the layers stream.
    let early = match (&base, opts.format, fs::predicted_zone_map(&opts.fs)) {
        (None, ImageFormat::Raw, Some(map)) => {
            crate::partial::clean_stale(&opts.output);
            let partial = PartialFile::create(&opts.output)?;
            let file = partial
                .file()
                .try_clone()
                .map_err(|source| MaterializeError::Write {
                    path: opts.output.clone(),
                    source,
                })?;
            Some((partial, Arc::new(Early::new(file, map))))
        }
        _ => None,
    };
    let pulled = match &early {
        Some((_, taps)) => {
            pull_image_tapped(&opts.pull, cache, progress.clone(), taps.clone()).await
        }
        None => pull_image(&opts.pull, cache, progress.clone())
            .await
            .map(|(r, i, ix)| (r, i, ix, Vec::new())),
    };
    let (report, mut image, mut indexes, unsaved) = pulled.map_err(Box::new)?;
    if opts.init {
        crate::init_layer::append(&mut image, &mut indexes, cache)?;
    }
    let (id, fs_opts, store) = (image.id().clone(), opts.fs.clone(), cache.clone());
    let fs = tokio::task::spawn_blocking(move || {
        // The indexes the one pass left unsaved go to the cache on another
        // core while this one plans.
        std::thread::scope(|s| {
            let saving = s.spawn(|| crate::pull::save_indexes(&store, &indexes, &unsaved));
            let fs = fs::plan_layers(&id, &indexes, &fs_opts);
            let saved = saving.join().map_err(|_| {
                MaterializeError::Internal("saving the layer indexes", "a panic".into())
            })?;
            saved.map_err(|e| MaterializeError::Pull(Box::new(e)))?;
            Ok::<_, MaterializeError>(fs?)
        })
    })
    .await
    .map_err(|e| MaterializeError::Internal("planning the filesystem", e.to_string()))??;
    let layers: Vec<LayerBlob> = image
        .layers
        .iter()
        .map(|l| {
            (
                l.descriptor.digest.clone(),
                cache.blob_path(&l.descriptor.digest),
                l.compression,
            )
        })
        .collect();
    let made = Made {
        reference: report.reference.clone(),
        image_id: report.image_id.clone(),
        layers: image
            .layers
            .iter()
            .map(|l| RecordLayer::new(&l.descriptor.digest, &l.diff_id, l.compression))
            .collect(),
        fs: RecordFs::new(&opts.fs),
        device_size: fs.size,
    };
    let output = opts.output.clone();
    let data_bytes = fs.data_bytes();
    let metadata_blocks = fs.metadata.len();
    let size = fs.size;
    let format = opts.format;
    let cache = cache.clone();
    let (file_bytes, update, streamed_bytes) = tokio::task::spawn_blocking(move || {
        let progress = progress.as_ref();
        match base {
            Some(base) => {
                let (old, old_layers) = base.plan(&cache)?;
                let resumed = base.check(&old, &made)?;
                let new_layers: Vec<Digest> = layers.iter().map(|l| l.0.clone()).collect();
                let update = base.update(
                    (&old, &old_layers),
                    (&fs, &new_layers),
                    made,
                    resumed,
                    &layers,
                    &output,
                    progress,
                )?;
                Ok::<_, MaterializeError>((allocated_bytes(&output)?, Some(update), 0))
            }
            None => {
                Record::remove(&output).map_err(BaseError::from)?;
                let (bytes, streamed) = match early {
                    Some((partial, early)) => {
                        finish_early(partial, &early, &fs, &layers, &output, progress)?
                    }
                    None => (write_image(&fs, &layers, &output, format, progress)?, 0),
                };
                if format == ImageFormat::Raw {
                    let stamp = Stamp::of(&output).map_err(|source| MaterializeError::Write {
                        path: output.clone(),
                        source,
                    })?;
                    Record::finished(made, stamp)
                        .write(&output)
                        .map_err(BaseError::from)?;
                }
                Ok((bytes, None, streamed))
            }
        }
    })
    .await
    .map_err(|e| MaterializeError::Internal("writing the image", e.to_string()))??;
    Ok(MaterializeReport {
        reference: report.reference,
        image_id: report.image_id,
        output: opts.output.clone(),
        size,
        format: opts.format.name(),
        file_bytes,
        data_bytes,
        streamed_bytes,
        metadata_blocks,
        update,
    })
}

/// Bytes `path` takes on disk.
fn allocated_bytes(path: &Path) -> Result<u64, MaterializeError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .map_err(|source| MaterializeError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Refuse an OUTPUT that is not a place for a new regular file: a
/// directory, or a device node (which the rename would replace with a
/// regular file, not write to).
fn check_output(output: &Path) -> Result<(), MaterializeError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::metadata(output) else {
        return Ok(());
    };
    let t = meta.file_type();
    let what = if t.is_dir() {
        "is a directory"
    } else if t.is_block_device() {
        "is a block device; materialize writes an image file (copy it onto the device with dd or qemu-img convert)"
    } else if t.is_char_device() || t.is_fifo() || t.is_socket() {
        "is not a regular file"
    } else {
        return Ok(());
    };
    Err(MaterializeError::Output(output.to_path_buf(), what))
}
