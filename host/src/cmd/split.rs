//! `mixnn split`: cut a model into shards and show the plan.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

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
}

pub fn run(a: SplitArgs) -> Result<()> {
    let model = super::read_model(&a.model)?;
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
