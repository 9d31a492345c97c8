//! The model as a sequence of nodes, and where it can be cut.
//!
//! A shard boundary is "after node i". A cut is only meaningful if the model
//! is a chain there: exactly one tensor produced before the cut is used after
//! it (that tensor is what travels between two servers), and no float
//! initializer is used on both sides (a parameter cannot live on two
//! servers). Constant nodes and integer initializers (shapes, axes) carry no
//! trainable state, so each shard that reads one gets its own copy.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::pb;
use crate::proto::{checked_elements, is_float_type};
use crate::{ShardError, guard};

/// Ops that carry the parameters of a layer; a following `Add` of an
/// initializer is their bias and stays with them.
const BIASED_OPS: [&str; 3] = ["MatMul", "Gemm", "Conv"];

/// Index view of a validated single-input, single-output graph.
pub struct Topo<'a> {
    pub graph: &'a pb::GraphProto,
    /// The one graph input that is not an initializer.
    pub input: String,
    /// The one graph output.
    pub output: String,
    pub inits: HashMap<&'a str, &'a pb::TensorProto>,
    /// Position of the node producing each tensor; the graph input is `None`.
    producer: HashMap<&'a str, Option<usize>>,
    /// Last node position reading each tensor; graph output counts as `n`.
    last_use: HashMap<&'a str, usize>,
    /// First node position reading each float initializer.
    first_use: HashMap<&'a str, usize>,
}

/// Name used for a node in plans and errors: its name, else its first
/// output, else its position.
pub fn node_label(node: &pb::NodeProto, ix: usize) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else if let Some(o) = node.output.first().filter(|o| !o.is_empty()) {
        o.clone()
    } else {
        format!("#{ix}")
    }
}

/// `"NodeName (OpType)"`, the entry of [`crate::ShardInfo::ops`].
pub fn op_label(node: &pb::NodeProto, ix: usize) -> String {
    format!("{} ({})", node_label(node, ix), node.op_type)
}

fn is_constant(node: &pb::NodeProto) -> bool {
    node.op_type == "Constant" && node.input.iter().all(|i| i.is_empty())
}

impl<'a> Topo<'a> {
    /// Validates the model and indexes its graph. Refuses graphs that are not
    /// one-input, one-output, or that contain control-flow subgraphs (their
    /// bodies read outer tensors implicitly, which a cut cannot see).
    pub fn new(model: &'a pb::ModelProto) -> Result<Self, ShardError> {
        guard::validate(model)?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| ShardError::Invalid("the model has no graph".into()))?;
        if graph.node.is_empty() {
            return Err(ShardError::Invalid("the graph has no nodes".into()));
        }
        let inits: HashMap<&str, &pb::TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let real_inputs: Vec<&str> = graph
            .input
            .iter()
            .map(|i| i.name.as_str())
            .filter(|n| !inits.contains_key(n))
            .collect();
        let [input] = real_inputs[..] else {
            return Err(ShardError::Invalid(format!(
                "the graph has {} inputs ({}); a chain of shards needs exactly one",
                real_inputs.len(),
                real_inputs.join(", ")
            )));
        };
        let [output] = &graph.output[..] else {
            return Err(ShardError::Invalid(format!(
                "the graph has {} outputs; a chain of shards needs exactly one",
                graph.output.len()
            )));
        };
        let mut producer = HashMap::new();
        producer.insert(input, None);
        let mut last_use = HashMap::new();
        let mut first_use = HashMap::new();
        for (ix, n) in graph.node.iter().enumerate() {
            if n.attribute
                .iter()
                .any(|a| a.g.is_some() || !a.graphs.is_empty())
            {
                return Err(ShardError::Unsupported {
                    node: node_label(n, ix),
                    op: n.op_type.clone(),
                    reason: "control-flow subgraphs cannot be split".into(),
                });
            }
            for i in n.input.iter().filter(|s| !s.is_empty()) {
                last_use.insert(i.as_str(), ix);
                // Only trainable (float) initializers are pinned to one side;
                // integer ones (shapes, axes) are constants every shard may copy.
                if inits
                    .get(i.as_str())
                    .is_some_and(|t| is_float_type(t.data_type))
                {
                    first_use.entry(i.as_str()).or_insert(ix);
                }
            }
            for o in n.output.iter().filter(|s| !s.is_empty()) {
                producer.insert(o.as_str(), Some(ix));
            }
        }
        last_use.insert(output.name.as_str(), graph.node.len());
        Ok(Topo {
            graph,
            input: input.to_string(),
            output: output.name.clone(),
            inits,
            producer,
            last_use,
            first_use,
        })
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.graph.node.len()
    }

    fn node(&self, ix: usize) -> &'a pb::NodeProto {
        &self.graph.node[ix]
    }

    fn cut_error(&self, ix: usize, reason: String) -> ShardError {
        let n = self.node(ix);
        ShardError::Cut {
            node: node_label(n, ix),
            op: n.op_type.clone(),
            reason,
        }
    }

    /// True if the node reads a floating-point initializer (a parameter).
    fn has_params(&self, ix: usize) -> bool {
        self.node(ix).input.iter().any(|i| {
            self.inits
                .get(i.as_str())
                .is_some_and(|t| is_float_type(t.data_type))
        })
    }

    /// `Add` of an initializer right after a MatMul/Gemm/Conv it reads from:
    /// that layer's bias, which belongs to the same shard.
    fn is_bias_add(&self, ix: usize) -> bool {
        let n = self.node(ix);
        if n.op_type != "Add" || ix == 0 {
            return false;
        }
        let prev = self.node(ix - 1);
        BIASED_OPS.contains(&prev.op_type.as_str())
            && self.has_params(ix - 1)
            && n.input.iter().any(|i| prev.output.contains(i))
            && n.input.iter().any(|i| self.inits.contains_key(i.as_str()))
    }

    /// The paper's Table 1 shape: a shard starts at every node with
    /// parameters (bias Adds excepted); leading parameter-free nodes join the
    /// first shard, trailing ones the shard before them. Returns the position
    /// of the last node of each shard.
    pub fn automatic_ends(&self) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut seen_param = false;
        for ix in 0..self.len() {
            if is_constant(self.node(ix)) || !self.has_params(ix) || self.is_bias_add(ix) {
                continue;
            }
            if seen_param {
                ends.push(ix - 1);
            }
            seen_param = true;
        }
        ends.push(self.len() - 1);
        ends
    }

    /// Positions of the nodes named in explicit cuts, plus the last node.
    pub fn explicit_ends(&self, cuts: &[String]) -> Result<Vec<usize>, ShardError> {
        let mut ends = Vec::new();
        for cut in cuts {
            let hits: Vec<usize> = (0..self.len())
                .filter(|&ix| node_label(self.node(ix), ix) == *cut)
                .collect();
            match hits[..] {
                [ix] => {
                    if ix + 1 == self.len() {
                        return Err(self.cut_error(
                            ix,
                            "it is the last node, so the shard after the cut would be empty".into(),
                        ));
                    }
                    if ends.contains(&ix) {
                        return Err(self.cut_error(ix, "named twice in the cut list".into()));
                    }
                    ends.push(ix);
                }
                [] => {
                    let known: Vec<String> = (0..self.len())
                        .map(|ix| node_label(self.node(ix), ix))
                        .collect();
                    return Err(ShardError::UnknownNode {
                        name: cut.clone(),
                        known: known.join(", "),
                    });
                }
                _ => {
                    return Err(self.cut_error(
                        hits[0],
                        format!(
                            "{} nodes have this name; cut points must be unique",
                            hits.len()
                        ),
                    ));
                }
            }
        }
        ends.sort_unstable();
        ends.push(self.len() - 1);
        Ok(ends)
    }

    /// Checks that the model is a chain after node `ix` and returns the one
    /// tensor that crosses the cut.
    pub fn crossing(&self, ix: usize) -> Result<String, ShardError> {
        let mut shared: Vec<&str> = self
            .first_use
            .iter()
            .filter(|(name, first)| {
                **first <= ix && self.last_use.get(**name).is_some_and(|&u| u > ix)
            })
            .map(|(name, _)| *name)
            .collect();
        if !shared.is_empty() {
            shared.sort_unstable();
            return Err(self.cut_error(
                ix,
                format!(
                    "initializer(s) {} are used on both sides of the cut (a parameter cannot live in two shards)",
                    quoted(&shared)
                ),
            ));
        }
        let mut crossing: Vec<&str> = self
            .producer
            .iter()
            .filter(|(name, p)| {
                let before = match p {
                    None => true,
                    Some(p) => *p <= ix && !is_constant(self.node(*p)),
                };
                before && self.last_use.get(**name).is_some_and(|&u| u > ix)
            })
            .map(|(name, _)| *name)
            .collect();
        crossing.sort_unstable();
        match crossing[..] {
            [one] => Ok(one.to_string()),
            [] => Err(self.cut_error(
                ix,
                "no tensor crosses the cut: nothing after it depends on the nodes before it".into(),
            )),
            _ => Err(self.cut_error(
                ix,
                format!(
                    "the graph is not a chain here: {} tensors cross the cut ({}), exactly one must (skip connection or parallel branch?)",
                    crossing.len(),
                    quoted(&crossing)
                ),
            )),
        }
    }

    /// Node ranges of the shards, with each shard's input and output tensor,
    /// after checking every cut.
    pub fn shards(&self, ends: &[usize]) -> Result<Vec<ShardSpan>, ShardError> {
        let mut spans = Vec::with_capacity(ends.len());
        let mut start = 0;
        let mut input = self.input.clone();
        for (k, &end) in ends.iter().enumerate() {
            if end < start || end >= self.len() {
                return Err(ShardError::Plan(format!("shard {k} would be empty")));
            }
            let last = k + 1 == ends.len();
            let output = if last {
                self.output.clone()
            } else {
                self.crossing(end)?
            };
            let produced_here = self
                .producer
                .get(output.as_str())
                .copied()
                .flatten()
                .is_some_and(|p| p >= start && !is_constant(self.node(p)));
            if !produced_here {
                let reason = format!(
                    "tensor '{output}' leaving shard {k} is not computed by it (is the shard dead code?)"
                );
                return Err(if last {
                    ShardError::Invalid(reason)
                } else {
                    self.cut_error(end, reason)
                });
            }
            spans.push(ShardSpan {
                nodes: start..end + 1,
                input: input.clone(),
                output: output.clone(),
            });
            input = output;
            start = end + 1;
        }
        Ok(spans)
    }

    /// Positions of the nodes a shard's graph holds, in order: its own
    /// nodes, minus Constant nodes it does not read, plus copies of earlier
    /// Constant nodes it does read.
    pub fn shard_nodes(&self, span: &ShardSpan) -> Vec<usize> {
        let graph = self.graph;
        let read: HashSet<&str> = span
            .nodes
            .clone()
            .flat_map(|ix| graph.node[ix].input.iter().map(|s| s.as_str()))
            .collect();
        (0..span.nodes.end)
            .filter(|&ix| {
                let n = self.node(ix);
                if is_constant(n) {
                    n.output.iter().any(|o| read.contains(o.as_str()))
                } else {
                    span.nodes.contains(&ix)
                }
            })
            .collect()
    }

    /// The initializers a set of nodes reads, in the model's order.
    pub fn shard_inits(&self, nodes: &[usize]) -> Vec<&'a pb::TensorProto> {
        let graph = self.graph;
        let read: HashSet<&str> = nodes
            .iter()
            .flat_map(|&ix| graph.node[ix].input.iter().map(|s| s.as_str()))
            .collect();
        graph
            .initializer
            .iter()
            .filter(|t| read.contains(t.name.as_str()))
            .collect()
    }

    /// Number of trainable (floating-point) parameter values among `inits`.
    pub fn param_count(inits: &[&pb::TensorProto]) -> Result<usize, ShardError> {
        let mut total = 0usize;
        for t in inits.iter().filter(|t| is_float_type(t.data_type)) {
            total = total.saturating_add(checked_elements(
                &format!("initializer '{}'", t.name),
                &t.dims,
            )?);
        }
        Ok(total)
    }

    /// Labels of the nodes in a range, for [`crate::ShardInfo::ops`].
    pub fn labels(&self, nodes: Range<usize>) -> Vec<String> {
        nodes.map(|ix| op_label(self.node(ix), ix)).collect()
    }
}

/// One shard as node positions plus the tensors entering and leaving it.
#[derive(Clone, Debug)]
pub struct ShardSpan {
    pub nodes: Range<usize>,
    pub input: String,
    pub output: String,
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}
