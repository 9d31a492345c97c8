//! Readers over tract-onnx's protobuf types: tensor payloads, declared
//! types, attributes.
//!
//! Models come from users and from the network, so nothing here panics or
//! allocates in proportion to a declared dim before checking it.

use crate::pb;
use crate::pb::tensor_proto::DataType;
use crate::pb::tensor_shape_proto::dimension;

/// Why a tensor's payload cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The values live in a file next to the model; a shard must carry them.
    #[error("tensor `{0}` uses external data, which is not supported")]
    ExternalData(String),
    /// A declared dim is negative.
    #[error("tensor `{name}` has negative dim {dim}")]
    NegativeDim {
        /// Tensor name.
        name: String,
        /// The dim.
        dim: i64,
    },
    /// The product of the dims does not fit a `usize`.
    #[error("tensor `{0}`: element count overflows")]
    Overflow(String),
    /// Like [`TensorError::Overflow`], found before reading any value.
    #[error("tensor `{name}`: element count of {dims:?} overflows")]
    DimsOverflow {
        /// Tensor name.
        name: String,
        /// Its dims.
        dims: Vec<usize>,
    },
    /// The payload holds another number of values than the dims say.
    #[error("tensor `{name}`: {got} values for shape {dims:?}")]
    Length {
        /// Tensor name.
        name: String,
        /// Values found.
        got: usize,
        /// Declared dims.
        dims: Vec<usize>,
    },
    /// `raw_data` is not a whole number of elements.
    #[error("tensor `{name}`: raw_data length {len} is not a multiple of {size}")]
    RawLength {
        /// Tensor name.
        name: String,
        /// Length of `raw_data` in bytes.
        len: usize,
        /// Element size in bytes.
        size: usize,
    },
    /// The tensor is not of the kind the reader reads.
    #[error("tensor `{name}`: expected {expected} tensor, got data type {data_type}")]
    WrongType {
        /// Tensor name.
        name: String,
        /// "a float" or "an integer".
        expected: &'static str,
        /// The ONNX data type code found.
        data_type: i32,
    },
    /// A data type without a fixed element size (strings, 4-bit types...).
    #[error("tensor `{name}`: unsupported data type {data_type}")]
    UnsupportedType {
        /// Tensor name.
        name: String,
        /// The ONNX data type code.
        data_type: i32,
    },
}

/// Whether an ONNX data type code is a floating-point type. Initializers of
/// these types are the trainable parameters (integer ones are shapes, axes,
/// indices).
pub fn is_float_type(code: i32) -> bool {
    code == DataType::Float as i32
        || code == DataType::Double as i32
        || code == DataType::Float16 as i32
        || code == DataType::Bfloat16 as i32
}

/// Size in bytes of one element of an ONNX data type, or `None` for types we
/// do not accept in tensors (strings, 4-bit types...).
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

/// Number of elements of a shape, `None` on overflow (absurd dims from a
/// hostile model must not wrap around).
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Dims of a tensor proto as `usize`, rejecting negative dims.
pub fn dims_of(t: &pb::TensorProto) -> Result<Vec<usize>, TensorError> {
    t.dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| TensorError::NegativeDim {
                name: t.name.clone(),
                dim: d,
            })
        })
        .collect()
}

fn no_external(t: &pb::TensorProto) -> Result<(), TensorError> {
    if t.external_data.is_empty() {
        Ok(())
    } else {
        Err(TensorError::ExternalData(t.name.clone()))
    }
}

fn check_len(t: &pb::TensorProto, got: usize) -> Result<(), TensorError> {
    let dims = dims_of(t)?;
    let want = numel(&dims).ok_or_else(|| TensorError::Overflow(t.name.clone()))?;
    count_matches(t, got, want, dims)
}

/// `got` values where the dims want `want`.
fn count_matches(
    t: &pb::TensorProto,
    got: usize,
    want: usize,
    dims: Vec<usize>,
) -> Result<(), TensorError> {
    if got == want {
        Ok(())
    } else {
        Err(TensorError::Length {
            name: t.name.clone(),
            got,
            dims,
        })
    }
}

fn raw_len_check(t: &pb::TensorProto, size: usize) -> Result<(), TensorError> {
    if t.raw_data.len().is_multiple_of(size) {
        Ok(())
    } else {
        Err(TensorError::RawLength {
            name: t.name.clone(),
            len: t.raw_data.len(),
            size,
        })
    }
}

fn raw_chunks<const N: usize>(t: &pb::TensorProto) -> Result<Vec<[u8; N]>, TensorError> {
    raw_len_check(t, N)?;
    Ok(t.raw_data
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
        .collect())
}

/// One way a tensor may hold its values: the data type, its typed field,
/// and the decoding of one little-endian `N`-byte element of `raw_data`.
type Encoding<'a, T, const N: usize> = (DataType, &'a [T], fn([u8; N]) -> T);

fn decode<T: Copy, const N: usize>(
    t: &pb::TensorProto,
    (_, field, from_le): Encoding<'_, T, N>,
) -> Result<Vec<T>, TensorError> {
    if t.raw_data.is_empty() {
        Ok(field.to_vec())
    } else {
        Ok(raw_chunks::<N>(t)?.into_iter().map(from_le).collect())
    }
}

/// Values of a tensor of one of two data types, `wide` (8-byte) or
/// `narrow` (4-byte, widened exactly), whatever field holds them.
fn read_values<T: Copy, S: Copy + Into<T>>(
    t: &pb::TensorProto,
    expected: &'static str,
    wide: Encoding<'_, T, 8>,
    narrow: Encoding<'_, S, 4>,
) -> Result<Vec<T>, TensorError> {
    no_external(t)?;
    let v: Vec<T> = if t.data_type == wide.0 as i32 {
        decode(t, wide)?
    } else if t.data_type == narrow.0 as i32 {
        decode(t, narrow)?.into_iter().map(Into::into).collect()
    } else {
        return Err(TensorError::WrongType {
            name: t.name.clone(),
            expected,
            data_type: t.data_type,
        });
    };
    check_len(t, v.len())?;
    Ok(v)
}

/// Values of a float tensor (FLOAT or DOUBLE) as f64, whatever field holds
/// them. External data is rejected: a shard must carry its weights.
pub fn tensor_f64(t: &pb::TensorProto) -> Result<Vec<f64>, TensorError> {
    let double: Encoding<f64, 8> = (DataType::Double, &t.double_data, f64::from_le_bytes);
    let float: Encoding<f32, 4> = (DataType::Float, &t.float_data, f32::from_le_bytes);
    read_values(t, "a float", double, float)
}

/// Values of an integer tensor (INT64 or INT32) as i64.
pub fn tensor_i64(t: &pb::TensorProto) -> Result<Vec<i64>, TensorError> {
    let int64: Encoding<i64, 8> = (DataType::Int64, &t.int64_data, i64::from_le_bytes);
    let int32: Encoding<i32, 4> = (DataType::Int32, &t.int32_data, i32::from_le_bytes);
    read_values(t, "an integer", int64, int32)
}

/// Checks that a tensor's payload matches its dims, without allocating
/// anything proportional to the dims (a hostile model may declare absurd ones).
pub fn validate_tensor(t: &pb::TensorProto) -> Result<(), TensorError> {
    no_external(t)?;
    let dims = dims_of(t)?;
    let Some(want) = numel(&dims) else {
        return Err(TensorError::DimsOverflow {
            name: t.name.clone(),
            dims,
        });
    };
    let size = elem_size(t.data_type).ok_or_else(|| TensorError::UnsupportedType {
        name: t.name.clone(),
        data_type: t.data_type,
    })?;
    let got = if !t.raw_data.is_empty() {
        raw_len_check(t, size)?;
        t.raw_data.len() / size
    } else {
        t.float_data.len()
            + t.double_data.len()
            + t.int32_data.len()
            + t.int64_data.len()
            + t.uint64_data.len()
    };
    count_matches(t, got, want, dims)
}

/// Looks an attribute up by name.
pub fn find_attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// Element type and (possibly partial) shape declared by a value info.
/// Symbolic or missing dims come back as `None`.
pub fn declared_type(vi: &pb::ValueInfoProto) -> Option<(i32, Option<Vec<Option<usize>>>)> {
    let pb::type_proto::Value::TensorType(t) = vi.r#type.as_ref()?.value.as_ref()?;
    let shape = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(dimension::Value::DimValue(v)) => usize::try_from(v).ok(),
                _ => None,
            })
            .collect()
    });
    Some((t.elem_type, shape))
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
