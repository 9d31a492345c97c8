//! ONNX helpers shared by mixnn-grad and mixnn-shard.
//!
//! Both crates read and write ONNX through tract-onnx's protobuf types (no
//! protoc, no second protobuf crate) and both need the static shapes of a
//! model's tensors from tract's own analysis. Before this crate each had its
//! own copy of the constructors (`node`, `attr_*`, `value_info`, tensors),
//! the readers and the shape inference; one copy keeps the emitted protos
//! and the error texts the same for both.
//!
//! The crate is pure Rust with no files, clock or threads: mixnn-grad runs
//! inside the WebAssembly guest (wasm32-wasip2).

pub use tract_onnx::pb;

mod infer;
mod make;
mod read;

pub use infer::{Analysed, FactError, InferError, TensorFact, analyse, onnx_type};
pub use make::{
    FloatType, attr_float, attr_int, attr_ints, attr_string, attr_tensor, f32_tensor, float_tensor,
    i64_tensor, node, value_info, value_info_unshaped,
};
pub use read::{
    TensorError, declared_type, dims_of, elem_size, find_attr, is_float_type, numel, tensor_f64,
    tensor_i64, type_dims, type_elem, validate_tensor,
};
