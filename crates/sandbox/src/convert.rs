//! The one place where the WIT records of `wit/layer.wit` meet the shared
//! types of `mixnn-types`: the sandbox's API speaks [`mixnn_types`] so the
//! designer and the node never convert field by field.
//!
//! Tensors going in are passed on as they are (only the dimensions change
//! width): the guest checks them and answers a bad one with an error the
//! caller can read. Tensors coming out are checked here, so a guest that
//! returns data that does not fill its shape fails its call instead of
//! handing the caller a malformed tensor.

use mixnn_types::{
    LossKind, LossOutput, NamedTensor, OptimizerKind, Tensor, TensorError, TrainConfig, dims_to_u32,
};

use crate::bindings::mixnn::layer::types as wit;

impl From<OptimizerKind> for wit::OptimizerKind {
    fn from(k: OptimizerKind) -> Self {
        match k {
            OptimizerKind::Sgd => wit::OptimizerKind::Sgd,
            OptimizerKind::Adam => wit::OptimizerKind::Adam,
        }
    }
}

impl From<LossKind> for wit::LossKind {
    fn from(k: LossKind) -> Self {
        match k {
            LossKind::None => wit::LossKind::None,
            LossKind::Nll => wit::LossKind::Nll,
            LossKind::SoftmaxCrossEntropy => wit::LossKind::SoftmaxCrossEntropy,
        }
    }
}

impl From<&TrainConfig> for wit::TrainConfig {
    fn from(c: &TrainConfig) -> Self {
        wit::TrainConfig {
            optimizer: c.optimizer.into(),
            learning_rate: c.learning_rate,
            momentum: c.momentum,
            weight_decay: c.weight_decay,
            loss: c.loss.into(),
            beta1: c.beta1,
            beta2: c.beta2,
            epsilon: c.epsilon,
            seed: c.seed,
            need_input_grad: c.need_input_grad,
            host_kernels: c.host_kernels,
        }
    }
}

/// A tensor for the guest (a copy: the WIT record owns its data).
pub(crate) fn tensor_in(t: &Tensor) -> Result<wit::Tensor, TensorError> {
    Ok(wit::Tensor {
        shape: dims_to_u32(&t.shape)?,
        data: t.data.clone(),
    })
}

/// A tensor from the guest, checked.
pub(crate) fn tensor_out(t: wit::Tensor) -> Result<Tensor, TensorError> {
    Tensor::from_u32_dims(&t.shape, t.data)
}

pub(crate) fn loss_out(o: wit::LossOutput) -> Result<LossOutput, TensorError> {
    Ok(LossOutput {
        loss: o.loss,
        grad: tensor_out(o.grad)?,
    })
}

pub(crate) fn named_in(p: &NamedTensor) -> Result<wit::NamedTensor, TensorError> {
    let t = tensor_in(&p.tensor)?;
    Ok(wit::NamedTensor {
        name: p.name.clone(),
        shape: t.shape,
        data: t.data,
    })
}

pub(crate) fn named_out(p: wit::NamedTensor) -> Result<NamedTensor, TensorError> {
    Ok(NamedTensor {
        name: p.name,
        tensor: Tensor::from_u32_dims(&p.shape, p.data)?,
    })
}
