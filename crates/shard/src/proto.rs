//! Small constructors and readers for tract-onnx's protobuf types.
//!
//! The prost structs have many fields; these helpers keep the model builders
//! and the splitter readable and make sure every tensor we write uses one
//! encoding (little-endian `raw_data`, as PyTorch's exporter does). The
//! generic ones live in mixnn-onnx, shared with mixnn-grad, and are
//! re-exported here.

use crate::pb;
use crate::pb::tensor_proto::DataType;
use crate::{MAX_TENSOR_ELEMENTS, ShardError};

/// The constructors and readers shared with mixnn-grad.
pub use mixnn_onnx::{
    attr_float, attr_int, attr_ints, elem_size, f32_tensor, is_float_type, node, type_dims,
    type_elem, value_info,
};

/// ONNX IR version written into every model we produce (IR 8 = ONNX 1.10+).
pub const IR_VERSION: i64 = 8;
/// Default-domain opset of the models we build.
pub const OPSET: i64 = 13;

/// The opset import list of a model we build.
pub fn opset_imports() -> Vec<pb::OperatorSetIdProto> {
    vec![pb::OperatorSetIdProto {
        domain: String::new(),
        version: OPSET,
    }]
}

/// Element count of declared dims, refusing negative dims and anything over
/// [`MAX_TENSOR_ELEMENTS`]. `what` names the tensor in the error.
pub fn checked_elements(what: &str, dims: &[i64]) -> Result<usize, ShardError> {
    let mut total: u128 = 1;
    for &d in dims {
        if d < 0 {
            return Err(ShardError::Invalid(format!(
                "{what} has a negative dimension {d}"
            )));
        }
        total = total.saturating_mul(d as u128);
    }
    if total > MAX_TENSOR_ELEMENTS as u128 {
        return Err(ShardError::TooLarge {
            what: what.to_string(),
            elements: total,
            cap: MAX_TENSOR_ELEMENTS,
        });
    }
    Ok(total as usize)
}

/// The f32 values of a `Float` tensor, from `raw_data` or `float_data`.
pub fn f32_values(t: &pb::TensorProto) -> Result<Vec<f32>, ShardError> {
    if t.data_type != DataType::Float as i32 {
        return Err(ShardError::Params {
            name: t.name.clone(),
            reason: format!("is not a float32 tensor (ONNX data type {})", t.data_type),
        });
    }
    let n = checked_elements(&format!("initializer '{}'", t.name), &t.dims)?;
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if values.len() != n {
        return Err(ShardError::Invalid(format!(
            "initializer '{}' holds {} values for dims {:?}",
            t.name,
            values.len(),
            t.dims
        )));
    }
    Ok(values)
}
