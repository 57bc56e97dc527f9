//! Timestamps a filesystem cannot store: clamped into its range as the
//! kernel's `timestamp_truncate` does (seconds to the bound, nanoseconds
//! to 0), with one warning per image saying how many and naming the first.

/// The seconds a filesystem's timestamps hold.
#[derive(Debug, Clone, Copy)]
pub struct TimeRange {
    /// The filesystem, for the warning.
    pub fs: &'static str,
    /// Earliest second.
    pub min: i64,
    /// Latest second.
    pub max: i64,
    /// The range as dates, for the warning.
    pub shown: &'static str,
}

/// ext4 and ext3 with 256-byte inodes: a signed 32-bit second count and
/// two epoch bits (`EXT4_EXTRA_TIMESTAMP_MIN` / `_MAX`).
pub const EXTFS: TimeRange = TimeRange {
    fs: "ext4/ext3",
    min: i32::MIN as i64,
    max: (1 << 34) - 1 + i32::MIN as i64,
    shown: "1901-12-13 to 2446-05-10",
};

/// Clamps timestamps into a range, counting what it changed.
#[derive(Debug)]
pub struct Clamper {
    range: TimeRange,
    count: u64,
    first: Option<(String, i64)>,
}

impl Clamper {
    /// A clamper for `range`.
    pub fn new(range: TimeRange) -> Clamper {
        Clamper {
            range,
            count: 0,
            first: None,
        }
    }

    /// `secs`.`nsec` as the filesystem can hold it; `path` names the node
    /// if it had to change.
    pub fn clamp(&mut self, secs: i64, nsec: u32, path: &dyn Fn() -> String) -> (i64, u32) {
        if (self.range.min..=self.range.max).contains(&secs) {
            return (secs, nsec);
        }
        self.count += 1;
        if self.first.is_none() {
            self.first = Some((path(), secs));
        }
        (secs.clamp(self.range.min, self.range.max), 0)
    }

    /// How many timestamps were changed.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Warn once if anything was clamped.
    pub fn finish(self) {
        if let Some((path, secs)) = self.first {
            tracing::warn!(
                "{} timestamp(s) outside what {} stores ({}) were clamped to that range, \
                 as the kernel does; the first: {path} at {secs} s",
                self.count,
                self.range.fs,
                self.range.shown
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_range_stays_and_out_of_range_clamps_to_the_bounds() {
        let mut c = Clamper::new(EXTFS);
        let p = || "x".to_string();
        assert_eq!(c.clamp(0, 5, &p), (0, 5));
        assert_eq!(c.clamp(EXTFS.max, 7, &p), (EXTFS.max, 7));
        assert_eq!(c.clamp(-99_999_999_999, 500_000_000, &p), (EXTFS.min, 0));
        assert_eq!(c.clamp(i64::MAX, 1, &p), (EXTFS.max, 0));
        assert_eq!(c.count(), 2);
        // 2446-05-10T22:38:55Z and 1901-12-13T20:45:52Z.
        assert_eq!((EXTFS.max, EXTFS.min), (15_032_385_535, -2_147_483_648));
    }
}
