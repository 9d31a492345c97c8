//! Static shapes of a shard's tensors, from tract's own type analysis (it
//! knows every op tract can run, including Conv and the pools), seeded with
//! the concrete input shape.

use std::collections::{HashMap, HashSet};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::pb;
use crate::proto;
use crate::{GradError, ParamSpec};

fn invalid(msg: impl Into<String>) -> GradError {
    GradError::Invalid(msg.into())
}

fn node_err(node: &pb::NodeProto, reason: impl Into<String>) -> GradError {
    GradError::Node {
        node: node.name.clone(),
        op: node.op_type.clone(),
        reason: reason.into(),
    }
}

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
    let mut out_vi = proto::value_info(&output.name, out_elem, &[]);
    if let Some(pb::type_proto::Value::TensorType(t)) =
        out_vi.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    let g = pb::GraphProto {
        name: graph.name.clone(),
        node: nodes.to_vec(),
        initializer: used_inits
            .iter()
            .filter_map(|n| inits.get(n).map(|t| (*t).clone()))
            .collect(),
        input: inputs,
        output: vec![out_vi],
        ..Default::default()
    };
    let m = pb::ModelProto {
        ir_version: model.ir_version.max(7),
        opset_import: model.opset_import.clone(),
        graph: Some(g),
        ..Default::default()
    };
    let parsed = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .parse(&m, None)
        .map_err(|e| invalid(format!("tract could not load the shard: {e:#}")))?;
    let mut tm = parsed.model;
    let analysis = tm.analyse(false);

    let mut shapes = HashMap::new();
    let mut floats = HashSet::new();
    for (name, outlet) in &parsed.outlets_by_name {
        let Ok(fact) = tm.outlet_fact(*outlet) else {
            continue;
        };
        if let Ok(Some(s)) = fact.shape.as_concrete_finite() {
            shapes.insert(name.clone(), s.to_vec());
        }
        if let Some(dt) = fact.datum_type.concretize()
            && dt.is_float()
        {
            floats.insert(name.clone());
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
            let why = match &analysis {
                Err(e) => format!("shape inference failed: {e:#}"),
                Ok(_) => format!("no static shape could be inferred for output `{o}`"),
            };
            return Err(node_err(n, why));
        }
    }
    if let Err(e) = analysis {
        return Err(invalid(format!("shape inference failed: {e:#}")));
    }
    Ok((shapes, floats))
}
