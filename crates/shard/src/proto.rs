//! Small constructors and readers for tract-onnx's protobuf types.
//!
//! The prost structs have many fields; these helpers keep the model builders
//! and the splitter readable and make sure every tensor we write uses one
//! encoding (little-endian `raw_data`, as PyTorch's exporter does).

use crate::pb;
use crate::pb::attribute_proto::AttributeType;
use crate::pb::tensor_proto::DataType;
use crate::pb::tensor_shape_proto::{Dimension, dimension};
use crate::{MAX_TENSOR_ELEMENTS, ShardError};

/// ONNX IR version written into every model we produce (IR 8 = ONNX 1.10+).
pub const IR_VERSION: i64 = 8;
/// Default-domain opset of the models we build.
pub const OPSET: i64 = 13;

/// An f32 initializer stored as little-endian `raw_data`.
pub fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> pb::TensorProto {
    let mut raw = Vec::with_capacity(values.len() * 4);
    for v in values {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: raw,
        ..Default::default()
    }
}

/// A float tensor type with fixed dims, for graph inputs and outputs.
pub fn value_info(name: &str, elem_type: i32, dims: &[usize]) -> pb::ValueInfoProto {
    let shape = pb::TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| Dimension {
                denotation: String::new(),
                value: Some(dimension::Value::DimValue(d as i64)),
            })
            .collect(),
    };
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(shape),
            })),
        }),
        doc_string: String::new(),
    }
}

/// An integer attribute.
pub fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

/// A float attribute.
pub fn attr_float(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// An integer-list attribute.
pub fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

/// A node in the default (ai.onnx) domain.
pub fn node(
    name: &str,
    op_type: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        name: name.to_string(),
        op_type: op_type.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

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

/// Size in bytes of one element of an ONNX data type, or `None` for types we
/// do not accept in initializers (strings, 4-bit types...).
pub fn elem_size(data_type: i32) -> Option<usize> {
    let dt = DataType::try_from(data_type).ok()?;
    Some(match dt {
        DataType::Float | DataType::Int32 | DataType::Uint32 => 4,
        DataType::Double | DataType::Int64 | DataType::Uint64 => 8,
        DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16 => 2,
        DataType::Uint8 | DataType::Int8 | DataType::Bool => 1,
        _ => return None,
    })
}

/// True for the floating-point types; initializers of these types are the
/// trainable parameters (integer initializers are shapes, axes, indices).
pub fn is_float_type(data_type: i32) -> bool {
    data_type == DataType::Float as i32
        || data_type == DataType::Double as i32
        || data_type == DataType::Float16 as i32
        || data_type == DataType::Bfloat16 as i32
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

/// Concrete dims of a tensor type, or `None` if any is symbolic or missing.
pub fn type_dims(t: &pb::TypeProto) -> Option<Vec<i64>> {
    let pb::type_proto::Value::TensorType(tt) = t.value.as_ref()?;
    tt.shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match d.value {
            Some(dimension::Value::DimValue(v)) => Some(v),
            _ => None,
        })
        .collect()
}

/// Element type of a value info, if declared.
pub fn type_elem(v: &pb::ValueInfoProto) -> Option<i32> {
    let pb::type_proto::Value::TensorType(tt) = v.r#type.as_ref()?.value.as_ref()?;
    Some(tt.elem_type)
}
