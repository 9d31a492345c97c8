//! The graph plan of a fork-join as a text table.
//!
//! Read from the shards themselves (their ops, declared output shapes and
//! initializers), so the table shows exactly what each place receives.

use crate::fork::{ForkJoin, MergeOp};
use crate::graph::op_label;
use crate::pb;
use crate::pb::tensor_shape_proto::dimension::Value;
use crate::proto::is_float_type;

/// One table row: branch, shard, op, output shape, parameters, place.
type Row = [String; 6];

fn dims_text(v: Option<&pb::ValueInfoProto>) -> String {
    let dims = v
        .and_then(|v| v.r#type.as_ref())
        .and_then(|t| t.value.as_ref())
        .and_then(|pb::type_proto::Value::TensorType(t)| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(Value::DimValue(v)) => v.to_string(),
                    Some(Value::DimParam(p)) => p.clone(),
                    None => "?".to_string(),
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    format!("[{}]", dims.join(", "))
}

/// Trainable values of one shard.
fn shard_params(s: &pb::ModelProto) -> usize {
    s.graph.as_ref().map_or(0, |g| {
        g.initializer
            .iter()
            .filter(|t| is_float_type(t.data_type))
            .map(|t| t.dims.iter().map(|&d| d.max(0) as usize).product::<usize>())
            .sum()
    })
}

/// Rows of one part: one per op, shape and parameters on the shard's first.
fn part_rows(rows: &mut Vec<Row>, branch: &str, shards: &[pb::ModelProto], place: &str) {
    for (k, s) in shards.iter().enumerate() {
        let Some(g) = s.graph.as_ref() else { continue };
        for (i, n) in g.node.iter().enumerate() {
            let first = i == 0;
            let cell = |v: String| if first { v } else { String::new() };
            rows.push([
                cell(branch.to_string()),
                cell(k.to_string()),
                op_label(n, i),
                cell(dims_text(g.output.first())),
                cell(shard_params(s).to_string()),
                cell(place.to_string()),
            ]);
        }
    }
}

fn merge_text(fj: &ForkJoin) -> String {
    let op = match fj.merge {
        MergeOp::Concat { axis } => format!("Concat (axis {axis})"),
        MergeOp::Mul => "Mul".into(),
        MergeOp::Max => "Max".into(),
        MergeOp::Mean => "Mean".into(),
        MergeOp::Add => "Add".into(),
    };
    format!("{op}, untrusted branch = input {}", fj.untrusted_slot)
}

/// The graph plan of a fork-join: for each part (untrusted branch, trusted
/// branch, merge, head) its shards, ops, output shapes, parameter counts
/// and where they run ("pool" for the untrusted branch, "designer" for the
/// rest), then the parameter total of each side of the trust boundary.
pub fn render_fork_plan(fj: &ForkJoin) -> String {
    const PARAMS: usize = 4;
    let header = ["branch", "shard", "ops", "output", "params", "runs on"];
    let mut rows: Vec<Row> = Vec::new();
    part_rows(&mut rows, "untrusted", &fj.untrusted, "pool");
    if fj.trusted.is_empty() {
        rows.push([
            "trusted".into(),
            "-".into(),
            "(none: the merge reads the input itself)".into(),
            String::new(),
            "0".into(),
            "designer".into(),
        ]);
    }
    part_rows(&mut rows, "trusted", &fj.trusted, "designer");
    let merge_out = fj
        .head
        .first()
        .and_then(|s| s.graph.as_ref())
        .and_then(|g| g.input.first());
    rows.push([
        "merge".into(),
        "-".into(),
        merge_text(fj),
        dims_text(merge_out),
        "0".into(),
        "designer".into(),
    ]);
    part_rows(&mut rows, "head", &fj.head, "designer");
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i == PARAMS {
                l.push_str(&format!("{c:>w$}  "));
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    let rules = width.map(|w| "-".repeat(w));
    out.push_str(&line(rules.each_ref().map(String::as_str)));
    for r in &rows {
        out.push_str(&line(r.each_ref().map(String::as_str)));
    }
    let sum = |shards: &[pb::ModelProto]| shards.iter().map(shard_params).sum::<usize>();
    let trusted = sum(&fj.trusted) + sum(&fj.head);
    out.push_str(&format!(
        "pool: {} parameters in {} shard(s); designer: {} parameters in {} shard(s) and the merge\n",
        sum(&fj.untrusted),
        fj.untrusted.len(),
        trusted,
        fj.trusted.len() + fj.head.len()
    ));
    out
}
