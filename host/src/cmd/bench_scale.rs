//! `mixnn bench scale`: a larger pool on one machine with cover traffic on,
//! a training job through it, and what cover costs per node.
//!
//! Why a bench and not a test: the figures (packets and bytes per second
//! per node, CPU share, step time) are what the default cover rates are
//! chosen from (docs/scale.md), and they depend on the machine; nothing
//! here asserts a time.
//!
//! For each cover rate (a multiple of the node's default loop and drop
//! intervals and byte budget; 0 = cover off) it starts a fresh pool with
//! the local harness that `mixnn demo` uses — a bootstrap and N `mixnn
//! node` processes on 127.0.0.1, real sockets, Noise, yamux, each with its
//! own sandbox and mix keys — so the load is what N operators' processes
//! would put on this machine. It then measures two windows: cover alone
//! (`--idle-s`), and cover while a job of `--steps` training steps (the
//! paper's MLP or LeNet-5, with dummy hops) runs through the pool. A fresh
//! pool per rate, because a node's cover rates are fixed at start.

mod measure;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use mixnn_designer::{EngineKind, EpochReport, StepProgress, TrainObserver};

use super::SandboxArgs;
use super::demo::setup::{job_class, warm_guest_cache};
use super::harness::{LocalPool, LocalPoolOptions};
use super::train::{OptimizerArg, PoolArgs, RecipeArgs};
use report::{CoverRate, JobFigures, RateRun, ScaleReport};

/// Training samples of MNIST: one epoch's worth of steps at most.
const MNIST_TRAIN: usize = 60_000;

#[derive(Args)]
pub struct ScaleBenchArgs {
    /// Pool nodes to start (node processes; one bootstrap besides). Each
    /// node sends cover to random others, so links grow as nodes².
    #[arg(long, default_value_t = 40, value_name = "N")]
    pub nodes: usize,
    /// Cover rates to measure, as multiples of the base below
    /// (comma-separated): loop and drop intervals divided by the multiple,
    /// the byte budget multiplied by it, so the budget never stretches a
    /// rate. 0 = cover off, the baseline.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 1.0, 2.0, 4.0, 8.0], value_name = "X")]
    pub cover_rates: Vec<f64>,
    /// Base mean interval between loop cover packets, ms (default: the node's).
    #[arg(long, default_value_t = mixnn_node::NodeConfig::default().cover_loop_ms, value_name = "MS")]
    pub cover_loop_ms: u64,
    /// Base mean interval between drop cover packets, ms (default: the node's).
    #[arg(long, default_value_t = mixnn_node::NodeConfig::default().cover_drop_ms, value_name = "MS")]
    pub cover_drop_ms: u64,
    /// Base cover budget per node, bytes per second (default: the node's).
    #[arg(long, default_value_t = mixnn_node::NodeConfig::default().cover_bytes_per_sec, value_name = "BYTES")]
    pub cover_bytes_per_sec: u64,
    /// Training steps of the job (one epoch of `steps × batch` samples).
    #[arg(long, default_value_t = 600)]
    pub steps: usize,
    /// Training (and test) batch size of the job; its packets are sized
    /// for it.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// The job's model (the MixNN paper's MLP, or LeNet-5).
    #[arg(long, value_enum, default_value_t = ScaleModel::Mlp)]
    pub model: ScaleModel,
    /// Dummy relay hops in the job's cascade.
    #[arg(long, default_value_t = 2, value_name = "R")]
    pub dummies: usize,
    /// Test samples of the job's test pass (in batches of `--batch`).
    #[arg(long, default_value_t = 640)]
    pub test_limit: usize,
    /// Seconds of cover alone measured before each job.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub idle_s: u64,
    /// Seconds to wait after the pool is up before measuring: nodes keep
    /// dialling, publishing and filling their routing tables for a while
    /// after they joined, which is start-up cost, not cover's.
    #[arg(long, default_value_t = 15, value_name = "SECS")]
    pub settle_s: u64,
    /// How long the bootstrap and all nodes may take to come up.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub start_timeout_s: u64,
    /// Seeds the model's initial parameters and the data order: every
    /// rate trains the same job, so only the time may differ.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// MNIST directory. Default: the bundled copy.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Write the JSON report here (rewritten after every rate, so a run
    /// cut short keeps the rates it finished).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScaleModel {
    Mlp,
    Lenet5,
}

pub fn run(a: ScaleBenchArgs) -> Result<()> {
    super::harness::exit_on_interrupt()?;
    check_args(&a)?;
    preflight(a.nodes)?;
    let (model, name, shards) = job_model(&a)?;
    let data = super::load_mnist(&a.data.clone().unwrap_or_else(super::default_data_dir))?;
    let (class, packet_len) = job_class(&shards, &[a.batch])?;
    let base = CoverRate {
        multiple: 1.0,
        loop_ms: a.cover_loop_ms,
        drop_ms: a.cover_drop_ms,
        bytes_per_sec: a.cover_bytes_per_sec,
    };
    println!(
        "mixnn bench scale: {} node processes, {name} ({} layers + {} dummies, packets of {packet_len} bytes), \
         {} steps of batch {}, cover at {:?} x (loop {} ms, drop {} ms, {} B/s)",
        a.nodes,
        shards.len(),
        a.dummies,
        a.steps,
        a.batch,
        a.cover_rates,
        base.loop_ms,
        base.drop_ms,
        base.bytes_per_sec
    );
    warm_guest_cache(&a.sandbox)?;
    let mut report = ScaleReport {
        nodes: a.nodes,
        model: name.into(),
        dummies: a.dummies,
        batch: a.batch,
        steps: a.steps,
        idle_seconds: a.idle_s,
        settle_seconds: a.settle_s,
        base,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_before: load_average(),
        runs: Vec::new(),
    };
    for (i, &m) in a.cover_rates.iter().enumerate() {
        let rate = CoverRate::scaled(m, base);
        let what = if rate.bytes_per_sec == 0 {
            "off".to_string()
        } else {
            format!(
                "loops every {} ms, drops every {} ms, budget {} B/s per node",
                rate.loop_ms, rate.drop_ms, rate.bytes_per_sec
            )
        };
        println!("\n[{}/{}] cover x{m}: {what}", i + 1, a.cover_rates.len());
        let run = run_rate(&a, rate, &model, &data, class)?;
        report.runs.push(run);
        if let Some(p) = &a.report {
            super::write_json(p, &report)?;
        }
    }
    println!("\n{}", report::render(&report));
    if let Some(p) = &a.report {
        println!("report written to {}", p.display());
    }
    Ok(())
}

/// The job's model, its name, and its shards; checks the pool can hold
/// the cascade (layers and dummies on distinct nodes).
fn job_model(
    a: &ScaleBenchArgs,
) -> Result<(
    mixnn_shard::pb::ModelProto,
    &'static str,
    Vec<mixnn_shard::pb::ModelProto>,
)> {
    let (model, name) = match a.model {
        ScaleModel::Mlp => (
            mixnn_shard::mlp(a.seed, a.batch, mixnn_shard::Form::Gemm),
            "paper MLP",
        ),
        ScaleModel::Lenet5 => (
            mixnn_shard::lenet5(a.seed, a.batch, mixnn_shard::Form::Gemm),
            "LeNet-5",
        ),
    };
    let shards = mixnn_shard::split(&model, &mixnn_shard::plan(&model, None)?)?;
    if a.nodes < shards.len() + a.dummies {
        bail!(
            "--nodes {}: the job needs {} distinct nodes ({} layers + {} dummies)",
            a.nodes,
            shards.len() + a.dummies,
            shards.len(),
            a.dummies
        );
    }
    Ok((model, name, shards))
}

fn check_args(a: &ScaleBenchArgs) -> Result<()> {
    if a.cover_rates.is_empty() {
        bail!("--cover-rates: give at least one multiple (0 = cover off)");
    }
    if let Some(r) = a.cover_rates.iter().find(|r| !r.is_finite() || **r < 0.0) {
        bail!("--cover-rates: {r} is not a multiple ≥ 0");
    }
    if a.steps == 0 || a.batch == 0 {
        bail!("--steps and --batch must be at least 1");
    }
    if a.steps.saturating_mul(a.batch) > MNIST_TRAIN {
        bail!(
            "--steps {} at --batch {} needs {} samples; MNIST has {MNIST_TRAIN} (one epoch)",
            a.steps,
            a.batch,
            a.steps * a.batch
        );
    }
    Ok(())
}

/// One rate: a fresh pool, cover alone for `--idle-s`, then the job. A
/// pool that fails to start ends the bench (the error names the node and
/// its log); a job that fails is recorded and the bench goes on.
fn run_rate(
    a: &ScaleBenchArgs,
    rate: CoverRate,
    model: &mixnn_shard::pb::ModelProto,
    data: &mixnn_data::Mnist,
    class: usize,
) -> Result<RateRun> {
    let load_before = load_average();
    let started = Instant::now();
    let pool = LocalPool::start(
        &LocalPoolOptions {
            nodes: a.nodes,
            cover_loop_ms: rate.loop_ms,
            cover_drop_ms: rate.drop_ms,
            cover_bytes_per_sec: Some(rate.bytes_per_sec),
            cache_dir: a.sandbox.cache_dir.clone(),
            start_timeout: Duration::from_secs(a.start_timeout_s),
            ..LocalPoolOptions::default()
        },
        &mut quiet_start(a.nodes),
    )
    .with_context(|| format!("starting a pool of {} nodes", a.nodes))?;
    let start_seconds = started.elapsed().as_secs_f64();
    println!("  {} nodes up in {start_seconds:.1} s", a.nodes);
    let rt = measure::runtime()?;
    if a.settle_s > 0 {
        println!("  letting the pool settle for {} s", a.settle_s);
        std::thread::sleep(Duration::from_secs(a.settle_s));
    }
    let s0 = measure::sample(&pool, &rt);
    println!("  cover alone for {} s", a.idle_s);
    std::thread::sleep(Duration::from_secs(a.idle_s));
    let s1 = measure::sample(&pool, &rt);
    let idle = measure::window(&pool, &s0, &s1);
    println!(
        "  idle: {:.1} packets/s out per node, {:.1} KB/s, CPU {} per node",
        idle.mean.packets_out_per_s,
        idle.mean.bytes_out_per_s / 1000.0,
        idle.mean
            .cpu_share
            .map_or("-".into(), |c| format!("{:.1}%", c * 100.0))
    );
    let (figures, error) = match run_job(a, &pool, model, data, class) {
        Ok(f) => (Some(f), None),
        Err(e) => {
            println!("  the job failed: {e:#}");
            (None, Some(format!("{e:#}")))
        }
    };
    let s2 = measure::sample(&pool, &rt);
    let job = measure::window(&pool, &s1, &s2);
    let job_split = (figures.as_ref()).map(|f: &JobFigures| {
        let peers: Vec<String> = f.cascade.iter().map(|(_, p)| p.clone()).collect();
        measure::split(&job, &peers)
    });
    let pids = pool.pids();
    let nodes_exited = (1..pids.len())
        .filter(|&i| pids[i].is_none())
        .map(|i| format!("node-{i}"))
        .collect();
    println!("  stopping the pool");
    pool.stop();
    Ok(RateRun {
        cover: rate,
        load_before,
        start_seconds,
        idle,
        job: Some(job),
        job_split,
        figures,
        error,
        nodes_exited,
    })
}

/// The harness's start-up lines, thinned: one per ten nodes up.
fn quiet_start(nodes: usize) -> impl FnMut(&str) {
    let mut up = 0;
    move |m: &str| {
        if m.starts_with("starting node-") {
            return;
        }
        if m.starts_with("node-") {
            up += 1;
            if up % 10 != 0 && up != nodes {
                return;
            }
            println!("  {up}/{nodes} nodes in the directory");
            return;
        }
        println!("  {m}");
    }
}

/// Deploys the job on the pool, trains `--steps` steps, tests, closes.
fn run_job(
    a: &ScaleBenchArgs,
    pool: &LocalPool,
    model: &mixnn_shard::pb::ModelProto,
    data: &mixnn_data::Mnist,
    class: usize,
) -> Result<JobFigures> {
    let recipe = RecipeArgs {
        epochs: 1,
        batch: a.batch,
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 0.0,
        optimizer: OptimizerArg::Sgd,
        seed: a.seed,
        train_limit: Some(a.steps * a.batch),
        test_limit: Some(a.test_limit),
        eval_batch: Some(a.batch),
    };
    let mut opts = recipe.options(EngineKind::Wasm, format!("{:?}", a.model));
    opts.config.host_kernels = a.sandbox.host_kernels();
    let pool_args = PoolArgs::local(pool.bootstrap_addr(), a.dummies, class);
    let popts = super::pool::pool_options(&pool_args, &opts);
    let mut observer = StepLines {
        every: (a.steps / 6).max(1) as u64,
        started: Instant::now(),
    };
    let run = super::pool::JobRun {
        ck: None,
        observer: &mut observer,
        trusted_branch: None,
        serve: super::pool::Serve::of(&pool_args),
    };
    let (report, _) =
        super::pool::train_on_pool_job(model, data, &opts, &popts, &a.sandbox, None, run)?;
    let net = report
        .network
        .context("the pool job reported no network figures")?;
    Ok(JobFigures {
        train_steps: net.train_messages,
        train_seconds: net.train_seconds,
        step_ms: 1e3 * net.train_seconds / net.train_messages.max(1) as f64,
        hop_us: 1e6 * net.train_seconds / net.train_hop_crossings.max(1) as f64,
        test_accuracy: report.final_test_accuracy,
        packet_len: net.packet_len,
        cascade: net.cascade,
    })
}

/// A plain line every few steps: the bench's output is usually a log
/// file, where a progress bar would only be noise.
struct StepLines {
    every: u64,
    started: Instant,
}

impl TrainObserver for StepLines {
    fn progress(&mut self, p: &StepProgress) {
        if p.step.is_multiple_of(self.every) || p.batch == p.batches {
            let ms = 1e3 * self.started.elapsed().as_secs_f64() / p.step as f64;
            println!(
                "  step {}/{}  loss {:.4}  {ms:.1} ms/step since deployment",
                p.batch, p.batches, p.loss
            );
        }
    }

    fn epoch(&mut self, e: &EpochReport) {
        super::progress::print_epoch(e);
    }
}

/// Checks that this machine can hold the pool: file descriptors (each
/// node keeps a link to every node it sends cover through; children
/// inherit this process's limit, raised here up to the hard limit when
/// needed) and ephemeral ports (one per connection between two nodes).
fn preflight(nodes: usize) -> Result<()> {
    let fds = 4 * nodes + 256;
    raise_fd_limit(fds)?;
    if let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let v: Vec<u64> = range
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let need = (nodes * nodes + 4 * nodes) as u64;
        if let [lo, hi] = v[..]
            && hi.saturating_sub(lo) < need
        {
            bail!(
                "{nodes} nodes need about {need} ephemeral ports (a connection per pair), \
                 but net.ipv4.ip_local_port_range is {lo}-{hi}: widen it or start fewer nodes"
            );
        }
    }
    Ok(())
}

#[cfg(unix)]
fn raise_fd_limit(need: usize) -> Result<()> {
    let need = need as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("reading the open-file limit (RLIMIT_NOFILE)");
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    if lim.rlim_max < need {
        bail!(
            "the pool needs about {need} open files per process but the hard limit is {}: \
             raise it (ulimit -Hn) or start fewer nodes",
            lim.rlim_max
        );
    }
    lim.rlim_cur = need;
    // SAFETY: setrlimit reads the struct we own; raising the soft limit up
    // to the hard one is always permitted.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!("raising the open-file limit to {need}");
    }
    Ok(())
}

#[cfg(not(unix))]
fn raise_fd_limit(_need: usize) -> Result<()> {
    Ok(())
}

/// The 1-minute load average (Linux), to tell a busy machine in the report.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
