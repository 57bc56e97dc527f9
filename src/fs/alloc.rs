//! A block allocator over one range of blocks: a used-bitmap and a forward
//! cursor, so blocks are handed out in ascending order (a streaming copy
//! then writes forward). A writer runs one over the whole device (ext4,
//! ext3) or one per allocation group (XFS).

/// Allocates blocks `[base, base + len)`.
#[derive(Debug, Clone)]
pub struct Alloc {
    base: u64,
    len: u64,
    used: Vec<u64>,
    cursor: u64,
}

impl Alloc {
    /// An allocator over `len` blocks from block `base`, all free.
    pub fn new(base: u64, len: u64) -> Alloc {
        Alloc {
            base,
            len,
            used: vec![0; len.div_ceil(64) as usize],
            cursor: base,
        }
    }

    /// First block after the range.
    pub fn end(&self) -> u64 {
        self.base + self.len
    }

    /// Whether block `b` (inside the range) is taken.
    pub fn is_used(&self, b: u64) -> bool {
        let i = b - self.base;
        self.used[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Take blocks `[start, start + len)` (inside the range).
    pub fn mark(&mut self, start: u64, len: u64) {
        for b in start - self.base..start - self.base + len {
            self.used[(b / 64) as usize] |= 1 << (b % 64);
        }
    }

    /// Continue allocating from block `b`.
    pub fn seek(&mut self, b: u64) {
        self.cursor = b.clamp(self.base, self.end());
    }

    /// Blocks not taken.
    pub fn free(&self) -> u64 {
        let taken: u64 = self.used.iter().map(|w| u64::from(w.count_ones())).sum();
        self.len - taken
    }

    /// `n` contiguous blocks at or after the cursor.
    pub fn contiguous(&mut self, n: u64) -> Option<u64> {
        let mut start = self.cursor;
        while start + n <= self.end() {
            match (start..start + n).find(|&b| self.is_used(b)) {
                Some(b) => start = b + 1,
                None => {
                    self.mark(start, n);
                    self.cursor = start + n;
                    return Some(start);
                }
            }
        }
        None
    }

    /// `n` blocks at or after the cursor in as few runs as the taken blocks
    /// allow: (first block, count), adjacent runs merged; `None` if the
    /// range ends first.
    pub fn runs(&mut self, n: u64) -> Option<Vec<(u64, u64)>> {
        let out = self.runs_upto(n);
        (out.iter().map(|r| r.1).sum::<u64>() == n).then_some(out)
    }

    /// Up to `n` blocks at or after the cursor, in as few runs as the
    /// taken blocks allow (fewer than `n` when the range ends first).
    pub fn runs_upto(&mut self, n: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut left = n;
        let end = self.end();
        while left > 0 {
            while self.cursor < end && self.is_used(self.cursor) {
                self.cursor += 1;
            }
            if self.cursor >= end {
                break;
            }
            let start = self.cursor;
            let mut len = 0;
            while len < left && start + len < end && !self.is_used(start + len) {
                len += 1;
            }
            self.mark(start, len);
            self.cursor = start + len;
            match out.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 += len,
                _ => out.push((start, len)),
            }
            left -= len;
        }
        out
    }

    /// The free runs of the range (first block, count), in order.
    pub fn free_runs(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut b = self.base;
        while b < self.end() {
            let i = b - self.base;
            if i.is_multiple_of(64) && self.used[(i / 64) as usize] == u64::MAX {
                b += 64;
                continue;
            }
            if !self.is_used(b) {
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == b => last.1 += 1,
                    _ => out.push((b, 1)),
                }
            }
            b += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_taken_blocks_and_stays_in_its_range() {
        let mut a = Alloc::new(0, 100);
        a.mark(10, 5);
        assert_eq!(a.runs(12), Some(vec![(0, 10), (15, 2)]));
        assert_eq!(a.contiguous(80), Some(17));
        assert_eq!(a.contiguous(4), None);
        assert_eq!(a.free(), 3);

        let mut g = Alloc::new(1000, 10);
        g.mark(1002, 1);
        assert_eq!(g.contiguous(3), Some(1003));
        g.seek(0);
        assert_eq!(g.runs(3), Some(vec![(1000, 2), (1006, 1)]));
        assert_eq!(g.runs(4), None, "never past the range");
    }

    #[test]
    fn partial_runs_and_free_runs() {
        let mut a = Alloc::new(100, 200);
        a.mark(110, 5);
        a.mark(250, 50);
        assert_eq!(a.free_runs(), vec![(100, 10), (115, 135)]);
        a.seek(105);
        assert_eq!(a.runs_upto(10), vec![(105, 5), (115, 5)]);
        a.seek(240);
        assert_eq!(
            a.runs_upto(100),
            vec![(240, 10)],
            "stops at the range's end"
        );
        assert_eq!(a.free_runs(), vec![(100, 5), (120, 120)]);
    }
}
