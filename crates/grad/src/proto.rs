//! Small helpers over tract-onnx's protobuf types: reading tensor payloads,
//! building tensors, attributes and value infos.
//!
//! These exist because the builder reads and writes ONNX directly (no protoc,
//! no second protobuf crate) and must never panic on user-supplied models.

use crate::pb;
use crate::pb::attribute_proto::AttributeType;
use crate::pb::tensor_proto::DataType;

/// Float type of a graph. Every float constant the builder emits follows it,
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

/// Whether an ONNX data type code is a floating-point type.
pub(crate) fn is_float_code(code: i32) -> bool {
    code == DataType::Float as i32
        || code == DataType::Double as i32
        || code == DataType::Float16 as i32
        || code == DataType::Bfloat16 as i32
}

/// Number of elements of a shape, `None` on overflow (absurd dims from a
/// hostile model must not wrap around).
pub(crate) fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Dims of a tensor proto as `usize`, rejecting negative dims.
pub(crate) fn dims_of(t: &pb::TensorProto) -> Result<Vec<usize>, String> {
    t.dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| format!("tensor `{}` has negative dim {d}", t.name))
        })
        .collect()
}

fn check_len(t: &pb::TensorProto, got: usize) -> Result<(), String> {
    let dims = dims_of(t)?;
    let want =
        numel(&dims).ok_or_else(|| format!("tensor `{}`: element count overflows", t.name))?;
    if got != want {
        return Err(format!(
            "tensor `{}`: {got} values for shape {dims:?}",
            t.name
        ));
    }
    Ok(())
}

fn raw_chunks<const N: usize>(t: &pb::TensorProto) -> Result<Vec<[u8; N]>, String> {
    if !t.raw_data.len().is_multiple_of(N) {
        return Err(format!(
            "tensor `{}`: raw_data length {} is not a multiple of {N}",
            t.name,
            t.raw_data.len()
        ));
    }
    Ok(t.raw_data
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
        .collect())
}

/// Values of a float tensor (FLOAT or DOUBLE) as f64, whatever field holds
/// them. External data is rejected: a shard must carry its weights.
pub(crate) fn tensor_f64(t: &pb::TensorProto) -> Result<Vec<f64>, String> {
    if !t.external_data.is_empty() {
        return Err(format!(
            "tensor `{}` uses external data, which is not supported",
            t.name
        ));
    }
    let v: Vec<f64> = if t.data_type == DataType::Float as i32 {
        if !t.raw_data.is_empty() {
            raw_chunks::<4>(t)?
                .into_iter()
                .map(|b| f32::from_le_bytes(b) as f64)
                .collect()
        } else {
            t.float_data.iter().map(|&x| x as f64).collect()
        }
    } else if t.data_type == DataType::Double as i32 {
        if !t.raw_data.is_empty() {
            raw_chunks::<8>(t)?
                .into_iter()
                .map(f64::from_le_bytes)
                .collect()
        } else {
            t.double_data.clone()
        }
    } else {
        return Err(format!(
            "tensor `{}`: expected a float tensor, got data type {}",
            t.name, t.data_type
        ));
    };
    check_len(t, v.len())?;
    Ok(v)
}

/// Values of an integer tensor (INT64 or INT32) as i64.
#[allow(dead_code)] // backs `Ctx::const_i64_of`
pub(crate) fn tensor_i64(t: &pb::TensorProto) -> Result<Vec<i64>, String> {
    if !t.external_data.is_empty() {
        return Err(format!(
            "tensor `{}` uses external data, which is not supported",
            t.name
        ));
    }
    let v: Vec<i64> = if t.data_type == DataType::Int64 as i32 {
        if !t.raw_data.is_empty() {
            raw_chunks::<8>(t)?
                .into_iter()
                .map(i64::from_le_bytes)
                .collect()
        } else {
            t.int64_data.clone()
        }
    } else if t.data_type == DataType::Int32 as i32 {
        if !t.raw_data.is_empty() {
            raw_chunks::<4>(t)?
                .into_iter()
                .map(|b| i32::from_le_bytes(b) as i64)
                .collect()
        } else {
            t.int32_data.iter().map(|&x| x as i64).collect()
        }
    } else {
        return Err(format!(
            "tensor `{}`: expected an integer tensor, got data type {}",
            t.name, t.data_type
        ));
    };
    check_len(t, v.len())?;
    Ok(v)
}

fn dims_i64(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

/// A float tensor of type `ty` holding `values` (narrowed to f32 when `ty` is F32).
pub(crate) fn float_tensor(
    name: &str,
    ty: FloatType,
    values: &[f64],
    shape: &[usize],
) -> pb::TensorProto {
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

/// An INT64 tensor.
pub(crate) fn i64_tensor(name: &str, values: &[i64], shape: &[usize]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims_i64(shape),
        data_type: DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// A `ValueInfoProto` for a tensor of element type `elem` and static `shape`.
pub(crate) fn value_info(name: &str, elem: i32, shape: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem,
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Element type and (possibly partial) shape declared by a value info.
/// Symbolic or missing dims come back as `None`.
pub(crate) fn declared_type(vi: &pb::ValueInfoProto) -> Option<(i32, Option<Vec<Option<usize>>>)> {
    use pb::tensor_shape_proto::dimension::Value;
    match vi.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => {
            let shape = t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Value::DimValue(v)) => usize::try_from(v).ok(),
                        _ => None,
                    })
                    .collect()
            });
            Some((t.elem_type, shape))
        }
    }
}

/// Attribute builders: each sets the `type` field, which tract checks.
pub(crate) fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// INTS attribute.
pub(crate) fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// FLOAT attribute.
pub(crate) fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

/// STRING attribute.
pub(crate) fn attr_string(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// TENSOR attribute (the `value` of a Constant node).
pub(crate) fn attr_tensor(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(t),
        ..Default::default()
    }
}

/// Looks an attribute up by name.
pub(crate) fn find_attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// A node.
pub(crate) fn node(
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

/// Checks that a tensor's payload matches its dims, without allocating
/// anything proportional to the dims (a hostile model may declare absurd ones).
pub(crate) fn validate_tensor(t: &pb::TensorProto) -> Result<(), String> {
    if !t.external_data.is_empty() {
        return Err(format!(
            "tensor `{}` uses external data, which is not supported",
            t.name
        ));
    }
    let dims = dims_of(t)?;
    let want = numel(&dims)
        .ok_or_else(|| format!("tensor `{}`: element count of {dims:?} overflows", t.name))?;
    let dt = t.data_type;
    let elem_size = match DataType::try_from(dt) {
        Ok(DataType::Float | DataType::Int32 | DataType::Uint32) => 4,
        Ok(DataType::Double | DataType::Int64 | DataType::Uint64) => 8,
        Ok(DataType::Int8 | DataType::Uint8 | DataType::Bool) => 1,
        Ok(DataType::Int16 | DataType::Uint16 | DataType::Float16 | DataType::Bfloat16) => 2,
        _ => return Err(format!("tensor `{}`: unsupported data type {dt}", t.name)),
    };
    let got = if !t.raw_data.is_empty() {
        if !t.raw_data.len().is_multiple_of(elem_size) {
            return Err(format!(
                "tensor `{}`: raw_data length {} is not a multiple of {elem_size}",
                t.name,
                t.raw_data.len()
            ));
        }
        t.raw_data.len() / elem_size
    } else {
        t.float_data.len()
            + t.double_data.len()
            + t.int32_data.len()
            + t.int64_data.len()
            + t.uint64_data.len()
    };
    if got != want {
        return Err(format!(
            "tensor `{}`: {got} values for shape {dims:?}",
            t.name
        ));
    }
    Ok(())
}
