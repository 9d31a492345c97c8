//! One trainable layer of a mixnn cascade.
//!
//! This crate is the whole of a layer's behaviour: it loads a shard (a
//! standalone ONNX model), asks `mixnn-grad` for its forward and backward
//! graphs, compiles them with tract once per batch size, runs them, and keeps
//! the optimizer state. It is compiled twice from the same source: natively
//! (the designer's `--engine native`, the reference for accuracy) and into
//! the standard WebAssembly guest (`guest-layers/standard`), which is a thin
//! adapter over [`Layer`]. Keeping one implementation is what makes the
//! native and sandboxed runs comparable, and the sandboxed runs bit-identical
//! to each other.

mod config;
mod guest_ops;
mod host_conv;
pub mod host_kernels;
mod layer;
mod optimizer;
mod plans;
mod rng;

pub use config::{LossKind, OptimizerKind, TrainConfig};
pub use layer::{Layer, LayerInfo, LossOutput, MAX_BATCH, declared_input_shape};

/// A dense row-major f32 tensor, the unit every layer call exchanges.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor, checking that the data fills the shape exactly.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, LayerError> {
        let want = element_count(&shape)?;
        if want != data.len() {
            return Err(LayerError::BadTensor(format!(
                "shape {shape:?} needs {want} values, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }
}

/// A named parameter tensor (export, checkpoints).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

/// Largest tensor a layer accepts or declares, in elements (1 GiB of f32).
/// Shards come from users and packets from the network: a declared shape of
/// 10^12 elements must be refused up front, not discovered by the allocator.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// Element count of `shape`, refusing overflow and anything above [`MAX_ELEMENTS`].
pub fn element_count(shape: &[usize]) -> Result<usize, LayerError> {
    let mut n: usize = 1;
    for &d in shape {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| {
                LayerError::BadTensor(format!(
                    "shape {shape:?} exceeds the limit of {MAX_ELEMENTS} elements"
                ))
            })?;
    }
    Ok(n)
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("invalid shard: {0}")]
    Shard(String),
    #[error(transparent)]
    Grad(#[from] mixnn_grad::GradError),
    #[error("tract: {0}")]
    Tract(String),
    #[error("bad tensor: {0}")]
    BadTensor(String),
    #[error("call out of order: {0}")]
    Order(String),
    #[error("parameters: {0}")]
    Params(String),
}

impl LayerError {
    pub(crate) fn tract(context: &str, e: impl std::fmt::Display) -> Self {
        LayerError::Tract(format!("{context}: {e:#}"))
    }
}
