//! Analysis of a forward shard: which input is data, which tensors are
//! parameters, which nodes matter, the static shape of every tensor, and the
//! Dropout rewrite.
//!
//! Shapes come from tract's own type analysis (it knows every op tract can
//! run, including Conv and pools), seeded with the concrete input shape; the
//! builder needs static shapes because the rules emit constant axes and
//! shapes.

use std::collections::{HashMap, HashSet};

use crate::pb;
use crate::proto::{self, FloatType};
use crate::rules;
use crate::saved;
use crate::shapes;
use crate::{GradError, ParamSpec};

/// A Dropout node found in the shard.
#[derive(Debug, Clone)]
pub(crate) struct Dropout {
    /// Index of the node in [`Analysis::nodes`].
    pub node_index: usize,
    /// Name of the mask input that replaces the node's randomness.
    pub mask: String,
    /// Drop probability.
    pub ratio: f32,
    /// Shape of the Dropout input (and of the mask).
    pub shape: Vec<usize>,
}

/// Everything the builder learns about a shard.
#[derive(Debug)]
pub(crate) struct Analysis {
    pub float: FloatType,
    /// ai.onnx opset of the model (>= 13).
    pub opset: i64,
    /// Opset imports to copy into the emitted models.
    pub opset_import: Vec<pb::OperatorSetIdProto>,
    pub ir_version: i64,
    pub input_name: String,
    pub input_shape: Vec<usize>,
    pub output_name: String,
    pub output_shape: Vec<usize>,
    /// Nodes the output depends on, topologically sorted, every one named.
    pub nodes: Vec<pb::NodeProto>,
    /// Trainable parameters, in order of first use.
    pub params: Vec<ParamSpec>,
    /// Initializers used by `nodes` that are not parameters (shapes, axes, ...).
    pub constants: Vec<pb::TensorProto>,
    /// Values of constant tensors: every initializer and Constant-node output.
    pub consts: HashMap<String, pb::TensorProto>,
    /// Static shape of every tensor.
    pub shapes: HashMap<String, Vec<usize>>,
    /// Tensors of a float type (only those can carry a gradient).
    pub float_tensors: HashSet<String>,
    pub dropouts: Vec<Dropout>,
}

/// A [`GradError::Invalid`].
pub(crate) fn invalid(msg: impl std::fmt::Display) -> GradError {
    GradError::Invalid(msg.to_string())
}

/// A [`GradError::Node`] naming `node`.
pub(crate) fn node_err(node: &pb::NodeProto, reason: impl Into<String>) -> GradError {
    GradError::Node {
        node: node.name.clone(),
        op: node.op_type.clone(),
        reason: reason.into(),
    }
}

/// The ai.onnx opset version a model imports.
fn onnx_opset(model: &pb::ModelProto) -> Option<i64> {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
}

/// Whether a node belongs to the default ONNX domain (our rules only know
/// those ops).
fn is_onnx_domain(node: &pb::NodeProto) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

/// Sorts nodes so every tensor is produced before it is read; rejects reads
/// of undefined tensors and cycles.
fn topo_sort(
    nodes: Vec<pb::NodeProto>,
    available: &HashSet<String>,
) -> Result<Vec<pb::NodeProto>, GradError> {
    let mut have: HashSet<String> = available.clone();
    let mut pending: Vec<pb::NodeProto> = nodes;
    let mut sorted = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for n in pending {
            if n.input.iter().all(|i| i.is_empty() || have.contains(i)) {
                have.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
                sorted.push(n);
            } else {
                rest.push(n);
            }
        }
        if rest.len() == before {
            let n = &rest[0];
            let missing = n
                .input
                .iter()
                .find(|i| !i.is_empty() && !have.contains(*i))
                .cloned()
                .unwrap_or_default();
            return Err(node_err(
                n,
                format!(
                    "reads tensor `{missing}`, which nothing defines (or the graph has a cycle)"
                ),
            ));
        }
        pending = rest;
    }
    Ok(sorted)
}

/// Value of a Constant node as a tensor proto named after its output.
fn constant_value(node: &pb::NodeProto) -> Option<pb::TensorProto> {
    let name = node.output.first()?.clone();
    let a = node.attribute.first()?;
    let mut t = match a.name.as_str() {
        "value" => a.t.clone()?,
        "value_float" => proto::float_tensor("", FloatType::F32, &[a.f as f64], &[]),
        "value_floats" => {
            let v: Vec<f64> = a.floats.iter().map(|&x| x as f64).collect();
            proto::float_tensor("", FloatType::F32, &v, &[v.len()])
        }
        "value_int" => proto::i64_tensor("", &[a.i], &[]),
        "value_ints" => proto::i64_tensor("", &a.ints, &[a.ints.len()]),
        _ => return None,
    };
    t.name = name;
    Some(t)
}

/// The data input: the first graph input without an initializer.
struct DataInput<'a> {
    info: &'a pb::ValueInfoProto,
    /// Its ONNX element type.
    elem: i32,
    float: FloatType,
}

/// Parameters found by [`find_params`].
struct Params {
    /// In order of first use.
    specs: Vec<ParamSpec>,
    names: HashSet<String>,
    /// Initializers read by the kept nodes, in order of first use.
    used_inits: Vec<String>,
}

/// Analyses a shard for a concrete input shape.
pub(crate) fn analyse(
    model: &pb::ModelProto,
    input_shape: &[usize],
) -> Result<Analysis, GradError> {
    let (graph, opset) = check_model(model, input_shape)?;
    let inits: HashMap<String, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let data = data_input(graph, &inits, input_shape)?;
    let output = match graph.output.as_slice() {
        [o] => o,
        outs => {
            return Err(invalid(format!(
                "a shard must have exactly one output, this one has {}",
                outs.len()
            )));
        }
    };
    let nodes = needed_nodes(graph, &inits, &output.name, &data.info.name)?;
    let params = find_params(&nodes, graph, &inits, &data)?;
    let (constants, consts) = constant_tables(&nodes, &params, &inits)?;

    check_rules(&nodes, &data.info.name, &params.names, &output.name)?;

    let (shapes, float_tensors) = shapes::infer_shapes(
        model,
        graph,
        &nodes,
        &data.info.name,
        data.elem,
        input_shape,
        &params.specs,
        &params.used_inits,
        &inits,
        output,
    )?;
    let output_shape = shapes.get(&output.name).cloned().ok_or_else(|| {
        invalid(format!(
            "could not infer the shape of output `{}`",
            output.name
        ))
    })?;
    let dropouts = find_dropouts(graph, &nodes, &consts, &shapes)?;

    Ok(Analysis {
        float: data.float,
        opset,
        opset_import: model.opset_import.clone(),
        ir_version: model.ir_version.max(7),
        input_name: data.info.name.clone(),
        input_shape: input_shape.to_vec(),
        output_name: output.name.clone(),
        output_shape,
        nodes,
        params: params.specs,
        constants,
        consts,
        shapes,
        float_tensors,
        dropouts,
    })
}

/// The model has a graph, a recent enough opset, and the input shape is sane.
fn check_model<'a>(
    model: &'a pb::ModelProto,
    input_shape: &[usize],
) -> Result<(&'a pb::GraphProto, i64), GradError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| invalid("the model has no graph"))?;
    let opset = onnx_opset(model).ok_or_else(|| invalid("the model imports no ai.onnx opset"))?;
    if opset < 13 {
        return Err(invalid(format!(
            "opset {opset} is too old: shards must use ai.onnx opset 13 or newer"
        )));
    }
    if proto::numel(input_shape).is_none() {
        return Err(invalid(format!("input shape {input_shape:?} is too large")));
    }
    Ok((graph, opset))
}

/// Finds the data input and checks its type against the given shape.
fn data_input<'a>(
    graph: &'a pb::GraphProto,
    inits: &HashMap<String, &pb::TensorProto>,
    input_shape: &[usize],
) -> Result<DataInput<'a>, GradError> {
    let info = graph
        .input
        .iter()
        .find(|i| !inits.contains_key(&i.name))
        .ok_or_else(|| invalid("every graph input has an initializer: no data input"))?;
    let (elem, declared) = proto::declared_type(info)
        .ok_or_else(|| invalid(format!("input `{}` has no tensor type", info.name)))?;
    let float = FloatType::from_onnx(elem).ok_or_else(|| {
        invalid(format!(
            "input `{}` has element type {elem}; only float and double shards are supported",
            info.name
        ))
    })?;
    if let Some(d) = declared
        && d.len() != input_shape.len()
    {
        return Err(invalid(format!(
            "input `{}` has rank {} but the given input shape {input_shape:?} has rank {}",
            info.name,
            d.len(),
            input_shape.len()
        )));
    }
    Ok(DataInput { info, elem, float })
}

/// The nodes the output depends on, named and topologically sorted.
fn needed_nodes(
    graph: &pb::GraphProto,
    inits: &HashMap<String, &pb::TensorProto>,
    output: &str,
    data_input: &str,
) -> Result<Vec<pb::NodeProto>, GradError> {
    // Name unnamed nodes after their first output, so errors can name them.
    let mut all_nodes = graph.node.clone();
    for n in &mut all_nodes {
        if n.name.is_empty() {
            n.name = n
                .output
                .first()
                .cloned()
                .unwrap_or_else(|| n.op_type.clone());
        }
    }
    let mut available: HashSet<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    available.extend(inits.keys().cloned());
    let all_nodes = topo_sort(all_nodes, &available)?;

    // Keep only what the output depends on.
    let mut needed = HashSet::from([output.to_string()]);
    let keep = saved::mark_needed(&all_nodes, &mut needed);
    let nodes = saved::pick(&all_nodes, &keep);
    let produced = nodes.iter().any(|n| n.output.iter().any(|o| o == output));
    if !produced && output != data_input && !inits.contains_key(output) {
        return Err(invalid(format!(
            "output `{output}` is not computed by any node"
        )));
    }
    Ok(nodes)
}

/// Parameters: float initializers in differentiable slots, and extra float
/// inputs with no initializer, in order of first use.
fn find_params(
    nodes: &[pb::NodeProto],
    graph: &pb::GraphProto,
    inits: &HashMap<String, &pb::TensorProto>,
    data: &DataInput<'_>,
) -> Result<Params, GradError> {
    let extra_inputs: HashMap<&str, &pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| i.name != data.info.name && !inits.contains_key(&i.name))
        .map(|i| (i.name.as_str(), i))
        .collect();
    let mut found = Params {
        specs: Vec::new(),
        names: HashSet::new(),
        used_inits: Vec::new(),
    };
    for n in nodes {
        for (idx, name) in n.input.iter().enumerate() {
            if name.is_empty() || found.names.contains(name) {
                continue;
            }
            let spec = if let Some(t) = inits.get(name) {
                if !found.used_inits.contains(name) {
                    found.used_inits.push(name.clone());
                }
                if !rules::is_differentiable_input(&n.op_type, idx)
                    || !proto::is_float_type(t.data_type)
                {
                    continue;
                }
                initializer_param(n, name, t, data.float)?
            } else if let Some(vi) = extra_inputs.get(name.as_str()) {
                input_param(name, vi, data.float)?
            } else {
                continue;
            };
            found.specs.push(spec);
            found.names.insert(name.clone());
        }
    }
    Ok(found)
}

/// A parameter with its initial value from an initializer.
fn initializer_param(
    n: &pb::NodeProto,
    name: &str,
    t: &pb::TensorProto,
    float: FloatType,
) -> Result<ParamSpec, GradError> {
    if t.data_type != float.onnx() {
        return Err(node_err(
            n,
            format!(
                "parameter `{name}` has data type {}, the graph's is {}",
                t.data_type,
                float.onnx()
            ),
        ));
    }
    let shape = proto::dims_of(t).map_err(invalid)?;
    let values = proto::tensor_f64(t).map_err(invalid)?;
    Ok(ParamSpec {
        name: name.to_string(),
        shape,
        init: Some(values.into_iter().map(|v| v as f32).collect()),
    })
}

/// A parameter declared as an extra graph input (the caller seeds it).
fn input_param(
    name: &str,
    vi: &pb::ValueInfoProto,
    float: FloatType,
) -> Result<ParamSpec, GradError> {
    let (elem, shape) = proto::declared_type(vi)
        .ok_or_else(|| invalid(format!("input `{name}` has no tensor type")))?;
    let shape: Option<Vec<usize>> = shape.and_then(|s| s.into_iter().collect());
    let shape = shape
        .ok_or_else(|| invalid(format!("parameter input `{name}` must have a static shape")))?;
    if elem != float.onnx() {
        return Err(invalid(format!(
            "extra input `{name}` has data type {elem}: only float parameters can be graph inputs"
        )));
    }
    if proto::numel(&shape).is_none() {
        return Err(invalid(format!(
            "parameter input `{name}` has an absurd shape {shape:?}"
        )));
    }
    Ok(ParamSpec {
        name: name.to_string(),
        shape,
        init: None,
    })
}

/// The initializers to copy (used ones that are not parameters) and the
/// values of every constant tensor. Every used initializer is validated
/// before tract sees it: a hostile dims field must not make anyone allocate.
fn constant_tables(
    nodes: &[pb::NodeProto],
    params: &Params,
    inits: &HashMap<String, &pb::TensorProto>,
) -> Result<(Vec<pb::TensorProto>, HashMap<String, pb::TensorProto>), GradError> {
    let mut constants = Vec::new();
    let mut consts: HashMap<String, pb::TensorProto> = HashMap::new();
    for name in &params.used_inits {
        if let Some(t) = inits.get(name) {
            proto::validate_tensor(t).map_err(invalid)?;
            consts.insert(name.clone(), (*t).clone());
            if !params.names.contains(name) {
                constants.push((*t).clone());
            }
        }
    }
    for n in nodes {
        if n.op_type == "Constant"
            && let Some(t) = constant_value(n)
        {
            consts.insert(t.name.clone(), t);
        }
    }
    Ok((constants, consts))
}

/// The Dropout nodes, each with a fresh mask input name.
fn find_dropouts(
    graph: &pb::GraphProto,
    nodes: &[pb::NodeProto],
    consts: &HashMap<String, pb::TensorProto>,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<Vec<Dropout>, GradError> {
    let mut taken: HashSet<String> = shapes.keys().cloned().collect();
    taken.extend(graph.input.iter().map(|i| i.name.clone()));
    let mut dropouts = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.op_type != "Dropout" || !is_onnx_domain(n) {
            continue;
        }
        let ratio = dropout_ratio(n, consts)?;
        if n.output
            .get(1)
            .is_some_and(|m| !m.is_empty() && nodes.iter().any(|c| c.input.contains(m)))
        {
            return Err(node_err(
                n,
                "the Dropout mask output is read by another node, which is not supported",
            ));
        }
        let x = n
            .input
            .first()
            .ok_or_else(|| node_err(n, "Dropout without input"))?;
        let shape = shapes
            .get(x)
            .cloned()
            .ok_or_else(|| node_err(n, "unknown input shape"))?;
        let base = format!("mixnn_mask_{}", dropouts.len());
        let mut mask = base.clone();
        let mut k = 0;
        while taken.contains(&mask) {
            k += 1;
            mask = format!("{base}_{k}");
        }
        taken.insert(mask.clone());
        dropouts.push(Dropout {
            node_index: i,
            mask,
            ratio,
            shape,
        });
    }
    Ok(dropouts)
}

/// A Dropout's ratio: its constant second input, else its attribute, in
/// `[0, 1)`.
fn dropout_ratio(
    n: &pb::NodeProto,
    consts: &HashMap<String, pb::TensorProto>,
) -> Result<f32, GradError> {
    let ratio = match n.input.get(1).filter(|s| !s.is_empty()) {
        Some(r) => {
            let v = consts
                .get(r)
                .and_then(|t| proto::tensor_f64(t).ok())
                .ok_or_else(|| node_err(n, "the ratio input must be a constant"))?;
            match v.as_slice() {
                [r] => *r as f32,
                _ => return Err(node_err(n, "the ratio input must be a scalar")),
            }
        }
        None => proto::find_attr(n, "ratio").map(|a| a.f).unwrap_or(0.5),
    };
    if !(0.0..1.0).contains(&ratio) {
        return Err(node_err(n, format!("ratio {ratio} is outside [0, 1)")));
    }
    Ok(ratio)
}

/// Every node on a differentiable path from the data input or a parameter to
/// the output must have a rule. Checked before shape inference so an op tract
/// cannot even analyse still gets the clear "no gradient rule" error.
fn check_rules(
    nodes: &[pb::NodeProto],
    input: &str,
    params: &HashSet<String>,
    output: &str,
) -> Result<(), GradError> {
    let mut from_src: HashSet<&str> = params.iter().map(String::as_str).collect();
    from_src.insert(input);
    let mut on_path = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        let reached = n.input.iter().enumerate().any(|(k, s)| {
            rules::is_differentiable_input(&n.op_type, k) && from_src.contains(s.as_str())
        });
        if reached {
            on_path[i] = true;
            from_src.extend(
                n.output
                    .iter()
                    .filter(|o| !o.is_empty())
                    .map(String::as_str),
            );
        }
    }
    let mut to_out: HashSet<&str> = HashSet::from([output]);
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.output.iter().any(|o| to_out.contains(o.as_str())) {
            for (k, s) in n.input.iter().enumerate() {
                if rules::is_differentiable_input(&n.op_type, k) {
                    to_out.insert(s.as_str());
                }
            }
        } else {
            on_path[i] = false;
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        // Dropout is rewritten into Muls by the builder; Constant has no input.
        let has_rule =
            is_onnx_domain(n) && (n.op_type == "Dropout" || rules::rule_for(&n.op_type).is_some());
        if on_path[i] && !has_rule {
            return Err(GradError::UnsupportedOp {
                node: n.name.clone(),
                op: n.op_type.clone(),
            });
        }
    }
    Ok(())
}
