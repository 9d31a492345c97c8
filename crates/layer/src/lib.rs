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

mod guest_ops;
mod host_conv;
pub mod host_kernels;
mod layer;
mod optimizer;
mod plans;
mod rng;
mod state;

pub use layer::{Layer, LayerInfo, MAX_BATCH, declared_input_shape};
/// The boundary types live in `mixnn-types` (one definition for the layer,
/// the guest, the sandbox and the wire); re-exported so the layer's API
/// stays whole.
pub use mixnn_types::{
    ConfigError, LossKind, LossOutput, MAX_ELEMENTS, NamedTensor, OptimizerKind, Tensor,
    TensorError, TrainConfig, element_count,
};
pub use state::{STATE_MAGIC, STATE_VERSION, max_state_len};

/// Why a [`Layer`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The shard is not a usable ONNX model (unreadable, no graph or data
    /// input, bad declared input shape, an initializer of the wrong size,
    /// parameters that differ between batch sizes).
    #[error("invalid shard: {0}")]
    Shard(String),
    /// `mixnn-grad` could not build the forward, backward or inference graph.
    #[error(transparent)]
    Grad(#[from] mixnn_grad::GradError),
    /// tract failed to load, type, optimise or run a plan; the message names
    /// the stage.
    #[error("tract: {0}")]
    Tract(String),
    /// An input, output, gradient or label set does not fit the layer (wrong
    /// shape, batch outside 1..=[`MAX_BATCH`], data not filling its shape).
    #[error("bad tensor: {0}")]
    BadTensor(String),
    /// A tensor's shape is malformed or too large (see [`TensorError`]).
    #[error("bad tensor: {0}")]
    Tensor(#[from] TensorError),
    /// A call the state machine does not allow now: `backward` without a
    /// `forward`, `step` without a `backward`, `loss` on a layer without one.
    #[error("call out of order: {0}")]
    Order(String),
    /// Imported parameters do not match the layer's in count, name or shape.
    #[error("parameters: {0}")]
    Params(String),
    /// A training state to import is malformed (truncated, corrupted, an
    /// unknown version) or belongs to another layer (names, shapes,
    /// optimizer or dropout seed differ); or one cannot be exported now (a
    /// forward or a gradient is pending: a state is taken between steps).
    #[error("layer state: {0}")]
    State(String),
    /// The training configuration is invalid (see [`ConfigError`]).
    #[error("parameters: {0}")]
    Config(#[from] ConfigError),
}

impl LayerError {
    pub(crate) fn tract(context: &str, e: impl std::fmt::Display) -> Self {
        LayerError::Tract(format!("{context}: {e:#}"))
    }
}
