//! Training configuration, shared by every engine so the native and the
//! sandboxed layer are configured identically.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

/// Loss computed by the last layer of a cascade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    None,
    /// Negative log-likelihood over log-probabilities (model ends in LogSoftmax).
    Nll,
    /// Softmax cross-entropy over raw logits.
    SoftmaxCrossEntropy,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub optimizer: OptimizerKind,
    pub learning_rate: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
    pub seed: u64,
    pub loss: LossKind,
    pub need_input_grad: bool,
    /// Route products, convolutions and the slow row ops through the
    /// installed product kernel (see `host_kernels`). The standard guest
    /// always does: its host runs the products natively (host-kernel mode)
    /// or in a wasm kernel (pure-wasm mode), as the job's `host-kernels`
    /// asks. Without an installed kernel (the native engine) it changes
    /// nothing.
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

impl TrainConfig {
    /// Rejects settings that would silently train nothing or diverge at once.
    pub fn validate(&self) -> Result<(), crate::LayerError> {
        let bad = |what: &str| Err(crate::LayerError::Params(format!("train config: {what}")));
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning rate must be a positive number");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum must be in [0, 1)");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay must be ≥ 0");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("Adam betas must be in [0, 1)");
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad("Adam epsilon must be positive");
        }
        Ok(())
    }
}
