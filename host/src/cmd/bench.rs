//! `mixnn bench`: figures as ratios against a baseline measured in the same run.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use mixnn_designer::{BenchOptions, ShardBench};

use super::SandboxArgs;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Per shard: forward/backward medians, native tract vs the wasm guest.
    Guest(GuestBenchArgs),
}

#[derive(Args)]
pub struct GuestBenchArgs {
    /// The ONNX model to split and measure.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Timed iterations per measurement, after 3 warm-up runs.
    #[arg(long, default_value_t = 30)]
    pub iterations: usize,
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
    }
}

fn guest(a: GuestBenchArgs) -> Result<()> {
    let model = super::read_model(&a.model)?;
    let shards = mixnn_shard::split(&model, &mixnn_shard::plan(&model, None)?)?;
    let sandbox = a.sandbox.sandbox()?;
    let opts = BenchOptions {
        batch: a.batch,
        iterations: a.iterations,
        seed: a.seed,
    };
    let mut progress = |b: &ShardBench| eprintln!("measured {} (ratio {:.2}x)", b.name, b.ratio);
    let report = mixnn_designer::bench_guest(&shards, &opts, &sandbox, &mut progress)?;
    print!("{}", mixnn_designer::render_bench(&report));
    if let Some(p) = &a.report {
        super::write_json(p, &report)?;
    }
    Ok(())
}
