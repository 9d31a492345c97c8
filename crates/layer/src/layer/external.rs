//! For callers that run their own optimizer or schedule (the audit trains
//! its decoders with He et al.'s AMSGrad and step halving): the gradients
//! of the last backward, and the step size. Training through the cascade
//! never uses these; `step` stays the one update rule replicas share.

use super::Layer;
use crate::{LayerError, NamedTensor, Tensor};

impl Layer {
    /// The gradient of every parameter from the last backward, named and
    /// in load order (that of `export_params`). Taking them clears them,
    /// so a `step` fails until the next backward.
    pub fn take_grads(&mut self) -> Result<Vec<NamedTensor>, LayerError> {
        if self.params.iter().any(|p| p.grad.is_none()) {
            return Err(LayerError::Order(
                "take_grads without a preceding backward".into(),
            ));
        }
        Ok(self
            .params
            .iter_mut()
            .map(|p| NamedTensor {
                name: p.name.clone(),
                tensor: Tensor {
                    shape: p.shape.clone(),
                    data: p.grad.take().unwrap_or_default(),
                },
            })
            .collect())
    }

    /// Changes the optimizer's step size from the next `step` on (a
    /// schedule); it must be finite and positive, as at load.
    pub fn set_learning_rate(&mut self, lr: f32) -> Result<(), LayerError> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(LayerError::Params(format!(
                "learning rate {lr} is not a positive number"
            )));
        }
        self.cfg.learning_rate = lr;
        Ok(())
    }
}
