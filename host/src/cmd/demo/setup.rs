//! What the demo sets up before it runs: its model, the shards that go to
//! the pool, how many nodes, the job's packet class, a warm guest cache.

use anyhow::{Context, Result, bail};

use super::super::SandboxArgs;
use super::DemoArgs;
use super::chaos::{self, KillAt};

/// The demo's model: `--model`, or the MixNN paper's MLP; and its name.
pub fn demo_model(a: &DemoArgs) -> Result<(mixnn_shard::pb::ModelProto, String)> {
    let Some(path) = &a.model else {
        let mlp = mixnn_shard::mlp(a.recipe.seed, a.recipe.batch, mixnn_shard::Form::Gemm);
        return Ok((
            mlp,
            "the MixNN paper's MLP (784-128-64-10, LogSoftmax, NLL)".into(),
        ));
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let model =
        mixnn_shard::decode(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    Ok((model, path.display().to_string()))
}

/// How many nodes to start: `--nodes`, or one per hop plus a spare per
/// kill (at least one); checks that the cascade fits and every numbered
/// kill names one of its hops.
pub fn pool_nodes(a: &DemoArgs, shards: usize) -> Result<usize> {
    let kept = usize::from(a.keep_first) + usize::from(a.keep_last);
    let remote = shards.saturating_sub(kept);
    let hops = remote + a.dummies;
    // Replicas double the cascade; a lie takes up to two spares (the third
    // replica, then the liar's replacement if it was replica B's).
    let verify = a.verify_replicas || !a.lies.is_empty();
    let all = hops * (1 + usize::from(verify));
    let nodes = (a.nodes).unwrap_or(all + (a.kills.len() + 2 * a.lies.len()).max(1));
    if nodes < all {
        bail!(
            "--nodes {nodes}: the job needs {all} distinct nodes ({remote} layers + {} dummies{})",
            a.dummies,
            if verify { ", twice for replicas" } else { "" }
        );
    }
    let beyond = |k: &&KillAt| matches!(k.target, chaos::Target::Hop(n) if n > hops);
    if let Some(k) = a.kills.iter().chain(&a.lies).find(beyond) {
        bail!("--kill/--lie {k}: the cascade has {hops} hops");
    }
    if let Some(k) = a.kills.iter().find(|k| k.replica_b && !verify) {
        bail!("--kill {k}: replica B exists only with --verify-replicas (or --lie)");
    }
    Ok(nodes)
}

/// Compiles the guests into the on-disk cache before the nodes start, so
/// six processes do not all compile them at once on a cold cache.
pub fn warm_guest_cache(sandbox: &SandboxArgs) -> Result<()> {
    if sandbox.no_cache {
        return Ok(());
    }
    println!("  preparing the wasm guests (compiled once, then cached)");
    let sb = sandbox.sandbox()?;
    for kind in [
        mixnn_sandbox::GuestKind::Standard,
        mixnn_sandbox::GuestKind::Relay,
    ] {
        sb.guest(kind)
            .with_context(|| format!("compiling the {} guest", kind.name()))?;
    }
    Ok(())
}

/// The job's payload class (the designer's own rule, for a cascade with
/// both ends on the pool) and its packet length. The demo passes the class
/// to the job; cover uses every public class.
pub fn job_class(
    shards: &[mixnn_shard::pb::ModelProto],
    batches: &[usize],
) -> Result<(usize, usize)> {
    let g = mixnn_sphinx::Geometry::default();
    let class = mixnn_designer::pool::payload_class(&g, shards, 0, shards.len(), batches)?;
    let len = g.packet_len(class).context("packet length of the class")?;
    Ok((class, len))
}

/// The shards that go to the pool: a chain's, or a fork-join's untrusted
/// branch (with the demo flags a fork-join cannot take refused).
pub fn pool_shards(
    a: &DemoArgs,
    model: &mixnn_shard::pb::ModelProto,
) -> Result<Vec<mixnn_shard::pb::ModelProto>> {
    let Some(fj) = mixnn_shard::fork::fork_join(model, a.trusted_branch.as_deref())? else {
        return Ok(mixnn_shard::split(model, &mixnn_shard::plan(model, None)?)?);
    };
    anyhow::ensure!(
        !(a.keep_first || a.keep_last),
        "--keep-first/--keep-last: a fork-join keeps its trusted branch, merge and head here already"
    );
    anyhow::ensure!(
        a.lies.is_empty() && !a.verify_replicas,
        "--lie/--verify-replicas do not run fork-join jobs yet"
    );
    Ok(fj.untrusted)
}
