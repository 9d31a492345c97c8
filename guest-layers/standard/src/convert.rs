//! The one place where the guest's WIT records meet the shared types of
//! `mixnn-types` (which `mixnn-layer` speaks). The host's side of the same
//! boundary is `crates/sandbox/src/convert.rs`.

use mixnn_types::{LossKind, OptimizerKind, Tensor, TrainConfig, dims_to_u32};

use crate::bindings::mixnn::layer::types as wit;

/// The layer's configuration from the host's record. Products,
/// convolutions and the slow row ops go through `kernels` in both modes:
/// the record's `host_kernels` tells the host, not the layer, where they
/// run, so the layer always routes them.
pub fn config(c: wit::TrainConfig) -> TrainConfig {
    TrainConfig {
        learning_rate: c.learning_rate,
        momentum: c.momentum,
        weight_decay: c.weight_decay,
        optimizer: match c.optimizer {
            wit::OptimizerKind::Sgd => OptimizerKind::Sgd,
            wit::OptimizerKind::Adam => OptimizerKind::Adam,
        },
        beta1: c.beta1,
        beta2: c.beta2,
        epsilon: c.epsilon,
        loss: match c.loss {
            wit::LossKind::None => LossKind::None,
            wit::LossKind::Nll => LossKind::Nll,
            wit::LossKind::SoftmaxCrossEntropy => LossKind::SoftmaxCrossEntropy,
        },
        seed: c.seed,
        need_input_grad: c.need_input_grad,
        host_kernels: true,
    }
}

/// A tensor from the host, checked against its shape.
pub fn tensor_in(t: wit::Tensor) -> Result<Tensor, String> {
    Tensor::from_u32_dims(&t.shape, t.data).map_err(|e| format!("bad tensor: {e}"))
}

/// A tensor for the host.
pub fn tensor_out(t: Tensor) -> Result<wit::Tensor, String> {
    let shape = dims_to_u32(&t.shape).map_err(|e| e.to_string())?;
    Ok(wit::Tensor { shape, data: t.data })
}

/// A parameter for the host.
pub fn named_out(p: mixnn_types::NamedTensor) -> Result<wit::NamedTensor, String> {
    let t = tensor_out(p.tensor)?;
    Ok(wit::NamedTensor { name: p.name, shape: t.shape, data: t.data })
}

/// A parameter from the host, checked against its shape.
pub fn named_in(p: wit::NamedTensor) -> Result<mixnn_types::NamedTensor, String> {
    let tensor = tensor_in(wit::Tensor { shape: p.shape, data: p.data })?;
    Ok(mixnn_types::NamedTensor { name: p.name, tensor })
}
