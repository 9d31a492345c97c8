//! `mixnn train --pool`: the designer's job on pool nodes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use mixnn_designer::checkpoint::JobDir;
use mixnn_designer::pool::{Distinct, NetworkReport, PoolCascade, PoolOptions, Replicated};
use mixnn_designer::{Checkpointing, EngineKind, Model, TrainObserver, TrainOptions, TrainReport};

use super::SandboxArgs;
use super::train::PoolArgs;

/// The pool options the flags ask for (a fresh job secret).
pub fn pool_options(pool: &PoolArgs, opts: &TrainOptions) -> PoolOptions {
    PoolOptions {
        bootstrap: pool.pool.clone(),
        quorum: pool.quorum,
        distinct: if pool.local_pool {
            Distinct::HostPort
        } else {
            Distinct::Host
        },
        dummies: pool.dummies,
        keep_first: pool.keep_first,
        keep_last: pool.keep_last,
        branch: false,
        local_engine: opts.engine,
        class: pool.class,
        timeout: Duration::from_secs(pool.timeout_s),
        wait_for_nodes: Duration::from_secs(pool.wait_for_nodes_s),
        batches: vec![opts.batch, opts.eval_batch],
        job_secret: None,
        witness: pool.verify_replicas,
        exclude: Vec::new(),
    }
}

/// A deployed job: one cascade, or two replicas (`--verify-replicas`).
enum Deployed {
    One(Box<PoolCascade>),
    Two(Box<Replicated>),
}

/// The deploy's first line: what goes where, for how long.
fn announce(shards: usize, opts: &TrainOptions, popts: &PoolOptions) {
    println!(
        "deploying {} shards on the pool ({} dummies{}{}), {} epochs, batch {}, seed {}",
        shards,
        popts.dummies,
        if popts.keep_first {
            ", first shard kept here"
        } else {
            ""
        },
        if popts.keep_last {
            ", last shard kept here"
        } else {
            ""
        },
        opts.epochs,
        opts.batch,
        opts.config.seed
    );
}

impl Deployed {
    fn deploy(
        shards: &[mixnn_shard::pb::ModelProto],
        opts: &TrainOptions,
        sb: Option<&mixnn_sandbox::Sandbox>,
        popts: &PoolOptions,
    ) -> Result<Deployed> {
        let mut say = |m: &str| println!("  {m}");
        let (config, say) = (&opts.config, &mut say as &mut dyn FnMut(&str));
        Ok(if popts.witness {
            Deployed::Two(Box::new(Replicated::deploy(
                shards, config, sb, popts, say,
            )?))
        } else {
            Deployed::One(Box::new(PoolCascade::deploy(
                shards, config, sb, popts, say,
            )?))
        })
    }

    fn model(&mut self) -> &mut dyn Model {
        match self {
            Deployed::One(c) => c.as_mut(),
            Deployed::Two(r) => r.as_mut(),
        }
    }

    fn network(&self) -> NetworkReport {
        match self {
            Deployed::One(c) => c.network(),
            Deployed::Two(r) => r.network().unwrap_or_default(),
        }
    }

    /// The nodes that failed in this job (either replica's).
    fn failed_nodes(&self) -> Vec<[u8; 32]> {
        match self {
            Deployed::One(c) => c.failed_nodes(),
            Deployed::Two(r) => r.failed_nodes(),
        }
    }

    /// See [`remember_failed`].
    fn remember_failed(&self, job: &JobDir) {
        remember_failed(job, &self.failed_nodes());
    }

    fn close(&mut self) {
        match self {
            Deployed::One(c) => c.close(),
            Deployed::Two(r) => r.close(),
        }
    }
}

/// Records the nodes that failed in the job directory, so that `--resume`
/// avoids them up front (the bootstraps list a stopped node until its
/// descriptor expires). Not writing them only costs a resume the time to
/// find them again, so it is a warning, not the job's end.
pub fn remember_failed(job: &JobDir, ids: &[[u8; 32]]) {
    if ids.is_empty() {
        return;
    }
    match job.record_failed(ids) {
        Ok(()) => println!(
            "{} failed node(s) recorded in {}: a resume avoids them",
            ids.len(),
            job.path().display()
        ),
        Err(e) => eprintln!("warning: could not record the failed nodes: {e}"),
    }
}

/// Records the nodes a deployment gave up on as unreachable (its error
/// names them), so a resume of the job avoids them from the start.
pub fn remember_unreachable(job: Option<&JobDir>, e: &anyhow::Error) {
    use mixnn_designer::DesignerError;
    use mixnn_designer::pool::PoolError;
    if let (Some(job), Some(DesignerError::Job(PoolError::TooManyUnreachable { ids, .. }))) =
        (job, e.downcast_ref::<DesignerError>())
    {
        remember_failed(job, ids);
    }
}

/// How a pool job checkpoints and who watches it.
pub struct JobRun<'a> {
    /// Checkpoints (and a resume); `None`: none, a failure ends the job.
    pub ck: Option<Checkpointing>,
    /// Told of epochs, steps and events.
    pub observer: &'a mut dyn TrainObserver,
    /// A fork-join's `--trusted-branch`.
    pub trusted_branch: Option<String>,
    /// The test phase's window and what happens to the cascade after.
    pub serve: Serve<'a>,
}

/// The test phase and the cascade after training.
#[derive(Default)]
pub struct Serve<'a> {
    /// Test batches in flight (`--test-window`; 0 or 1: one at a time).
    pub test_window: usize,
    /// Leave the cascade deployed and record it in the job directory.
    pub keep_deployed: bool,
    /// After training, run the test set through the still-deployed
    /// cascade one batch at a time and with the window, and put the
    /// comparison here (`mixnn demo`).
    pub compare: Option<&'a mut Option<super::infer::WindowComparison>>,
}

impl Serve<'_> {
    /// What the `--pool` flags ask for.
    pub fn of(pool: &PoolArgs) -> Self {
        Serve {
            test_window: pool.test_window,
            keep_deployed: pool.keep_deployed,
            compare: None,
        }
    }
}

/// Splits the model, deploys it on the pool, trains with a test pass per
/// epoch, optionally exports, then closes the job; checkpoints: a new
/// job, or one resumed (its `job_secret` rebuilds the same layout, then
/// every layer gets the checkpoint's state).
pub fn train_on_pool_job(
    model: &mixnn_shard::pb::ModelProto,
    data: &mixnn_data::Mnist,
    opts: &TrainOptions,
    popts: &PoolOptions,
    sandbox: &SandboxArgs,
    export: Option<&Path>,
    run: JobRun<'_>,
) -> Result<(TrainReport, usize)> {
    if let Some(fj) = super::fork::detect(model, run.trusted_branch.as_deref())? {
        return super::fork::train_pool(model, &fj, data, opts, popts, sandbox, export, run);
    }
    let plan = mixnn_shard::plan(model, None)?;
    let shards = mixnn_shard::split(model, &plan)?;
    let sample = mixnn_designer::sample_shape(&shards, data)?;
    let keeps = popts.keep_first || popts.keep_last;
    let sb = match (keeps, opts.engine) {
        (true, EngineKind::Wasm) => Some(sandbox.sandbox()?),
        _ => None,
    };
    announce(shards.len(), opts, popts);
    println!("  {}", cut_hint(&shards, popts.keep_first));
    let job_dir = run.ck.as_ref().and_then(|c| c.dir.clone());
    let mut deployed = match Deployed::deploy(&shards, opts, sb.as_ref(), popts) {
        Ok(d) => d,
        Err(e) => {
            remember_unreachable(job_dir.as_ref(), &e);
            return Err(e.context("deploying the job"));
        }
    };
    deployed.show();
    let JobRun {
        ck,
        observer,
        serve,
        ..
    } = run;
    if let Deployed::One(c) = &mut deployed {
        c.set_test_window(serve.test_window);
    }
    let result = (|| -> Result<(TrainReport, usize)> {
        let n = shards.len();
        let cascade = deployed.model();
        let mut report = match ck {
            Some(ck) => {
                mixnn_designer::train_checkpointed(cascade, n, &sample, data, opts, ck, observer)?
            }
            None => mixnn_designer::train_model(cascade, n, &sample, data, opts, observer)?,
        };
        if let Some(path) = export {
            let merged = cascade.export_model(&shards)?;
            std::fs::write(path, mixnn_shard::encode(&merged))
                .with_context(|| format!("writing {}", path.display()))?;
            println!("trained model exported to {}", path.display());
        }
        report.engine = "pool".into();
        report.network = Some(deployed.network());
        if let Deployed::Two(r) = &deployed {
            report.network_b = Some(r.network_b());
        }
        // After the report's figures: the comparison's passes are not the
        // job's test phase.
        if let (Some(out), Deployed::One(c)) = (serve.compare, &mut deployed) {
            let w = serve.test_window;
            *out = Some(super::infer::compare_windows(c, data, &sample, opts, w)?);
        }
        Ok((report, shards.len()))
    })();
    deployed.finish(job_dir.as_ref(), serve.keep_deployed && result.is_ok())?;
    result
}

impl Deployed {
    /// Prints the cascade (each replica's).
    fn show(&self) {
        let show = |net: &NetworkReport, what: &str| {
            println!(
                "{what}: {} (packets of {} bytes)",
                net.cascade
                    .iter()
                    .map(|(role, peer)| format!("{role} @ {}", short(peer)))
                    .collect::<Vec<_>>()
                    .join(" -> "),
                net.packet_len
            )
        };
        match self {
            Deployed::One(c) => show(&c.network(), "cascade"),
            Deployed::Two(r) => {
                show(&self.network(), "replica A");
                show(&r.network_b(), "replica B");
            }
        }
    }

    /// After training: records the failed nodes, then leaves the cascade
    /// deployed and recorded (`keep`, one cascade, a job directory) or
    /// closes the job on its nodes and forgets any earlier record.
    fn finish(&mut self, job_dir: Option<&JobDir>, keep: bool) -> Result<()> {
        if let Some(job) = job_dir {
            self.remember_failed(job);
        }
        match (&*self, job_dir) {
            (Deployed::One(c), Some(job)) if keep => keep_deployed(c, job),
            _ => {
                self.close();
                if let Some(job) = job_dir {
                    super::infer::forget_deployed(job);
                }
                Ok(())
            }
        }
    }
}

/// Records the cascade in the job directory and leaves it running: its
/// hops hold the state of the job's latest checkpoint (the last one
/// training wrote, at the end of its last epoch).
fn keep_deployed(c: &PoolCascade, job: &JobDir) -> Result<()> {
    let (cp, _) =
        (job.latest_valid()).context("--keep-deployed: the job has no valid checkpoint")?;
    let step = cp.position.step;
    job.write_deployed(&c.deployment(step))
        .context("recording the deployed cascade")?;
    println!(
        "cascade left deployed (state of step {step}): `mixnn infer --job {}` serves inference \
         from it; its nodes forget the job after 15 minutes idle",
        job.path().display()
    );
    Ok(())
}

fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(8)..]
}

/// What the first pool node sees, and the command that measures how much
/// of the input it reveals (issue 14: the designer sees it before the
/// job runs; `mixnn audit` trains the attacks, which takes minutes, so it
/// is named here rather than run).
fn cut_hint(shards: &[mixnn_shard::pb::ModelProto], keep_first: bool) -> String {
    let k = usize::from(keep_first);
    if k == 0 {
        return "the first pool node sees the raw input (--keep-first keeps the first shard here)"
            .into();
    }
    let node = (shards.get(k - 1))
        .and_then(|s| s.graph.as_ref())
        .and_then(|g| g.node.last())
        .map_or_else(|| format!("shard {}", k - 1), |n| n.name.clone());
    format!(
        "the first pool node sees the output of `{node}`: `mixnn audit --model MODEL --split {k} --data DIR` measures how much of the input that reveals (docs/audit.md)"
    )
}
