//! `mixnn model`: fixture models written by our own code (no Python needed).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use mixnn_shard::Form;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Arch {
    /// Flatten, 784-128-64-10 with ReLU, LogSoftmax (the MixNN paper).
    Mlp,
    /// Conv 6@5x5 pad 2, pool, conv 16@5x5, pool, 120, 84, 10, LogSoftmax.
    Lenet5,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormArg {
    /// Gemm with transB=1 after Flatten, as PyTorch's exporter writes it.
    Gemm,
    /// MatMul followed by Add.
    Matmul,
}

#[derive(Args)]
pub struct ModelArgs {
    pub arch: Arch,
    /// Output ONNX file.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the weight initialisation (PyTorch's default scheme).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Batch dimension written into the model.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, value_enum, default_value_t = FormArg::Gemm)]
    pub form: FormArg,
}

pub fn run(a: ModelArgs) -> Result<()> {
    let form = match a.form {
        FormArg::Gemm => Form::Gemm,
        FormArg::Matmul => Form::MatMulAdd,
    };
    let m = match a.arch {
        Arch::Mlp => mixnn_shard::mlp(a.seed, a.batch, form),
        Arch::Lenet5 => mixnn_shard::lenet5(a.seed, a.batch, form),
    };
    std::fs::write(&a.out, mixnn_shard::encode(&m))
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {:?} ({:?} form, batch {}, seed {}) to {}",
        a.arch,
        a.form,
        a.batch,
        a.seed,
        a.out.display()
    );
    Ok(())
}
