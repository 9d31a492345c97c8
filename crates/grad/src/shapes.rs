//! Static shapes of a shard's tensors, from tract's own type analysis (see
//! [`mixnn_onnx::analyse`]), seeded with the concrete input shape.

use std::collections::{HashMap, HashSet};

use crate::graph::{invalid, node_err};
use crate::pb;
use crate::proto;
use crate::{GradError, ParamSpec};

/// Shape of every tensor, and the set of float tensors.
pub(crate) type Shapes = (HashMap<String, Vec<usize>>, HashSet<String>);

/// Static shapes and float-ness of every tensor of the pruned graph, by
/// tract's analysis seeded with the concrete input shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn infer_shapes(
    model: &pb::ModelProto,
    graph: &pb::GraphProto,
    nodes: &[pb::NodeProto],
    input: &str,
    elem: i32,
    input_shape: &[usize],
    params: &[ParamSpec],
    used_inits: &[String],
    inits: &HashMap<String, &pb::TensorProto>,
    output: &pb::ValueInfoProto,
) -> Result<Shapes, GradError> {
    // A copy of the pruned graph with concrete input shapes and no declared
    // intermediate shapes (those may carry symbolic batch dims that would
    // conflict with the concrete one).
    let mut inputs = vec![proto::value_info(input, elem, input_shape)];
    for p in params.iter().filter(|p| p.init.is_none()) {
        inputs.push(proto::value_info(&p.name, elem, &p.shape));
    }
    let out_elem = proto::declared_type(output).map(|(e, _)| e).unwrap_or(elem);
    let g = pb::GraphProto {
        name: graph.name.clone(),
        node: nodes.to_vec(),
        initializer: used_inits
            .iter()
            .filter_map(|n| inits.get(n).map(|t| (*t).clone()))
            .collect(),
        input: inputs,
        output: vec![proto::value_info_unshaped(&output.name, out_elem)],
        ..Default::default()
    };
    let m = pb::ModelProto {
        ir_version: model.ir_version.max(7),
        opset_import: model.opset_import.clone(),
        graph: Some(g),
        ..Default::default()
    };
    let analysed = proto::analyse(&m, true)
        .map_err(|e| invalid(format!("tract could not load the shard: {e}")))?;

    let mut shapes = HashMap::new();
    let mut floats = HashSet::new();
    for name in analysed.names() {
        let Ok(fact) = analysed.fact(name) else {
            continue;
        };
        if let Some(s) = fact.shape() {
            shapes.insert(name.to_string(), s);
        }
        if fact.is_float() {
            floats.insert(name.to_string());
        }
    }
    // Report the first node whose outputs have no static shape.
    let read: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain([output.name.as_str()])
        .collect();
    for n in nodes {
        let missing = n
            .output
            .iter()
            .find(|o| read.contains(o.as_str()) && !shapes.contains_key(*o));
        if let Some(o) = missing {
            let why = match analysed.error() {
                Some(e) => format!("shape inference failed: {e}"),
                None => format!("no static shape could be inferred for output `{o}`"),
            };
            return Err(node_err(n, why));
        }
    }
    if let Some(e) = analysed.error() {
        return Err(invalid(format!("shape inference failed: {e}")));
    }
    Ok((shapes, floats))
}
