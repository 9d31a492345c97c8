//! Fork-join (Bident) models: two branches that take the same input and
//! meet at one merge node, then the rest of the network (the head).
//!
//! The designer runs a fork-join job as three chains and a merge: the
//! untrusted branch on pool nodes, the trusted branch and the head in a
//! trusted place, the merge (a parameter-free element-wise or concat op)
//! between them. This module only describes and cuts such a model; the
//! merge's arithmetic and its gradient live with the designer, which runs
//! them (crates/designer/src/fork).

use serde::{Deserialize, Serialize};

use crate::fork_graph::{self, Structure, fork_error};
use crate::fork_parts::{self, Batch};
use crate::graph::{Topo, node_label};
use crate::proto::{checked_elements, is_float_type};
use crate::{ShardError, pb, shapes};

/// How the two branches meet: the ONNX merge node's op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MergeOp {
    /// `Concat` along `axis` (non-negative, counted on the merge inputs'
    /// rank); the untrusted branch's slot decides which side comes first.
    Concat {
        /// The axis, already normalised to `0..rank`.
        axis: usize,
    },
    /// `Mul`: element-wise product (numpy broadcasting).
    Mul,
    /// `Max`: element-wise maximum (numpy broadcasting).
    Max,
    /// `Mean` of the two inputs: (a + b) / 2 element-wise.
    Mean,
    /// `Add` or `Sum` of the two inputs.
    Add,
}

/// A fork-join model cut into its parts, each part a chain of shards as
/// [`crate::split`] cuts a chain.
#[derive(Clone, Debug)]
pub struct ForkJoin {
    /// Shards of the branch that runs on pool nodes, in order; never empty.
    pub untrusted: Vec<pb::ModelProto>,
    /// Shards of the trusted branch, in order; empty when that branch is
    /// the input itself (the merge takes the raw input).
    pub trusted: Vec<pb::ModelProto>,
    /// Which input of the merge node (0 or 1) the untrusted branch feeds;
    /// the trusted branch feeds the other. Order matters for `Concat`.
    pub untrusted_slot: usize,
    /// The merge node's op.
    pub merge: MergeOp,
    /// Shards after the merge, in order; never empty (the last one ends
    /// the model, and the loss fits its last op as for a chain).
    pub head: Vec<pb::ModelProto>,
}

/// Cuts a fork-join model into its untrusted branch, trusted branch and
/// head, each cut further by the automatic [`crate::plan`] (one layer with
/// parameters plus the parameter-free ops after it per shard).
///
/// Returns `Ok(None)` when the model is not a fork-join (its data input
/// does not feed two paths that meet at one node), so a caller tries this
/// first and falls back to the chain splitter. A fork-join whose shape the
/// designer cannot run is an error naming the node: more than two
/// branches or merges, a merge op other than Concat, Mul, Max, Mean,
/// Add/Sum or with other than two inputs, a branch that reads from the
/// other, a head that forks again.
///
/// `trusted_branch` names a node (its name, or [`crate::node_label`]) inside
/// the branch that must stay trusted. Without it the branch with fewer
/// parameters is trusted, the merge's second input on a tie: the trusted
/// side (a TEE in the Bident paper, the designer's process here) is the
/// scarce one, and the paper's asymmetric networks put fewer layers there.
///
/// Shards keep the model's node and initializer names, so trained weights
/// go back into the original model with [`crate::set_params`]. A symbolic
/// batch axis (as PyTorch exports with `dynamic_axes`) stays symbolic in
/// the shards; shapes are inferred with batch 1.
pub fn fork_join(
    model: &pb::ModelProto,
    trusted_branch: Option<&str>,
) -> Result<Option<ForkJoin>, ShardError> {
    let batch = Batch::probe(model)?;
    let probe = batch.model(model);
    let topo = Topo::new(probe)?;
    let graph = topo.graph;
    let Some(s) = fork_graph::analyse(graph, &topo.input, &topo.output)? else {
        return Ok(None);
    };
    let trusted_slot = trusted_slot(&topo, &s, trusted_branch)?;
    let untrusted_slot = 1 - trusted_slot;
    let merge_node = &graph.node[s.merge];
    let merge_out = merge_node
        .output
        .first()
        .filter(|o| !o.is_empty())
        .ok_or_else(|| fork_error(graph, s.merge, "the merge node has no output".into()))?;
    let [a, b] = &s.merge_inputs;
    // The merge inputs first: mismatched shapes are the merge's fault, and
    // tract would only call the merge output "not concrete".
    let inputs = shapes::infer(probe, &[topo.input.as_str(), a.as_str(), b.as_str()])?;
    let shape_of = |t: &str| inputs.get(t).map(|t| t.shape.clone()).unwrap_or_default();
    let merge = merge_op(graph, s.merge, &shape_of(a), &shape_of(b))?;
    let mut types = shapes::infer(probe, &[merge_out.as_str(), topo.output.as_str()])?;
    types.extend(inputs);
    let cut = |nodes: &[usize], input: &str, output: &str, part: &str| {
        fork_parts::cut(probe, nodes, &s.is_value, (input, output), &types, part)
    };
    let untrusted = cut(
        &s.branches[untrusted_slot],
        &topo.input,
        &s.merge_inputs[untrusted_slot],
        "untrusted",
    )?;
    let trusted = if s.branches[trusted_slot].is_empty() {
        Vec::new()
    } else {
        cut(
            &s.branches[trusted_slot],
            &topo.input,
            &s.merge_inputs[trusted_slot],
            "trusted",
        )?
    };
    let head = cut(&s.head, merge_out, &topo.output, "head")?;
    fork_parts::check_disjoint(&[
        ("untrusted branch", &untrusted),
        ("trusted branch", &trusted),
        ("head", &head),
    ])?;
    let restore =
        |parts: Vec<pb::ModelProto>| parts.into_iter().map(|m| batch.restore(m)).collect();
    Ok(Some(ForkJoin {
        untrusted: restore(untrusted),
        trusted: restore(trusted),
        untrusted_slot,
        merge,
        head: restore(head),
    }))
}

/// The merge node's op, with a Concat axis normalised to `0..rank`, after
/// checking that its input shapes fit it: equal but for the axis
/// (Concat), or broadcastable (the element-wise ops).
fn merge_op(
    graph: &pb::GraphProto,
    ix: usize,
    a: &[usize],
    b: &[usize],
) -> Result<MergeOp, ShardError> {
    let n = &graph.node[ix];
    let shapes = format!("its inputs have shapes {a:?} and {b:?}");
    let op = match n.op_type.as_str() {
        "Concat" => {
            let axis = n
                .attribute
                .iter()
                .find(|a| a.name == "axis")
                .map(|a| a.i)
                .ok_or_else(|| fork_error(graph, ix, "Concat without an axis attribute".into()))?;
            let r = a.len() as i64;
            let norm = if axis < 0 { axis + r } else { axis };
            if !(0..r).contains(&norm) {
                return Err(fork_error(
                    graph,
                    ix,
                    format!("Concat axis {axis} is outside the rank {r} of its inputs"),
                ));
            }
            let fits = a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .enumerate()
                    .all(|(d, (x, y))| d as i64 == norm || x == y);
            if !fits {
                return Err(fork_error(
                    graph,
                    ix,
                    format!("{shapes}, which differ outside the Concat axis {axis}"),
                ));
            }
            MergeOp::Concat {
                axis: norm as usize,
            }
        }
        "Mul" => MergeOp::Mul,
        "Max" => MergeOp::Max,
        "Mean" => MergeOp::Mean,
        "Add" | "Sum" => MergeOp::Add,
        _ => {
            return Err(fork_error(
                graph,
                ix,
                format!(
                    "a merge must be one of {}",
                    fork_graph::MERGE_OPS.join(", ")
                ),
            ));
        }
    };
    let broadcast = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .all(|(&x, &y)| x == y || x == 1 || y == 1);
    if !matches!(op, MergeOp::Concat { .. }) && !broadcast {
        return Err(fork_error(
            graph,
            ix,
            format!("{shapes}, which do not broadcast for {}", n.op_type),
        ));
    }
    Ok(op)
}

/// Which merge input (0 or 1) the trusted branch feeds.
fn trusted_slot(
    topo: &Topo<'_>,
    s: &Structure,
    trusted_branch: Option<&str>,
) -> Result<usize, ShardError> {
    let graph = topo.graph;
    let Some(name) = trusted_branch else {
        let [p0, p1] = [
            branch_params(topo, &s.branches[0])?,
            branch_params(topo, &s.branches[1])?,
        ];
        // Fewer parameters stay trusted; a tie keeps the second input trusted.
        return Ok(if p0 < p1 { 0 } else { 1 });
    };
    let hits: Vec<usize> = (0..graph.node.len())
        .filter(|&ix| node_label(&graph.node[ix], ix) == name)
        .collect();
    let err = |reason: String| ShardError::TrustedBranch {
        name: name.to_string(),
        reason,
    };
    let &[ix] = &hits[..] else {
        return Err(err(if hits.is_empty() {
            "names no node of the model".into()
        } else {
            format!("{} nodes have this name; name a unique one", hits.len())
        }));
    };
    let slot = if s.branches[0].contains(&ix) {
        0
    } else if s.branches[1].contains(&ix) {
        1
    } else {
        let merge = node_label(&graph.node[s.merge], s.merge);
        return Err(err(if ix == s.merge {
            "is the merge node, not a node inside a branch".into()
        } else if s.head.contains(&ix) {
            format!("is after the merge '{merge}' (in the head), not inside a branch")
        } else {
            format!("is not a layer inside either branch of the merge '{merge}'")
        }));
    };
    if s.branches[1 - slot].is_empty() {
        return Err(err(
            "the other branch is empty (the merge reads the data input directly), so nothing would run on the pool".into(),
        ));
    }
    Ok(slot)
}

/// Trainable values read by a branch's nodes.
fn branch_params(topo: &Topo<'_>, nodes: &[usize]) -> Result<usize, ShardError> {
    let mut names: Vec<&str> = nodes
        .iter()
        .flat_map(|&ix| topo.graph.node[ix].input.iter().map(String::as_str))
        .filter(|i| {
            topo.inits
                .get(i)
                .is_some_and(|t| is_float_type(t.data_type))
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut total = 0usize;
    for n in names {
        if let Some(t) = topo.inits.get(n) {
            total = total.saturating_add(checked_elements(&format!("initializer '{n}'"), &t.dims)?);
        }
    }
    Ok(total)
}
