//! Training configuration, shared by every engine so the native and the
//! sandboxed layer are configured identically, and carried as it is in the
//! job protocol (serde: the optimizer as `sgd`/`adam`, the loss as
//! `none`/`nll`/`softmax-ce`).

use serde::{Deserialize, Serialize};

/// How a layer updates its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum and weight decay.
    Sgd,
    /// Adam (betas and epsilon of [`TrainConfig`]).
    Adam,
}

impl OptimizerKind {
    /// The name reports and the wire use.
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
    }
}

/// Loss computed by the last layer of a cascade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LossKind {
    /// Not the last layer: no loss.
    #[serde(rename = "none")]
    None,
    /// Negative log-likelihood over log-probabilities (model ends in LogSoftmax).
    #[serde(rename = "nll")]
    Nll,
    /// Softmax cross-entropy over raw logits.
    #[serde(rename = "softmax-ce")]
    SoftmaxCrossEntropy,
}

/// How one layer trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// SGD or Adam.
    pub optimizer: OptimizerKind,
    /// Step size of either optimizer.
    pub learning_rate: f32,
    /// SGD momentum (ignored by Adam).
    pub momentum: f32,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f32,
    /// Adam's first moment decay (ignored by SGD).
    pub beta1: f32,
    /// Adam's second moment decay (ignored by SGD).
    pub beta2: f32,
    /// Adam's epsilon (ignored by SGD).
    pub epsilon: f32,
    /// Seeds parameters the shard declares without values, and dropout masks.
    pub seed: u64,
    /// The loss, on the last layer of the cascade only.
    pub loss: LossKind,
    /// False for the first layer: nobody needs the gradient of the raw
    /// input, so the layer skips computing it.
    pub need_input_grad: bool,
    /// Route products, convolutions and the slow row ops through the
    /// installed product kernel (see `mixnn_layer::host_kernels`). The
    /// standard guest always does: its host runs the products natively
    /// (host-kernel mode) or in a wasm kernel (pure-wasm mode), as the job's
    /// `host_kernels` asks. Without an installed kernel (the native engine)
    /// it changes nothing.
    pub host_kernels: bool,
}

impl Default for TrainConfig {
    /// The MixNN paper's recipe: SGD, lr 0.01, momentum 0.9.
    fn default() -> Self {
        TrainConfig {
            optimizer: OptimizerKind::Sgd,
            learning_rate: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            seed: 0,
            loss: LossKind::None,
            need_input_grad: true,
            host_kernels: true,
        }
    }
}

/// A setting that would silently train nothing or diverge at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `learning_rate` is not finite and > 0.
    #[error("train config: learning rate must be a positive number")]
    LearningRate,
    /// `momentum` is outside `[0, 1)`.
    #[error("train config: momentum must be in [0, 1)")]
    Momentum,
    /// `weight_decay` is negative or not finite.
    #[error("train config: weight decay must be ≥ 0")]
    WeightDecay,
    /// `beta1` or `beta2` is outside `[0, 1)`.
    #[error("train config: Adam betas must be in [0, 1)")]
    Betas,
    /// `epsilon` is not finite and > 0.
    #[error("train config: Adam epsilon must be positive")]
    Epsilon,
}

impl TrainConfig {
    /// Rejects settings that would silently train nothing or diverge at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(ConfigError::LearningRate);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(ConfigError::Momentum);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(ConfigError::WeightDecay);
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err(ConfigError::Betas);
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(ConfigError::Epsilon);
        }
        Ok(())
    }
}
