//! `mixnn split`: cut a model into shards and show the plan.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use mixnn_shard::{ForkJoin, MergeOp, pb};
use serde::Serialize;

#[derive(Args)]
pub struct SplitArgs {
    /// The ONNX model to split.
    pub model: PathBuf,
    /// Directory for the shards (shard0.onnx, ...) and plan.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Explicit cut points: a shard ends after each named node (comma-separated).
    /// Default: one layer with parameters plus the parameter-free ops after it.
    #[arg(long, value_delimiter = ',')]
    pub cut: Vec<String>,
    /// Fork-join models: a node inside the branch that stays with the
    /// designer. Default: the branch with fewer parameters.
    #[arg(long, value_name = "NODE")]
    pub trusted_branch: Option<String>,
}

/// What `mixnn split` writes beside the shards of a fork-join (fork.json).
#[derive(Serialize)]
struct ForkFiles {
    merge: MergeOp,
    untrusted_slot: usize,
    untrusted: Vec<String>,
    trusted: Vec<String>,
    head: Vec<String>,
}

pub fn run(a: SplitArgs) -> Result<()> {
    let model = super::read_model(&a.model)?;
    if let Some(fj) = mixnn_shard::fork_join(&model, a.trusted_branch.as_deref())? {
        if !a.cut.is_empty() {
            bail!("--cut applies to chains; a fork-join's parts are cut automatically");
        }
        return write_fork(&a, &fj);
    }
    if let Some(node) = &a.trusted_branch {
        bail!(
            "--trusted-branch {node}: the model is a chain, not a fork-join (no two branches from its input meet at a merge)"
        );
    }
    let cuts = (!a.cut.is_empty()).then_some(a.cut.as_slice());
    let plan = mixnn_shard::plan(&model, cuts)?;
    let shards = mixnn_shard::split(&model, &plan)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for (i, s) in shards.iter().enumerate() {
        let p = a.out.join(format!("shard{i}.onnx"));
        std::fs::write(&p, mixnn_shard::encode(s))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    super::write_json(&a.out.join("plan.json"), &plan)?;
    print!("{}", mixnn_shard::render_plan(&plan));
    println!(
        "wrote {} shards and plan.json to {}",
        shards.len(),
        a.out.display()
    );
    Ok(())
}

/// Writes each part's shards as `<part>-<k>.onnx` and fork.json, and
/// prints the graph plan.
fn write_fork(a: &SplitArgs, fj: &ForkJoin) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let write = |part: &str, shards: &[pb::ModelProto]| -> Result<Vec<String>> {
        let mut names = Vec::with_capacity(shards.len());
        for (k, s) in shards.iter().enumerate() {
            let name = format!("{part}-{k}.onnx");
            let p = a.out.join(&name);
            std::fs::write(&p, mixnn_shard::encode(s))
                .with_context(|| format!("writing {}", p.display()))?;
            names.push(name);
        }
        Ok(names)
    };
    let files = ForkFiles {
        merge: fj.merge,
        untrusted_slot: fj.untrusted_slot,
        untrusted: write("untrusted", &fj.untrusted)?,
        trusted: write("trusted", &fj.trusted)?,
        head: write("head", &fj.head)?,
    };
    super::write_json(&a.out.join("fork.json"), &files)?;
    print!("{}", mixnn_shard::render_fork_plan(fj));
    println!(
        "fork-join: wrote {} untrusted, {} trusted and {} head shard(s) and fork.json to {}",
        files.untrusted.len(),
        files.trusted.len(),
        files.head.len(),
        a.out.display()
    );
    Ok(())
}
