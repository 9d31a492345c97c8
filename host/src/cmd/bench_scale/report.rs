//! What `bench scale` writes (JSON) and prints (one table row per cover
//! rate and window).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::measure::{Load, Split, Window};

/// The cover settings of every node of one run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CoverRate {
    /// Multiple of the base rates (0: cover off).
    pub multiple: f64,
    pub loop_ms: u64,
    pub drop_ms: u64,
    pub bytes_per_sec: u64,
}

impl CoverRate {
    /// `multiple` × the base: intervals divided, budget multiplied, so the
    /// budget grows with the rate and never stretches it (0: cover off).
    pub fn scaled(multiple: f64, base: CoverRate) -> CoverRate {
        if multiple <= 0.0 {
            return CoverRate {
                multiple: 0.0,
                loop_ms: 0,
                drop_ms: 0,
                bytes_per_sec: 0,
            };
        }
        let ms = |b: u64| ((b as f64 / multiple).round() as u64).max(1);
        CoverRate {
            multiple,
            loop_ms: ms(base.loop_ms),
            drop_ms: ms(base.drop_ms),
            bytes_per_sec: (base.bytes_per_sec as f64 * multiple).round() as u64,
        }
    }
}

/// The job's figures in one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobFigures {
    pub train_steps: u64,
    pub train_seconds: f64,
    /// Training time per step (one message through the cascade and back).
    pub step_ms: f64,
    /// Training time per hop crossing.
    pub hop_us: f64,
    pub test_accuracy: f64,
    pub packet_len: usize,
    pub cascade: Vec<(String, String)>,
}

/// One cover rate: a fresh pool, cover alone, then cover and the job.
#[derive(Clone, Debug, Serialize)]
pub struct RateRun {
    pub cover: CoverRate,
    /// 1-minute load average before this rate's pool started (the
    /// machine's other work: step times move with it).
    pub load_before: Option<f64>,
    /// Seconds from the first process started to every node in the directory.
    pub start_seconds: f64,
    /// Cover alone (no job): what the rate costs an idle pool.
    pub idle: Window,
    /// While the job ran (deployment, training, test, export, close).
    pub job: Option<Window>,
    /// The job's window, the cascade's nodes apart from the others.
    pub job_split: Option<Split>,
    pub figures: Option<JobFigures>,
    /// Why the job failed, if it did (the bench goes on to the next rate).
    pub error: Option<String>,
    /// Nodes whose process had exited when the run ended.
    pub nodes_exited: Vec<String>,
}

/// What `--report` writes.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    pub nodes: usize,
    pub model: String,
    pub dummies: usize,
    pub batch: usize,
    pub steps: usize,
    pub idle_seconds: u64,
    /// Seconds each pool ran before the idle window began.
    pub settle_seconds: u64,
    /// The base every multiple scales (the node's defaults unless given).
    pub base: CoverRate,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// 1-minute load average before the first pool started (other work on
    /// the machine).
    pub load_before: Option<f64>,
    pub runs: Vec<RateRun>,
}

/// The table: per rate, cover alone (all nodes), then the job's window for
/// the nodes outside the cascade (cover only) and for the cascade's nodes
/// (cover and the job); loads are per node, the mean and the busiest node
/// in brackets.
pub fn render(r: &ScaleReport) -> String {
    let mut s = format!(
        "{} nodes, {}, {} dummies, batch {}, {} steps; cover loads per node: mean [max]\n",
        r.nodes, r.model, r.dummies, r.batch, r.steps
    );
    let _ = writeln!(
        s,
        "{:>5} {:>11} {:>9} {:>6} {:>17} {:>17} {:>19} {:>15} {:>6} {:>8} {:>8}  drops",
        "rate",
        "loop/drop",
        "budget",
        "window",
        "pkts/s out [max]",
        "pkts/s in [max]",
        "KB/s out [max]",
        "CPU % [max]",
        "pool",
        "step ms",
        "µs/hop"
    );
    for run in &r.runs {
        let c = run.cover;
        let head = format!(
            "{:>4}x {:>11} {:>9}",
            c.multiple,
            format!("{}/{} ms", c.loop_ms, c.drop_ms),
            format!("{}K", c.bytes_per_sec / 1024)
        );
        let idle = &run.idle;
        let all = (&idle.mean, &idle.max);
        let _ = writeln!(s, "{head} {}", row("idle", all, idle, None));
        match (&run.job, &run.job_split) {
            (Some(w), Some(sp)) => {
                let rest = (&sp.others, &sp.others_max);
                let hops = (&sp.cascade, &sp.cascade_max);
                let _ = writeln!(s, "{:>27} {}", "", row("others", rest, w, None));
                let f = run.figures.as_ref();
                let _ = writeln!(s, "{:>27} {}", "", row("hops", hops, w, f));
            }
            (Some(w), None) => {
                let _ = writeln!(s, "{:>27} {}", "", row("job", (&w.mean, &w.max), w, None));
            }
            _ => {}
        }
        if let Some(e) = &run.error {
            let _ = writeln!(s, "{:>27} job failed: {e}", "");
        }
        if !run.nodes_exited.is_empty() {
            let _ = writeln!(s, "{:>27} exited: {}", "", run.nodes_exited.join(", "));
        }
    }
    s
}

/// One row: per-node loads (mean [max]) of some of the window's nodes;
/// the pool's CPU and the drops are the whole window's.
fn row(label: &str, (mean, max): (&Load, &Load), w: &Window, f: Option<&JobFigures>) -> String {
    let pair = |m: f64, x: f64, scale: f64| format!("{:.1} [{:.1}]", m / scale, x / scale);
    let cpu = match (mean.cpu_share, max.cpu_share) {
        (Some(m), Some(x)) => pair(m * 100.0, x * 100.0, 1.0),
        _ => "-".into(),
    };
    let pool = w.pool_cpu_cores.map_or("-".into(), |c| format!("{c:.2}"));
    let (step, hop) = f.map_or(("-".into(), "-".into()), |f| {
        (format!("{:.1}", f.step_ms), format!("{:.0}", f.hop_us))
    });
    format!(
        "{label:>6} {:>17} {:>17} {:>19} {:>15} {pool:>6} {step:>8} {hop:>8}  {}",
        pair(mean.packets_out_per_s, max.packets_out_per_s, 1.0),
        pair(mean.packets_in_per_s, max.packets_in_per_s, 1.0),
        pair(mean.bytes_out_per_s, max.bytes_out_per_s, 1000.0),
        cpu,
        drops(&w.drops)
    )
}

fn drops(d: &BTreeMap<String, u64>) -> String {
    if d.is_empty() {
        return "none".into();
    }
    (d.iter().map(|(k, v)| format!("{k} {v}")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::CoverRate;

    #[test]
    fn a_multiple_divides_the_intervals_and_multiplies_the_budget() {
        let base = CoverRate {
            multiple: 1.0,
            loop_ms: 1000,
            drop_ms: 500,
            bytes_per_sec: 65536,
        };
        let r = CoverRate::scaled(4.0, base);
        assert_eq!((r.loop_ms, r.drop_ms, r.bytes_per_sec), (250, 125, 262144));
        let off = CoverRate::scaled(0.0, base);
        assert_eq!((off.loop_ms, off.drop_ms, off.bytes_per_sec), (0, 0, 0));
    }
}
