//! Streaming qcow2 writer: data clusters appended in the order they are
//! pushed (after compression, in that same order), the tables after them,
//! the header last.
//!
//! File layout: cluster 0 the header; then the data, compressed clusters
//! packed byte by byte and plain ones cluster-aligned; then the L2 tables
//! in guest order, the L1 table, the refcount blocks and the refcount
//! table.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::compress::{Encoded, Pipeline};
use super::layout::{COPIED, Geometry, Header, MAX_REFCOUNT, refcount_plan};
use super::update::Qcow2File;
use super::{Codec, Qcow2Error, Qcow2Options};

/// Writes a qcow2 file from whole guest clusters.
pub struct Qcow2Writer {
    file: File,
    path: PathBuf,
    geometry: Geometry,
    codec: Codec,
    pipeline: Option<Pipeline>,
    /// Next free host byte for data.
    cursor: u64,
    /// L2 entry (without flags but COMPRESSED) of every allocated cluster.
    entries: BTreeMap<u64, u64>,
    /// Refcount of every host cluster below the cursor.
    refs: Vec<u16>,
    /// Clusters stored compressed and plain.
    compressed: u64,
    plain: u64,
}

impl Qcow2Writer {
    /// A writer of a `size`-byte disk into `file` (empty, opened for
    /// writing; `path` names it in errors).
    pub fn new(
        file: File,
        path: &Path,
        size: u64,
        opts: Qcow2Options,
    ) -> Result<Qcow2Writer, Qcow2Error> {
        let geometry = Geometry::new(size, opts.cluster_bits)?;
        let cs = geometry.cluster_size() as usize;
        let pipeline = match opts.compression {
            Some(codec) => {
                let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
                Some(Pipeline::new(codec, cs, threads)?)
            }
            None => None,
        };
        Ok(Qcow2Writer {
            file,
            path: path.to_path_buf(),
            geometry,
            codec: opts.compression.unwrap_or_default(),
            pipeline,
            cursor: geometry.cluster_size(),
            entries: BTreeMap::new(),
            refs: vec![1],
            compressed: 0,
            plain: 0,
        })
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.geometry.cluster_size()
    }

    /// The virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.geometry.size
    }

    /// Store guest cluster `guest` (`data`: its whole cluster, zeros past
    /// the device's end). An all-zero cluster stays unallocated.
    pub fn push(&mut self, guest: u64, data: Vec<u8>) -> Result<(), Qcow2Error> {
        if data.len() as u64 != self.cluster_size() || guest >= self.geometry.guest_clusters() {
            return Err(Qcow2Error::Internal(format!(
                "cluster {guest} of {} bytes pushed to a {}-byte disk",
                data.len(),
                self.size()
            )));
        }
        if data.iter().all(|b| *b == 0) {
            return Ok(());
        }
        match &mut self.pipeline {
            None => self.store(guest, Encoded::Plain(data)),
            Some(p) => {
                p.submit(guest, data)?;
                while let Some((g, enc)) = self.pipeline_next(false)? {
                    self.store(g, enc)?;
                }
                Ok(())
            }
        }
    }

    fn pipeline_next(&mut self, wait: bool) -> Result<Option<(u64, Encoded)>, Qcow2Error> {
        match &mut self.pipeline {
            Some(p) => p.next(wait),
            None => Ok(None),
        }
    }

    fn write(&self, bytes: &[u8], at: u64) -> Result<(), Qcow2Error> {
        self.file
            .write_all_at(bytes, at)
            .map_err(|source| Qcow2Error::Io {
                what: "writing",
                path: self.path.clone(),
                source,
            })
    }

    /// Count one more reference to host clusters `[first, last]`.
    fn add_refs(&mut self, first: u64, last: u64) {
        if self.refs.len() as u64 <= last {
            self.refs.resize(last as usize + 1, 0);
        }
        for c in first..=last {
            self.refs[c as usize] += 1;
        }
    }

    fn store(&mut self, guest: u64, enc: Encoded) -> Result<(), Qcow2Error> {
        if self.entries.contains_key(&guest) {
            return Err(Qcow2Error::Internal(format!(
                "cluster {guest} stored twice"
            )));
        }
        let cs = self.cluster_size();
        let entry = match enc {
            Encoded::Compressed(bytes) => {
                let len = bytes.len() as u64;
                let mut at = self.cursor;
                // The range QEMU counts runs to the end of the last sector.
                let last = |at: u64| (at + len).next_multiple_of(512).div_ceil(cs) - 1;
                if self.refs.get((at / cs) as usize) == Some(&MAX_REFCOUNT) {
                    at = at.next_multiple_of(cs);
                }
                self.write(&bytes, at)?;
                self.add_refs(at / cs, last(at));
                self.cursor = at + len;
                self.compressed += 1;
                self.geometry.compressed_entry(at, len)
            }
            Encoded::Plain(bytes) => {
                let at = self.cursor.next_multiple_of(cs);
                self.write(&bytes, at)?;
                self.add_refs(at / cs, at / cs);
                self.cursor = at + cs;
                self.plain += 1;
                at | COPIED
            }
        };
        self.entries.insert(guest, entry);
        Ok(())
    }

    /// Write the remaining clusters, the tables and the header. The file
    /// is complete (not yet fsynced) and can go on being updated.
    pub fn finish(mut self) -> Result<Qcow2File, Qcow2Error> {
        if let Some(p) = &mut self.pipeline {
            p.close();
        }
        while let Some((g, enc)) = self.pipeline_next(true)? {
            self.store(g, enc)?;
        }
        self.pipeline = None;
        let g = self.geometry;
        let cs = g.cluster_size();
        let mut next = self.cursor.div_ceil(cs);
        // L2 tables, in guest order.
        let mut l2: BTreeMap<u64, (u64, Vec<u64>)> = BTreeMap::new();
        for (&guest, &entry) in &self.entries {
            let t = l2.entry(guest / g.l2_entries()).or_insert_with(|| {
                next += 1;
                ((next - 1) * cs, vec![0; g.l2_entries() as usize])
            });
            t.1[(guest % g.l2_entries()) as usize] = entry;
        }
        let l1_offset = next * cs;
        next += g.l1_clusters();
        let mut l1 = vec![0u64; g.l1_entries() as usize];
        for (&i, (off, _)) in &l2 {
            l1[i as usize] = off | COPIED;
        }
        // Room to grow: every guest cluster rewritten once, with its L2
        // table and refcount blocks.
        let reserve = next * 2 + g.guest_clusters() + g.l1_entries() + 16;
        let (blocks, table_clusters) = refcount_plan(&g, next, reserve);
        let blocks_offset = next * cs;
        let table_offset = (next + blocks) * cs;
        let end = table_offset + table_clusters * cs;
        let mut refs = std::mem::take(&mut self.refs);
        refs.resize((blocks * g.refcounts_per_block()) as usize, 0);
        for c in self.cursor.div_ceil(cs)..end / cs {
            refs[c as usize] = 1;
        }
        // Write tables.
        for (off, entries) in l2.values() {
            self.write(&be_words(entries), *off)?;
        }
        self.write(&be_words(&l1), l1_offset)?;
        let table: Vec<u64> = (0..blocks).map(|b| blocks_offset + b * cs).collect();
        let mut rt = table.clone();
        rt.resize((table_clusters * cs / 8) as usize, 0);
        self.write(&be_words(&rt), table_offset)?;
        let per = g.refcounts_per_block() as usize;
        for (b, chunk) in refs.chunks(per).enumerate() {
            let bytes: Vec<u8> = chunk.iter().flat_map(|r| r.to_be_bytes()).collect();
            self.write(&bytes, table[b])?;
        }
        let header = Header {
            geometry: g,
            l1_offset,
            refcount_table_offset: table_offset,
            refcount_table_clusters: table_clusters as u32,
            codec: self.codec,
        };
        self.write(&header.encode(), 0)?;
        self.file.set_len(end).map_err(|source| Qcow2Error::Io {
            what: "sizing",
            path: self.path.clone(),
            source,
        })?;
        tracing::debug!(
            path = %self.path.display(),
            compressed = self.compressed,
            plain = self.plain,
            bytes = end,
            "qcow2 written"
        );
        Ok(Qcow2File {
            file: self.file,
            path: self.path,
            header,
            l1,
            l2,
            refs,
            blocks: table,
            end,
        })
    }
}

/// Big-endian bytes of 64-bit words.
pub(super) fn be_words(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}
