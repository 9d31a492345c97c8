//! Structural checks run on every model before anything else touches it.
//!
//! Models come from user files and, on nodes, from the network. tract-onnx is
//! an inference engine that trusts its input in places (it indexes by name,
//! has `unimplemented!` for some tensor types, and eagerly evaluates constant
//! subgraphs during analysis), so everything that could make it panic or
//! allocate without bound is refused here first, with an error naming the
//! tensor or node.

use std::collections::{HashMap, HashSet};

use crate::pb;
use crate::pb::tensor_proto::{DataLocation, DataType};
use crate::proto::{checked_elements, elem_size, type_dims};
use crate::{MAX_TENSOR_ELEMENTS, ShardError};

/// Checks that a decoded model is safe to hand to tract and to the splitter.
///
/// Refuses: a missing graph or default-domain opset, external or sparse
/// tensor data, tensors whose data does not match their dims, any declared
/// tensor over [`MAX_TENSOR_ELEMENTS`] elements, names used before they are
/// defined or defined twice, graph outputs nothing produces, and constant
/// shape inputs of ConstantOfShape/Expand/Tile/Range/OneHot that would make
/// shape analysis allocate an oversized tensor.
pub fn validate(model: &pb::ModelProto) -> Result<(), ShardError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| ShardError::Invalid("the model has no graph".into()))?;
    if !model
        .opset_import
        .iter()
        .any(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        return Err(ShardError::Invalid(
            "the model imports no ai.onnx opset (truncated file?)".into(),
        ));
    }
    check_graph(graph, 0)?;
    check_names(graph)?;
    check_const_sizes(graph)
}

/// Bound on nested subgraphs (If/Loop bodies); prost already limits message
/// nesting, this keeps our own recursion explicit.
const MAX_DEPTH: usize = 16;

fn check_graph(graph: &pb::GraphProto, depth: usize) -> Result<(), ShardError> {
    if depth > MAX_DEPTH {
        return Err(ShardError::Invalid(format!(
            "subgraphs nested deeper than {MAX_DEPTH}"
        )));
    }
    if let Some(s) = graph.sparse_initializer.first() {
        let name = s.values.as_ref().map(|v| v.name.as_str()).unwrap_or("");
        return Err(ShardError::Invalid(format!(
            "sparse initializer '{name}' is not supported"
        )));
    }
    for t in &graph.initializer {
        check_tensor(&format!("initializer '{}'", t.name), t)?;
    }
    for (kind, infos) in [
        ("graph input", &graph.input),
        ("graph output", &graph.output),
        ("value_info", &graph.value_info),
    ] {
        for v in infos {
            check_value_info(&format!("{kind} '{}'", v.name), v)?;
        }
    }
    for n in &graph.node {
        for a in &n.attribute {
            let what = format!(
                "attribute '{}' of node '{}' ({})",
                a.name, n.name, n.op_type
            );
            if let Some(t) = &a.t {
                check_tensor(&what, t)?;
            }
            for t in &a.tensors {
                check_tensor(&what, t)?;
            }
            if a.sparse_tensor.is_some() || !a.sparse_tensors.is_empty() {
                return Err(ShardError::Unsupported {
                    node: n.name.clone(),
                    op: n.op_type.clone(),
                    reason: "sparse tensor attributes are not supported".into(),
                });
            }
            if let Some(g) = &a.g {
                check_graph(g, depth + 1)?;
            }
            for g in &a.graphs {
                check_graph(g, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// Declared dims within the cap, data stored inline and matching the dims.
fn check_tensor(what: &str, t: &pb::TensorProto) -> Result<(), ShardError> {
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        return Err(ShardError::Invalid(format!(
            "{what} keeps its data in an external file; save the model with its weights inside"
        )));
    }
    if t.segment.is_some() {
        return Err(ShardError::Invalid(format!(
            "{what} is a segment of a tensor; not supported"
        )));
    }
    let n = checked_elements(what, &t.dims)?;
    let size = elem_size(t.data_type).ok_or_else(|| {
        ShardError::Invalid(format!("{what} has unsupported data type {}", t.data_type))
    })?;
    if !t.raw_data.is_empty() {
        if t.raw_data.len() != n * size {
            return Err(ShardError::Invalid(format!(
                "{what}: raw data holds {} bytes, dims {:?} need {}",
                t.raw_data.len(),
                t.dims,
                n * size
            )));
        }
    } else {
        // Exactly one typed field is meant to be used; exporters disagree on
        // which one for some unsigned types, so count them all.
        let held = t.float_data.len()
            + t.int32_data.len()
            + t.int64_data.len()
            + t.double_data.len()
            + t.uint64_data.len()
            + t.string_data.len();
        if held != n {
            return Err(ShardError::Invalid(format!(
                "{what}: holds {held} values, dims {:?} need {n}",
                t.dims
            )));
        }
    }
    Ok(())
}

/// Declared shapes: no negative dims, and the fixed dims within the cap.
fn check_value_info(what: &str, v: &pb::ValueInfoProto) -> Result<(), ShardError> {
    use crate::pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(tt)) =
        v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Ok(());
    };
    let Some(shape) = &tt.shape else {
        return Ok(());
    };
    let dims: Vec<i64> = shape
        .dim
        .iter()
        .filter_map(|d| match d.value {
            Some(Value::DimValue(x)) => Some(x),
            _ => None,
        })
        .collect();
    checked_elements(what, &dims).map(|_| ())
}

/// Names: every node input defined earlier (ONNX requires topological
/// order), every name defined once, every graph output defined.
fn check_names(graph: &pb::GraphProto) -> Result<(), ShardError> {
    let mut defined: HashSet<&str> = HashSet::new();
    for t in &graph.initializer {
        if !defined.insert(&t.name) {
            return Err(ShardError::Invalid(format!(
                "initializer '{}' is defined twice",
                t.name
            )));
        }
    }
    for i in &graph.input {
        // An input may repeat an initializer (IR < 4 style), never another input.
        if !defined.insert(&i.name) && !graph.initializer.iter().any(|t| t.name == i.name) {
            return Err(ShardError::Invalid(format!(
                "graph input '{}' is defined twice",
                i.name
            )));
        }
    }
    for n in &graph.node {
        for input in n.input.iter().filter(|s| !s.is_empty()) {
            if !defined.contains(input.as_str()) {
                return Err(ShardError::Unsupported {
                    node: n.name.clone(),
                    op: n.op_type.clone(),
                    reason: format!(
                        "reads '{input}', which is not defined before it (dangling name or nodes not in topological order)"
                    ),
                });
            }
        }
        for output in n.output.iter().filter(|s| !s.is_empty()) {
            if !defined.insert(output) {
                return Err(ShardError::Unsupported {
                    node: n.name.clone(),
                    op: n.op_type.clone(),
                    reason: format!("writes '{output}', which is already defined"),
                });
            }
        }
    }
    for o in &graph.output {
        if !defined.contains(o.name.as_str()) {
            return Err(ShardError::Invalid(format!(
                "graph output '{}' is produced by no node",
                o.name
            )));
        }
    }
    Ok(())
}

/// Values of small integer or float constants (initializers and Constant
/// nodes), as f64, for the size checks below.
fn constants(graph: &pb::GraphProto) -> HashMap<&str, Vec<f64>> {
    let mut out = HashMap::new();
    for t in &graph.initializer {
        if let Some(v) = numbers(t) {
            out.insert(t.name.as_str(), v);
        }
    }
    for n in &graph.node {
        if n.op_type == "Constant"
            && let (Some(o), Some(t)) = (
                n.output.first(),
                n.attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref()),
            )
            && let Some(v) = numbers(t)
        {
            out.insert(o.as_str(), v);
        }
    }
    out
}

/// Up to 64 numbers of an int64/int32/float/double tensor.
fn numbers(t: &pb::TensorProto) -> Option<Vec<f64>> {
    const SMALL: usize = 64;
    /// The first values of little-endian `raw_data` of `N`-byte elements.
    fn raw<const N: usize>(raw: &[u8], to_f64: fn([u8; N]) -> f64) -> Vec<f64> {
        raw.chunks_exact(N)
            .take(SMALL)
            .map(|c| to_f64(c.try_into().unwrap_or([0; N])))
            .collect()
    }
    let r = &t.raw_data;
    let v: Vec<f64> = match DataType::try_from(t.data_type).ok()? {
        DataType::Int64 if !r.is_empty() => raw(r, |b| i64::from_le_bytes(b) as f64),
        DataType::Int64 => t.int64_data.iter().take(SMALL).map(|&x| x as f64).collect(),
        DataType::Int32 if !r.is_empty() => raw(r, |b| i32::from_le_bytes(b) as f64),
        DataType::Int32 => t.int32_data.iter().take(SMALL).map(|&x| x as f64).collect(),
        DataType::Float if !r.is_empty() => raw(r, |b| f32::from_le_bytes(b) as f64),
        DataType::Float => t.float_data.iter().take(SMALL).map(|&x| x as f64).collect(),
        DataType::Double => t.double_data.iter().take(SMALL).copied().collect(),
        _ => return None,
    };
    Some(v)
}

/// Ops whose output size comes from a constant input are evaluated by
/// tract's shape analysis; refuse the ones that would allocate over the cap.
fn check_const_sizes(graph: &pb::GraphProto) -> Result<(), ShardError> {
    let consts = constants(graph);
    let get = |n: &pb::NodeProto, ix: usize| n.input.get(ix).and_then(|s| consts.get(s.as_str()));
    for n in &graph.node {
        let elements: Option<f64> = match n.op_type.as_str() {
            "ConstantOfShape" | "Expand" => {
                let ix = if n.op_type == "Expand" { 1 } else { 0 };
                get(n, ix).map(|v| v.iter().map(|x| x.abs()).product())
            }
            "Tile" => get(n, 1).map(|v| v.iter().map(|x| x.abs()).product()),
            "OneHot" => get(n, 1).and_then(|v| v.first().map(|x| x.abs())),
            "Range" => match (get(n, 0), get(n, 1), get(n, 2)) {
                (Some(s), Some(l), Some(d)) => match (s.first(), l.first(), d.first()) {
                    (Some(s), Some(l), Some(d)) if *d != 0.0 => Some(((l - s) / d).ceil().max(0.0)),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        };
        if let Some(e) = elements
            && (e.is_nan() || e > MAX_TENSOR_ELEMENTS as f64)
        {
            return Err(ShardError::TooLarge {
                what: format!("the output of node '{}' ({})", n.name, n.op_type),
                elements: if e.is_finite() { e as u128 } else { u128::MAX },
                cap: MAX_TENSOR_ELEMENTS,
            });
        }
    }
    Ok(())
}

/// Concrete dims of a declared value, used by merge to compare shard ends.
pub fn declared_dims(v: &pb::ValueInfoProto) -> Option<Vec<i64>> {
    v.r#type.as_ref().and_then(type_dims)
}
