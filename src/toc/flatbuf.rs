//! The little of FlatBuffers a zTOC needs, both ways: a reader that checks
//! every offset against the buffer (a zTOC comes from a registry: any byte
//! may lie) and a writer that lays tables out the way FlatBuffers'
//! verifiers expect (scalars aligned to their size, forward offsets).
//!
//! Format (flatbuffers.dev, "Internals"): the buffer starts with a `u32`
//! offset to the root table. A table starts with an `i32` that, subtracted
//! from the table's position, gives its vtable: `u16` vtable size, `u16`
//! table size, then one `u16` per field slot (0: absent) giving the
//! field's offset inside the table. Strings, vectors and sub-tables are
//! `u32` offsets forward from where the offset is stored; a vector or
//! string starts with its `u32` length (strings end with a NUL).

/// A malformed buffer: what was being read when an offset or length left it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed flatbuffer: {0}")]
pub struct FlatError(pub &'static str);

type R<T> = Result<T, FlatError>;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// A table in a buffer.
#[derive(Clone, Copy)]
pub struct Table<'a> {
    buf: &'a [u8],
    at: usize,
    vtable: usize,
    vtable_len: u16,
}

impl<'a> Table<'a> {
    /// The root table of `buf`.
    pub fn root(buf: &'a [u8]) -> R<Table<'a>> {
        let off = u32_at(buf, 0).ok_or(FlatError("root offset"))?;
        Table::at(buf, off as usize)
    }

    fn at(buf: &'a [u8], at: usize) -> R<Table<'a>> {
        let soff = u32_at(buf, at).ok_or(FlatError("table header"))? as i32;
        let vtable = (at as i64)
            .checked_sub(i64::from(soff))
            .filter(|v| *v >= 0)
            .ok_or(FlatError("vtable offset"))? as usize;
        let vtable_len = u16_at(buf, vtable).ok_or(FlatError("vtable"))?;
        let table_len = u16_at(buf, vtable + 2).ok_or(FlatError("vtable"))?;
        if vtable_len < 4
            || vtable_len % 2 != 0
            || buf.len() < vtable + usize::from(vtable_len)
            || buf.len() < at + usize::from(table_len)
        {
            return Err(FlatError("vtable or table size"));
        }
        Ok(Table {
            buf,
            at,
            vtable,
            vtable_len,
        })
    }

    /// Where field `slot` sits, if present (checked to hold `size` bytes).
    fn field(&self, slot: usize, size: usize) -> R<Option<usize>> {
        let entry = 4 + 2 * slot;
        if entry + 2 > usize::from(self.vtable_len) {
            return Ok(None);
        }
        let off = u16_at(self.buf, self.vtable + entry).ok_or(FlatError("vtable entry"))?;
        if off == 0 {
            return Ok(None);
        }
        let at = self.at + usize::from(off);
        if at + size > self.buf.len() {
            return Err(FlatError("field past the buffer"));
        }
        Ok(Some(at))
    }

    /// An 8-byte integer field (`long`), or `default`.
    pub fn i64(&self, slot: usize, default: i64) -> R<i64> {
        Ok(match self.field(slot, 8)? {
            Some(at) => u64_at(self.buf, at).ok_or(FlatError("long"))? as i64,
            None => default,
        })
    }

    /// A 4-byte integer field (`int`, `uint32`), or `default`.
    pub fn u32(&self, slot: usize, default: u32) -> R<u32> {
        Ok(match self.field(slot, 4)? {
            Some(at) => u32_at(self.buf, at).ok_or(FlatError("int"))?,
            None => default,
        })
    }

    /// A 1-byte field (`byte`, `ubyte`), or `default`.
    pub fn u8(&self, slot: usize, default: u8) -> R<u8> {
        Ok(match self.field(slot, 1)? {
            Some(at) => self.buf[at],
            None => default,
        })
    }

    /// Follow the offset stored in field `slot`.
    fn target(&self, slot: usize) -> R<Option<usize>> {
        match self.field(slot, 4)? {
            None => Ok(None),
            Some(at) => {
                let off = u32_at(self.buf, at).ok_or(FlatError("offset"))?;
                at.checked_add(off as usize)
                    .filter(|t| *t < self.buf.len())
                    .map(Some)
                    .ok_or(FlatError("offset past the buffer"))
            }
        }
    }

    /// A string field's bytes (FlatBuffers strings are UTF-8 by contract,
    /// but Go writers put any bytes there), or `None` if absent.
    pub fn bytes(&self, slot: usize) -> R<Option<&'a [u8]>> {
        match self.target(slot)? {
            None => Ok(None),
            Some(t) => string(self.buf, t).map(Some),
        }
    }

    /// A `[ubyte]` field's bytes, or `None` if absent.
    pub fn ubytes(&self, slot: usize) -> R<Option<&'a [u8]>> {
        match self.target(slot)? {
            None => Ok(None),
            Some(t) => vector(self.buf, t, 1).map(Some),
        }
    }

    /// A sub-table field.
    pub fn table(&self, slot: usize) -> R<Option<Table<'a>>> {
        match self.target(slot)? {
            None => Ok(None),
            Some(t) => Table::at(self.buf, t).map(Some),
        }
    }

    /// A vector of tables (`[T]`), or empty if absent.
    pub fn tables(&self, slot: usize) -> R<Vec<Table<'a>>> {
        self.offsets(slot)?
            .into_iter()
            .map(|t| Table::at(self.buf, t))
            .collect()
    }

    /// A vector of strings (`[string]`), or empty if absent.
    pub fn strings(&self, slot: usize) -> R<Vec<&'a [u8]>> {
        self.offsets(slot)?
            .into_iter()
            .map(|t| string(self.buf, t))
            .collect()
    }

    /// The targets of a vector of offsets.
    fn offsets(&self, slot: usize) -> R<Vec<usize>> {
        let Some(t) = self.target(slot)? else {
            return Ok(Vec::new());
        };
        let elems = vector(self.buf, t, 4)?;
        let base = t + 4;
        (0..elems.len() / 4)
            .map(|i| {
                let at = base + 4 * i;
                let off = u32_at(self.buf, at).ok_or(FlatError("vector element"))?;
                at.checked_add(off as usize)
                    .filter(|x| *x < self.buf.len())
                    .ok_or(FlatError("vector element past the buffer"))
            })
            .collect()
    }
}

/// The bytes of the string at `at`, which must end with its NUL.
fn string(buf: &[u8], at: usize) -> R<&[u8]> {
    let s = vector(buf, at, 1)?;
    match buf.get(at + 4 + s.len()) {
        Some(0) => Ok(s),
        _ => Err(FlatError("string without its NUL")),
    }
}

/// The element bytes of the vector (or string) whose length word is at `at`.
fn vector(buf: &[u8], at: usize, elem: usize) -> R<&[u8]> {
    let n = u32_at(buf, at).ok_or(FlatError("vector length"))? as usize;
    let len = n.checked_mul(elem).ok_or(FlatError("vector length"))?;
    buf.get(
        at + 4
            ..(at + 4)
                .checked_add(len)
                .ok_or(FlatError("vector length"))?,
    )
    .ok_or(FlatError("vector past the buffer"))
}

/// A value of a field, for the writer.
#[derive(Debug, Clone)]
pub enum Field {
    /// `long`.
    I64(i64),
    /// `int` / `uint32`.
    U32(u32),
    /// `byte` / `ubyte`.
    U8(u8),
    /// `string`.
    Str(Vec<u8>),
    /// `[ubyte]`.
    Bytes(Vec<u8>),
    /// A sub-table.
    Table(Obj),
    /// `[T]`.
    Tables(Vec<Obj>),
    /// `[string]`.
    Strs(Vec<Vec<u8>>),
}

/// A table to write: its present fields by slot.
#[derive(Debug, Clone, Default)]
pub struct Obj(pub Vec<(usize, Field)>);

impl Obj {
    /// Add field `slot`.
    pub fn with(mut self, slot: usize, f: Field) -> Obj {
        self.0.push((slot, f));
        self
    }
}

/// Serialize `root` as a FlatBuffer. Identical vtables are written once,
/// and identical strings too: all strings go after the tables (offsets
/// must point forward), each distinct one once.
pub fn write(root: &Obj) -> Vec<u8> {
    let mut w = Writer {
        b: vec![0; 4],
        vtables: std::collections::HashMap::new(),
        strings: Vec::new(),
    };
    let at = w.table(root);
    w.b[0..4].copy_from_slice(&(at as u32).to_le_bytes());
    let mut written: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    let pending = std::mem::take(&mut w.strings);
    for (field, s) in &pending {
        let target = match written.get(&s[..]) {
            Some(&t) => t,
            None => {
                let t = w.bytes(s);
                w.b.push(0);
                written.insert(s, t);
                t
            }
        };
        w.patch(*field, target);
    }
    w.b
}

struct Writer {
    b: Vec<u8>,
    /// Vtables written, by content.
    vtables: std::collections::HashMap<Vec<u8>, usize>,
    /// Offsets to strings, to fill in at the end: (where, the string).
    strings: Vec<(usize, Vec<u8>)>,
}

impl Writer {
    fn align(&mut self, n: usize) {
        while !self.b.len().is_multiple_of(n) {
            self.b.push(0);
        }
    }

    fn patch(&mut self, at: usize, target: usize) {
        let off = (target - at) as u32;
        self.b[at..at + 4].copy_from_slice(&off.to_le_bytes());
    }

    /// Write a table (vtable first, then the table, then what it points
    /// to); returns the table's position.
    fn table(&mut self, obj: &Obj) -> usize {
        fn size(f: &Field) -> usize {
            match f {
                Field::I64(_) => 8,
                Field::U8(_) => 1,
                _ => 4,
            }
        }
        let slots = obj.0.iter().map(|(s, _)| s + 1).max().unwrap_or(0);
        // Inline layout: the soffset, then fields by falling size so each
        // sits aligned (the table itself starts 8-aligned).
        let mut order: Vec<&(usize, Field)> = obj.0.iter().collect();
        order.sort_by_key(|(s, f)| (std::cmp::Reverse(size(f)), *s));
        let mut offs = vec![0u16; slots];
        let mut pos = 4usize;
        for (s, f) in &order {
            let n = size(f);
            pos = pos.div_ceil(n) * n;
            offs[*s] = pos as u16;
            pos += n;
        }
        let table_len = pos;
        let mut vtable = Vec::with_capacity(4 + 2 * slots);
        vtable.extend_from_slice(&((4 + 2 * slots) as u16).to_le_bytes());
        vtable.extend_from_slice(&(table_len as u16).to_le_bytes());
        for o in &offs {
            vtable.extend_from_slice(&o.to_le_bytes());
        }
        let vt = match self.vtables.get(&vtable) {
            Some(&vt) => vt,
            None => {
                self.align(2);
                let vt = self.b.len();
                self.b.extend_from_slice(&vtable);
                self.vtables.insert(vtable, vt);
                vt
            }
        };
        self.align(8);
        let at = self.b.len();
        self.b.resize(at + table_len, 0);
        self.b[at..at + 4].copy_from_slice(&((at as i64 - vt as i64) as i32).to_le_bytes());
        for (s, f) in &obj.0 {
            let p = at + usize::from(offs[*s]);
            match f {
                Field::I64(v) => self.b[p..p + 8].copy_from_slice(&v.to_le_bytes()),
                Field::U32(v) => self.b[p..p + 4].copy_from_slice(&v.to_le_bytes()),
                Field::U8(v) => self.b[p] = *v,
                _ => {}
            }
        }
        for (s, f) in &obj.0 {
            let p = at + usize::from(offs[*s]);
            let target = match f {
                Field::Str(v) => {
                    self.strings.push((p, v.clone()));
                    continue;
                }
                Field::Bytes(v) => self.bytes(v),
                Field::Table(t) => {
                    self.align(8);
                    self.table(t)
                }
                Field::Tables(ts) => {
                    let slots = self.slots(ts.len());
                    for (i, t) in ts.iter().enumerate() {
                        let child = self.table(t);
                        self.patch(slots + 4 * i, child);
                    }
                    slots - 4
                }
                Field::Strs(ss) => {
                    let slots = self.slots(ss.len());
                    for (i, s) in ss.iter().enumerate() {
                        self.strings.push((slots + 4 * i, s.clone()));
                    }
                    slots - 4
                }
                _ => continue,
            };
            self.patch(p, target);
        }
        at
    }

    /// A vector of `n` offsets to fill: returns where the first one is.
    fn slots(&mut self, n: usize) -> usize {
        self.align(4);
        self.b.extend_from_slice(&(n as u32).to_le_bytes());
        let first = self.b.len();
        self.b.resize(first + 4 * n, 0);
        first
    }

    fn bytes(&mut self, s: &[u8]) -> usize {
        self.align(4);
        let at = self.b.len();
        self.b.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.b.extend_from_slice(s);
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_fields_read_back() {
        let child = Obj::default()
            .with(0, Field::Str(b"k".to_vec()))
            .with(1, Field::Str(b"\xffv".to_vec()));
        let root = Obj::default()
            .with(0, Field::Str(b"0.9".to_vec()))
            .with(2, Field::I64(-5))
            .with(3, Field::U8(2))
            .with(4, Field::U32(7))
            .with(5, Field::Tables(vec![child.clone(), child]))
            .with(6, Field::Strs(vec![b"a".to_vec(), b"bc".to_vec()]))
            .with(7, Field::Bytes(vec![1, 2, 3]))
            .with(8, Field::Table(Obj::default().with(1, Field::I64(1 << 40))));
        let buf = write(&root);
        let t = Table::root(&buf).unwrap();
        assert_eq!(t.bytes(0).unwrap(), Some(&b"0.9"[..]));
        assert_eq!(t.bytes(1).unwrap(), None);
        assert_eq!(t.i64(2, 0).unwrap(), -5);
        assert_eq!(t.u8(3, 1).unwrap(), 2);
        assert_eq!(t.u32(4, 0).unwrap(), 7);
        assert_eq!(t.u32(40, 9).unwrap(), 9, "a slot past the vtable is absent");
        let kids = t.tables(5).unwrap();
        assert_eq!(kids.len(), 2);
        assert_eq!(kids[1].bytes(1).unwrap(), Some(&b"\xffv"[..]));
        assert_eq!(t.strings(6).unwrap(), vec![&b"a"[..], &b"bc"[..]]);
        assert_eq!(t.ubytes(7).unwrap(), Some(&[1u8, 2, 3][..]));
        assert_eq!(t.table(8).unwrap().unwrap().i64(1, 0).unwrap(), 1 << 40);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let root = Obj::default().with(0, Field::Str(b"x".to_vec())).with(
            1,
            Field::Tables(vec![Obj::default().with(0, Field::I64(3))]),
        );
        let buf = write(&root);
        for n in 0..buf.len() {
            let cut = &buf[..n];
            let r = Table::root(cut).and_then(|t| {
                t.bytes(0)?;
                for k in t.tables(1)? {
                    k.i64(0, 0)?;
                }
                Ok(())
            });
            assert!(r.is_err(), "a buffer cut at {n} of {} read", buf.len());
        }
    }
}
