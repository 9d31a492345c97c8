//! `mixnn infer`: the test set through a pool cascade, pipelined, beside
//! the same model in one process.
//!
//! The cascade is the one `train --pool --keep-deployed` left running:
//! this process attaches to it with what the job directory recorded (each
//! hop's node, role and job handle; the job secret for the dummies' masks;
//! the latest checkpoint for the shards the designer keeps). The job
//! protocol allows that because nothing in it ties a job to the process
//! that deployed it (`designer/src/pool/attach.rs`). When there is no such
//! cascade (trained without `--keep-deployed`, closed, or its nodes gone
//! or idle past their expiry), `--redeploy` deploys the job's latest
//! checkpoint on fresh nodes first, as `train --resume` would, and leaves
//! that cascade deployed in turn.
//!
//! The single-process figure is the same trained model (the checkpoint's
//! parameters, the dummies' masks taken out) run here on the wasm engine
//! in the same run, one batch at a time, so the report's ratio compares
//! like with like; its outputs must equal the pool's bit for bit.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use mixnn_data::Dataset;
use mixnn_designer::checkpoint::{Checkpoint, JobDir};
use mixnn_designer::pool::PoolCascade;
use mixnn_designer::{EngineKind, Model, TrainOptions};
use serde::Serialize;

use super::cpu::CpuUse;

use super::{KernelsArg, SandboxArgs};

#[derive(Args)]
pub struct InferArgs {
    /// The job directory of a `train --pool` job (`--job-dir`, or the
    /// `./mixnn-jobs/<time>` it printed). Its recipe, model, secret and
    /// latest checkpoint are read; with `--keep-deployed` it also records
    /// the cascade this command attaches to. The layers here compute as
    /// the job trained (its recipe's kernel mode, whatever
    /// `--guest-kernels` says), so the single-process outputs can be
    /// compared bit for bit.
    #[arg(long, value_name = "JOB_DIR")]
    pub job: PathBuf,
    /// MNIST directory whose test set is run. Default: the job's own data
    /// directory, else the bundled copy.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Run only the first N test samples.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Test batches kept in flight through the cascade (1: one at a time).
    #[arg(long, default_value_t = super::train::DEFAULT_TEST_WINDOW, value_name = "W")]
    pub window: usize,
    /// Write a JSON report here: accuracy, inferences per second, and the
    /// single-process figures of the same model measured in this run.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Bootstrap addresses to read the directory from (default: the job's).
    #[arg(long, value_name = "MULTIADDR", value_delimiter = ',')]
    pub pool: Vec<String>,
    /// Deploy the job's latest checkpoint on fresh nodes instead of
    /// attaching to the cascade it left deployed (when that one is gone).
    #[arg(long)]
    pub redeploy: bool,
    /// Close the job on its nodes afterwards (default: it stays deployed
    /// for the next `mixnn infer`).
    #[arg(long)]
    pub close: bool,
    /// Skip the single-process run (no comparison in the report).
    #[arg(long)]
    pub no_local: bool,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// One pass of a test set: time, correct answers, every output's bits.
pub struct TestRun {
    pub seconds: f64,
    pub correct: usize,
    pub samples: usize,
    /// Each batch's outputs as f32 bits, in batch order (answers may have
    /// come in any order; each is put at its batch's place).
    pub outputs: Vec<Vec<u32>>,
}

impl TestRun {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.samples.max(1) as f64
    }

    pub fn per_second(&self) -> f64 {
        self.samples as f64 / self.seconds.max(1e-9)
    }
}

/// Runs `test` through `model`'s test phase in batches of `batch`; with
/// `show`, shows its progress ([`super::progress::BatchProgress`]).
pub fn run_test_set(
    model: &mut dyn Model,
    test: &Dataset,
    sample: &[usize],
    batch: usize,
    show: bool,
) -> Result<TestRun> {
    let batches = test.count.div_ceil(batch.max(1));
    let mut outputs = vec![Vec::new(); batches];
    let mut correct = 0usize;
    let mut progress =
        show.then(|| super::progress::BatchProgress::new("inference", batches, batch));
    let start = Instant::now();
    mixnn_designer::infer_dataset(model, test, sample, batch, &mut |i, labels, y| {
        if let Some(p) = progress.as_mut() {
            p.batch_done();
        }
        let classes = y.shape.get(1).copied().unwrap_or(1).max(1);
        for (row, &label) in y.data.chunks(classes).zip(labels) {
            let best = (0..row.len()).fold(0, |b, k| if row[k] > row[b] { k } else { b });
            correct += usize::from(best as i64 == label);
        }
        if let Some(o) = outputs.get_mut(i) {
            *o = y.data.iter().map(|v| v.to_bits()).collect();
        }
        Ok(())
    })?;
    if let Some(p) = progress {
        p.finish();
    }
    Ok(TestRun {
        seconds: start.elapsed().as_secs_f64(),
        correct,
        samples: test.count,
        outputs,
    })
}

/// The test phase one batch at a time against `window` in flight, on the
/// same deployed cascade (`mixnn demo`'s figure).
#[derive(Clone, Debug, Serialize)]
pub struct WindowComparison {
    pub samples: usize,
    pub batch: usize,
    pub window: usize,
    pub sequential_seconds: f64,
    pub pipelined_seconds: f64,
    /// `sequential_seconds / pipelined_seconds`.
    pub speedup: f64,
    pub accuracy: f64,
    /// Every output of the pipelined pass equals the sequential one's, bit
    /// for bit (and so the accuracy).
    pub identical_outputs: bool,
    /// How busy the machine's cores were in each pass (absent off Linux).
    pub sequential_cpu: Option<super::cpu::CpuUse>,
    pub pipelined_cpu: Option<super::cpu::CpuUse>,
    /// The speed-up a window could reach on this machine at the pipelined
    /// pass's CPU per batch if it kept every core busy: cores × sequential
    /// seconds ÷ pipelined CPU seconds. A speed-up close to it means the
    /// pipelined pass is limited by CPU, not by waiting.
    pub speedup_ceiling: Option<f64>,
}

/// Runs the test set (`opts.test_limit` of it) through `c` one batch at a
/// time, then with `window` batches in flight, and compares.
pub fn compare_windows(
    c: &mut PoolCascade,
    data: &mixnn_data::Mnist,
    sample: &[usize],
    opts: &TrainOptions,
    window: usize,
) -> Result<WindowComparison> {
    let test = limited(&data.test, opts.test_limit);
    let before = c.test_window();
    c.set_test_window(1);
    let cpu = super::cpu::CpuSample::now();
    let seq = run_test_set(c, &test, sample, opts.eval_batch, false);
    let seq_cpu = cpu.and_then(|s| s.until_now());
    c.set_test_window(window);
    let cpu = super::cpu::CpuSample::now();
    let pipe = run_test_set(c, &test, sample, opts.eval_batch, false);
    let pipe_cpu = cpu.and_then(|s| s.until_now());
    c.set_test_window(before);
    let (seq, pipe) = (seq?, pipe?);
    let ceiling = pipe_cpu
        .filter(|u| u.cpu_seconds > 0.0)
        .map(|u| u.cores as f64 * seq.seconds / u.cpu_seconds);
    println!(
        "test phase of {} samples: one batch at a time {:.2}s, {} in flight {:.2}s ({:.1}x), \
         outputs identical: {}",
        test.count,
        seq.seconds,
        window,
        pipe.seconds,
        seq.seconds / pipe.seconds.max(1e-9),
        seq.outputs == pipe.outputs
    );
    print_cores(
        test.count.div_ceil(opts.eval_batch.max(1)),
        seq_cpu,
        pipe_cpu,
        ceiling,
    );
    Ok(WindowComparison {
        samples: test.count,
        batch: opts.eval_batch,
        window,
        sequential_seconds: seq.seconds,
        pipelined_seconds: pipe.seconds,
        speedup: seq.seconds / pipe.seconds.max(1e-9),
        accuracy: pipe.accuracy(),
        identical_outputs: seq.outputs == pipe.outputs && seq.correct == pipe.correct,
        sequential_cpu: seq_cpu,
        pipelined_cpu: pipe_cpu,
        speedup_ceiling: ceiling,
    })
}

/// The cores line under the test phase's comparison, when it was measured.
fn print_cores(batches: usize, seq: Option<CpuUse>, pipe: Option<CpuUse>, ceiling: Option<f64>) {
    let (Some(s), Some(p), Some(c)) = (seq, pipe, ceiling) else {
        return;
    };
    let per_batch = |u: CpuUse| 1e3 * u.cpu_seconds / batches.max(1) as f64;
    println!(
        "  cores busy (of {}): one at a time {:.2}, in flight {:.2}; CPU per batch {:.2} ms and \
         {:.2} ms; ceiling of a window on this machine {c:.1}x",
        s.cores,
        s.cores_busy,
        p.cores_busy,
        per_batch(s),
        per_batch(p),
    );
}

fn limited(d: &Dataset, n: Option<usize>) -> Dataset {
    match n {
        Some(n) if n < d.count => d.subset(n),
        _ => d.clone(),
    }
}

/// Drops the record of a deployed cascade that was closed (a warning if
/// it cannot: a later `mixnn infer` would then find the cascade gone).
pub fn forget_deployed(job: &JobDir) {
    if let Err(e) = job.forget_deployed() {
        eprintln!("warning: {e}");
    }
}

/// What `mixnn infer --report` writes.
#[derive(Serialize)]
pub struct InferReport {
    pub job: String,
    /// `attached` (the cascade `--keep-deployed` left) or `redeployed`.
    pub cascade_from: String,
    /// The checkpoint step whose parameters answered.
    pub step: u64,
    pub cascade: Vec<(String, String)>,
    pub samples: usize,
    pub batch: usize,
    pub window: usize,
    pub accuracy: f64,
    pub seconds: f64,
    pub inferences_per_second: f64,
    /// The same model in this process (wasm engine), measured in this run.
    pub single_process: Option<SingleProcess>,
    /// Pool inferences per second over the single process's.
    pub ratio_to_single_process: Option<f64>,
}

/// The single-process figures of [`InferReport`].
#[derive(Serialize)]
pub struct SingleProcess {
    pub engine: String,
    pub accuracy: f64,
    pub seconds: f64,
    pub inferences_per_second: f64,
    /// Its outputs equal the pool's bit for bit.
    pub identical_outputs: bool,
}

/// What a job directory gives `infer`.
struct Job {
    dir: JobDir,
    shards: Vec<mixnn_shard::pb::ModelProto>,
    opts: TrainOptions,
    popts: mixnn_designer::pool::PoolOptions,
    checkpoint: Checkpoint,
    data_dir: PathBuf,
}

fn open_job(a: &InferArgs) -> Result<Job> {
    let dir = JobDir::open(&a.job).with_context(|| {
        format!(
            "{} is not a job directory (train with `--job-dir DIR`, or use the \
             ./mixnn-jobs/<time> a pool job printed)",
            a.job.display()
        )
    })?;
    let recipe = dir.recipe()?;
    let Some(pool) = recipe.pool.as_ref() else {
        bail!(
            "{} is a job trained in one process: nothing runs on the pool (use `mixnn train \
             --local` reports for its accuracy)",
            a.job.display()
        );
    };
    if pool.branch || recipe.trusted_branch.is_some() {
        bail!(
            "{}: a fork-join job is not served by `mixnn infer` yet",
            a.job.display()
        );
    }
    if pool.verify_replicas {
        bail!(
            "{}: a --verify-replicas job runs two cascades; `mixnn infer` serves one",
            a.job.display()
        );
    }
    let model =
        mixnn_shard::decode(&dir.model(&recipe)?).context("parsing the job's model.onnx")?;
    let shards = mixnn_shard::split(&model, &mixnn_shard::plan(&model, None)?)?;
    let mut popts = pool.options(dir.secret()?);
    if !a.pool.is_empty() {
        popts.bootstrap = a.pool.clone();
    }
    let (checkpoint, warnings) = dir
        .latest_valid()
        .with_context(|| format!("{}: no valid checkpoint to serve", a.job.display()))?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let data_dir = (a.data.clone())
        .or_else(|| recipe.data.clone().map(PathBuf::from))
        .unwrap_or_else(super::default_data_dir);
    Ok(Job {
        opts: recipe.options(),
        dir,
        shards,
        popts,
        checkpoint,
        data_dir,
    })
}

/// `mixnn infer`.
pub fn run(a: InferArgs) -> Result<()> {
    let job = open_job(&a)?;
    let data = super::load_mnist(&job.data_dir)?;
    let sample = mixnn_designer::sample_shape(&job.shards, &data).with_context(|| {
        format!(
            "the data in {} does not fit the job's model",
            job.data_dir.display()
        )
    })?;
    let test = limited(&data.test, a.limit);
    anyhow::ensure!(
        test.count > 0,
        "no test samples in {}",
        job.data_dir.display()
    );
    // The layers compute as the job trained (host kernels or pure wasm).
    let mut sandbox = a.sandbox.clone();
    sandbox.guest_kernels = match job.opts.config.host_kernels {
        true => KernelsArg::Host,
        false => KernelsArg::Wasm,
    };
    let sb = sandbox.sandbox()?;
    let (mut cascade, from) = cascade(&a, &job, &sb)?;
    cascade.set_test_window(a.window);
    let batch = job.opts.eval_batch;
    println!(
        "inference of {} test samples, batch {batch}, {} in flight, through {}",
        test.count,
        cascade.test_window(),
        describe(&cascade)
    );
    let pooled = run_test_set(&mut cascade, &test, &sample, batch, true);
    let pooled = match pooled {
        Ok(r) => r,
        Err(e) => {
            return Err(e.context(
                "the cascade did not serve the test set (a node that stopped, or forgot the job \
                 after 15 minutes idle, loses it: `mixnn infer --redeploy`)",
            ));
        }
    };
    println!(
        "pool: accuracy {:.2}%, {:.2}s, {:.0} inferences/s",
        pooled.accuracy() * 100.0,
        pooled.seconds,
        pooled.per_second()
    );
    let single = (!a.no_local)
        .then(|| single_process(&cascade, &job, &sb, &test, &sample, &pooled))
        .transpose()?;
    let report = InferReport {
        job: a.job.display().to_string(),
        cascade_from: from.into(),
        step: job.checkpoint.position.step,
        cascade: cascade.network().cascade,
        samples: test.count,
        batch,
        window: cascade.test_window(),
        accuracy: pooled.accuracy(),
        seconds: pooled.seconds,
        inferences_per_second: pooled.per_second(),
        ratio_to_single_process: single
            .as_ref()
            .map(|s| pooled.per_second() / s.inferences_per_second.max(1e-9)),
        single_process: single,
    };
    if a.close {
        cascade.close();
        forget_deployed(&job.dir);
        println!("job closed on its nodes");
    } else {
        let d = cascade.deployment(job.checkpoint.position.step);
        job.dir
            .write_deployed(&d)
            .context("recording the deployed cascade")?;
    }
    if let Some(p) = &a.report {
        super::write_json(p, &report)?;
        println!("report written to {}", p.display());
    }
    Ok(())
}

fn describe(c: &PoolCascade) -> String {
    let net = c.network();
    let hops: Vec<String> = net.cascade.iter().map(|(role, _)| role.clone()).collect();
    format!(
        "{} (packets of {} bytes)",
        hops.join(" -> "),
        net.packet_len
    )
}

/// The cascade to serve from: the one the job left deployed, or (with
/// `--redeploy`, or when none was recorded) the latest checkpoint deployed
/// on fresh nodes.
fn cascade(
    a: &InferArgs,
    job: &Job,
    sb: &mixnn_sandbox::Sandbox,
) -> Result<(PoolCascade, &'static str)> {
    let cp = &job.checkpoint;
    let recorded = job.dir.deployed()?;
    match recorded {
        Some(d) if !a.redeploy => {
            if d.step != cp.position.step {
                bail!(
                    "the deployed cascade holds step {}, the job's latest checkpoint is step {}: \
                     it was trained further without being kept deployed; `mixnn infer --redeploy`",
                    d.step,
                    cp.position.step
                );
            }
            println!(
                "attaching to the cascade the job left deployed (step {})",
                d.step
            );
            let c = PoolCascade::attach(
                &d,
                &job.shards,
                &job.opts.config,
                Some(sb),
                &job.popts,
                &cp.states,
            )
            .context("attaching to the deployed cascade")?;
            Ok((c, "attached"))
        }
        _ => {
            println!(
                "{}: deploying the job's checkpoint of step {} on fresh nodes",
                if a.redeploy {
                    "--redeploy"
                } else {
                    "no cascade left deployed"
                },
                cp.position.step
            );
            let mut say = |m: &str| println!("  {m}");
            let mut c = PoolCascade::deploy(
                &job.shards,
                &job.opts.config,
                Some(sb),
                &job.popts,
                &mut say,
            )
            .context("deploying the job")?;
            c.load_state(&cp.states)
                .context("loading the checkpoint into the cascade")?;
            Ok((c, "redeployed"))
        }
    }
}

/// The same trained model in this process on the wasm engine.
fn single_process(
    cascade: &PoolCascade,
    job: &Job,
    sb: &mixnn_sandbox::Sandbox,
    test: &Dataset,
    sample: &[usize],
    pooled: &TestRun,
) -> Result<SingleProcess> {
    let cp = &job.checkpoint;
    let trained = cascade.plain_shards(&job.shards, &job.opts.config, &cp.states)?;
    let mut local =
        mixnn_designer::Cascade::load(EngineKind::Wasm, &trained, &job.opts.config, Some(sb))?;
    let r = run_test_set(&mut local, test, sample, job.opts.eval_batch, false)?;
    let identical = r.outputs == pooled.outputs;
    println!(
        "one process (wasm): accuracy {:.2}%, {:.2}s, {:.0} inferences/s; pool/one process {:.2}x; \
         outputs identical: {identical}",
        r.accuracy() * 100.0,
        r.seconds,
        r.per_second(),
        pooled.per_second() / r.per_second().max(1e-9)
    );
    Ok(SingleProcess {
        engine: "wasm".into(),
        accuracy: r.accuracy(),
        seconds: r.seconds,
        inferences_per_second: r.per_second(),
        identical_outputs: identical,
    })
}
