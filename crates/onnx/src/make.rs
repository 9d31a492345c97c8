//! Constructors for tract-onnx's protobuf types: tensors, attributes, value
//! infos and nodes. Every attribute sets its `type` field, which tract checks.

use crate::pb;
use crate::pb::attribute_proto::AttributeType;
use crate::pb::tensor_proto::DataType;
use crate::pb::tensor_shape_proto::{Dimension, dimension};

/// Float type of a graph. Every float constant a builder emits follows it,
/// so a model checked in f64 stays in f64 end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    /// ONNX FLOAT (production type).
    F32,
    /// ONNX DOUBLE (used by the finite-difference tests).
    F64,
}

impl FloatType {
    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx(self) -> i32 {
        match self {
            FloatType::F32 => DataType::Float as i32,
            FloatType::F64 => DataType::Double as i32,
        }
    }

    /// The float type of an ONNX data type code, if it is one we support.
    pub fn from_onnx(code: i32) -> Option<FloatType> {
        if code == DataType::Float as i32 {
            Some(FloatType::F32)
        } else if code == DataType::Double as i32 {
            Some(FloatType::F64)
        } else {
            None
        }
    }
}

fn dims_i64(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

/// A float tensor of type `ty` holding `values` (narrowed to f32 when `ty`
/// is F32), in `float_data` / `double_data`.
pub fn float_tensor(name: &str, ty: FloatType, values: &[f64], shape: &[usize]) -> pb::TensorProto {
    let mut t = pb::TensorProto {
        name: name.to_string(),
        dims: dims_i64(shape),
        data_type: ty.onnx(),
        ..Default::default()
    };
    match ty {
        FloatType::F32 => t.float_data = values.iter().map(|&x| x as f32).collect(),
        FloatType::F64 => t.double_data = values.to_vec(),
    }
    t
}

/// An f32 tensor stored as little-endian `raw_data`, the encoding PyTorch's
/// exporter uses (the shard builders write every weight this way).
pub fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> pb::TensorProto {
    let mut raw = Vec::with_capacity(values.len() * 4);
    for v in values {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    pb::TensorProto {
        name: name.to_string(),
        dims: dims_i64(dims),
        data_type: DataType::Float as i32,
        raw_data: raw,
        ..Default::default()
    }
}

/// An INT64 tensor.
pub fn i64_tensor(name: &str, values: &[i64], shape: &[usize]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims_i64(shape),
        data_type: DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// A `ValueInfoProto` for a tensor of element type `elem` and static `shape`.
pub fn value_info(name: &str, elem: i32, shape: &[usize]) -> pb::ValueInfoProto {
    let dims = shape
        .iter()
        .map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    typed_info(name, elem, Some(pb::TensorShapeProto { dim: dims }))
}

/// A `ValueInfoProto` with an element type and no shape at all, for outputs
/// whose shape is left to inference.
pub fn value_info_unshaped(name: &str, elem: i32) -> pb::ValueInfoProto {
    typed_info(name, elem, None)
}

fn typed_info(name: &str, elem: i32, shape: Option<pb::TensorShapeProto>) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem,
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attr(name: &str, ty: AttributeType) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: ty as i32,
        ..Default::default()
    }
}

/// INT attribute.
pub fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        i: v,
        ..attr(name, AttributeType::Int)
    }
}

/// INTS attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        ints: v.to_vec(),
        ..attr(name, AttributeType::Ints)
    }
}

/// FLOAT attribute.
pub fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        f: v,
        ..attr(name, AttributeType::Float)
    }
}

/// STRING attribute.
pub fn attr_string(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        s: v.as_bytes().to_vec(),
        ..attr(name, AttributeType::String)
    }
}

/// TENSOR attribute (the `value` of a Constant node).
pub fn attr_tensor(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        t: Some(t),
        ..attr(name, AttributeType::Tensor)
    }
}

/// A node in the default (ai.onnx) domain.
pub fn node(
    name: &str,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        name: name.to_string(),
        op_type: op.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}
