//! `mixnn train --pool`: the designer's job on pool nodes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use mixnn_designer::pool::{Distinct, PoolCascade, PoolOptions};
use mixnn_designer::{EngineKind, Model, TrainOptions, TrainReport};

use super::SandboxArgs;
use super::train::{PoolArgs, print_epoch};

/// Splits the model, deploys it on the pool, trains with a test pass per
/// epoch, optionally exports the trained model, then closes the job.
pub fn train_on_pool(
    model: &mixnn_shard::pb::ModelProto,
    data: &mixnn_data::Mnist,
    opts: &TrainOptions,
    pool: &PoolArgs,
    sandbox: &SandboxArgs,
    export: Option<&Path>,
) -> Result<(TrainReport, usize)> {
    let plan = mixnn_shard::plan(model, None)?;
    let shards = mixnn_shard::split(model, &plan)?;
    let sample = mixnn_designer::sample_shape(&shards, data)?;
    let keeps = pool.keep_first || pool.keep_last;
    let sb = match (keeps, opts.engine) {
        (true, EngineKind::Wasm) => Some(sandbox.sandbox()?),
        _ => None,
    };
    let popts = PoolOptions {
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
        local_engine: opts.engine,
        class: pool.class,
        timeout: Duration::from_secs(pool.timeout_s),
        wait_for_nodes: Duration::from_secs(pool.wait_for_nodes_s),
        batches: vec![opts.batch, opts.eval_batch],
        job_secret: None,
    };
    println!(
        "deploying {} shards on the pool ({} dummies{}{}), {} epochs, batch {}, seed {}",
        shards.len(),
        pool.dummies,
        if pool.keep_first {
            ", first shard kept here"
        } else {
            ""
        },
        if pool.keep_last {
            ", last shard kept here"
        } else {
            ""
        },
        opts.epochs,
        opts.batch,
        opts.config.seed
    );
    let mut cascade = PoolCascade::deploy(&shards, &opts.config, sb.as_ref(), &popts, &mut |m| {
        println!("  {m}")
    })
    .context("deploying the job")?;
    let net = cascade.network();
    println!(
        "cascade: {} (packets of {} bytes)",
        net.cascade
            .iter()
            .map(|(role, peer)| format!("{role} @ {}", short(peer)))
            .collect::<Vec<_>>()
            .join(" -> "),
        net.packet_len
    );
    let result = (|| -> Result<(TrainReport, usize)> {
        let mut report = mixnn_designer::train_model(
            &mut cascade,
            shards.len(),
            &sample,
            data,
            opts,
            &mut print_epoch,
        )?;
        if let Some(path) = export {
            let merged = cascade.export_model(&shards)?;
            std::fs::write(path, mixnn_shard::encode(&merged))
                .with_context(|| format!("writing {}", path.display()))?;
            println!("trained model exported to {}", path.display());
        }
        report.engine = "pool".into();
        report.network = Some(cascade.network());
        Ok((report, shards.len()))
    })();
    cascade.close();
    result
}

fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(8)..]
}
