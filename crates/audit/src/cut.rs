//! The cut under audit: the first part of the model (the shards before the
//! cut, as one model) whose output Z_K the node after the cut receives.

use mixnn_shard::pb;

use crate::AuditError;

/// Where the model is cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitAt {
    /// After the first `K` shards of the automatic plan (`mixnn split`'s
    /// default: one parametrised layer plus the parameter-free ops after
    /// it); `K` is in `1..shards`.
    Shards(usize),
    /// After the node of this name. A module name such as `conv1` or
    /// `relu2` also matches the node `/conv1/Conv` or `/relu2/Relu` (the
    /// names PyTorch's exporter and `mixnn model` give), when exactly one
    /// node has that module.
    Node(String),
}

impl std::str::FromStr for SplitAt {
    type Err = std::convert::Infallible;

    /// A number is a shard count, anything else a node name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.parse::<usize>() {
            Ok(k) => SplitAt::Shards(k),
            Err(_) => SplitAt::Node(s.to_string()),
        })
    }
}

/// The first part of a model, up to and including the cut node.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The model before the cut, as one standalone model (shard 0 of a
    /// split at the cut): what the attacker queries (black box) or knows
    /// (white box).
    pub prefix: pb::ModelProto,
    /// Name of the last node before the cut.
    pub node: String,
    /// Per-sample shape of the model input (batch dimension dropped).
    pub input_shape: Vec<usize>,
    /// Per-sample shape of Z_K, what crosses the cut.
    pub z_shape: Vec<usize>,
}

/// Cuts `model` at `at` and returns the part before the cut.
///
/// Errors: a shard count outside `1..shards`
/// ([`AuditError::SplitOutOfRange`]), a name that matches no node or more
/// than one ([`AuditError::UnknownNode`]), and a node that is not a cut
/// point, e.g. one inside a fork where two tensors would cross
/// ([`AuditError::Split`], with the splitter's reason).
pub fn cut(model: &pb::ModelProto, at: &SplitAt) -> Result<Cut, AuditError> {
    let label = match at {
        SplitAt::Shards(k) => {
            let plan = mixnn_shard::plan(model, None)?;
            let shards = plan.shards.len();
            if *k == 0 || *k >= shards {
                return Err(AuditError::SplitOutOfRange { k: *k, shards });
            }
            let last = plan.shards[*k - 1]
                .ops
                .last()
                .ok_or_else(|| AuditError::Model(format!("shard {} has no ops", k - 1)))?;
            // `"Label (OpType)"`: the label is what explicit cuts name.
            last.rsplit_once(" (")
                .map(|(l, _)| l.to_string())
                .ok_or_else(|| AuditError::Model(format!("unexpected op label `{last}`")))?
        }
        SplitAt::Node(name) => resolve_node(model, name)?,
    };
    let plan = mixnn_shard::plan(model, Some(std::slice::from_ref(&label)))?;
    let mut shards = mixnn_shard::split(model, &plan)?;
    let first = plan
        .shards
        .first()
        .ok_or_else(|| AuditError::Model("the split has no shards".into()))?;
    if shards.is_empty() {
        return Err(AuditError::Model("the split has no shards".into()));
    }
    Ok(Cut {
        prefix: shards.swap_remove(0),
        node: label,
        input_shape: first.input_shape.iter().skip(1).copied().collect(),
        z_shape: first.output_shape.iter().skip(1).copied().collect(),
    })
}

/// The label (node name, else first output, as the splitter names nodes)
/// of the one node called `name`, or whose name is `/name/...`.
fn resolve_node(model: &pb::ModelProto, name: &str) -> Result<String, AuditError> {
    let nodes = model
        .graph
        .as_ref()
        .map(|g| g.node.as_slice())
        .unwrap_or(&[]);
    let labels: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| mixnn_shard::node_label(n, i))
        .collect();
    if labels.iter().any(|l| l == name) {
        return Ok(name.to_string());
    }
    let module = format!("/{name}/");
    let hits: Vec<&String> = labels.iter().filter(|l| l.starts_with(&module)).collect();
    match hits[..] {
        [one] => Ok(one.clone()),
        _ => Err(AuditError::UnknownNode {
            name: name.to_string(),
            matches: hits.len(),
            known: labels.join(", "),
        }),
    }
}
