//! Split plans: which nodes go in which shard, and what crosses between them.
//!
//! The plan is computed once (`mixnn split` prints it and writes it as
//! plan.json) and is the contract between the designer and the nodes: a
//! shard's input and output names and shapes are what its neighbours send
//! and expect.

use serde::{Deserialize, Serialize};

use crate::graph::{ShardSpan, Topo};
use crate::{ShardError, pb, shapes};

/// One shard of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Position in the chain, from 0.
    pub index: usize,
    /// The shard's nodes in order, each as `"NodeName (OpType)"`.
    pub ops: Vec<String>,
    /// Tensor the shard reads (the model input for shard 0).
    pub input_name: String,
    /// Tensor the shard writes (the model output for the last shard).
    pub output_name: String,
    /// Concrete shape of `input_name`, inferred from the model; what the
    /// previous shard (or the data source) must send.
    pub input_shape: Vec<usize>,
    /// Concrete shape of `output_name`, inferred from the model; what the
    /// next shard (or the loss) receives.
    pub output_shape: Vec<usize>,
    /// Number of trainable (floating-point initializer) values.
    pub param_count: usize,
}

/// A chain of shards covering every node of a model, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The shards in chain order (`shards[i].index == i`), each reading what
    /// the one before writes.
    pub shards: Vec<ShardInfo>,
}

/// Plans a split of `model`.
///
/// With `cuts = None` the plan has the paper's Table 1 shape: one shard per
/// node with parameters (Gemm, MatMul with its bias Add, Conv...) plus the
/// parameter-free nodes after it; parameter-free nodes before the first such
/// node join the first shard. With explicit cuts, a shard ends after each
/// named node (names in any order). Either way every cut is checked: exactly
/// one tensor may cross it and no initializer may be used on both sides;
/// otherwise the error names the node and why.
pub fn plan(model: &pb::ModelProto, cuts: Option<&[String]>) -> Result<Plan, ShardError> {
    let topo = Topo::new(model)?;
    let ends = match cuts {
        None => topo.automatic_ends(),
        Some(cuts) => topo.explicit_ends(cuts)?,
    };
    let spans = topo.shards(&ends)?;
    let names: Vec<&str> = spans
        .iter()
        .flat_map(|s| [s.input.as_str(), s.output.as_str()])
        .collect();
    let types = shapes::infer(model, &names)?;
    let shape_of = |name: &str| {
        types
            .get(name)
            .map(|t| t.shape.clone())
            .ok_or_else(|| ShardError::Shape(format!("no shape for tensor '{name}'")))
    };
    let mut shards = Vec::with_capacity(spans.len());
    for (index, span) in spans.iter().enumerate() {
        let nodes = topo.shard_nodes(span);
        shards.push(ShardInfo {
            index,
            ops: topo.labels(span.nodes.clone()),
            input_name: span.input.clone(),
            output_name: span.output.clone(),
            input_shape: shape_of(&span.input)?,
            output_shape: shape_of(&span.output)?,
            param_count: Topo::param_count(&topo.shard_inits(&nodes))?,
        });
    }
    Ok(Plan { shards })
}

/// Recovers the node spans of a plan and checks that the plan describes
/// this model: the ops lists cover the nodes in order, and each cut's
/// crossing tensor is the one the plan names.
pub(crate) fn spans_of(topo: &Topo<'_>, plan: &Plan) -> Result<Vec<ShardSpan>, ShardError> {
    if plan.shards.is_empty() {
        return Err(ShardError::Plan("the plan has no shards".into()));
    }
    let mut ends = Vec::with_capacity(plan.shards.len());
    let mut next = 0usize;
    for (k, s) in plan.shards.iter().enumerate() {
        if s.index != k {
            return Err(ShardError::Plan(format!(
                "shard at position {k} has index {}",
                s.index
            )));
        }
        if s.ops.is_empty() {
            return Err(ShardError::Plan(format!("shard {k} has no ops")));
        }
        let end = next + s.ops.len();
        if end > topo.len() {
            return Err(ShardError::Plan(format!(
                "the plan lists more ops than the model's {} nodes",
                topo.len()
            )));
        }
        let actual = topo.labels(next..end);
        if let Some((want, got)) = s.ops.iter().zip(&actual).find(|(a, b)| a != b) {
            return Err(ShardError::Plan(format!(
                "shard {k} lists op '{want}' where the model has '{got}'"
            )));
        }
        ends.push(end - 1);
        next = end;
    }
    if next != topo.len() {
        return Err(ShardError::Plan(format!(
            "the plan covers {next} of the model's {} nodes",
            topo.len()
        )));
    }
    let spans = topo.shards(&ends)?;
    for (s, span) in plan.shards.iter().zip(&spans) {
        if s.input_name != span.input || s.output_name != span.output {
            return Err(ShardError::Plan(format!(
                "shard {} goes '{}' -> '{}' in the plan but '{}' -> '{}' in the model",
                s.index, s.input_name, s.output_name, span.input, span.output
            )));
        }
    }
    Ok(spans)
}

/// The plan as a text table (shard, ops, input shape, output shape,
/// params), one op per line, with the parameter total at the bottom.
pub fn render_plan(plan: &Plan) -> String {
    let header = ["shard", "ops", "input", "output", "params"];
    let shape = |s: &[usize]| {
        let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
        format!("[{}]", dims.join(", "))
    };
    // One table row per op; shape and count columns only on a shard's first row.
    let mut rows: Vec<[String; 5]> = Vec::new();
    for s in &plan.shards {
        for (i, op) in s.ops.iter().enumerate() {
            rows.push(if i == 0 {
                [
                    s.index.to_string(),
                    op.clone(),
                    shape(&s.input_shape),
                    shape(&s.output_shape),
                    s.param_count.to_string(),
                ]
            } else {
                [
                    String::new(),
                    op.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]
            });
        }
    }
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i == 4 {
                l.push_str(&format!("{c:>w$}"));
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(&header);
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&rule.iter().map(String::as_str).collect::<Vec<_>>()));
    for r in &rows {
        out.push_str(&line(&r.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    let total: usize = plan.shards.iter().map(|s| s.param_count).sum();
    out.push_str(&format!(
        "{} shard(s), {} parameters in total\n",
        plan.shards.len(),
        total
    ));
    out
}
