//! `mixnn bench`: figures as ratios against a baseline measured in the same run.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use mixnn_designer::{BenchOptions, ShardBench};

use super::SandboxArgs;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Per shard and batch size: forward/backward medians, native tract vs
    /// the wasm guest under the sandbox's limits, and their ratio.
    Guest(GuestBenchArgs),
    /// The hop's latency budget: one hop crossing over real loopback
    /// sockets, stage by stage (receive, Noise, Sphinx unwrap, payload
    /// open, job payload, seal, send) at several packet classes, against
    /// the crypto-only floor measured in the same run (one X25519 and two
    /// ChaCha20-Poly1305 passes, and the same with the AES-256-GCM in use).
    Hop(HopBenchArgs),
    /// A pool of 30–60 node processes on this machine with cover traffic
    /// at several rates, a training job through it: per node packets and
    /// bytes per second, CPU share, memory, drops, and the job's step time
    /// (figures: docs/scale.md).
    Scale(super::bench_scale::ScaleBenchArgs),
}

#[derive(Args)]
pub struct HopBenchArgs {
    /// Payload classes in bytes, comma-separated (each a public class).
    #[arg(long, value_delimiter = ',', default_values_t = [2048usize, 65536, 262144])]
    pub classes: Vec<usize>,
    /// Timed crossings per class, after 10 warm-up crossings.
    #[arg(long, default_value_t = 400)]
    pub iterations: usize,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Args)]
pub struct GuestBenchArgs {
    /// The ONNX model to split and measure.
    #[arg(long)]
    pub model: PathBuf,
    /// Batch sizes to measure, comma-separated (each shard at each size).
    #[arg(long, value_delimiter = ',', default_values_t = mixnn_designer::DEFAULT_BATCHES)]
    pub batch: Vec<usize>,
    /// Measure only these shards (indices, comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub shard: Vec<usize>,
    /// Timed iterations per measurement, after 3 warm-up runs.
    #[arg(long, default_value_t = 30)]
    pub iterations: usize,
    /// Guest modes to measure, comma-separated: `wasm` (pure wasm) and
    /// `host` (products on host kernels).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [super::KernelsArg::Wasm, super::KernelsArg::Host])]
    pub mode: Vec<super::KernelsArg>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

pub fn run(c: BenchCommand) -> Result<()> {
    match c {
        BenchCommand::Guest(a) => guest(a),
        BenchCommand::Hop(a) => hop(a),
        BenchCommand::Scale(a) => super::bench_scale::run(a),
    }
}

fn hop(a: HopBenchArgs) -> Result<()> {
    let mut out = Vec::new();
    for &class in &a.classes {
        eprintln!(
            "timing {} crossings at the {class}-byte class",
            a.iterations
        );
        out.push(mixnn_node::bench::hop_budget(class, a.iterations.max(1))?);
    }
    print!("{}", render_hop(&out));
    if let Some(p) = &a.report {
        super::write_json(p, &out)?;
    }
    Ok(())
}

/// One column per class: each stage's median, their sum, the measured
/// crossing, the floor and the ratio.
fn render_hop(b: &[mixnn_node::bench::HopBudget]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("hop latency budget, medians in microseconds\n");
    let _ = write!(s, "{:<28}", "stage \\ class (bytes)");
    for x in b {
        let _ = write!(s, "{:>12}", x.class);
    }
    s.push('\n');
    let mut row = |name: &str, f: &dyn Fn(&mixnn_node::bench::HopBudget) -> f64| {
        let _ = write!(s, "{name:<28}");
        for x in b {
            let _ = write!(s, "{:>12.1}", f(x));
        }
        s.push('\n');
    };
    for i in 0..8 {
        let name = b.first().map_or("", |x| mixnn_node::bench::stages(x)[i].0);
        row(name, &|x| mixnn_node::bench::stages(x)[i].1);
    }
    row("sum of stages", &|x| x.total_us);
    row("crossing (measured)", &|x| x.crossing_us);
    row("floor (X25519 + 2 ChaCha)", &|x| x.floor_us);
    row("crossing / floor", &|x| x.ratio);
    row("floor in use (+ 2 AES-GCM)", &|x| x.floor_in_use_us);
    row("crossing / floor in use", &|x| x.ratio_in_use);
    s
}

fn guest(a: GuestBenchArgs) -> Result<()> {
    let model = super::read_model(&a.model)?;
    let shards = mixnn_shard::split(&model, &mixnn_shard::plan(&model, None)?)?;
    let sandbox = a.sandbox.sandbox()?;
    let opts = BenchOptions {
        batches: a.batch,
        iterations: a.iterations,
        seed: a.seed,
        only: (!a.shard.is_empty()).then_some(a.shard),
        modes: (a.mode.iter())
            .map(|m| match m {
                super::KernelsArg::Wasm => mixnn_designer::GuestMode::Wasm,
                super::KernelsArg::Host => mixnn_designer::GuestMode::Host,
            })
            .collect(),
    };
    let mut progress = |b: &ShardBench| {
        eprintln!(
            "measured {} in {} mode at batch {} (ratio {:.2}x)",
            b.name, b.mode, b.batch, b.ratio
        )
    };
    let report = mixnn_designer::bench_guest(&shards, &opts, &sandbox, &mut progress)?;
    print!("{}", mixnn_designer::render_bench(&report));
    if let Some(p) = &a.report {
        super::write_json(p, &report)?;
    }
    Ok(())
}
