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
/// nodes, from a `value` tensor or a `value_int(s)`/`value_float(s)`
/// attribute), as f64, for the size checks below; only constants whose
/// every value is read (at most [`SMALL`]) are in the map.
fn constants(graph: &pb::GraphProto) -> HashMap<&str, Vec<f64>> {
    let mut out = HashMap::new();
    for t in &graph.initializer {
        if let Some(v) = numbers(t) {
            out.insert(t.name.as_str(), v);
        }
    }
    for n in &graph.node {
        if n.op_type != "Constant" {
            continue;
        }
        let Some(o) = n.output.first() else { continue };
        let value = n.attribute.iter().find_map(|a| match a.name.as_str() {
            "value" => a.t.as_ref().and_then(numbers),
            "value_ints" if a.ints.len() <= SMALL => {
                Some(a.ints.iter().map(|&x| x as f64).collect())
            }
            "value_floats" if a.floats.len() <= SMALL => {
                Some(a.floats.iter().map(|&x| f64::from(x)).collect())
            }
            "value_int" => Some(vec![a.i as f64]),
            "value_float" => Some(vec![f64::from(a.f)]),
            _ => None,
        });
        if let Some(v) = value {
            out.insert(o.as_str(), v);
        }
    }
    out
}

/// Names whose value is known before any input arrives: initializers,
/// Constant outputs, and the outputs of nodes fed by those alone (nodes
/// are in topological order, as ONNX requires). tract evaluates these
/// while it analyses the model, so their sizes must be bounded up front.
fn constant_derived(graph: &pb::GraphProto) -> HashSet<&str> {
    let mut out: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    for n in &graph.node {
        let fed = n
            .input
            .iter()
            .filter(|i| !i.is_empty())
            .all(|i| out.contains(i.as_str()));
        if n.op_type == "Constant" || fed {
            out.extend(n.output.iter().map(String::as_str));
        }
    }
    out
}

/// Most values of one constant the size checks read.
const SMALL: usize = 64;

/// All numbers of an int64/int32/float/double tensor of at most [`SMALL`]
/// values (`None` for a larger one or another type).
fn numbers(t: &pb::TensorProto) -> Option<Vec<f64>> {
    /// The values of little-endian `raw_data` of `N`-byte elements.
    fn raw<const N: usize>(raw: &[u8], to_f64: fn([u8; N]) -> f64) -> Option<Vec<f64>> {
        (raw.len() <= SMALL * N).then(|| {
            raw.chunks_exact(N)
                .map(|c| to_f64(c.try_into().unwrap_or([0; N])))
                .collect()
        })
    }
    fn few<T: Copy>(v: &[T], to_f64: fn(T) -> f64) -> Option<Vec<f64>> {
        (v.len() <= SMALL).then(|| v.iter().map(|&x| to_f64(x)).collect())
    }
    let r = &t.raw_data;
    match DataType::try_from(t.data_type).ok()? {
        DataType::Int64 if !r.is_empty() => raw(r, |b| i64::from_le_bytes(b) as f64),
        DataType::Int64 => few(&t.int64_data, |x| x as f64),
        DataType::Int32 if !r.is_empty() => raw(r, |b| i32::from_le_bytes(b) as f64),
        DataType::Int32 => few(&t.int32_data, f64::from),
        DataType::Float if !r.is_empty() => raw(r, |b| f64::from(f32::from_le_bytes(b))),
        DataType::Float => few(&t.float_data, f64::from),
        DataType::Double => few(&t.double_data, |x| x),
        _ => None,
    }
}

/// Elements of an initializer, from its declared dims (`None` if it is no
/// initializer).
fn initializer_elements(graph: &pb::GraphProto, name: &str) -> Option<f64> {
    let t = graph.initializer.iter().find(|t| t.name == name)?;
    Some(t.dims.iter().map(|&d| (d as f64).abs()).product())
}

/// Ops whose output size comes from a constant input are evaluated by
/// tract's shape analysis; refuse the ones that would allocate over the cap,
/// and the ones whose size operand is computed from constants inside the
/// graph (tract would fold it, and allocate, before any check could see
/// its value). A size operand that depends on the model's input is not
/// evaluated at analysis time and passes.
fn check_const_sizes(graph: &pb::GraphProto) -> Result<(), ShardError> {
    let consts = constants(graph);
    let derived = constant_derived(graph);
    for n in &graph.node {
        let sized_by: &[usize] = match n.op_type.as_str() {
            "ConstantOfShape" => &[0],
            "Expand" | "Tile" | "OneHot" => &[1],
            "Range" => &[0, 1, 2],
            _ => continue,
        };
        let operand = |ix: usize| n.input.get(ix).map(String::as_str).unwrap_or_default();
        if sized_by.iter().all(|&ix| !derived.contains(operand(ix))) {
            continue; // sized at run time by the input
        }
        let values: Option<Vec<&Vec<f64>>> =
            sized_by.iter().map(|&ix| consts.get(operand(ix))).collect();
        let Some(values) = values else {
            return Err(ShardError::Unsupported {
                node: n.name.clone(),
                op: n.op_type.clone(),
                reason: "its size comes from constants computed inside the graph (or from a \
                         constant of more than 64 values); fold them into plain constants first, \
                         e.g. with onnx-simplifier"
                    .into(),
            });
        };
        let product = |v: &Vec<f64>| v.iter().map(|x| x.abs()).product::<f64>();
        // The data operand of Expand and Tile scales the output too.
        let data = || initializer_elements(graph, operand(0)).unwrap_or(1.0);
        let elements = match n.op_type.as_str() {
            "Expand" => product(values[0]).max(1.0) * data(),
            "Tile" => product(values[0]) * data(),
            "OneHot" => values[0].first().map_or(0.0, |x| x.abs()),
            "Range" => match (values[0].first(), values[1].first(), values[2].first()) {
                (Some(s), Some(l), Some(d)) if *d != 0.0 => ((l - s) / d).ceil().max(0.0),
                _ => 0.0,
            },
            _ => product(values[0]),
        };
        if elements.is_nan() || elements > MAX_TENSOR_ELEMENTS as f64 {
            return Err(ShardError::TooLarge {
                what: format!("the output of node '{}' ({})", n.name, n.op_type),
                elements: if elements.is_finite() {
                    elements as u128
                } else {
                    u128::MAX
                },
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
