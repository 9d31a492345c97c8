//! What `mixnn train` and `mixnn demo` print while a job trains: a line
//! per epoch and per event, and on a terminal a progress bar of the
//! epoch's steps (steps/s, the loss, on the pool the time per hop
//! crossing so far); plain lines when the output is a file or a pipe.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use mixnn_designer::{EpochReport, Model, StepProgress, TrainEvent, TrainObserver};

/// Progress of a run over batches that are not training steps (`mixnn
/// infer`): on a terminal a bar of the batches answered with
/// inferences/s; otherwise a plain line at every tenth of the batches, so
/// a long run into a log file still says how far it got.
pub struct BatchProgress {
    bar: Option<ProgressBar>,
    total: usize,
    batch: usize,
    done: usize,
    start: std::time::Instant,
}

impl BatchProgress {
    /// Progress over `total` batches of `batch` samples, described as
    /// `what` (e.g. `inference`).
    pub fn new(what: &str, total: usize, batch: usize) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let b = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} batches  {msg}  ({eta} left)",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(what.to_string());
            b
        });
        BatchProgress {
            bar,
            total,
            batch,
            done: 0,
            start: std::time::Instant::now(),
        }
    }

    /// One more batch answered.
    pub fn batch_done(&mut self) {
        self.done += 1;
        let rate = (self.done * self.batch) as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        match &self.bar {
            Some(b) => {
                b.set_position(self.done as u64);
                b.set_message(format!("{rate:.0} inferences/s"));
            }
            None => {
                let tenth = self.total.div_ceil(10).max(1);
                if self.done.is_multiple_of(tenth) && self.done < self.total {
                    println!(
                        "  {}/{} batches ({}%), {rate:.0} inferences/s",
                        self.done,
                        self.total,
                        100 * self.done / self.total.max(1)
                    );
                }
            }
        }
    }

    /// Removes the bar (the caller prints the summary).
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// One line per epoch on stdout.
pub fn print_epoch(e: &EpochReport) {
    println!(
        "epoch {:>3}  loss {:.4}  test accuracy {:.2}%  train {:.1}s  test {:.1}s",
        e.epoch,
        e.train_loss,
        e.test_accuracy * 100.0,
        e.seconds,
        e.test_seconds
    );
}

/// What the CLI prints as training goes: epochs, checkpoints, fallbacks
/// to an older checkpoint, resumes and repairs; and, on a terminal, a
/// progress bar of the epoch's steps.
#[derive(Default)]
pub struct Printer {
    bar: Option<ProgressBar>,
    /// Microseconds per hop crossing of the training messages so far, on
    /// the pool (refreshed every few steps).
    hop_us: Option<f64>,
}

impl Printer {
    /// A printer; its bar appears only when stdout is a terminal.
    pub fn new() -> Self {
        Printer::default()
    }

    /// Prints a line above the bar (or plainly without one).
    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => println!("{text}"),
        }
    }

    fn bar_for(&mut self, p: &StepProgress) -> &ProgressBar {
        let fresh = || {
            let b = ProgressBar::new(p.batches as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "epoch {prefix:>3} [{bar:30}] {pos}/{len} steps  {per_sec}  {msg}  ({eta} left)",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(p.epoch.to_string());
            b
        };
        self.bar.get_or_insert_with(fresh)
    }
}

impl TrainObserver for Printer {
    fn epoch(&mut self, e: &EpochReport) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        print_epoch(e);
    }

    fn step(&mut self, step: u64, model: &mut dyn Model) {
        // The network figures cost a copy of the report: every 16 steps.
        if step.is_multiple_of(16) {
            self.hop_us = model.network().and_then(|n| {
                (n.train_hop_crossings > 0)
                    .then(|| 1e6 * n.train_seconds / n.train_hop_crossings as f64)
            });
        }
    }

    fn progress(&mut self, p: &StepProgress) {
        if !std::io::stdout().is_terminal() {
            return;
        }
        let hop = self
            .hop_us
            .map(|us| format!("  {us:.0} µs/hop crossing"))
            .unwrap_or_default();
        let b = self.bar_for(p);
        b.set_position(p.batch as u64);
        b.set_message(format!("loss {:.4}{hop}", p.loss));
    }

    fn event(&mut self, e: &TrainEvent) {
        let text = match e {
            TrainEvent::Checkpoint {
                step,
                epoch,
                batch,
                bytes,
                seconds,
            } => format!(
                "  checkpoint at step {step} (epoch {epoch}, batch {batch}): {bytes} bytes in {seconds:.2}s"
            ),
            TrainEvent::Fallback(w) => format!("warning: {w}"),
            TrainEvent::Resumed { step, epoch, batch } => {
                format!("resumed at step {step}: epoch {epoch}, batch {batch}")
            }
            TrainEvent::Detected(d) => format!(
                "LIE DETECTED at step {}{}{}: {}",
                d.step,
                d.hop
                    .map(|h| format!(", hop {}", h + 1))
                    .unwrap_or_default(),
                d.node
                    .as_ref()
                    .map(|n| format!(", node {n}"))
                    .unwrap_or_default(),
                d.how
            ),
            TrainEvent::Repaired(r) => format!(
                "repaired hop {} ({}) failed at step {}: node {} replaced by {}; detected after {} ms, \
                 repaired after {} ms, {} steps replayed",
                r.hop + 1,
                r.role,
                r.step,
                r.failed_node,
                r.new_node,
                r.detected_after_ms,
                r.repaired_after_ms,
                r.steps_replayed
            ),
        };
        self.line(&text);
    }
}
