//! Rebuilding one model from its shards, and swapping trained weights in.
//!
//! At the end of training the designer collects each layer's weights,
//! writes them back into the shards ([`set_params`]) and joins the shards
//! into one ONNX file ([`merge`]) that any runtime can load.

use std::collections::{HashMap, HashSet};

use crate::guard::{declared_dims, validate};
use crate::proto::{IR_VERSION, f32_tensor, f32_values, type_elem};
use crate::{ShardError, pb};

/// One named parameter tensor: `(initializer name, dims, values)`.
pub type Param = (String, Vec<usize>, Vec<f32>);

/// Joins a chain of shards (as made by [`crate::split`]) into one model.
///
/// Shard k's output must be shard k+1's input (same name, type and dims);
/// node outputs and initializers may not collide between shards, except
/// identical copies of Constant nodes and initializers that `split` placed
/// in several shards, which are kept once.
pub fn merge(shards: &[pb::ModelProto]) -> Result<pb::ModelProto, ShardError> {
    let Some(first) = shards.first() else {
        return Err(ShardError::Merge("no shards given".into()));
    };
    let graphs = chain(shards, first)?;
    let (nodes, inits) = join(&graphs)?;
    let name = first
        .graph
        .as_ref()
        .map(|g| g.name.trim_end_matches("_shard0").to_string())
        .unwrap_or_default();
    let graph = pb::GraphProto {
        name,
        node: nodes,
        initializer: inits,
        input: vec![graphs[0].1.clone()],
        output: vec![graphs[graphs.len() - 1].2.clone()],
        ..Default::default()
    };
    let merged = pb::ModelProto {
        ir_version: shards
            .iter()
            .map(|s| s.ir_version)
            .max()
            .unwrap_or(IR_VERSION)
            .max(IR_VERSION),
        opset_import: first.opset_import.clone(),
        producer_name: "mixnn-shard".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        graph: Some(graph),
        ..Default::default()
    };
    // The joined graph must itself be well formed (names defined before use).
    validate(&merged).map_err(|e| ShardError::Merge(format!("merged model: {e}")))?;
    Ok(merged)
}

/// A shard's graph with its data input and its output.
type Link<'a> = (
    &'a pb::GraphProto,
    &'a pb::ValueInfoProto,
    &'a pb::ValueInfoProto,
);

/// Checks that the shards form a chain: each valid, with one input and one
/// output, the same opsets, and each output declared as the next input.
fn chain<'a>(
    shards: &'a [pb::ModelProto],
    first: &pb::ModelProto,
) -> Result<Vec<Link<'a>>, ShardError> {
    let mut graphs = Vec::with_capacity(shards.len());
    for (k, s) in shards.iter().enumerate() {
        validate(s).map_err(|e| ShardError::Merge(format!("shard {k}: {e}")))?;
        let g = s
            .graph
            .as_ref()
            .ok_or_else(|| ShardError::Merge(format!("shard {k} has no graph")))?;
        let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<&pb::ValueInfoProto> = g
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .collect();
        let ([input], [output]) = (&inputs[..], &g.output[..]) else {
            return Err(ShardError::Merge(format!(
                "shard {k} has {} inputs and {} outputs; a shard has one of each",
                inputs.len(),
                g.output.len()
            )));
        };
        if s.opset_import != first.opset_import {
            return Err(ShardError::Merge(format!(
                "shard {k} imports different opsets than shard 0"
            )));
        }
        graphs.push((g, *input, output));
    }
    for (k, pair) in graphs.windows(2).enumerate() {
        let (out, inp) = (pair[0].2, pair[1].1);
        if out.name != inp.name {
            return Err(ShardError::Merge(format!(
                "shard {k} writes '{}' but shard {} reads '{}'",
                out.name,
                k + 1,
                inp.name
            )));
        }
        if declared_dims(out) != declared_dims(inp) || type_elem(out) != type_elem(inp) {
            return Err(ShardError::Merge(format!(
                "tensor '{}' is declared differently by shard {k} ({:?}) and shard {} ({:?})",
                out.name,
                declared_dims(out),
                k + 1,
                declared_dims(inp)
            )));
        }
    }
    Ok(graphs)
}

/// The nodes and initializers of the chain, in order; a Constant node or an
/// initializer repeated identically by a later shard is kept once.
fn join(graphs: &[Link<'_>]) -> Result<(Vec<pb::NodeProto>, Vec<pb::TensorProto>), ShardError> {
    let mut nodes: Vec<pb::NodeProto> = Vec::new();
    let mut node_by_output: HashMap<String, usize> = HashMap::new();
    let mut inits: Vec<pb::TensorProto> = Vec::new();
    let mut init_by_name: HashMap<String, usize> = HashMap::new();
    for (k, (g, _, _)) in graphs.iter().enumerate() {
        for n in &g.node {
            let seen = n.output.iter().find_map(|o| node_by_output.get(o).copied());
            match seen {
                Some(ix) if nodes[ix] == *n && n.op_type == "Constant" => continue,
                Some(_) => {
                    return Err(ShardError::Merge(format!(
                        "node '{}' ({}) of shard {k} writes a tensor an earlier shard already writes",
                        n.name, n.op_type
                    )));
                }
                None => {}
            }
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                node_by_output.insert(o.clone(), nodes.len());
            }
            nodes.push(n.clone());
        }
        for t in &g.initializer {
            match init_by_name.get(&t.name) {
                Some(&ix) if inits[ix] == *t => continue,
                Some(_) => {
                    return Err(ShardError::Merge(format!(
                        "initializer '{}' of shard {k} differs from one of the same name in an earlier shard",
                        t.name
                    )));
                }
                None => {
                    init_by_name.insert(t.name.clone(), inits.len());
                    inits.push(t.clone());
                }
            }
        }
    }
    Ok((nodes, inits))
}

/// Replaces float initializers of a shard by name: `(name, dims, values)`.
///
/// Every name must be an existing float32 initializer with exactly these
/// dims (a trained layer never changes shape; a mismatch means weights from
/// another layer). Values are stored as little-endian raw data.
pub fn set_params(shard: &pb::ModelProto, params: &[Param]) -> Result<pb::ModelProto, ShardError> {
    let mut out = shard.clone();
    let graph = out
        .graph
        .as_mut()
        .ok_or_else(|| ShardError::Invalid("the shard has no graph".into()))?;
    let mut done: HashSet<&str> = HashSet::new();
    for (name, dims, values) in params {
        let err = |reason: String| ShardError::Params {
            name: name.clone(),
            reason,
        };
        if !done.insert(name.as_str()) {
            return Err(err("given twice".into()));
        }
        let slot = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == *name)
            .ok_or_else(|| err("the shard has no initializer of this name".into()))?;
        if slot.data_type != pb::tensor_proto::DataType::Float as i32 {
            return Err(err(format!(
                "the initializer is not float32 (ONNX data type {})",
                slot.data_type
            )));
        }
        let want: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        if slot.dims != want {
            return Err(err(format!(
                "dims {dims:?} differ from the shard's {:?}",
                slot.dims
            )));
        }
        let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(values.len()) {
            return Err(err(format!(
                "{} values given for dims {dims:?}",
                values.len()
            )));
        }
        let mut fresh = f32_tensor(name, dims, values);
        fresh.doc_string = std::mem::take(&mut slot.doc_string);
        *slot = fresh;
    }
    Ok(out)
}

/// The float32 initializers of a shard as `(name, dims, values)`, in the
/// shard's order: the inverse of [`set_params`], used to read initial
/// weights and to compare trained ones.
pub fn get_params(shard: &pb::ModelProto) -> Result<Vec<Param>, ShardError> {
    let graph = shard
        .graph
        .as_ref()
        .ok_or_else(|| ShardError::Invalid("the shard has no graph".into()))?;
    graph
        .initializer
        .iter()
        .filter(|t| t.data_type == pb::tensor_proto::DataType::Float as i32)
        .map(|t| {
            let values = f32_values(t)?;
            let dims = t.dims.iter().map(|&d| d as usize).collect();
            Ok((t.name.clone(), dims, values))
        })
        .collect()
}
