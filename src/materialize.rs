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

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::fs::{self, FsError, FsImage, FsOptions, Region};
use crate::image_format::ImageFormat;
use crate::partial::{self, PartialError, PartialFile};
use crate::pull::{PullError, PullOptions, PullProgress, pull_image};
use crate::qcow2::{Assembler, Qcow2Error, Qcow2Writer};
use crate::source::manifest::Compression;

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
    /// Metadata blocks written.
    pub metadata_blocks: usize,
}

/// Materialize an image into a raw disk file.
pub async fn materialize(
    opts: &MaterializeOptions,
    cache: &BlobCache,
    progress: Arc<dyn PullProgress>,
) -> Result<MaterializeReport, MaterializeError> {
    check_output(&opts.output)?;
    let (report, mut image, mut indexes) = pull_image(&opts.pull, cache, progress.clone())
        .await
        .map_err(Box::new)?;
    if opts.init {
        crate::init_layer::append(&mut image, &mut indexes, cache)?;
    }
    let (id, fs_opts) = (image.id().clone(), opts.fs.clone());
    let fs = tokio::task::spawn_blocking(move || fs::plan_layers(&id, &indexes, &fs_opts))
        .await
        .map_err(|e| MaterializeError::Internal("planning the filesystem", e.to_string()))??;
    let layers: Vec<(Digest, PathBuf, Compression)> = image
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
    let output = opts.output.clone();
    let data_bytes = fs.data_bytes();
    let metadata_blocks = fs.metadata.len();
    let size = fs.size;
    let format = opts.format;
    let file_bytes = tokio::task::spawn_blocking(move || {
        write_image(&fs, &layers, &output, format, progress.as_ref())
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
        metadata_blocks,
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

/// Where the device's bytes go: a sparse raw file, or qcow2 clusters.
enum Sink<'a> {
    Raw(&'a File),
    Qcow2(Box<Assembler>),
}

impl Sink<'_> {
    fn write_at(
        &mut self,
        data: &[u8],
        offset: u64,
        output: &Path,
    ) -> Result<(), MaterializeError> {
        match self {
            Sink::Raw(f) => {
                write_nonzero(f, data, offset).map_err(|source| MaterializeError::Write {
                    path: output.to_path_buf(),
                    source,
                })
            }
            Sink::Qcow2(a) => Ok(a.write_at(data, offset)?),
        }
    }
}

/// Write the image; returns the bytes the file takes on disk.
fn write_image(
    fs: &FsImage,
    layers: &[(Digest, PathBuf, Compression)],
    output: &Path,
    format: ImageFormat,
    progress: &dyn PullProgress,
) -> Result<u64, MaterializeError> {
    let werr = |source| MaterializeError::Write {
        path: output.to_path_buf(),
        source,
    };
    partial::clean_stale(output);
    let partial = PartialFile::create(output)?;
    let file = partial.file();
    let mut sink = match format {
        ImageFormat::Raw => {
            file.set_len(fs.size).map_err(werr)?;
            Sink::Raw(file)
        }
        ImageFormat::Qcow2(opts) => {
            let tmp = partial.temp_path();
            let writer = Qcow2Writer::new(file.try_clone().map_err(werr)?, tmp, fs.size, opts)?;
            let dir = tmp.parent().unwrap_or(Path::new("."));
            let promised = fs
                .regions(0, fs.size)
                .filter(|(_, r)| !matches!(r, Region::Zeros(_)))
                .map(|(off, r)| (off, r.len()));
            Sink::Qcow2(Box::new(Assembler::new(writer, dir, promised)?))
        }
    };
    let total = fs.metadata.values().map(|b| b.len() as u64).sum::<u64>() + fs.data_bytes();
    let mut written = 0u64;
    progress.writing(0, total);
    for (offset, region) in fs.regions(0, fs.size) {
        if let Region::Metadata(bytes) = region {
            sink.write_at(bytes, offset, output)?;
            written += bytes.len() as u64;
        }
    }
    progress.writing(written, total);
    let mut buf = vec![0u8; 1 << 20];
    for (i, (digest, path, compression)) in layers.iter().enumerate() {
        let extents = fs.extents_of_layer(i);
        if extents.is_empty() {
            continue;
        }
        let rerr = |source| MaterializeError::ReadLayer {
            layer: digest.clone(),
            source,
        };
        let f = io::BufReader::with_capacity(1 << 20, File::open(path).map_err(rerr)?);
        let mut reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(f),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(f).map_err(rerr)?),
        };
        let mut pos = 0u64;
        for e in extents {
            let skip = e.tar_offset - pos;
            let skipped = io::copy(&mut (&mut reader).take(skip), &mut io::sink()).map_err(rerr)?;
            if skipped != skip {
                return Err(rerr(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "layer ended before a file's data",
                )));
            }
            let mut done = 0u64;
            while done < e.len {
                let n = (e.len - done).min(buf.len() as u64) as usize;
                reader.read_exact(&mut buf[..n]).map_err(rerr)?;
                sink.write_at(&buf[..n], e.device_offset + done, output)?;
                done += n as u64;
                written += n as u64;
                progress.writing(written, total);
            }
            pos = e.tar_offset + e.len;
        }
    }
    if let Sink::Qcow2(a) = sink {
        a.finish()?;
    }
    let file = partial.commit()?;
    progress.writing(total, total);
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata().map_err(werr)?.blocks() * 512)
}

/// Write `data` at `offset`, skipping 4 KiB-aligned all-zero pieces (the file
/// is sparse and reads zeros there already).
fn write_nonzero(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut i = 0usize;
    while i < data.len() {
        let next = ((offset + i as u64) / 4096 + 1) * 4096;
        let end = ((next - offset) as usize).min(data.len());
        let piece = &data[i..end];
        if piece.iter().any(|b| *b != 0) {
            file.write_all_at(piece, offset + i as u64)?;
        }
        i = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pieces_are_not_written() {
        let d = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(d.path().join("x"))
            .unwrap();
        f.set_len(3 * 4096).unwrap();
        let mut data = vec![0u8; 3 * 4096];
        data[5000] = 1;
        write_nonzero(&f, &data, 0).unwrap();
        let mut back = vec![0u8; 3 * 4096];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, data);
    }
}
