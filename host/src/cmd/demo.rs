//! `mixnn demo`: the paper's MNIST experiment on the bundled data, today in
//! one process with every shard in its own wasm guest.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use mixnn_designer::EngineKind;

use super::SandboxArgs;
use super::train::RecipeArgs;

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// MNIST directory. Default: the bundled copy.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let data = super::load_mnist(&a.data.clone().unwrap_or_else(super::default_data_dir))?;
    let model = mixnn_shard::mlp(a.recipe.seed, a.recipe.batch, mixnn_shard::Form::Gemm);
    println!(
        "mixnn demo: the MixNN paper's MLP (784-128-64-10, LogSoftmax, NLL) on MNIST, each layer in a wasm guest"
    );
    let opts = a.recipe.options(EngineKind::Wasm, "paper-mlp".into());
    let (report, shards) = super::train::train_model(&model, &data, &opts, &a.sandbox, None)?;
    super::train::print_summary(&report, shards);
    println!("report:\n{}", serde_json::to_string_pretty(&report)?);
    if let Some(p) = &a.report {
        super::write_json(p, &report)?;
        println!("report written to {}", p.display());
    }
    Ok(())
}
