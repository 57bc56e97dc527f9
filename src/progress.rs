//! Progress reporting for pulls and for writing an image: a bar per layer
//! (and one for the write) on a terminal, plain lines (one when a layer
//! starts, one when it is done; the write at every quarter) when stderr is
//! a file or pipe, so logs of CI runs stay readable.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::digest::Digest;
use crate::inspect::human_size;
use crate::pull::PullProgress;
use crate::source::Layer;

/// Progress on stderr: bars on a terminal, lines otherwise.
pub struct StderrProgress {
    bars: Option<(MultiProgress, Mutex<HashMap<Digest, ProgressBar>>)>,
    /// The write: its bar (terminal) and the last quarter printed (lines).
    write: Mutex<(Option<ProgressBar>, Option<u64>)>,
}

impl StderrProgress {
    /// Choose bars or lines depending on whether stderr is a terminal.
    pub fn new() -> StderrProgress {
        let bars = std::io::stderr().is_terminal().then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                Mutex::new(HashMap::new()),
            )
        });
        StderrProgress {
            bars,
            write: Mutex::new((None, None)),
        }
    }

    fn bar(&self, layer: &Layer) -> Option<ProgressBar> {
        let (multi, bars) = self.bars.as_ref()?;
        let mut bars = crate::sync::lock(bars);
        let d = &layer.descriptor;
        Some(
            bars.entry(d.digest.clone())
                .or_insert_with(|| {
                    let style = ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> ");
                    multi.add(
                        ProgressBar::new(d.size)
                            .with_style(style)
                            .with_prefix(d.digest.short()),
                    )
                })
                .clone(),
        )
    }
}

impl Default for StderrProgress {
    fn default() -> Self {
        StderrProgress::new()
    }
}

impl PullProgress for StderrProgress {
    fn start(&self, layer: &Layer, resume_from: u64) {
        match self.bar(layer) {
            Some(b) => b.set_position(resume_from),
            None => {
                let d = &layer.descriptor;
                if resume_from > 0 {
                    eprintln!(
                        "{}: resuming at {}",
                        d.digest.short(),
                        human_size(resume_from)
                    );
                } else {
                    eprintln!("{}: downloading {}", d.digest.short(), human_size(d.size));
                }
            }
        }
    }

    fn advance(&self, layer: &Layer, bytes: u64) {
        if let Some(b) = self.bar(layer) {
            b.inc(bytes);
        }
    }

    fn finish(&self, layer: &Layer, downloaded: bool) {
        let what = if downloaded { "done" } else { "already cached" };
        match self.bar(layer) {
            Some(b) => {
                b.set_position(layer.descriptor.size);
                b.finish_with_message(what);
            }
            None => eprintln!("{}: {what}", layer.descriptor.digest.short()),
        }
    }

    fn writing(&self, done: u64, total: u64) {
        let mut w = crate::sync::lock(&self.write);
        match &self.bars {
            Some((multi, _)) => {
                let bar = w.0.get_or_insert_with(|| {
                    let style = ProgressStyle::with_template(
                        "writing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .expect("valid template")
                    .progress_chars("=> ");
                    multi.add(ProgressBar::new(total).with_style(style))
                });
                bar.set_position(done);
                if done >= total {
                    bar.finish();
                }
            }
            None => {
                let quarter = (done * 4).checked_div(total).unwrap_or(4).min(4);
                if w.1.is_none_or(|q| quarter > q) {
                    w.1 = Some(quarter);
                    eprintln!(
                        "writing the image: {}% of {}",
                        quarter * 25,
                        human_size(total)
                    );
                }
            }
        }
    }
}
