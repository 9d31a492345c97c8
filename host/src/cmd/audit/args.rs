//! The command line of `mixnn audit`: what the adversary is given and how
//! it attacks.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use mixnn_audit::{InverseNetConfig, RmleConfig, SplitAt};
use serde::Serialize;

use super::defence;

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The model (ONNX) whose cut is audited.
    #[arg(long)]
    pub model: PathBuf,
    /// Trained weights for `--model` (e.g. `train --export`); without it
    /// the model's own initializers are used.
    #[arg(long)]
    pub trained: Option<PathBuf>,
    /// Where the model is cut: a shard count K of the automatic plan (the
    /// adversary holds shard K+1) or a node name (`conv1`, `relu2`, or the
    /// full `/conv1/Conv`).
    /// Required unless `--defence keep-first:N` places the cut.
    #[arg(long)]
    pub split: Option<SplitAt>,
    /// MNIST-format data directory (train and t10k IDX files).
    #[arg(long)]
    pub data: PathBuf,
    /// Attacks to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Attack::InverseNet, Attack::Rmle])]
    pub attack: Vec<Attack>,
    /// The inverse network's auxiliary data: the training set (`same-set`),
    /// the second half of the test set, disjoint from the attacked images
    /// (`same-dist`), uniform noise images on [0, 1] (`random`), or He et
    /// al.'s noise (`gaussian`: standard normal in their [-1, 1]-normalised
    /// input space, i.e. pixels 0.5 + 0.5·N(0, 1), not clipped).
    #[arg(long, value_enum, default_value_t = Aux::SameSet)]
    pub aux: Aux,
    /// Auxiliary images the attacker queries (at most what the set holds).
    #[arg(long, default_value_t = 60_000)]
    pub aux_count: usize,
    /// Test images attacked (the first N of the test set; at most 5000).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Which test images are attacked: the first `--count` (`first`), or
    /// the first image of each class, ten in all, as He et al.'s code
    /// picks them (`per-class`; `--count` is then ignored).
    #[arg(long, value_enum, default_value_t = Images::First)]
    pub images: Images,
    /// SSIM's data range: 1, the images' range (`one`), or each
    /// reconstruction's own max − min after clipping to [0, 1]
    /// (`reconstruction`), as He et al.'s code scores; a constant
    /// reconstruction, which has no range, is scored with 1. PSNR always
    /// uses 1.
    #[arg(long, value_enum, default_value_t = SsimRange::One)]
    pub ssim_range: SsimRange,
    /// Inverse network: passes over the auxiliary data.
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Inverse network: mini-batch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Inverse network: the optimizer's step size (Adam, AMSGrad or SGD,
    /// `--decoder-optimizer`).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f32,
    /// Inverse network: trainings at most. A decoder that collapsed (dead
    /// ReLUs: the same, usually black, image for every input, or no better
    /// than the mean image) is retrained with the next seed, its last bias
    /// started at the mean pixel value and half the step size; every try
    /// is reported.
    #[arg(long, default_value_t = InverseNetConfig::default().tries)]
    pub tries: usize,
    /// Inverse network: its layers. `mirror` mirrors every layer before
    /// the cut (a pool becomes a learned unpooling); `compact` is the shape
    /// of He et al.'s released MNIST decoders: only the convolutions are
    /// mirrored, each pool folded into the stride of the transposed
    /// convolution that mirrors the convolution before it (docs/audit.md).
    #[arg(long, value_enum, default_value_t = DecoderArch::Mirror)]
    pub decoder: DecoderArch,
    /// Inverse network: what follows its last layer: a ReLU (background at
    /// exactly 0, the stronger attacker) or nothing (`linear`, He et al.'s
    /// MNIST decoders; clamped to [0, 1] only when scored). Default: `relu`
    /// for `--decoder mirror`, `linear` for `compact`.
    #[arg(long, value_enum)]
    pub decoder_output: Option<DecoderOut>,
    /// Inverse network: its optimizer, Adam, Adam with AMSGrad (He et
    /// al.'s released code) or SGD with momentum 0.9 (their paper's
    /// text); `--lr` is its step.
    #[arg(long, value_enum, default_value_t = DecoderOptimizer::Adam)]
    pub decoder_optimizer: DecoderOptimizer,
    /// Inverse network: halve the step size after every N epochs (0:
    /// never; He et al.'s code: 10 or 20).
    #[arg(long, default_value_t = 0)]
    pub lr_halve_every: usize,
    /// Inverse network: Adam's epsilon. He et al.'s released code trains
    /// its decoders with 1e-3, which turns Adam into a damped SGD wherever
    /// gradients are small.
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f32,
    /// rMLE: descent steps.
    #[arg(long, default_value_t = RmleConfig::default().steps)]
    pub rmle_steps: usize,
    /// rMLE: weight λ of the total-variation prior.
    #[arg(long, default_value_t = RmleConfig::default().lambda)]
    pub rmle_lambda: f32,
    /// rMLE: Adam step size on the pixels.
    #[arg(long, default_value_t = RmleConfig::default().learning_rate)]
    pub rmle_lr: f32,
    /// rMLE: Adam's epsilon. He et al.'s code: 1e-3 on their [-1, 1]
    /// pixels, which is 2e-3 on the audit's [0, 1] pixels.
    #[arg(long, default_value_t = RmleConfig::default().adam_epsilon)]
    pub rmle_adam_eps: f32,
    /// rMLE: let x leave [0, 1] during the descent and clip only the final
    /// image, as He et al.'s code does (default: clamp after every step).
    #[arg(long)]
    pub rmle_clip_at_end: bool,
    /// rMLE: Adam with AMSGrad, as He et al.'s code.
    #[arg(long)]
    pub rmle_amsgrad: bool,
    /// The defence in place: `none`, `keep-first:N` (the designer keeps
    /// the first N shards, so the cut moves after them), or noise on Z_K in
    /// training and inference: `gaussian:σ`, `laplace:b`, `dropout:p`
    /// (also at inference) or `dropout-train:p` (training only). Without
    /// `--trained` the audit first trains `--model` with the defence in
    /// place (`--train-epochs`).
    #[arg(long, default_value = "none")]
    pub defence: defence::Defence,
    /// Audit each of these defence levels (comma-separated, e.g.
    /// `none,gaussian:0.5,gaussian:1`) and draw the trade-off figure
    /// (`tradeoff.png` in `--out`): test accuracy against SSIM, one point
    /// per level and attack. Replaces `--defence`.
    #[arg(long, value_delimiter = ',', conflicts_with = "defence")]
    pub sweep: Vec<defence::Defence>,
    /// Training epochs when the audit trains the model (no `--trained`;
    /// Adam 1e-3, batch 64, the seed below); 0 audits `--model`'s initial
    /// weights as they are.
    #[arg(long, default_value_t = 2)]
    pub train_epochs: usize,
    /// The accuracy line of the trade-off figure, in percent.
    #[arg(long, default_value_t = 95.0)]
    pub accuracy_target: f64,
    /// Seeds the decoder, the epoch order and the random auxiliary images.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write one PNG grid per attack here (`<attack>.png`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    InverseNet,
    Rmle,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderOut {
    Relu,
    Linear,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderOptimizer {
    Adam,
    Sgd,
    Amsgrad,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Images {
    First,
    PerClass,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SsimRange {
    One,
    Reconstruction,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderArch {
    Mirror,
    Compact,
}

impl AuditArgs {
    /// The inverse network's layers and ending, defaults resolved.
    pub fn decoder_spec(&self) -> (mixnn_audit::DecoderShape, mixnn_audit::DecoderOutput) {
        let shape = match self.decoder {
            DecoderArch::Mirror => mixnn_audit::DecoderShape::Mirror,
            DecoderArch::Compact => mixnn_audit::DecoderShape::Compact,
        };
        let out = self.decoder_output.unwrap_or(match self.decoder {
            DecoderArch::Mirror => DecoderOut::Relu,
            DecoderArch::Compact => DecoderOut::Linear,
        });
        let output = match out {
            DecoderOut::Relu => mixnn_audit::DecoderOutput::Relu,
            DecoderOut::Linear => mixnn_audit::DecoderOutput::Linear,
        };
        (shape, output)
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aux {
    SameSet,
    SameDist,
    Random,
    Gaussian,
}
