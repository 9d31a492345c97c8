//! `mixnn model`: fixture models written by our own code (no Python needed).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use mixnn_shard::{BidentMerge, BidentShape, Form};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Arch {
    /// Flatten, 784-128-64-10 with ReLU, LogSoftmax (the MixNN paper).
    Mlp,
    /// Conv 6@5x5 pad 2, pool, conv 16@5x5, pool, 120, 84, 10, LogSoftmax.
    Lenet5,
    /// He et al.'s MNIST LeNet: conv 8@5x5 (no pad), pool, conv 16@5x5,
    /// pool, 120, 84, 10 (docs/audit.md).
    LenetHe,
    /// The Bident paper's fork-join CNN: two branches on the same input,
    /// merged (--merge), then a dense layer to 10 logits (docs/bident.md).
    Bident,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MergeArg {
    /// Concatenate the two 84-wide branch outputs (168 features).
    Concat,
    /// Element-wise product.
    Mul,
    /// Element-wise maximum.
    Max,
    /// Element-wise average (ONNX Mean).
    Avg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ShapeArg {
    /// Both branches are the full base CNN.
    Symmetric,
    /// The trusted branch has fewer layers (one conv, one dense).
    Asymmetric,
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
    /// bident only: how the two branches meet (default concat).
    #[arg(long, value_enum)]
    pub merge: Option<MergeArg>,
    /// bident only: symmetric or asymmetric branches (default symmetric).
    #[arg(long, value_enum)]
    pub shape: Option<ShapeArg>,
}

pub fn run(a: ModelArgs) -> Result<()> {
    let form = match a.form {
        FormArg::Gemm => Form::Gemm,
        FormArg::Matmul => Form::MatMulAdd,
    };
    if !matches!(a.arch, Arch::Bident) && (a.merge.is_some() || a.shape.is_some()) {
        bail!(
            "--merge and --shape describe a bident model, not {:?}",
            a.arch
        );
    }
    let m = match a.arch {
        Arch::Mlp => mixnn_shard::mlp(a.seed, a.batch, form),
        Arch::Lenet5 => mixnn_shard::lenet5(a.seed, a.batch, form),
        Arch::LenetHe => mixnn_shard::lenet5_he(a.seed, a.batch, form),
        Arch::Bident => {
            if form != Form::Gemm {
                bail!("the bident models are written in the Gemm form only");
            }
            let merge = match a.merge.unwrap_or(MergeArg::Concat) {
                MergeArg::Concat => BidentMerge::Concat,
                MergeArg::Mul => BidentMerge::Mul,
                MergeArg::Max => BidentMerge::Max,
                MergeArg::Avg => BidentMerge::Avg,
            };
            let shape = match a.shape.unwrap_or(ShapeArg::Symmetric) {
                ShapeArg::Symmetric => BidentShape::Symmetric,
                ShapeArg::Asymmetric => BidentShape::Asymmetric,
            };
            println!("bident: {merge:?} merge, {shape:?} branches");
            mixnn_shard::bident(merge, shape, a.seed, a.batch)
        }
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
