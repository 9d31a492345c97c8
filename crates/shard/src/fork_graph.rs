//! Finding the fork and the merge of a fork-join (Bident) graph.
//!
//! Only nodes that compute *values* from the data input count as the
//! network's data flow. `Shape`/`Size` read a tensor's shape, not its
//! values, so the `Shape -> Gather -> Unsqueeze -> Concat -> Reshape` chains
//! PyTorch writes for `x.view(x.size(0), -1)` are not a second path: they
//! ride along with the part that reads them, like Constant nodes.
//!
//! On that value graph (source: the data input) the merge is the first
//! node after the input that every path to the output crosses (the input's
//! first dominator on the way to the output). When that node joins two
//! paths, the model is a fork-join: the two branches are the ancestors of
//! its two inputs, the head everything after it. Anything else (a third
//! branch, branches that read each other, a head that forks again) is an
//! error naming the node, because the designer could not run it as three
//! chains and one merge.

use std::collections::{HashMap, HashSet};

use crate::graph::node_label;
use crate::{ShardError, pb};

/// The merge ops a fork-join may use (Add and Sum both mean a + b).
pub const MERGE_OPS: [&str; 6] = ["Concat", "Mul", "Max", "Mean", "Add", "Sum"];

/// The parts of a fork-join graph, as node positions of the graph.
#[derive(Debug)]
pub struct Structure {
    /// The merge node.
    pub merge: usize,
    /// The value nodes feeding merge input 0 and input 1, in graph order;
    /// empty when that input is the data input itself.
    pub branches: [Vec<usize>; 2],
    /// The merge node's two inputs.
    pub merge_inputs: [String; 2],
    /// The value nodes after the merge, in graph order; never empty.
    pub head: Vec<usize>,
    /// Per node: whether it computes values from the data input (the
    /// others are constants and shape computations, copied where read).
    pub is_value: Vec<bool>,
}

/// The value graph: vertex 0 is the data input, vertex `ix + 1` is node `ix`.
struct Values<'a> {
    graph: &'a pb::GraphProto,
    /// Distinct value-producing predecessors of each vertex.
    preds: Vec<Vec<usize>>,
    /// Whether each vertex computes values from the input.
    is_value: Vec<bool>,
    /// Producer vertex of each value tensor.
    producer: HashMap<&'a str, usize>,
    idom: Vec<usize>,
}

/// A [`ShardError::Fork`] naming node `ix`.
pub fn fork_error(graph: &pb::GraphProto, ix: usize, reason: String) -> ShardError {
    let n = &graph.node[ix];
    ShardError::Fork {
        node: node_label(n, ix),
        op: n.op_type.clone(),
        reason,
    }
}

impl<'a> Values<'a> {
    fn new(graph: &'a pb::GraphProto, input: &'a str) -> Self {
        let v = graph.node.len() + 1;
        let mut producer = HashMap::from([(input, 0usize)]);
        let mut preds = vec![Vec::new(); v];
        let mut is_value = vec![false; v];
        is_value[0] = true;
        for (ix, n) in graph.node.iter().enumerate() {
            let mut p: Vec<usize> = n
                .input
                .iter()
                .filter_map(|i| producer.get(i.as_str()).copied())
                .collect();
            p.sort_unstable();
            p.dedup();
            // Shape and Size see only the shape of what they read.
            if p.is_empty() || matches!(n.op_type.as_str(), "Shape" | "Size") {
                continue;
            }
            is_value[ix + 1] = true;
            preds[ix + 1] = p;
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(o.as_str(), ix + 1);
            }
        }
        let mut idom = vec![0; v];
        let mut depth = vec![0; v];
        for x in 1..v {
            if let Some((&first, rest)) = preds[x].split_first() {
                let d = rest
                    .iter()
                    .fold(first, |acc, &p| lca(&idom, &depth, acc, p));
                idom[x] = d;
                depth[x] = depth[d] + 1;
            }
        }
        Values {
            graph,
            preds,
            is_value,
            producer,
            idom,
        }
    }

    /// Value nodes (as node positions) that `vertex` depends on, itself included.
    fn ancestors(&self, vertex: usize) -> HashSet<usize> {
        let mut seen = HashSet::new();
        let mut stack = vec![vertex];
        while let Some(x) = stack.pop() {
            if x == 0 || !seen.insert(x - 1) {
                continue;
            }
            stack.extend(&self.preds[x]);
        }
        seen
    }

    fn error(&self, ix: usize, reason: String) -> ShardError {
        fork_error(self.graph, ix, reason)
    }

    fn label(&self, ix: usize) -> String {
        node_label(&self.graph.node[ix], ix)
    }
}

/// Lowest common ancestor of two vertices in the dominator tree.
fn lca(idom: &[usize], depth: &[usize], mut a: usize, mut b: usize) -> usize {
    while a != b {
        if depth[a] >= depth[b] {
            a = idom[a];
        } else {
            b = idom[b];
        }
    }
    a
}

/// Finds the fork-join structure of a validated one-input, one-output graph;
/// `None` when the input's first articulation is not a join (a chain, or a
/// skip connection further on, which the chain splitter reports).
pub fn analyse(
    graph: &pb::GraphProto,
    input: &str,
    output: &str,
) -> Result<Option<Structure>, ShardError> {
    let vals = Values::new(graph, input);
    let Some(&out) = vals.producer.get(output).filter(|&&o| o > 0) else {
        return Ok(None);
    };
    let mut spine = vec![out];
    while let Some(&d) = spine.last().filter(|&&d| vals.idom[d] != 0) {
        spine.push(vals.idom[d]);
    }
    let Some(&first) = spine.last() else {
        return Ok(None);
    };
    if vals.preds[first].len() < 2 {
        return Ok(None);
    }
    let merge = first - 1;
    let node = &graph.node[merge];
    let inputs: Vec<&String> = node.input.iter().filter(|i| !i.is_empty()).collect();
    let [a, b] = inputs[..] else {
        return Err(vals.error(
            merge,
            format!(
                "the paths from the data input meet here, but this node has {} inputs; a Bident merge joins exactly two branches",
                inputs.len()
            ),
        ));
    };
    if !MERGE_OPS.contains(&node.op_type.as_str()) {
        return Err(vals.error(
            merge,
            format!(
                "the two branches from the data input meet here, but a merge must be one of {}",
                MERGE_OPS.join(", ")
            ),
        ));
    }
    let branch_of = |t: &str| {
        let v = vals.producer.get(t).copied().unwrap_or(0);
        if v == 0 {
            HashSet::new()
        } else {
            vals.ancestors(v)
        }
    };
    let sets = [branch_of(a), branch_of(b)];
    check_branches(&vals, merge, &sets)?;
    let head = head_nodes(&vals, merge, out)?;
    let reaches_out = vals.ancestors(out);
    let placed = |ix: &usize| {
        *ix == merge
            || sets[0].contains(ix)
            || sets[1].contains(ix)
            || (head.contains(ix) && reaches_out.contains(ix))
    };
    if let Some(ix) = (0..graph.node.len()).find(|ix| vals.is_value[ix + 1] && !placed(ix)) {
        return Err(vals.error(
            ix,
            "its result never reaches the model output (dead node or a second output)".into(),
        ));
    }
    let branches = sets.map(|s| {
        let mut v: Vec<usize> = s.into_iter().collect();
        v.sort_unstable();
        v
    });
    Ok(Some(Structure {
        merge,
        branches,
        merge_inputs: [a.clone(), b.clone()],
        head,
        is_value: vals.is_value[1..].to_vec(),
    }))
}

/// The two branches share no node and neither holds a second merge.
fn check_branches(
    vals: &Values<'_>,
    merge: usize,
    sets: &[HashSet<usize>; 2],
) -> Result<(), ShardError> {
    let shared: HashSet<usize> = sets[0].intersection(&sets[1]).copied().collect();
    let mut shared_sorted: Vec<usize> = shared.iter().copied().collect();
    shared_sorted.sort_unstable();
    for &p in &shared_sorted {
        // Who reads node p's output on each side, outside the shared nodes.
        let readers = |k: usize| {
            let mut r: Vec<String> = sets[k]
                .iter()
                .filter(|ix| !shared.contains(ix) && vals.preds[**ix + 1].contains(&(p + 1)))
                .map(|&ix| format!("'{}'", vals.label(ix)))
                .collect();
            r.sort_unstable();
            if vals.preds[merge + 1].contains(&(p + 1)) && r.is_empty() {
                r.push("the merge itself".into());
            }
            r.join(", ")
        };
        let (r0, r1) = (readers(0), readers(1));
        if r0.is_empty() && r1.is_empty() {
            continue;
        }
        return Err(vals.error(
            p,
            format!(
                "is used by both branches of the merge '{}' (towards input 0 by {}; towards input 1 by {}): a branch may not read from the other, they share only the data input",
                vals.label(merge),
                if r0.is_empty() { "-".into() } else { r0 },
                if r1.is_empty() { "-".into() } else { r1 },
            ),
        ));
    }
    if let Some(&p) = shared_sorted.first() {
        return Err(vals.error(
            p,
            "is used by both branches: a branch may not read from the other".into(),
        ));
    }
    let mut all: Vec<usize> = sets[0].union(&sets[1]).copied().collect();
    all.sort_unstable();
    for ix in all {
        if vals.preds[ix + 1].len() >= 2 && vals.idom[ix + 1] == 0 {
            return Err(vals.error(
                ix,
                format!(
                    "paths from the data input already meet here, before the merge '{}': a fork-join has exactly two branches and one merge",
                    vals.label(merge)
                ),
            ));
        }
    }
    Ok(())
}

/// The value nodes after the merge, checked to form a chain that reads
/// nothing from before the merge.
fn head_nodes(vals: &Values<'_>, merge: usize, out: usize) -> Result<Vec<usize>, ShardError> {
    if out == merge + 1 {
        return Err(vals.error(
            merge,
            "the merge writes the model output: a fork-join needs at least one layer after the merge (the head)".into(),
        ));
    }
    let mut after: HashSet<usize> = HashSet::from([merge + 1]);
    let mut head = Vec::new();
    for x in merge + 2..vals.preds.len() {
        if !vals.is_value[x] {
            continue;
        }
        let ix = x - 1;
        let from_head = vals.preds[x].iter().filter(|p| after.contains(p)).count();
        if from_head == 0 {
            continue;
        }
        if from_head < vals.preds[x].len() {
            return Err(vals.error(
                ix,
                format!(
                    "is after the merge '{}' but also reads a tensor from before it: the head must take only the merge output",
                    vals.label(merge)
                ),
            ));
        }
        if vals.preds[x].len() >= 2 {
            return Err(vals.error(
                ix,
                format!(
                    "the head forks again after the merge '{}' (skip connection or second merge): a fork-join has one fork, one merge and then a chain",
                    vals.label(merge)
                ),
            ));
        }
        after.insert(x);
        head.push(ix);
    }
    Ok(head)
}
