//! Cutting a model into standalone shard models.

use crate::graph::Topo;
use crate::plan::spans_of;
use crate::proto::{IR_VERSION, value_info};
use crate::{Plan, ShardError, pb, shapes};

/// Cuts `model` into one standalone ONNX model per shard of `plan`.
///
/// Each shard keeps the model's opset imports, holds only the initializers
/// its nodes read (plus copies of Constant nodes it reads), and declares its
/// input and output with concrete shapes, so a node can load it alone. The
/// plan must describe this model (as [`crate::plan`] made it); a stale or
/// edited plan is an error, not a silently different split.
pub fn split(model: &pb::ModelProto, plan: &Plan) -> Result<Vec<pb::ModelProto>, ShardError> {
    let topo = Topo::new(model)?;
    let spans = spans_of(&topo, plan)?;
    let names: Vec<&str> = spans
        .iter()
        .flat_map(|s| [s.input.as_str(), s.output.as_str()])
        .collect();
    let types = shapes::infer(model, &names)?;
    let graph = topo.graph;
    let base_name = if graph.name.is_empty() {
        "model"
    } else {
        graph.name.as_str()
    };
    let mut out = Vec::with_capacity(spans.len());
    for (info, span) in plan.shards.iter().zip(&spans) {
        let ty = |name: &str, planned: &[usize]| {
            let t = types
                .get(name)
                .ok_or_else(|| ShardError::Shape(format!("no type for tensor '{name}'")))?;
            if t.shape != planned {
                return Err(ShardError::Plan(format!(
                    "shard {}: tensor '{name}' has shape {:?} in the model but {planned:?} in the plan",
                    info.index, t.shape
                )));
            }
            Ok(value_info(name, t.elem_type, &t.shape))
        };
        let input = ty(&span.input, &info.input_shape)?;
        let output = ty(&span.output, &info.output_shape)?;
        let nodes = topo.shard_nodes(span);
        let inits = topo.shard_inits(&nodes);
        let params = Topo::param_count(&inits)?;
        if params != info.param_count {
            return Err(ShardError::Plan(format!(
                "shard {} has {params} parameters in the model but {} in the plan",
                info.index, info.param_count
            )));
        }
        let shard_graph = pb::GraphProto {
            name: format!("{base_name}_shard{}", info.index),
            node: nodes.iter().map(|&ix| graph.node[ix].clone()).collect(),
            initializer: inits.into_iter().cloned().collect(),
            input: vec![input],
            output: vec![output],
            doc_string: format!("shard {} of {} of '{base_name}'", info.index, spans.len()),
            ..Default::default()
        };
        out.push(pb::ModelProto {
            // Keep a newer IR version if the source has one: it matches its opsets.
            ir_version: model.ir_version.max(IR_VERSION),
            opset_import: model.opset_import.clone(),
            producer_name: "mixnn-shard".to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            graph: Some(shard_graph),
            ..Default::default()
        });
    }
    Ok(out)
}
