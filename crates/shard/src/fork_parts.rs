//! The three parts of a fork-join as standalone models, and a symbolic
//! batch axis kept through the cut.

use std::collections::{BTreeSet, HashMap};

use crate::fork_graph::fork_error;
use crate::pb;
use crate::pb::tensor_shape_proto::dimension::Value;
use crate::proto::{IR_VERSION, is_float_type, value_info};
use crate::shapes::TensorType;
use crate::{ShardError, plan, split};

/// A symbolic leading (batch) dim of the data input, fixed to 1 for shape
/// inference and written back into the shards.
pub struct Batch {
    /// The model with the batch fixed, and the symbol's name.
    probe: Option<(pb::ModelProto, String)>,
}

fn leading_dim(v: &mut pb::ValueInfoProto) -> Option<&mut pb::tensor_shape_proto::Dimension> {
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_mut()?.value.as_mut()?;
    t.shape.as_mut()?.dim.first_mut()
}

fn is_concrete(d: &pb::tensor_shape_proto::Dimension) -> bool {
    matches!(d.value, Some(Value::DimValue(_)))
}

impl Batch {
    /// Looks at the data input: when only its first dim is symbolic, the
    /// probe model fixes it (and the outputs' first dims) to 1 and drops the
    /// intermediate value infos, which would carry the symbol too.
    pub fn probe(model: &pb::ModelProto) -> Result<Self, ShardError> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| ShardError::Invalid("the model has no graph".into()))?;
        let inits: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let data: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .collect();
        let [input] = data[..] else {
            return Ok(Batch { probe: None });
        };
        let mut input = input.clone();
        let name = input.name.clone();
        let symbol = match leading_dim(&mut input) {
            Some(d) if !is_concrete(d) => match &d.value {
                Some(Value::DimParam(p)) if !p.is_empty() => p.clone(),
                _ => "N".to_string(),
            },
            _ => return Ok(Batch { probe: None }),
        };
        let mut probe = model.clone();
        let Some(g) = probe.graph.as_mut() else {
            return Ok(Batch { probe: None });
        };
        g.value_info.clear();
        for v in g
            .input
            .iter_mut()
            .filter(|i| i.name == name)
            .chain(g.output.iter_mut())
        {
            if let Some(d) = leading_dim(v).filter(|d| !is_concrete(d)) {
                d.value = Some(Value::DimValue(1));
            }
        }
        Ok(Batch {
            probe: Some((probe, symbol)),
        })
    }

    /// The model to analyse: the probe when the batch was symbolic.
    pub fn model<'a>(&'a self, original: &'a pb::ModelProto) -> &'a pb::ModelProto {
        self.probe.as_ref().map_or(original, |(m, _)| m)
    }

    /// Puts the batch symbol back on a shard's declared input and output
    /// (their leading dim, 1 in the probe; every tensor between the parts of
    /// a batched network leads with the batch).
    pub fn restore(&self, mut shard: pb::ModelProto) -> pb::ModelProto {
        if let (Some((_, symbol)), Some(g)) = (&self.probe, shard.graph.as_mut()) {
            let inits: BTreeSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
            let declared = g
                .input
                .iter_mut()
                .filter(|i| !inits.contains(&i.name))
                .chain(g.output.iter_mut());
            for v in declared {
                if let Some(d) = leading_dim(v).filter(|d| d.value == Some(Value::DimValue(1))) {
                    d.value = Some(Value::DimParam(symbol.clone()));
                }
            }
        }
        shard
    }
}

/// One part (`nodes`, the value nodes from `input` to `output`) as a
/// standalone model, cut by the automatic chain plan.
pub fn cut(
    model: &pb::ModelProto,
    nodes: &[usize],
    is_value: &[bool],
    ends: (&str, &str),
    types: &HashMap<String, TensorType>,
    part: &str,
) -> Result<Vec<pb::ModelProto>, ShardError> {
    let sub = sub_model(model, nodes, is_value, ends, types, part)?;
    let p = plan(&sub, None)?;
    split(&sub, &p)
}

/// The part's value nodes plus the constant and shape nodes they read,
/// in graph order, with the initializers they read.
fn sub_model(
    model: &pb::ModelProto,
    nodes: &[usize],
    is_value: &[bool],
    (input, output): (&str, &str),
    types: &HashMap<String, TensorType>,
    part: &str,
) -> Result<pb::ModelProto, ShardError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| ShardError::Invalid("the model has no graph".into()))?;
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(ix, n)| n.output.iter().map(move |o| (o.as_str(), ix)))
        .collect();
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut keep: BTreeSet<usize> = nodes.iter().copied().collect();
    let mut stack: Vec<usize> = nodes.to_vec();
    while let Some(ix) = stack.pop() {
        for i in graph.node[ix].input.iter().filter(|i| !i.is_empty()) {
            if i == input || inits.contains_key(i.as_str()) {
                continue;
            }
            match producer.get(i.as_str()) {
                Some(p) if keep.contains(p) => {}
                Some(&p) if !is_value.get(p).copied().unwrap_or(true) => {
                    keep.insert(p);
                    stack.push(p);
                }
                _ => {
                    return Err(fork_error(
                        graph,
                        ix,
                        format!(
                            "reads '{i}', which is computed outside the {part} part (whose input is '{input}')"
                        ),
                    ));
                }
            }
        }
    }
    let read: BTreeSet<&str> = keep
        .iter()
        .flat_map(|&ix| graph.node[ix].input.iter().map(String::as_str))
        .collect();
    let ty = |name: &str| {
        types
            .get(name)
            .map(|t| value_info(name, t.elem_type, &t.shape))
            .ok_or_else(|| ShardError::Shape(format!("no type for tensor '{name}'")))
    };
    let base = if graph.name.is_empty() {
        "model"
    } else {
        graph.name.as_str()
    };
    let sub = pb::GraphProto {
        name: format!("{base}_{part}"),
        node: keep.iter().map(|&ix| graph.node[ix].clone()).collect(),
        initializer: graph
            .initializer
            .iter()
            .filter(|t| read.contains(t.name.as_str()))
            .cloned()
            .collect(),
        input: vec![ty(input)?],
        output: vec![ty(output)?],
        doc_string: format!("the {part} part of fork-join '{base}'"),
        ..Default::default()
    };
    Ok(pb::ModelProto {
        ir_version: model.ir_version.max(IR_VERSION),
        opset_import: model.opset_import.clone(),
        producer_name: "mixnn-shard".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        graph: Some(sub),
        ..Default::default()
    })
}

/// No trainable initializer may be read by two parts: it would live on
/// both sides of the trust boundary and get two different gradients.
pub fn check_disjoint(parts: &[(&str, &[pb::ModelProto])]) -> Result<(), ShardError> {
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for (part, shards) in parts {
        for t in shards
            .iter()
            .filter_map(|s| s.graph.as_ref())
            .flat_map(|g| &g.initializer)
            .filter(|t| is_float_type(t.data_type))
        {
            match owner.insert(t.name.as_str(), part) {
                Some(other) if other != *part => {
                    return Err(ShardError::Fork {
                        node: t.name.clone(),
                        op: "initializer".into(),
                        reason: format!(
                            "is read by both the {other} and the {part}: a parameter cannot live in two parts"
                        ),
                    });
                }
                _ => {}
            }
        }
    }
    Ok(())
}
