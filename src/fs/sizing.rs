//! How big a filesystem is, the same rule for every writer: without
//! `--size`, the content plus headroom (read-only: 10% + 16 MiB; writable:
//! 50% + 256 MiB), rounded up to a whole MiB; with `--size`, exactly that,
//! or an error that states the size the content needs.
//!
//! A writer supplies its minimum, its largest size, an estimate of its own
//! overhead and an attempt that lays the filesystem out on a given number of
//! blocks (or says it does not fit). The search tries growing sizes a
//! bounded number of times, so no input can make it run forever.

use super::BLOCK_SIZE;

const MIB: u64 = 1 << 20;
/// Attempts before a search gives up.
pub const MAX_ATTEMPTS: usize = 200;

/// Errors sizing a filesystem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// The content does not fit the requested size.
    #[error(
        "the image needs at least {needed} bytes ({needed_mib} MiB), but --size gives {given} bytes"
    )]
    TooSmall {
        /// Bytes asked for.
        given: u64,
        /// Bytes needed.
        needed: u64,
        /// Bytes needed, in MiB rounded up.
        needed_mib: u64,
    },
    /// A size below the writer's minimum.
    #[error("size {given} bytes is too small for an {fs} filesystem (minimum {min_mib} MiB)")]
    BelowMinimum {
        /// The filesystem.
        fs: &'static str,
        /// Bytes asked for.
        given: u64,
        /// The minimum in MiB.
        min_mib: u64,
    },
    /// A size beyond the largest filesystem the writer makes.
    #[error(
        "size {given} bytes is beyond the largest {fs} filesystem ocidisk writes ({max_tib} TiB){hint}"
    )]
    AboveMaximum {
        /// The filesystem.
        fs: &'static str,
        /// Bytes asked for or needed.
        given: u64,
        /// The maximum in TiB.
        max_tib: u64,
        /// How to get a bigger one anyway, or empty.
        hint: &'static str,
    },
    /// No size up to the search's limit holds the content.
    #[error("the content does not fit any {fs} filesystem up to {tried} bytes")]
    NoFit {
        /// The filesystem.
        fs: &'static str,
        /// The largest size tried.
        tried: u64,
    },
}

/// What a writer tells the search.
pub struct Limits {
    /// The filesystem's name, for messages.
    pub fs: &'static str,
    /// Smallest size in blocks.
    pub min_blocks: u64,
    /// Largest size in blocks.
    pub max_blocks: u64,
    /// Said after the limit when a size is beyond it (or empty).
    pub above_max_hint: &'static str,
}

/// Headroom in blocks for `content` blocks of content.
pub fn headroom(content: u64, read_only: bool) -> u64 {
    if read_only {
        content / 10 + 16 * MIB / BLOCK_SIZE
    } else {
        content / 2 + 256 * MIB / BLOCK_SIZE
    }
}

/// `blocks` rounded up to a whole MiB.
pub fn round_to_mib(blocks: u64) -> u64 {
    (blocks * BLOCK_SIZE).div_ceil(MIB) * MIB / BLOCK_SIZE
}

/// Try sizes from `start` blocks, growing by `grow`, rounded to a MiB:
/// the first that `attempt` accepts, with its block count.
fn search<T>(
    limits: &Limits,
    start: u64,
    grow: impl Fn(u64) -> u64,
    attempt: &mut dyn FnMut(u64) -> Option<T>,
) -> Result<(u64, T), SizeError> {
    let mut b = start.max(limits.min_blocks);
    let mut tried = 0;
    for _ in 0..MAX_ATTEMPTS {
        let rounded = round_to_mib(b);
        if rounded > limits.max_blocks {
            break;
        }
        tried = rounded;
        if let Some(t) = attempt(rounded) {
            return Ok((rounded, t));
        }
        b = grow(b);
    }
    Err(SizeError::NoFit {
        fs: limits.fs,
        tried: tried * BLOCK_SIZE,
    })
}

/// Size a filesystem. `size`: bytes asked for, if any; `estimate`: a first
/// guess of the blocks the content and the writer's structures take
/// (without headroom; from `overhead(blocks)` for a filesystem of that
/// many blocks plus `content`); `attempt`: lay out on that many blocks.
pub fn fit<T>(
    limits: &Limits,
    size: Option<u64>,
    read_only: bool,
    content: u64,
    overhead: &dyn Fn(u64) -> u64,
    attempt: &mut dyn FnMut(u64) -> Option<T>,
) -> Result<T, SizeError> {
    match size {
        Some(size) => {
            let blocks = size / BLOCK_SIZE;
            if blocks < limits.min_blocks {
                return Err(SizeError::BelowMinimum {
                    fs: limits.fs,
                    given: size,
                    min_mib: (limits.min_blocks * BLOCK_SIZE).div_ceil(MIB),
                });
            }
            if blocks > limits.max_blocks {
                return Err(SizeError::AboveMaximum {
                    fs: limits.fs,
                    given: size,
                    max_tib: (limits.max_blocks * BLOCK_SIZE) >> 40,
                    hint: limits.above_max_hint,
                });
            }
            if let Some(t) = attempt(blocks) {
                return Ok(t);
            }
            // Find the smallest size that works, for the error message.
            let start = content + overhead(content);
            let (needed, _) = search(limits, start, |b| b + b / 50 + 256, attempt)?;
            let needed = needed * BLOCK_SIZE;
            Err(SizeError::TooSmall {
                given: size,
                needed,
                needed_mib: needed.div_ceil(MIB),
            })
        }
        None => {
            let mut b = (content + headroom(content, read_only)).max(limits.min_blocks);
            b += overhead(b);
            search(limits, b, |b| b + b / 20 + 256, attempt).map(|(_, t)| t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        fs: "test",
        min_blocks: 2048,
        max_blocks: 1 << 30,
        above_max_hint: "",
    };

    #[test]
    fn auto_size_adds_headroom_and_rounds_to_a_mib() {
        let mut tried = Vec::new();
        let got = fit(&LIMITS, None, true, 10_000, &|_| 100, &mut |b| {
            tried.push(b);
            Some(b)
        })
        .unwrap();
        assert_eq!(got, round_to_mib(10_000 + 1000 + 4096 + 100));
        assert_eq!(tried.len(), 1);
    }

    #[test]
    fn a_given_size_is_exact_or_names_what_is_needed() {
        let mut fits = |b: u64| (b >= 5000).then_some(b);
        assert_eq!(
            fit(&LIMITS, Some(8 << 20), false, 3000, &|_| 10, &mut |b| fits(
                b * 3
            ))
            .unwrap(),
            6144
        );
        let e = fit(&LIMITS, Some(8 << 20), false, 3000, &|_| 10, &mut fits).unwrap_err();
        assert!(
            matches!(e, SizeError::TooSmall { needed, .. } if needed >= 5000 * BLOCK_SIZE),
            "{e}"
        );
        assert!(matches!(
            fit(&LIMITS, Some(1 << 20), false, 1, &|_| 0, &mut fits),
            Err(SizeError::BelowMinimum { .. })
        ));
        assert!(matches!(
            fit(&LIMITS, Some(1 << 60), false, 1, &|_| 0, &mut fits),
            Err(SizeError::AboveMaximum { .. })
        ));
    }

    #[test]
    fn a_search_that_never_fits_ends() {
        let mut n = 0;
        let e = fit(&LIMITS, None, false, 1, &|_| 0, &mut |_| {
            n += 1;
            None::<()>
        })
        .unwrap_err();
        assert!(matches!(e, SizeError::NoFit { .. }));
        assert!(n <= MAX_ATTEMPTS);
        let mut n = 0;
        let e = fit(&LIMITS, Some(16 << 20), false, 1, &|_| 0, &mut |_| {
            n += 1;
            None::<()>
        })
        .unwrap_err();
        assert!(matches!(e, SizeError::NoFit { .. }), "{e}");
        assert!(n <= MAX_ATTEMPTS + 1);
    }
}
