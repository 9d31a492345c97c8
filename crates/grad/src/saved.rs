//! The training pair: a forward graph that also returns the activations the
//! gradient rules read, and a backward graph that takes them as inputs
//! instead of recomputing the forward pass.
//!
//! The self-contained backward graph ([`crate::TrainingGraphs::backward`])
//! holds every forward node the rules need, so each backward call pays for
//! a second forward pass: one more matrix product per Gemm, one more
//! im2col + product per Conv, one more pool. A layer always runs forward
//! before backward on the same input, so it can keep what the forward
//! computed. The split below decides, per forward tensor the gradient nodes
//! read:
//!
//! - graph inputs (data, parameters, masks), `dZ` and the shard output are
//!   inputs of the backward graph anyway;
//! - tensors made by shape-only nodes (Reshape, Flatten, Constant, ...) are
//!   recomputed: they cost a view or a copy, not arithmetic, and keeping
//!   them would hold memory between the calls;
//! - everything else is *saved*: an extra output of the training forward
//!   graph and an extra input of the training backward graph.
//!
//! Both graphs are made of the same nodes as the self-contained pair, so the
//! gradients are the same computation on the same values;
//! `testing::check_gradients` (behind the `testing` feature) checks that on
//! every model it is given.

use std::collections::HashSet;

use crate::pb;

/// A forward activation handed from the training forward graph to the
/// training backward graph.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedSpec {
    /// Tensor name (an output of the training forward graph, an input of
    /// the training backward graph).
    pub name: String,
    /// Static shape.
    pub shape: Vec<usize>,
    /// `true` for INT64 (MaxPool's argmax indices), `false` for the graph's
    /// float type.
    pub integer: bool,
}

/// Ops whose outputs are cheaper to recompute in the backward graph than to
/// keep: they move no arithmetic, only shapes.
fn shape_only(op: &str) -> bool {
    matches!(
        op,
        "Constant"
            | "Identity"
            | "Flatten"
            | "Reshape"
            | "Squeeze"
            | "Unsqueeze"
            | "Shape"
            | "Size"
    )
}

/// Result of [`split`].
pub(crate) struct Split {
    /// Nodes of the training backward graph: recomputed shape-only forward
    /// nodes, then the gradient nodes, both in their original order.
    pub nodes: Vec<pb::NodeProto>,
    /// Forward tensors to save, in forward order.
    pub saved: Vec<String>,
}

/// Splits the backward computation of `outputs` into saved forward tensors
/// and the nodes still to run. `available` are the backward graph's own
/// inputs; `storable` says whether a tensor's type can be saved (a float or
/// a known INT64), otherwise its node is recomputed whatever its op.
pub(crate) fn split(
    forward: &[pb::NodeProto],
    gradient: &[pb::NodeProto],
    outputs: &[String],
    available: &HashSet<String>,
    storable: impl Fn(&str) -> bool,
) -> Split {
    let mut needed: HashSet<String> = outputs.iter().cloned().collect();
    let keep_grad = mark_needed(gradient, &mut needed);
    let mut keep_fwd = vec![false; forward.len()];
    let mut saved = Vec::new();
    for (i, n) in forward.iter().enumerate().rev() {
        let wanted: Vec<&String> = n
            .output
            .iter()
            .filter(|o| !o.is_empty() && needed.contains(*o) && !available.contains(*o))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        if shape_only(&n.op_type) || wanted.iter().any(|o| !storable(o)) {
            keep_fwd[i] = true;
            needed.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        } else {
            saved.extend(wanted.into_iter().rev().cloned());
        }
    }
    saved.reverse();
    let mut nodes = pick(forward, &keep_fwd);
    nodes.extend(pick(gradient, &keep_grad));
    Split { nodes, saved }
}

/// Walking `nodes` backwards, marks those that produce a tensor in `needed`
/// and adds their inputs to it: the nodes the tensors first in `needed`
/// depend on.
pub(crate) fn mark_needed(nodes: &[pb::NodeProto], needed: &mut HashSet<String>) -> Vec<bool> {
    let mut keep = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    keep
}

/// The nodes marked in `keep`, in order.
pub(crate) fn pick(nodes: &[pb::NodeProto], keep: &[bool]) -> Vec<pb::NodeProto> {
    nodes
        .iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(n, _)| n.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn n(op: &str, i: &[&str], o: &[&str]) -> pb::NodeProto {
        proto::node(o[0], op, i, o, vec![])
    }

    #[test]
    fn arithmetic_is_saved_and_shapes_are_recomputed() {
        // x -> Flatten -> f -> Gemm -> h -> Relu -> y ; grads read f, h, y.
        let fwd = [
            n("Flatten", &["x"], &["f"]),
            n("Gemm", &["f", "w"], &["h"]),
            n("Sigmoid", &["h"], &["s"]),
            n("Relu", &["s"], &["y"]),
        ];
        let grad = [
            n("Mul", &["dz", "y"], &["g1"]),
            n("Mul", &["g1", "s"], &["g2"]),
            n("Gemm", &["g2", "f"], &["dw"]),
            n("Neg", &["h"], &["unused"]),
        ];
        let avail: HashSet<String> = ["x", "w", "dz", "y"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = split(&fwd, &grad, &["dw".to_string()], &avail, |_| true);
        assert_eq!(s.saved, vec!["s".to_string()]);
        let ops: Vec<&str> = s.nodes.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Flatten", "Mul", "Mul", "Gemm"]);
    }

    #[test]
    fn an_unstorable_tensor_is_recomputed_from_what_is_saved() {
        let fwd = [
            n("Relu", &["x"], &["r"]),
            n("Greater", &["r", "zero"], &["b"]),
        ];
        let grad = [n("Where", &["b", "dz", "zero"], &["dx"])];
        let avail: HashSet<String> = ["x", "dz"].iter().map(|s| s.to_string()).collect();
        let s = split(&fwd, &grad, &["dx".to_string()], &avail, |t| t != "b");
        assert_eq!(s.saved, vec!["r".to_string()]);
        assert_eq!(s.nodes.len(), 2);
    }
}
