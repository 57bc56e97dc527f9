//! A qcow2 file this module wrote, kept current under later writes: what
//! `--flush-to x.qcow2` does with the guest's writes once the image is
//! complete.
//!
//! A write to a plain cluster goes in place. A write to an unallocated or
//! compressed cluster builds the whole new cluster (zeros, or the old one
//! decompressed, with the write on top) and appends it uncompressed:
//! data and its refcount first, then — after an fdatasync, so that a
//! crash never leaves an L2 entry pointing at bytes not yet on disk — the
//! L2 entry; the old compressed bytes lose their reference last (a crash
//! before that leaks space, which `qemu-img check -r leaks` reclaims,
//! never data). New L2 tables and refcount blocks are appended the same
//! way; the writer reserved L1 and refcount-table room for them, so the
//! header never changes.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::compress::decode;
use super::layout::{COMPRESSED, COPIED, Header, OFFSET_MASK};
use super::writer::be_words;
use super::{Qcow2Error, Qcow2Options};

/// An open qcow2 file and its tables.
pub struct Qcow2File {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) header: Header,
    pub(super) l1: Vec<u64>,
    /// L1 index → (host offset, entries).
    pub(super) l2: BTreeMap<u64, (u64, Vec<u64>)>,
    /// Refcount of every host cluster the refcount blocks cover.
    pub(super) refs: Vec<u16>,
    /// Host offset of each refcount block.
    pub(super) blocks: Vec<u64>,
    /// File end (cluster-aligned): where the next cluster goes.
    pub(super) end: u64,
}

impl Qcow2File {
    /// The file, for fsync and rename.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Give up the tables, keep the file.
    pub fn into_file(self) -> File {
        self.file
    }

    /// The layout options it was written with.
    pub fn options(&self) -> Qcow2Options {
        Qcow2Options {
            cluster_bits: self.header.geometry.bits,
            compression: Some(self.header.codec),
        }
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> Qcow2Error + '_ {
        move |source| Qcow2Error::Io {
            what,
            path: self.path.clone(),
            source,
        }
    }

    fn cs(&self) -> u64 {
        self.header.geometry.cluster_size()
    }

    /// Make every update durable.
    pub fn flush(&self) -> Result<(), Qcow2Error> {
        self.file.sync_data().map_err(self.io("syncing"))
    }

    /// The guest's bytes at `offset` (reads what the tables say, as QEMU
    /// would).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let within = (at % cs) as usize;
            let n = (cs as usize - within).min(buf.len() - done);
            let cluster = self.cluster(at / cs)?;
            buf[done..done + n].copy_from_slice(&cluster[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn entry(&self, guest: u64) -> u64 {
        let per = self.header.geometry.l2_entries();
        self.l2
            .get(&(guest / per))
            .map_or(0, |(_, e)| e[(guest % per) as usize])
    }

    /// The whole content of guest cluster `guest`.
    fn cluster(&self, guest: u64) -> Result<Vec<u8>, Qcow2Error> {
        let cs = self.cs() as usize;
        let entry = self.entry(guest);
        let mut buf = vec![0u8; cs];
        if entry & COMPRESSED != 0 {
            let (off, len) = self.header.geometry.compressed_range(entry);
            let mut raw = vec![0u8; len as usize];
            self.file
                .read_exact_at(&mut raw, off)
                .map_err(self.io("reading"))?;
            return decode(self.header.codec, &raw, cs).ok_or_else(|| Qcow2Error::NotOurs {
                path: self.path.clone(),
                why: format!("compressed cluster {guest} does not decompress"),
            });
        }
        if entry & OFFSET_MASK != 0 {
            self.file
                .read_exact_at(&mut buf, entry & OFFSET_MASK)
                .map_err(self.io("reading"))?;
        }
        Ok(buf)
    }

    /// Write the refcount of host cluster `c` into its block.
    fn put_ref(&mut self, c: u64, value: u16) -> Result<(), Qcow2Error> {
        let per = self.header.geometry.refcounts_per_block();
        self.refs[c as usize] = value;
        let at = self.blocks[(c / per) as usize] + (c % per) * 2;
        self.file
            .write_all_at(&value.to_be_bytes(), at)
            .map_err(self.io("writing a refcount of"))
    }

    /// A new cluster at the end of the file, its refcount 1 (a new
    /// refcount block first when the last one is full).
    fn alloc(&mut self) -> Result<u64, Qcow2Error> {
        let cs = self.cs();
        let c = self.end / cs;
        if c as usize >= self.refs.len() {
            // The new block is the first cluster it covers.
            let capacity = u64::from(self.header.refcount_table_clusters) * cs / 8;
            let index = self.blocks.len() as u64;
            if index >= capacity {
                return Err(Qcow2Error::NotOurs {
                    path: self.path.clone(),
                    why: "its refcount table is full".into(),
                });
            }
            let per = self.header.geometry.refcounts_per_block() as usize;
            self.refs.resize(self.refs.len() + per, 0);
            self.blocks.push(self.end);
            self.end += cs;
            let mut block = vec![0u8; cs as usize];
            block[..2].copy_from_slice(&1u16.to_be_bytes());
            self.refs[c as usize] = 1;
            self.file
                .write_all_at(&block, c * cs)
                .map_err(self.io("writing a refcount block of"))?;
            let rt = self.header.refcount_table_offset + index * 8;
            self.file
                .write_all_at(&(c * cs).to_be_bytes(), rt)
                .map_err(self.io("writing the refcount table of"))?;
            return self.alloc();
        }
        self.end += cs;
        self.put_ref(c, 1)?;
        Ok(c * cs)
    }

    /// Write `data` at guest offset `offset`.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > self.header.geometry.size)
        {
            return Err(Qcow2Error::Internal(format!(
                "write of {} bytes at {offset} beyond the {}-byte disk",
                data.len(),
                self.header.geometry.size
            )));
        }
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let within = (at % cs) as usize;
            let n = (cs as usize - within).min(data.len() - done);
            self.write_cluster(at / cs, within, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn write_cluster(&mut self, guest: u64, within: usize, piece: &[u8]) -> Result<(), Qcow2Error> {
        let entry = self.entry(guest);
        if entry & COPIED != 0 && entry & COMPRESSED == 0 && entry & OFFSET_MASK != 0 {
            let at = (entry & OFFSET_MASK) + within as u64;
            return self
                .file
                .write_all_at(piece, at)
                .map_err(self.io("writing"));
        }
        let mut cluster = self.cluster(guest)?;
        cluster[within..within + piece.len()].copy_from_slice(piece);
        if entry == 0 && cluster.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let per = self.header.geometry.l2_entries();
        let l1i = guest / per;
        if !self.l2.contains_key(&l1i) {
            let off = self.alloc()?;
            let zeros = vec![0u8; self.cs() as usize];
            self.file
                .write_all_at(&zeros, off)
                .map_err(self.io("writing an L2 table of"))?;
            self.flush()?;
            self.l1[l1i as usize] = off | COPIED;
            let l1_at = self.header.l1_offset + l1i * 8;
            self.file
                .write_all_at(&self.l1[l1i as usize].to_be_bytes(), l1_at)
                .map_err(self.io("writing the L1 table of"))?;
            self.l2.insert(l1i, (off, vec![0; per as usize]));
        }
        let host = self.alloc()?;
        self.file
            .write_all_at(&cluster, host)
            .map_err(self.io("writing"))?;
        self.flush()?;
        let new_entry = host | COPIED;
        let table_off = {
            let Some((off, entries)) = self.l2.get_mut(&l1i) else {
                return Err(Qcow2Error::Internal("L2 table vanished".into()));
            };
            entries[(guest % per) as usize] = new_entry;
            *off + (guest % per) * 8
        };
        self.file
            .write_all_at(&be_words(&[new_entry]), table_off)
            .map_err(self.io("writing an L2 entry of"))?;
        if entry & COMPRESSED != 0 {
            let (off, len) = self.header.geometry.compressed_range(entry);
            let cs = self.cs();
            for c in off / cs..=(off + len - 1) / cs {
                if let Some(&r) = self.refs.get(c as usize) {
                    self.put_ref(c, r.saturating_sub(1))?;
                }
            }
        }
        Ok(())
    }

    /// Open a qcow2 file this module wrote (for tests and tools). Tables
    /// that point outside the file or at each other's clusters are refused:
    /// an update through them would overwrite other data.
    pub fn open(path: &Path) -> Result<Qcow2File, Qcow2Error> {
        let not_ours = |why: String| Qcow2Error::NotOurs {
            path: path.to_path_buf(),
            why,
        };
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Qcow2Error::Io {
                what: "opening",
                path: path.to_path_buf(),
                source,
            })?;
        let io = |source| Qcow2Error::Io {
            what: "reading",
            path: path.to_path_buf(),
            source,
        };
        let mut hb = vec![0u8; super::layout::HEADER_LEN + 8];
        file.read_exact_at(&mut hb, 0).map_err(io)?;
        let header = Header::parse(&hb).map_err(not_ours)?;
        let g = header.geometry;
        let cs = g.cluster_size();
        let end = file.metadata().map_err(io)?.len();
        if !end.is_multiple_of(cs) {
            return Err(not_ours(
                "its length is not a whole number of clusters".into(),
            ));
        }
        let words = |at: u64, n: u64| -> Result<Vec<u64>, Qcow2Error> {
            if at.checked_add(n * 8).is_none_or(|e| e > end) {
                return Err(not_ours(format!("a table at {at} runs past the end")));
            }
            let mut b = vec![0u8; (n * 8) as usize];
            file.read_exact_at(&mut b, at).map_err(io)?;
            Ok(b.chunks(8)
                .map(|w| u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
                .collect())
        };
        let l1 = words(header.l1_offset, g.l1_entries())?;
        let mut l2 = BTreeMap::new();
        for (i, e) in l1.iter().enumerate() {
            if e & OFFSET_MASK != 0 {
                l2.insert(
                    i as u64,
                    (e & OFFSET_MASK, words(e & OFFSET_MASK, g.l2_entries())?),
                );
            }
        }
        let capacity = u64::from(header.refcount_table_clusters) * cs / 8;
        let table = words(header.refcount_table_offset, capacity)?;
        let blocks: Vec<u64> = table.iter().copied().take_while(|b| *b != 0).collect();
        let per = g.refcounts_per_block();
        let mut refs = Vec::with_capacity((blocks.len() as u64 * per) as usize);
        for &b in &blocks {
            let mut bytes = vec![0u8; cs as usize];
            if b.checked_add(cs).is_none_or(|e| e > end) {
                return Err(not_ours(format!(
                    "a refcount block at {b} runs past the end"
                )));
            }
            file.read_exact_at(&mut bytes, b).map_err(io)?;
            refs.extend(bytes.chunks(2).map(|r| u16::from_be_bytes([r[0], r[1]])));
        }
        if (refs.len() as u64) < end / cs {
            return Err(not_ours("its refcount blocks do not cover the file".into()));
        }
        // Every entry must point inside the file, where a later read or
        // update can follow it.
        for (i, (_, entries)) in &l2 {
            for (j, &e) in entries.iter().enumerate() {
                let inside = if e & COMPRESSED != 0 {
                    let (off, len) = g.compressed_range(e);
                    off >= cs && off.checked_add(len).is_some_and(|x| x <= end)
                } else {
                    // An unallocated entry carries no flags: this module
                    // never writes one, and "copied" on no cluster would
                    // send an in-place write to the header.
                    let off = e & OFFSET_MASK;
                    if off == 0 {
                        e == 0
                    } else {
                        off.is_multiple_of(cs) && off.checked_add(cs).is_some_and(|x| x <= end)
                    }
                };
                if !inside {
                    return Err(not_ours(format!(
                        "the entry of guest cluster {} is not valid (outside the file, misaligned, or flags on no cluster)",
                        i * g.l2_entries() + j as u64
                    )));
                }
            }
        }
        check_disjoint(&header, &l2, &blocks).map_err(not_ours)?;
        Ok(Qcow2File {
            file,
            path: path.to_path_buf(),
            header,
            l1,
            l2,
            refs,
            blocks,
            end,
        })
    }
}

/// What a host cluster holds, for [`check_disjoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Header,
    L1,
    RefcountTable,
    RefcountBlock,
    L2Table,
    Data(u64),
    Compressed(u64),
}

/// No host cluster may hold two things (compressed clusters excepted, which
/// share host clusters with each other by design): the header, the L1 and
/// refcount tables, refcount blocks, L2 tables, and each guest cluster's
/// data. Otherwise a write through one would change another, as a
/// hand-made file can arrange.
fn check_disjoint(
    header: &Header,
    l2: &BTreeMap<u64, (u64, Vec<u64>)>,
    blocks: &[u64],
) -> Result<(), String> {
    let g = header.geometry;
    let cs = g.cluster_size();
    let mut used: BTreeMap<u64, Use> = BTreeMap::new();
    let mut claim = |first: u64, len: u64, what: Use| -> Result<(), String> {
        let last = first
            .checked_add(len.max(1) - 1)
            .ok_or_else(|| format!("{what:?} ends past the address space"))?;
        for c in first / cs..=last / cs {
            match used.insert(c, what) {
                None => {}
                Some(Use::Compressed(_)) if matches!(what, Use::Compressed(_)) => {}
                Some(before) => {
                    return Err(format!(
                        "host cluster {c} holds both {before:?} and {what:?}"
                    ));
                }
            }
        }
        Ok(())
    };
    claim(0, cs, Use::Header)?;
    claim(header.l1_offset, g.l1_entries() * 8, Use::L1)?;
    claim(
        header.refcount_table_offset,
        u64::from(header.refcount_table_clusters) * cs,
        Use::RefcountTable,
    )?;
    for &b in blocks {
        claim(b, cs, Use::RefcountBlock)?;
    }
    let per = g.l2_entries();
    for (off, _) in l2.values() {
        claim(*off, cs, Use::L2Table)?;
    }
    for (&i, (_, entries)) in l2 {
        for (j, &e) in entries.iter().enumerate() {
            let guest = i * per + j as u64;
            if e & COMPRESSED != 0 {
                let (off, len) = g.compressed_range(e);
                claim(off, len, Use::Compressed(guest))?;
            } else if e & OFFSET_MASK != 0 {
                claim(e & OFFSET_MASK, cs, Use::Data(guest))?;
            }
        }
    }
    Ok(())
}
