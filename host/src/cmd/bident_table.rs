//! `mixnn bident-table`: the Bident paper's Table 1 on our engine. Trains
//! each of the 8 networks (4 merges × symmetric/asymmetric) as a fork-join
//! in this process until it reaches the target test accuracy (or the
//! epoch limit) and reports, per network, the epochs it took, its final
//! accuracy, the parameters on each side and the time per epoch.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use mixnn_designer::{EngineKind, EpochReport, TrainObserver, TrainOptions};
use mixnn_layer::{OptimizerKind, TrainConfig};
use mixnn_shard::{BidentMerge, BidentShape};
use serde::Serialize;

use super::SandboxArgs;
use super::train::{EngineArg, LocalRun};

#[derive(Args)]
pub struct BidentTableArgs {
    /// Stop a network once its test accuracy reaches this fraction.
    #[arg(long, default_value_t = 0.99)]
    pub target: f64,
    /// Epochs at most per network.
    #[arg(long, default_value_t = 30)]
    pub epochs_max: usize,
    /// Training batch (the paper: 32).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Adam's learning rate (the paper's Keras default: 0.001).
    #[arg(long, default_value_t = 0.001)]
    pub lr: f32,
    /// Seeds the weights, the data order and the layers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Merges to run (default: all four).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["concat".to_string(), "mul".into(), "max".into(), "avg".into()])]
    pub merges: Vec<String>,
    /// Shapes to run (default: both).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["symmetric".to_string(), "asymmetric".into()])]
    pub shapes: Vec<String>,
    /// Train on the first N training samples only (a quick check; the
    /// table itself uses all 60,000).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Test on the first N test samples only (the table: all 10,000).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// `native` (fast; the default) or `wasm` (every shard in a guest).
    #[arg(long, value_enum, default_value_t = EngineArg::Native)]
    pub engine: EngineArg,
    /// MNIST directory. Default: the bundled copy.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Write the table as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// One network's row.
#[derive(Serialize)]
struct Row {
    merge: String,
    shape: String,
    /// Epochs until the test accuracy first reached the target; `None`:
    /// not within `epochs_max`.
    epochs_to_target: Option<usize>,
    final_test_accuracy: f64,
    best_test_accuracy: f64,
    /// Parameters of the untrusted branch (the pool's).
    params_untrusted: usize,
    /// Parameters of the trusted branch and the head (the designer's).
    params_trusted: usize,
    /// Mean training seconds per epoch (test pass excluded).
    seconds_per_epoch: f64,
    epochs: Vec<EpochReport>,
}

#[derive(Serialize)]
struct Table {
    target: f64,
    epochs_max: usize,
    batch: usize,
    lr: f32,
    seed: u64,
    engine: String,
    train_samples: Option<usize>,
    test_samples: Option<usize>,
    rows: Vec<Row>,
}

/// Prints each epoch and stops at the target.
struct UntilTarget {
    target: f64,
    reached: Option<usize>,
}

impl TrainObserver for UntilTarget {
    fn epoch(&mut self, e: &EpochReport) {
        super::progress::print_epoch(e);
        if self.reached.is_none() && e.test_accuracy >= self.target {
            self.reached = Some(e.epoch);
        }
    }

    fn keep_going(&self) -> bool {
        self.reached.is_none()
    }
}

fn merge_of(s: &str) -> Result<BidentMerge> {
    Ok(match s {
        "concat" => BidentMerge::Concat,
        "mul" => BidentMerge::Mul,
        "max" => BidentMerge::Max,
        "avg" => BidentMerge::Avg,
        other => anyhow::bail!("--merges: `{other}` is not concat, mul, max or avg"),
    })
}

fn shape_of(s: &str) -> Result<BidentShape> {
    Ok(match s {
        "symmetric" => BidentShape::Symmetric,
        "asymmetric" => BidentShape::Asymmetric,
        other => anyhow::bail!("--shapes: `{other}` is not symmetric or asymmetric"),
    })
}

fn param_count(shards: &[mixnn_shard::pb::ModelProto]) -> Result<usize> {
    let mut n = 0;
    for s in shards {
        n += mixnn_shard::get_params(s)?
            .iter()
            .map(|(_, dims, _)| dims.iter().product::<usize>())
            .sum::<usize>();
    }
    Ok(n)
}

pub fn run(a: BidentTableArgs) -> Result<()> {
    let nets: Vec<(String, BidentMerge, String, BidentShape)> = a
        .merges
        .iter()
        .map(|m| merge_of(m).map(|mm| (m.clone(), mm)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flat_map(|(m, mm)| a.shapes.iter().map(move |s| (m.clone(), mm, s.clone())))
        .map(|(m, mm, s)| shape_of(&s).map(|ss| (m, mm, s, ss)))
        .collect::<Result<_>>()?;
    let data = super::load_mnist(&a.data.clone().unwrap_or_else(super::default_data_dir))?;
    let engine = match a.engine {
        EngineArg::Wasm => EngineKind::Wasm,
        EngineArg::Native => EngineKind::Native,
    };
    let mut table = Table {
        target: a.target,
        epochs_max: a.epochs_max,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
        engine: engine.to_string(),
        train_samples: a.train_limit,
        test_samples: a.test_limit,
        rows: Vec::new(),
    };
    for (i, (m, merge, s, shape)) in nets.iter().enumerate() {
        println!("\n[{}/{}] bident {m} {s}", i + 1, nets.len());
        let row = train_one(&a, engine, &data, (m, *merge), (s, *shape))?;
        table.rows.push(row);
        // After every network, so a long run stopped midway keeps its rows.
        if let Some(p) = &a.report {
            super::write_json(p, &table)?;
        }
    }
    println!("\n{}", render(&table));
    if let Some(p) = &a.report {
        println!("report written to {}", p.display());
    }
    Ok(())
}

/// Trains one network to the target (or the epoch limit): its row.
fn train_one(
    a: &BidentTableArgs,
    engine: EngineKind,
    data: &mixnn_data::Mnist,
    (m, merge): (&str, BidentMerge),
    (s, shape): (&str, BidentShape),
) -> Result<Row> {
    let model = mixnn_shard::bident(merge, shape, a.seed, a.batch);
    let fj =
        mixnn_shard::fork_join(&model, None)?.context("the Bident model is not a fork-join")?;
    let opts = TrainOptions {
        engine,
        epochs: a.epochs_max,
        batch: a.batch,
        config: TrainConfig {
            optimizer: OptimizerKind::Adam,
            learning_rate: a.lr,
            seed: a.seed,
            host_kernels: a.sandbox.host_kernels(),
            ..TrainConfig::default()
        },
        train_limit: a.train_limit,
        test_limit: a.test_limit,
        eval_batch: 1000,
        model_name: format!("bident-{m}-{s}"),
    };
    let mut obs = UntilTarget {
        target: a.target,
        reached: None,
    };
    let run = LocalRun {
        export: None,
        ck: None,
        noise: None,
        trusted_branch: None,
    };
    let (report, _) =
        super::fork::train_local_with(&model, &fj, data, &opts, &a.sandbox, run, &mut obs)?;
    let n = report.epochs.len().max(1) as f64;
    Ok(Row {
        merge: m.to_owned(),
        shape: s.to_owned(),
        epochs_to_target: obs.reached,
        final_test_accuracy: report.final_test_accuracy,
        best_test_accuracy: (report.epochs.iter())
            .map(|e| e.test_accuracy)
            .fold(0.0, f64::max),
        params_untrusted: param_count(&fj.untrusted)?,
        params_trusted: param_count(&fj.trusted)? + param_count(&fj.head)?,
        seconds_per_epoch: report.epochs.iter().map(|e| e.seconds).sum::<f64>() / n,
        epochs: report.epochs,
    })
}

/// The table as Markdown (docs/bident.md takes it as is).
fn render(t: &Table) -> String {
    let mut out = format!(
        "| network | epochs to {:.1}% | final accuracy | best | params untrusted (pool) | params trusted (designer) | s/epoch |\n|---|---|---|---|---|---|---|\n",
        t.target * 100.0
    );
    for r in &t.rows {
        out += &format!(
            "| {} {} | {} | {:.2}% | {:.2}% | {} | {} | {:.1} |\n",
            r.merge,
            r.shape,
            r.epochs_to_target
                .map_or_else(|| format!("> {}", t.epochs_max), |e| e.to_string()),
            r.final_test_accuracy * 100.0,
            r.best_test_accuracy * 100.0,
            r.params_untrusted,
            r.params_trusted,
            r.seconds_per_epoch
        );
    }
    out
}
