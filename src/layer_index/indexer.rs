//! The one pass that verifies and indexes a layer: a decoder pushed the
//! blob in pieces, feeding the diff_id hasher, the tar indexer and the span
//! hashes, and recording where reads can start again (gzip checkpoints,
//! zstd frames).

use std::io::{self, Read, Write};
use std::path::Path;

use super::{Access, IndexError, LayerIndex, SPAN, SUB_SPAN, Span, gzip};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::source::manifest::Compression;
use crate::tar::{TarEntry, TarError, TarIndexer};

/// Accepts the uncompressed bytes of a layer: hashes them for the diff_id,
/// indexes the tar, and hashes spans (cut every [`SUB_SPAN`] bytes and at
/// access points), noting where each span ends in the compressed stream.
pub struct IndexSink {
    hasher: Hasher,
    tar: TarIndexer,
    spans: Vec<Span>,
    span_hasher: sha2::Sha256,
    span_start: u64,
    pos: u64,
    /// When set, each finished span's bytes go here (only the current span
    /// is buffered).
    span_out: Option<(SpanOut, Vec<u8>)>,
    /// When set, sees every uncompressed piece once the tar indexer has
    /// parsed it.
    tap: Option<Box<dyn TarTap>>,
}

/// Sees a layer's uncompressed bytes in the pass that verifies and
/// indexes it, each piece after the tar indexer has parsed it: a header
/// in a piece is among `entries` before that piece's bytes reach the tap.
/// `materialize` uses one to write file data to its final place as it
/// streams. A tap cannot fail the pass: what it could not do, it leaves
/// for later.
pub trait TarTap: Send {
    /// `data` lies at tar offset `pos`; `entries` are all the entries
    /// parsed so far, in tar order.
    fn data(&mut self, pos: u64, data: &[u8], entries: &[TarEntry]);
}

/// Receives (sha256, bytes) of every span as the first pass finishes it.
pub type SpanOut = Box<dyn FnMut(&[u8; 32], &[u8]) + Send>;

/// Somewhere to keep verified spans by their sha256 (the lazy disk's chunk
/// store), for layers whose spans are costly to decode again later.
pub trait SpanSink: Send + Sync {
    /// Keep `data`, whose sha256 is `sha256`.
    fn put(&self, sha256: &[u8; 32], data: &[u8]);
}

impl IndexSink {
    /// A sink checking against a diff_id of this algorithm.
    pub fn new(algorithm: Algorithm) -> IndexSink {
        use sha2::Digest as _;
        IndexSink {
            hasher: Hasher::new(algorithm),
            tar: TarIndexer::new(),
            spans: Vec::new(),
            span_hasher: sha2::Sha256::new(),
            span_start: 0,
            pos: 0,
            span_out: None,
            tap: None,
        }
    }

    /// End the current span here; `cend` compressed bytes produced it.
    pub fn cut(&mut self, cend: u64) {
        use sha2::Digest as _;
        if self.pos > self.span_start {
            let h: [u8; 32] = std::mem::take(&mut self.span_hasher).finalize().into();
            if let Some((out, buf)) = &mut self.span_out {
                out(&h, buf);
                buf.clear();
            }
            self.spans.push(Span {
                start: self.span_start,
                sha256: h,
                cend,
            });
            self.span_start = self.pos;
        }
    }

    /// Take output that does not cross a [`SUB_SPAN`] boundary, produced
    /// from the first `cpos` compressed bytes.
    pub fn feed(&mut self, data: &[u8], cpos: u64) -> io::Result<()> {
        use sha2::Digest as _;
        debug_assert!(
            self.pos / SUB_SPAN == (self.pos + data.len() as u64 - 1) / SUB_SPAN || data.is_empty()
        );
        self.hasher.update(data);
        self.span_hasher.update(data);
        if let Some((_, buf)) = &mut self.span_out {
            buf.extend_from_slice(data);
        }
        let at = self.pos;
        self.pos += data.len() as u64;
        self.tar.write_all(data)?;
        if let Some(tap) = &mut self.tap {
            tap.data(at, data, self.tar.entries());
        }
        if self.pos.is_multiple_of(SUB_SPAN) {
            self.cut(cpos);
        }
        Ok(())
    }

    /// Bytes taken so far.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// The diff_id of what was written, the length, the spans, and the tar
    /// entries (or why the stream is not a tar). `cend`: the blob's size.
    pub fn finish(
        mut self,
        cend: u64,
    ) -> (Digest, u64, Vec<Span>, Result<Vec<TarEntry>, TarError>) {
        self.cut(cend);
        let size = self.pos;
        (self.hasher.finish(), size, self.spans, self.tar.finish())
    }
}

/// What went wrong pushing bytes into a [`LayerIndexer`].
#[derive(Debug)]
pub enum PushError {
    /// The compressed data is invalid.
    Decode(String),
    /// The tar inside is invalid.
    Tar(TarError),
}

fn push_error(e: io::Error) -> PushError {
    match e.get_ref().and_then(|i| i.downcast_ref::<TarError>()) {
        Some(t) => PushError::Tar(t.clone()),
        None => PushError::Decode(e.to_string()),
    }
}

enum Decoder {
    Plain,
    Gzip(Box<gzip::Indexer>),
    Zstd(Box<ZstdState>),
}

struct ZstdState {
    dec: zstd::stream::raw::Decoder<'static>,
    out: Vec<u8>,
    frames: Vec<(u64, u64)>,
    consumed: u64,
    produced: u64,
    in_frame: bool,
}

/// Work for a sink on its own thread.
enum SinkMsg {
    Feed(Vec<u8>, u64),
    Cut(u64),
}

/// Uncompressed pieces queued for the sink thread (each at most a
/// [`SUB_SPAN`]): bounded, so inflating waits for hashing, not memory.
const SINK_QUEUE: usize = 32;

/// An [`IndexSink`] on a thread of its own: hashing the diff_id and the
/// spans and parsing the tar run beside inflating, on the other core.
struct SinkThread {
    tx: Option<std::sync::mpsc::SyncSender<SinkMsg>>,
    handle: Option<std::thread::JoinHandle<io::Result<IndexSink>>>,
    pos: u64,
}

impl SinkThread {
    fn start(mut sink: IndexSink) -> io::Result<SinkThread> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<SinkMsg>(SINK_QUEUE);
        let handle = std::thread::Builder::new()
            .name("ocidisk-index".into())
            .spawn(move || {
                for m in rx {
                    match m {
                        SinkMsg::Feed(data, cpos) => sink.feed(&data, cpos)?,
                        SinkMsg::Cut(cpos) => sink.cut(cpos),
                    }
                }
                Ok(sink)
            })?;
        Ok(SinkThread {
            tx: Some(tx),
            handle: Some(handle),
            pos: 0,
        })
    }

    fn send(&mut self, m: SinkMsg) -> io::Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(m).is_ok());
        if sent {
            return Ok(());
        }
        // The thread stopped: on an error, which is the answer.
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(io::Error::other("the index thread stopped")),
        }
    }

    fn join(&mut self) -> io::Result<IndexSink> {
        self.tx = None;
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the index thread panicked")),
            None => Err(io::Error::other("the index thread already ended")),
        }
    }
}

/// Where the decoder's output goes: the sink here, or on its thread.
enum Sink {
    Here(Box<IndexSink>),
    Thread(SinkThread),
}

impl Sink {
    fn pos(&self) -> u64 {
        match self {
            Sink::Here(s) => s.pos(),
            Sink::Thread(t) => t.pos,
        }
    }

    fn feed(&mut self, data: &[u8], cpos: u64) -> io::Result<()> {
        match self {
            Sink::Here(s) => s.feed(data, cpos),
            Sink::Thread(t) => {
                t.pos += data.len() as u64;
                t.send(SinkMsg::Feed(data.to_vec(), cpos))
            }
        }
    }

    fn cut(&mut self, cpos: u64) {
        match self {
            Sink::Here(s) => s.cut(cpos),
            // A failed send is reported by the next feed or by finish.
            Sink::Thread(t) => {
                let _ = t.send(SinkMsg::Cut(cpos));
            }
        }
    }

    fn into_sink(self) -> io::Result<IndexSink> {
        match self {
            Sink::Here(s) => Ok(*s),
            Sink::Thread(mut t) => t.join(),
        }
    }
}

/// Decodes a layer blob pushed to it in pieces, feeding an [`IndexSink`]
/// and recording random-access points: the one pass that verifies and
/// indexes a layer.
pub struct LayerIndexer {
    sink: Sink,
    decoder: Decoder,
    compression: Compression,
    consumed: u64,
}

impl LayerIndexer {
    /// An indexer for a layer with this compression and diff_id algorithm.
    pub fn new(compression: Compression, diff_alg: Algorithm) -> Result<LayerIndexer, PushError> {
        let decoder = match compression {
            Compression::None => Decoder::Plain,
            Compression::Gzip => Decoder::Gzip(Box::new(gzip::Indexer::new(SPAN, SUB_SPAN))),
            Compression::Zstd => Decoder::Zstd(Box::new(ZstdState {
                dec: zstd::stream::raw::Decoder::new()
                    .map_err(|e| PushError::Decode(e.to_string()))?,
                out: vec![0u8; 256 << 10],
                frames: vec![(0, 0)],
                consumed: 0,
                produced: 0,
                in_frame: false,
            })),
        };
        Ok(LayerIndexer {
            consumed: 0,
            sink: Sink::Here(Box::new(IndexSink::new(diff_alg))),
            decoder,
            compression,
        })
    }

    /// Hand every finished span's bytes to `out` (the lazy disk's fallback
    /// for zstd layers with a single frame, which have no other access point
    /// than their start). Call before [`LayerIndexer::threaded`].
    pub fn keep_spans(&mut self, out: SpanOut) {
        if let Sink::Here(s) = &mut self.sink {
            s.span_out = Some((out, Vec::with_capacity(SUB_SPAN as usize)));
        }
    }

    /// Move gzip checkpoint windows to `file` as they are made (see
    /// [`gzip::Indexer::spill_to`]); other compressions keep none.
    pub fn spill_windows_to(&mut self, file: std::sync::Arc<std::fs::File>) {
        if let Decoder::Gzip(g) = &mut self.decoder {
            g.spill_to(file);
        }
    }

    /// Show every uncompressed piece to `tap` once parsed. Call before
    /// [`LayerIndexer::threaded`].
    pub fn tap(&mut self, tap: Box<dyn TarTap>) {
        if let Sink::Here(s) = &mut self.sink {
            s.tap = Some(tap);
        }
    }

    /// Hash and parse on a thread of their own from now on, beside
    /// inflating (two cores for one layer). Call before the first push.
    pub fn threaded(mut self) -> Result<LayerIndexer, PushError> {
        if let Sink::Here(s) = self.sink {
            self.sink = Sink::Thread(
                SinkThread::start(*s)
                    .map_err(|e| PushError::Decode(format!("starting the index thread: {e}")))?,
            );
        }
        Ok(self)
    }

    /// Feed compressed bytes.
    pub fn push(&mut self, input: &[u8]) -> Result<(), PushError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        self.consumed += input.len() as u64;
        match &mut self.decoder {
            Decoder::Plain => {
                let mut rest = input;
                while !rest.is_empty() {
                    let room = (SUB_SPAN - self.sink.pos() % SUB_SPAN) as usize;
                    let (now, later) = rest.split_at(room.min(rest.len()));
                    let cpos = self.sink.pos() + now.len() as u64;
                    self.sink.feed(now, cpos).map_err(push_error)?;
                    rest = later;
                }
                Ok(())
            }
            Decoder::Gzip(g) => {
                // The sink sees output and checkpoints in stream order, so a
                // cut lands exactly on the checkpoint's offset.
                let sink = std::cell::RefCell::new(&mut self.sink);
                g.push(
                    input,
                    &mut |data, cpos| sink.borrow_mut().feed(data, cpos),
                    &mut |cpos| sink.borrow_mut().cut(cpos),
                )
                .map_err(push_error)
            }
            Decoder::Zstd(z) => {
                let mut inb = InBuffer::around(input);
                loop {
                    let before = inb.pos();
                    let room =
                        (SUB_SPAN - self.sink.pos() % SUB_SPAN).min(z.out.len() as u64) as usize;
                    let mut outb = OutBuffer::around(&mut z.out[..room]);
                    let hint = z
                        .dec
                        .run(&mut inb, &mut outb)
                        .map_err(|e| PushError::Decode(e.to_string()))?;
                    let made = outb.pos();
                    z.consumed += (inb.pos() - before) as u64;
                    z.produced += made as u64;
                    if made > 0 || inb.pos() > before {
                        z.in_frame = true;
                    }
                    self.sink
                        .feed(&z.out[..made], z.consumed)
                        .map_err(push_error)?;
                    if hint == 0 && z.in_frame {
                        // A frame ended: the next one can be decoded on its own.
                        z.in_frame = false;
                        let last = z.frames.last().map_or(0, |f| f.1);
                        if z.produced - last >= SPAN {
                            z.frames.push((z.consumed, z.produced));
                        }
                    }
                    if inb.pos() == input.len() && made < room {
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// End of input: the finished index, with the diff_id checked.
    pub fn finish(self, layer: &Digest, diff_id: &Digest) -> Result<LayerIndex, IndexError> {
        let trunc = |detail: String| IndexError::Decompress {
            layer: layer.clone(),
            compression: self.compression,
            detail,
        };
        let access = match self.decoder {
            Decoder::Plain => Access::Tar,
            Decoder::Gzip(g) => Access::Gzip(g.finish().map_err(|e| trunc(e.to_string()))?),
            Decoder::Zstd(z) => {
                if z.in_frame {
                    return Err(trunc("the zstd stream ends inside a frame".into()));
                }
                let mut frames = z.frames;
                // A frame boundary at the very end starts nothing.
                frames.retain(|f| f.1 < z.produced || f.1 == 0);
                Access::Zstd(frames)
            }
        };
        let sink = self
            .sink
            .into_sink()
            .map_err(|e| push_to_index_error(push_error(e), layer, self.compression))?;
        let (actual, tar_size, spans, entries) = sink.finish(self.consumed);
        if actual != *diff_id {
            return Err(IndexError::DiffId {
                layer: layer.clone(),
                expected: diff_id.clone(),
                actual,
            });
        }
        let entries = entries.map_err(|source| IndexError::Tar {
            layer: layer.clone(),
            source,
        })?;
        LayerIndex::new(
            layer.clone(),
            diff_id.clone(),
            tar_size,
            entries,
            access,
            spans,
        )
        .map_err(|_| trunc("the stream has no usable access points".into()))
    }
}

/// Build the index of a verified layer blob on disk (the slow path, when a
/// blob is cached but its index is not). Checks the diff_id again.
pub fn index_blob(
    path: &Path,
    layer: &Digest,
    diff_id: &Digest,
    compression: Compression,
) -> Result<LayerIndex, IndexError> {
    let io_err = |source| IndexError::Io {
        layer: layer.clone(),
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let to_err = |e| push_to_index_error(e, layer, compression);
    let mut ix = LayerIndexer::new(compression, diff_id.algorithm())
        .and_then(LayerIndexer::threaded)
        .map_err(to_err)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        ix.push(&buf[..n]).map_err(to_err)?;
    }
    ix.finish(layer, diff_id)
}

/// Turn a push error into the index error that names the layer.
pub fn push_to_index_error(e: PushError, layer: &Digest, compression: Compression) -> IndexError {
    match e {
        PushError::Tar(source) => IndexError::Tar {
            layer: layer.clone(),
            source,
        },
        PushError::Decode(detail) => IndexError::Decompress {
            layer: layer.clone(),
            compression,
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_blob_checks_diff_id_and_tar() {
        let d = tempfile::tempdir().unwrap();
        let mut b = ::tar::Builder::new(Vec::new());
        let mut h = ::tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "a", &b"abc"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let path = d.path().join("blob");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let layer = Digest::sha256_of(b"whatever");
        let ix = index_blob(&path, &layer, &Digest::sha256_of(&tar), Compression::Gzip).unwrap();
        assert_eq!(ix.entries.len(), 1);
        assert_eq!(ix.tar_size, tar.len() as u64);
        let err =
            index_blob(&path, &layer, &Digest::sha256_of(b"x"), Compression::Gzip).unwrap_err();
        assert!(matches!(err, IndexError::DiffId { .. }), "{err}");
        let err =
            index_blob(&path, &layer, &Digest::sha256_of(&tar), Compression::Zstd).unwrap_err();
        assert!(matches!(err, IndexError::Decompress { .. }), "{err}");
    }
}
