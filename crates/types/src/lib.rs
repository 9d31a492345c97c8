//! The boundary types of mixnn, defined once.
//!
//! A layer's training configuration and the dense tensor cross every
//! boundary of the system: the designer sets the configuration, the job
//! protocol carries it to a node, the sandbox hands it to the guest, and
//! the guest gives it to `mixnn-layer`; tensors take the same road. Each
//! boundary used to have its own copy of these types, converted field by
//! field. Now there is this one, and each boundary converts its own
//! encoding (WIT records, wire tensors) to and from it in one place.
//!
//! A leaf crate (serde and thiserror only) so that everything may depend on
//! it, the wasm32 guest included.

mod config;
mod tensor;

pub use config::{ConfigError, LossKind, OptimizerKind, TrainConfig};
pub use tensor::{
    LossOutput, MAX_ELEMENTS, NamedTensor, Tensor, TensorError, dims_to_u32, element_count,
};
