//! `mixnn train` on a fork-join (Bident) model: the untrusted branch in
//! this process (`--local`, the reference) or on the pool, the trusted
//! branch, the merge and the head always here (docs/bident.md).

use std::path::Path;

use anyhow::{Context, Result};
use mixnn_designer::fork::{ForkJoinModel, Part, fork_loss, load_part};
use mixnn_designer::pool::{PoolCascade, PoolOptions};
use mixnn_designer::{Cascade, EngineKind, TrainOptions, TrainReport};
use mixnn_shard::fork::ForkJoin;
use mixnn_shard::pb;

use super::SandboxArgs;
use super::pool::JobRun;
use super::train::LocalRun;

/// The model's fork-join parts, the plan printed, when it is one; `None`
/// for a chain (a `--trusted-branch` given for a chain is an error).
pub fn detect(model: &pb::ModelProto, trusted_branch: Option<&str>) -> Result<Option<ForkJoin>> {
    let fj =
        mixnn_shard::fork::fork_join(model, trusted_branch).context("planning the fork-join")?;
    match (&fj, trusted_branch) {
        (None, Some(node)) => anyhow::bail!(
            "--trusted-branch {node}: the model is a chain, not a fork-join (no input feeds two branches that meet at a merge)"
        ),
        (Some(fj), _) => println!("{}", mixnn_shard::render_fork_plan(fj)),
        (None, None) => {}
    }
    Ok(fj)
}

fn shard_count(fj: &ForkJoin) -> usize {
    fj.untrusted.len() + fj.trusted.len() + fj.head.len()
}

fn sandbox_for(
    engine: EngineKind,
    sandbox: &SandboxArgs,
) -> Result<Option<mixnn_sandbox::Sandbox>> {
    Ok(match engine {
        EngineKind::Wasm => Some(sandbox.sandbox()?),
        EngineKind::Native => None,
    })
}

/// What a fork-join run does besides training.
struct Around<'a> {
    ck: Option<mixnn_designer::Checkpointing>,
    export: Option<&'a Path>,
    observer: &'a mut dyn mixnn_designer::TrainObserver,
}

/// Trains (checkpointed when the run asks) and exports; shared by the
/// local and the pool run.
fn train_and_export<U: mixnn_designer::fork::Branch>(
    m: &mut ForkJoinModel<U>,
    (fj, original): (&ForkJoin, &pb::ModelProto),
    data: &mixnn_data::Mnist,
    opts: &TrainOptions,
    around: Around<'_>,
) -> Result<TrainReport> {
    let Around {
        ck,
        export,
        observer,
    } = around;
    let n = shard_count(fj);
    let sample = mixnn_designer::sample_shape(&fj.untrusted, data)?;
    let mut report = match ck {
        Some(ck) => mixnn_designer::train_checkpointed(m, n, &sample, data, opts, ck, observer)?,
        None => mixnn_designer::train_model(m, n, &sample, data, opts, observer)?,
    };
    report.fork = Some(m.timing().clone());
    print_timing(&report);
    if let Some(path) = export {
        let trained = m.export_trained(original)?;
        std::fs::write(path, mixnn_shard::encode(&trained))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("trained model exported to {}", path.display());
    }
    Ok(report)
}

/// Both branches, the merge and the head in this process: the reference
/// a pool run must equal bit for bit (with `--engine wasm`).
pub fn train_local(
    original: &pb::ModelProto,
    fj: &ForkJoin,
    data: &mixnn_data::Mnist,
    opts: &TrainOptions,
    sandbox: &SandboxArgs,
    run: LocalRun,
) -> Result<(TrainReport, usize)> {
    let observer = &mut super::progress::Printer::new();
    train_local_with(original, fj, data, opts, sandbox, run, observer)
}

/// [`train_local`] with `observer` told of epochs (and asked whether to
/// go on).
pub fn train_local_with(
    original: &pb::ModelProto,
    fj: &ForkJoin,
    data: &mixnn_data::Mnist,
    opts: &TrainOptions,
    sandbox: &SandboxArgs,
    run: LocalRun,
    observer: &mut dyn mixnn_designer::TrainObserver,
) -> Result<(TrainReport, usize)> {
    anyhow::ensure!(
        run.noise.is_none(),
        "--noise-at works on chains only; a fork-join's cut is its untrusted branch"
    );
    let sb = sandbox_for(opts.engine, sandbox)?;
    let loss = fork_loss(fj)?;
    let u: Cascade = load_part(
        opts.engine,
        &fj.untrusted,
        Part::Untrusted,
        &opts.config,
        loss,
        sb.as_ref(),
    )?;
    let mut m = ForkJoinModel::new(u, fj, opts.engine, &opts.config, sb.as_ref())?;
    println!(
        "training a fork-join of {} shards, engine {}, {} epochs, batch {}, {:?} lr {}, seed {}",
        shard_count(fj),
        opts.engine,
        opts.epochs,
        opts.batch,
        opts.config.optimizer,
        opts.config.learning_rate,
        opts.config.seed
    );
    let around = Around {
        ck: run.ck,
        export: run.export,
        observer,
    };
    let report = train_and_export(&mut m, (fj, original), data, opts, around)?;
    Ok((report, shard_count(fj)))
}

/// The untrusted branch on pool nodes in branch mode (its output comes
/// back; labels, loss, merge and trusted branch stay here).
#[allow(clippy::too_many_arguments)]
pub fn train_pool(
    original: &pb::ModelProto,
    fj: &ForkJoin,
    data: &mixnn_data::Mnist,
    opts: &TrainOptions,
    popts: &PoolOptions,
    sandbox: &SandboxArgs,
    export: Option<&Path>,
    run: JobRun<'_>,
) -> Result<(TrainReport, usize)> {
    anyhow::ensure!(
        !popts.keep_first && !popts.keep_last,
        "--keep-first/--keep-last: a fork-join keeps its trusted branch, merge and head here already; the untrusted branch runs whole on the pool"
    );
    anyhow::ensure!(
        !popts.witness,
        "--verify-replicas does not run fork-join jobs yet"
    );
    anyhow::ensure!(
        !run.serve.keep_deployed,
        "--keep-deployed serves chains only: a fork-join's merge and head run here, so there is no cascade to serve alone"
    );
    let popts = PoolOptions {
        branch: true,
        ..popts.clone()
    };
    let sb = sandbox_for(opts.engine, sandbox)?;
    println!(
        "deploying the untrusted branch ({} shards) on the pool with {} dummies; trusted branch ({} shards), merge and head ({} shards) here, {} epochs, batch {}, seed {}",
        fj.untrusted.len(),
        popts.dummies,
        fj.trusted.len(),
        fj.head.len(),
        opts.epochs,
        opts.batch,
        opts.config.seed
    );
    let mut say = |m: &str| println!("  {m}");
    let job_dir = run.ck.as_ref().and_then(|c| c.dir.clone());
    let pool = match PoolCascade::deploy(&fj.untrusted, &opts.config, None, &popts, &mut say) {
        Ok(p) => p,
        Err(e) => {
            let e = anyhow::Error::from(e);
            super::pool::remember_unreachable(job_dir.as_ref(), &e);
            return Err(e.context("deploying the untrusted branch"));
        }
    };
    let mut m = ForkJoinModel::new(pool, fj, opts.engine, &opts.config, sb.as_ref())?;
    let JobRun { ck, observer, .. } = run;
    let around = Around {
        ck,
        export,
        observer,
    };
    let result = train_and_export(&mut m, (fj, original), data, opts, around);
    let cascade = m.untrusted_mut();
    if let Some(job) = &job_dir {
        super::pool::remember_failed(job, &cascade.failed_nodes());
    }
    let net = cascade.network();
    cascade.close();
    let mut report = result?;
    report.engine = "pool".into();
    report.network = Some(net);
    Ok((report, shard_count(fj)))
}

fn print_timing(r: &TrainReport) {
    if let Some(t) = &r.fork {
        let per = |s: f64| 1e3 * s / (t.steps.max(1) as f64);
        println!(
            "fork-join step: {:.2} ms; untrusted branch {:.2} ms, trusted branch {:.2} ms (overlapped), merge and head {:.2} ms",
            per(t.step_seconds),
            per(t.untrusted_seconds),
            per(t.trusted_seconds),
            per(t.merge_head_seconds)
        );
    }
}
