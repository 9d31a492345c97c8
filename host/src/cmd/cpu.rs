//! How busy the machine's cores were over a stretch of a run, read from
//! Linux's `/proc/stat`.
//!
//! Why machine-wide and not per process: a local pool is a designer, a
//! bootstrap and N node processes sharing the same cores, and the question
//! the figures answer is whether a phase was limited by waiting (cores idle)
//! or by CPU (cores busy). On a machine running nothing else, the machine's
//! busy time is the pool's. Elsewhere than Linux, or if `/proc/stat` cannot
//! be read, every figure is absent rather than wrong.

use std::time::Instant;

use mixnn_designer::{EpochReport, Model, StepProgress, TrainEvent, TrainObserver};
use serde::Serialize;

/// One reading: busy and total time of all cores together, in the kernel's
/// clock ticks, and when it was taken.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    busy: u64,
    total: u64,
    cores: usize,
    at: Instant,
}

/// What the cores did between two readings.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct CpuUse {
    /// Cores of the machine.
    pub cores: usize,
    /// Wall time between the readings.
    pub seconds: f64,
    /// Average number of cores busy (0..=cores).
    pub cores_busy: f64,
    /// CPU time spent by the whole machine: `cores_busy × seconds`.
    pub cpu_seconds: f64,
}

impl CpuSample {
    /// Reads `/proc/stat` now; `None` where it cannot.
    pub fn now() -> Option<CpuSample> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let at = Instant::now();
        let (busy, total, cores) = parse_proc_stat(&text)?;
        Some(CpuSample {
            busy,
            total,
            cores,
            at,
        })
    }

    /// The use between `self` and a later reading.
    pub fn until(&self, later: &CpuSample) -> Option<CpuUse> {
        let total = later.total.checked_sub(self.total)?;
        let busy = later.busy.checked_sub(self.busy)?;
        if total == 0 || self.cores == 0 {
            return None;
        }
        let seconds = later.at.duration_since(self.at).as_secs_f64();
        let cores_busy = self.cores as f64 * busy as f64 / total as f64;
        Some(CpuUse {
            cores: self.cores,
            seconds,
            cores_busy,
            cpu_seconds: cores_busy * seconds,
        })
    }

    /// The use from `self` until now.
    pub fn until_now(&self) -> Option<CpuUse> {
        self.until(&CpuSample::now()?)
    }
}

/// (busy ticks, total ticks, cores) from `/proc/stat`: the first line sums
/// all cores (`cpu user nice system idle iowait irq softirq steal …`; guest
/// time is already inside user), and one `cpuN` line follows per core.
fn parse_proc_stat(text: &str) -> Option<(u64, u64, usize)> {
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut fields = first.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let &[user, nice, system, idle, iowait, irq, softirq, steal] = v.as_slice() else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    let cores = lines
        .take_while(|l| l.starts_with("cpu"))
        .filter(|l| l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some((busy, busy + idle + iowait, cores))
}

/// Passes every call on to `inner` and measures the cores over the first
/// epoch's training steps: from the end of its first step to the end of its
/// last, so the deploy before and the test pass after are left out.
pub struct FirstEpochCpu<'a> {
    inner: &'a mut dyn TrainObserver,
    start: Option<CpuSample>,
    /// Steps measured (the epoch's steps but its first).
    pub steps: usize,
    /// The cores over those steps, once the epoch's last step is done.
    pub measured: Option<CpuUse>,
}

impl<'a> FirstEpochCpu<'a> {
    /// Wraps `inner`.
    pub fn new(inner: &'a mut dyn TrainObserver) -> FirstEpochCpu<'a> {
        FirstEpochCpu {
            inner,
            start: None,
            steps: 0,
            measured: None,
        }
    }
}

impl TrainObserver for FirstEpochCpu<'_> {
    fn epoch(&mut self, report: &EpochReport) {
        self.inner.epoch(report);
    }
    fn step(&mut self, step: u64, model: &mut dyn Model) {
        self.inner.step(step, model);
    }
    fn event(&mut self, event: &TrainEvent) {
        self.inner.event(event);
    }
    fn progress(&mut self, p: &StepProgress) {
        if p.epoch == 1 && self.measured.is_none() {
            if p.batch == 1 {
                self.start = CpuSample::now();
            } else if p.batch == p.batches {
                self.measured = self.start.and_then(|s| s.until_now());
                self.steps = p.batches - 1;
            }
        }
        self.inner.progress(p);
    }
    fn keep_going(&self) -> bool {
        self.inner.keep_going()
    }
}

/// The cores while the distributed job trained: one message is in flight,
/// so the chain's hops work one after the other; a figure near one core
/// means the step time is the step's CPU work, not waiting.
#[derive(Clone, Debug, Serialize)]
pub struct TrainingCpu {
    #[serde(flatten)]
    pub cores: CpuUse,
    /// Steps measured.
    pub steps: usize,
    /// CPU time of the whole machine per step, in milliseconds.
    pub cpu_ms_per_step: f64,
    /// Wall time per step, in milliseconds.
    pub wall_ms_per_step: f64,
}

impl FirstEpochCpu<'_> {
    /// The figures per step, once the first epoch ended.
    pub fn training(&self) -> Option<TrainingCpu> {
        let cores = self.measured?;
        let steps = self.steps.max(1) as f64;
        Some(TrainingCpu {
            cores,
            steps: self.steps,
            cpu_ms_per_step: 1e3 * cores.cpu_seconds / steps,
            wall_ms_per_step: 1e3 * cores.seconds / steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 10 3 2 0 0 0\n\
                        cpu0 50 2 25 400 5 1 1 0 0 0\n\
                        cpu1 50 3 25 400 5 2 1 0 0 0\n\
                        intr 12345\n";

    #[test]
    fn proc_stat_sums_busy_and_counts_cores() {
        assert_eq!(parse_proc_stat(STAT), Some((160, 970, 2)));
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        assert_eq!(parse_proc_stat("cpu 1 2 x\n"), None);
    }

    #[test]
    fn use_between_two_readings() {
        let at = Instant::now();
        let a = CpuSample {
            busy: 100,
            total: 1000,
            cores: 2,
            at,
        };
        let b = CpuSample {
            busy: 250,
            total: 1200,
            cores: 2,
            at: at + std::time::Duration::from_secs(1),
        };
        let u = a.until(&b).expect("use");
        assert_eq!(u.cores, 2);
        assert!((u.cores_busy - 1.5).abs() < 1e-12);
        assert!((u.cpu_seconds - 1.5).abs() < 1e-9);
        // A reading taken before the first one (or an unchanged one) gives none.
        assert_eq!(b.until(&a), None);
        assert_eq!(a.until(&a), None);
    }

    #[test]
    fn this_machine_reads_where_proc_stat_exists() {
        if std::path::Path::new("/proc/stat").exists() {
            let s = CpuSample::now().expect("/proc/stat parses");
            assert!(s.cores >= 1);
        }
    }
}
