//! `mixnn train`: the designer's training job.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use mixnn_designer::defence::NoiseSpec;
use mixnn_designer::{Checkpointing, EngineKind, Model, TrainOptions, TrainReport};
use mixnn_layer::{OptimizerKind, TrainConfig};

use super::SandboxArgs;
use super::progress::Printer;
use super::resume::JobArgs;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EngineArg {
    /// Every shard in its own wasm guest, as on a node.
    Wasm,
    /// Plain tract in this process (the reference).
    Native,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adam,
}

/// The training recipe; defaults are the MixNN paper's.
#[derive(Args, Clone, Debug)]
pub struct RecipeArgs {
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 0.01)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    pub optimizer: OptimizerArg,
    /// Seeds shuffling, dropout and any parameter without a value.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training samples only.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Test on the first N test samples only.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Batch size of the test pass (results are per sample). Default: 1000
    /// in one process, the training batch on the pool (packets are sized
    /// for it).
    #[arg(long)]
    pub eval_batch: Option<usize>,
}

impl RecipeArgs {
    pub fn options(&self, engine: EngineKind, model_name: String) -> TrainOptions {
        TrainOptions {
            engine,
            epochs: self.epochs,
            batch: self.batch,
            config: TrainConfig {
                optimizer: match self.optimizer {
                    OptimizerArg::Sgd => OptimizerKind::Sgd,
                    OptimizerArg::Adam => OptimizerKind::Adam,
                },
                learning_rate: self.lr,
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                seed: self.seed,
                ..TrainConfig::default()
            },
            train_limit: self.train_limit,
            test_limit: self.test_limit,
            eval_batch: self.eval_batch.unwrap_or(1000),
            model_name,
        }
    }
}

/// Where the pool is and how the cascade is laid out.
#[derive(Args, Clone, Debug)]
pub struct PoolArgs {
    /// Train on pool nodes: the bootstrap's multiaddr ending in
    /// `/p2p/<peer id>`, as `mixnn bootstrap` prints it (repeatable).
    #[arg(
        long,
        value_name = "MULTIADDR",
        value_delimiter = ',',
        conflicts_with = "local"
    )]
    pub pool: Vec<String>,
    /// How many of the `--pool` bootstraps must list a node before it is
    /// used (default: a majority; with one bootstrap, that one is trusted).
    #[arg(long, value_name = "N")]
    pub quorum: Option<usize>,
    /// The pool runs on one machine (e.g. 127.0.0.1): two hops may share an
    /// IP when their ports differ. Otherwise no two hops share an IP (an
    /// IPv6 /64) and loopback-only nodes are not used.
    #[arg(long)]
    pub local_pool: bool,
    /// Dummy relay hops placed at random positions of the cascade; to their
    /// neighbours they look like any layer.
    #[arg(long, default_value_t = 0, value_name = "R")]
    pub dummies: usize,
    /// Run the first shard here: the pool never sees the raw input.
    #[arg(long)]
    pub keep_first: bool,
    /// Run the last shard (and the loss) here: the labels never leave.
    #[arg(long)]
    pub keep_last: bool,
    /// Payload size class of the job's packets in bytes (default: the
    /// smallest that fits the largest tensor).
    #[arg(long, value_name = "BYTES")]
    pub class: Option<usize>,
    /// Seconds to wait for an answer before calling a hop failed.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout_s: u64,
    /// Seconds to wait for enough nodes in the directory.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub wait_for_nodes_s: u64,
    /// Run every layer on two nodes in pure-wasm mode and compare, hop by
    /// hop, digests of what they compute (sealed to the designer): a lying
    /// node is found, replaced and excluded, and the job replays exactly.
    /// Needs twice the nodes; implies `--guest-kernels wasm`.
    #[arg(long)]
    pub verify_replicas: bool,
    /// The MixNN paper's check for lying layers: at every checkpoint this
    /// many test samples go through the test phase, and an accuracy drop
    /// of over 10 points or a loss over 2x the last check's is reported as
    /// an alarm (0: off).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub held_out: usize,
    /// Test batches kept in flight in the test phase: the next batches go
    /// out while earlier ones still cross the cascade, and answers are
    /// matched to their batch as they come, so the results are those of
    /// one batch at a time (1), bit for bit. The default was measured on
    /// the demo's pool (docs/performance.md). A `--verify-replicas` job
    /// tests one batch at a time.
    #[arg(long, default_value_t = DEFAULT_TEST_WINDOW, value_name = "W")]
    pub test_window: usize,
    /// Leave the cascade deployed after training instead of closing the
    /// job on its nodes, and record it in the job directory, so that
    /// `mixnn infer --job DIR` serves inference from it. Nodes forget a job
    /// left idle for 15 minutes (their `job_idle_secs`).
    #[arg(long)]
    pub keep_deployed: bool,
}

/// Test batches in flight by default (measured: docs/performance.md,
/// "Pipelined test phase and inference").
pub const DEFAULT_TEST_WINDOW: usize = 8;

impl PoolArgs {
    /// A job on the local harness's pool (`demo`, `bench scale`): one
    /// bootstrap, every node on 127.0.0.1 (told apart by port), the given
    /// class, no kept layers, no replicas.
    pub fn local(bootstrap: &str, dummies: usize, class: usize) -> PoolArgs {
        PoolArgs {
            pool: vec![bootstrap.to_string()],
            quorum: None,
            local_pool: true,
            dummies,
            keep_first: false,
            keep_last: false,
            class: Some(class),
            timeout_s: 60,
            wait_for_nodes_s: 30,
            verify_replicas: false,
            held_out: 256,
            test_window: DEFAULT_TEST_WINDOW,
            keep_deployed: false,
        }
    }

    /// The held-out check `--held-out` asks for.
    pub fn held_out_check(&self) -> Option<mixnn_designer::HeldOut> {
        (self.held_out > 0).then(|| mixnn_designer::HeldOut {
            samples: self.held_out,
            ..mixnn_designer::HeldOut::default()
        })
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// Run every shard in this process (the single-process reference).
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub pool: PoolArgs,
    /// The ONNX model; it is split automatically into per-layer shards.
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub job: JobArgs,
    /// MNIST directory (IDX files, gzipped or not). Default: the bundled copy.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = EngineArg::Wasm)]
    pub engine: EngineArg,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the trained model as one ONNX file.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// A defence against model inversion at a cut, in training and testing:
    /// noise on Z_K, the output of the first K shards (what the node with
    /// shard K+1 sees). `K:gaussian:σ`, `K:laplace:b`, `K:dropout:p` (also
    /// at inference) or `K:dropout-train:p` (training only), seeded by
    /// --seed. With --local only.
    #[arg(long, value_name = "K:KIND:LEVEL")]
    pub noise_at: Option<NoiseSpec>,
    /// For a fork-join (Bident) model: a node inside the branch that must
    /// stay here, with the merge and the head (the other branch goes to
    /// the pool). Default: the branch with fewer parameters. `mixnn split`
    /// shows the plan.
    #[arg(long, value_name = "NODE")]
    pub trusted_branch: Option<String>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

pub fn run(a: TrainArgs) -> Result<()> {
    check_noise(&a)?;
    if let Some(dir) = a.job.resume.clone() {
        return super::resume::resume(&dir, a);
    }
    if !a.local && a.pool.pool.is_empty() {
        bail!("say where to train: --local (this process) or --pool MULTIADDR (pool nodes)");
    }
    let Some(model_path) = a.model.clone() else {
        bail!("--model is needed (or --resume DIR)");
    };
    let model_bytes =
        std::fs::read(&model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let model = mixnn_shard::decode(&model_bytes)
        .with_context(|| format!("parsing {}", model_path.display()))?;
    let engine = match a.engine {
        EngineArg::Wasm => EngineKind::Wasm,
        EngineArg::Native => EngineKind::Native,
    };
    let data = super::load_mnist(&a.data.clone().unwrap_or_else(super::default_data_dir))?;
    let mut opts = a.recipe.options(engine, model_path.display().to_string());
    opts.config.host_kernels = a.sandbox.host_kernels();
    let new_job = super::resume::NewJob {
        args: &a.job,
        model: &model_bytes,
        data: a.data.as_deref(),
        trusted_branch: a.trusted_branch.as_deref(),
    };
    let (report, shards) = if a.local {
        let ck = new_job.create(&opts, None)?;
        let run = LocalRun {
            export: a.export.as_deref(),
            ck,
            noise: a.noise_at,
            trusted_branch: a.trusted_branch.clone(),
        };
        train_local_run(&model, &data, &opts, &a.sandbox, run)?
    } else {
        opts.eval_batch = a.recipe.eval_batch.unwrap_or(opts.batch);
        if a.pool.verify_replicas {
            // Replicas compare bytes: only pure wasm gives the same ones
            // on every machine.
            opts.config.host_kernels = false;
        }
        check_keep_deployed(&a)?;
        let mut popts = super::pool::pool_options(&a.pool, &opts);
        let ck = new_job.create(&opts, Some(&mut popts))?.map(|mut ck| {
            ck.held_out = a.pool.held_out_check();
            ck
        });
        let mut printer = Printer::new();
        let run = super::pool::JobRun {
            ck,
            observer: &mut printer,
            trusted_branch: a.trusted_branch.clone(),
            serve: super::pool::Serve::of(&a.pool),
        };
        super::pool::train_on_pool_job(
            &model,
            &data,
            &opts,
            &popts,
            &a.sandbox,
            a.export.as_deref(),
            run,
        )?
    };
    finish(&report, shards, a.report.as_deref())
}

/// `--keep-deployed` needs what `mixnn infer` reads: a job directory and
/// one cascade (replicas compare two; their pairs are not served).
pub fn check_keep_deployed(a: &TrainArgs) -> Result<()> {
    if !a.pool.keep_deployed {
        return Ok(());
    }
    if a.job.no_job_dir {
        bail!("--keep-deployed records the cascade in the job directory: drop --no-job-dir");
    }
    if a.pool.verify_replicas {
        bail!(
            "--keep-deployed serves one cascade; a --verify-replicas job runs two: drop one flag"
        );
    }
    Ok(())
}

/// Where `--noise-at` is refused: the pool's layers run on nodes, where
/// the designer cannot add noise between them (not even with --keep-first:
/// the designer's kept shard is driven by the pool code, which has no
/// noise hook yet), and a job directory would not restore the noise
/// streams on resume.
fn check_noise(a: &TrainArgs) -> Result<()> {
    let Some(spec) = a.noise_at else {
        return Ok(());
    };
    if a.job.resume.is_some() {
        bail!(
            "--noise-at {spec}: a resumed job keeps the recipe it was started with; drop --noise-at"
        );
    }
    if !a.local {
        bail!(
            "--noise-at {spec} works with --local training only: on the pool the noise would have to \
             be added by the node that computes Z_{k} (the output of the first {k} shards), which \
             the pool cannot do yet",
            k = spec.after
        );
    }
    if a.job.job_dir.is_some() {
        bail!(
            "--noise-at {spec}: its noise streams are not kept in checkpoints, so a job directory \
             could not resume it bit for bit; drop --job-dir"
        );
    }
    Ok(())
}

/// The summary and the report file.
pub fn finish(report: &TrainReport, shards: usize, path: Option<&std::path::Path>) -> Result<()> {
    print_summary(report, shards);
    if let Some(p) = path {
        super::write_json(p, report)?;
        println!("report written to {}", p.display());
    }
    Ok(())
}

/// What a local run does beside training: export, checkpoints, a defence.
pub struct LocalRun<'a> {
    /// Write the trained model here.
    pub export: Option<&'a std::path::Path>,
    /// Checkpoints (a job directory, a resume).
    pub ck: Option<Checkpointing>,
    /// Noise at a cut (`--noise-at`).
    pub noise: Option<NoiseSpec>,
    /// A fork-join's `--trusted-branch`.
    pub trusted_branch: Option<String>,
}

/// Splits (a chain, or a fork-join's parts), trains with progress on
/// stdout, optionally exports: everything a [`LocalRun`] asks for.
pub fn train_local_run(
    model: &mixnn_shard::pb::ModelProto,
    data: &mixnn_data::Mnist,
    opts: &TrainOptions,
    sandbox: &SandboxArgs,
    run: LocalRun,
) -> Result<(TrainReport, usize)> {
    if let Some(fj) = super::fork::detect(model, run.trusted_branch.as_deref())? {
        return super::fork::train_local(model, &fj, data, opts, sandbox, run);
    }
    let LocalRun {
        export, ck, noise, ..
    } = run;
    let plan = mixnn_shard::plan(model, None)?;
    let shards = mixnn_shard::split(model, &plan)?;
    let sb = match opts.engine {
        EngineKind::Wasm => Some(sandbox.sandbox()?),
        EngineKind::Native => None,
    };
    println!(
        "training {} shards, engine {}, {} epochs, batch {}, {:?} lr {} momentum {}, seed {}",
        shards.len(),
        opts.engine,
        opts.epochs,
        opts.batch,
        opts.config.optimizer,
        opts.config.learning_rate,
        opts.config.momentum,
        opts.config.seed
    );
    let sample = mixnn_designer::sample_shape(&shards, data)?;
    let mut cascade =
        mixnn_designer::Cascade::load(opts.engine, &shards, &opts.config, sb.as_ref())?;
    if let Some(spec) = noise {
        cascade.set_cut_noise(spec, opts.config.seed)?;
        println!(
            "defence: {spec} (on the output of shard {} of {})",
            spec.after,
            shards.len()
        );
    }
    let report = match ck {
        Some(ck) => mixnn_designer::train_checkpointed(
            &mut cascade,
            shards.len(),
            &sample,
            data,
            opts,
            ck,
            &mut Printer::new(),
        )?,
        None => mixnn_designer::train_model(
            &mut cascade,
            shards.len(),
            &sample,
            data,
            opts,
            &mut Printer::new(),
        )?,
    };
    if let Some(path) = export {
        let merged = cascade.export_model(&shards)?;
        std::fs::write(path, mixnn_shard::encode(&merged))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("trained model exported to {}", path.display());
    }
    Ok((report, shards.len()))
}

pub fn print_summary(r: &TrainReport, shards: usize) {
    if let Some(n) = &r.network {
        println!(
            "network: {} messages over {} hop crossings, {} packets of {} bytes sent, {} received; \
             init {:.1}s, train {:.1}s, test {:.1}s, export {:.1}s",
            n.messages,
            n.hop_crossings,
            n.packets_sent,
            n.packet_len,
            n.packets_received,
            n.init_seconds,
            n.train_seconds,
            n.test_seconds,
            n.export_seconds
        );
    }
    println!(
        "done: {} shards, engine {}, final test accuracy {:.2}%, training {:.1}s, params sha256 {}",
        shards,
        r.engine,
        r.final_test_accuracy * 100.0,
        r.train_seconds,
        r.params_sha256
    );
}
