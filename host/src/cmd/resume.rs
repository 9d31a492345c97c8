//! Job directories for `mixnn train`: `--job-dir` (where a new job keeps
//! its recipe, model, secret and checkpoints) and `--resume DIR` (continue
//! a job whose designer died, from its latest valid checkpoint).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use mixnn_designer::checkpoint::{DEFAULT_CHECKPOINT_EVERY, JobDir, JobRecipe, PoolRecipe};
use mixnn_designer::pool::PoolOptions;
use mixnn_designer::{Checkpointing, TrainOptions};

use super::KernelsArg;
use super::progress::Printer;
use super::train::{TrainArgs, finish};

/// Checkpoints and resume.
#[derive(Args, Clone, Debug)]
pub struct JobArgs {
    /// Keep the job in DIR (created 0700, files 0600): its recipe, a copy
    /// of the model, its secret and its latest 3 checkpoints, so that
    /// `--resume DIR` can continue it after the designer died. A pool job
    /// keeps one by default, under `./mixnn-jobs/<unix time>`; a job in
    /// this process only when asked.
    #[arg(long, value_name = "DIR")]
    pub job_dir: Option<PathBuf>,
    /// Steps between checkpoints; there is also one at step 0 and one at
    /// each epoch end.
    #[arg(long, value_name = "K", default_value_t = DEFAULT_CHECKPOINT_EVERY)]
    pub checkpoint_every: u64,
    /// A pool job without a job directory: checkpoints in memory only (a
    /// failed hop is still repaired; a dead designer cannot resume).
    #[arg(long, conflicts_with = "job_dir")]
    pub no_job_dir: bool,
    /// Continue the job kept in DIR from its latest valid checkpoint (an
    /// older one if the newest is torn or corrupted; it says so), on fresh
    /// pool nodes for a pool job. Everything comes from DIR: the model, the
    /// data directory, the recipe, the pool layout and its secret; `--pool`
    /// may give new bootstrap addresses.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["model", "local", "job_dir", "no_job_dir"]
    )]
    pub resume: Option<PathBuf>,
}

/// A job about to start.
pub struct NewJob<'a> {
    pub args: &'a JobArgs,
    /// The model file's bytes (copied into the job directory).
    pub model: &'a [u8],
    /// The data directory given, if any.
    pub data: Option<&'a Path>,
    /// A fork-join's `--trusted-branch`, kept in the recipe.
    pub trusted_branch: Option<&'a str>,
}

impl NewJob<'_> {
    /// Makes the job directory if the job keeps one (a pool job by
    /// default) and sets the pool job's secret from it; returns the job's
    /// checkpointing (`None`: a local job without `--job-dir`).
    pub fn create(
        &self,
        opts: &TrainOptions,
        popts: Option<&mut PoolOptions>,
    ) -> Result<Option<Checkpointing>> {
        let every = self.args.checkpoint_every;
        anyhow::ensure!(every > 0, "--checkpoint-every must be at least 1");
        let on_pool = popts.is_some();
        let dir = match &self.args.job_dir {
            Some(d) => d.clone(),
            None if on_pool && !self.args.no_job_dir => default_job_dir(),
            None if on_pool => {
                return Ok(Some(Checkpointing {
                    every,
                    ..Checkpointing::in_memory()
                }));
            }
            None => return Ok(None),
        };
        let data = match self.data {
            Some(d) => Some(
                std::fs::canonicalize(d)
                    .with_context(|| format!("finding {}", d.display()))?
                    .display()
                    .to_string(),
            ),
            None => None,
        };
        let pool = popts.as_deref().map(PoolRecipe::new);
        let recipe = JobRecipe {
            trusted_branch: self.trusted_branch.map(str::to_owned),
            ..JobRecipe::new(opts, String::new(), data, every, pool)
        };
        let job = JobDir::create(&dir, &recipe, self.model)
            .with_context(|| format!("making the job directory {}", dir.display()))?;
        if let Some(p) = popts {
            p.job_secret = Some(job.secret()?);
        }
        println!(
            "job directory {} (if this process dies: `mixnn train --resume {}`)",
            dir.display(),
            dir.display()
        );
        Ok(Some(Checkpointing::on_disk(job, every)))
    }
}

/// `./mixnn-jobs/<unix time>` (with the process id if taken).
fn default_job_dir() -> PathBuf {
    let now = unix_now();
    let base = PathBuf::from("mixnn-jobs").join(now.to_string());
    if base.exists() {
        PathBuf::from("mixnn-jobs").join(format!("{now}-{}", std::process::id()))
    } else {
        base
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `mixnn train --resume DIR`.
pub fn resume(dir: &Path, a: TrainArgs) -> Result<()> {
    super::train::check_keep_deployed(&a)?;
    let job = JobDir::open(dir)?;
    let recipe = job.recipe()?;
    let bytes = job.model(&recipe)?;
    let model = mixnn_shard::decode(&bytes).context("parsing the job's model.onnx")?;
    let data_dir = (recipe.data.clone().map(PathBuf::from)).unwrap_or_else(super::default_data_dir);
    let data = super::load_mnist(&data_dir)?;
    let opts = recipe.options();
    let (cp, warnings) = job
        .latest_valid()
        .with_context(|| format!("resuming {}: nothing to resume from", dir.display()))?;
    let p = &cp.position;
    println!(
        "resuming job {} from its checkpoint at step {} (epoch {}, batch {}){}",
        dir.display(),
        p.step,
        p.epoch,
        p.batch,
        if warnings.is_empty() {
            ""
        } else {
            ", newer ones refused (see below)"
        }
    );
    // The layers compute as the job began (host kernels or pure wasm).
    let mut sandbox = a.sandbox.clone();
    sandbox.guest_kernels = if recipe.config.host_kernels {
        KernelsArg::Host
    } else {
        KernelsArg::Wasm
    };
    let ck = Checkpointing {
        resume: Some((cp, warnings)),
        held_out: recipe.pool.as_ref().and(a.pool.held_out_check()),
        ..Checkpointing::on_disk(job.clone(), recipe.checkpoint_every)
    };
    let export = a.export.as_deref();
    let (report, shards) = match &recipe.pool {
        None => {
            let run = super::train::LocalRun {
                export,
                ck: Some(ck),
                noise: None,
                trusted_branch: recipe.trusted_branch.clone(),
            };
            super::train::train_local_run(&model, &data, &opts, &sandbox, run)?
        }
        Some(pool) => {
            let mut popts = pool.options(job.secret()?);
            if !a.pool.pool.is_empty() {
                popts.bootstrap = a.pool.pool.clone();
            }
            popts.exclude = job.failed_nodes()?;
            if !popts.exclude.is_empty() {
                println!(
                    "avoiding {} node(s) that failed in this job",
                    popts.exclude.len()
                );
            }
            let mut printer = Printer::new();
            let run = super::pool::JobRun {
                ck: Some(ck),
                observer: &mut printer,
                trusted_branch: recipe.trusted_branch.clone(),
                serve: super::pool::Serve::of(&a.pool),
            };
            super::pool::train_on_pool_job(&model, &data, &opts, &popts, &sandbox, export, run)?
        }
    };
    finish(&report, shards, a.report.as_deref())
}
