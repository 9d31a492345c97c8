//! Assembles the forward, backward and inference models from an
//! [`Analysis`](crate::graph::Analysis), chaining the gradient rules in
//! reverse topological order.

use std::collections::{HashMap, HashSet};

use crate::graph::{self, Analysis};
use crate::pb;
use crate::proto;
use crate::rules::{self, Ctx};
use crate::saved::{self, SavedSpec};
use crate::{GRAD_INPUT, GRAD_OUT, GradError, GradOptions, ParamSpec, TrainingGraphs};

/// How Dropout nodes are rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DropoutMode {
    /// `y = x * mask * 1/(1-ratio)`, mask a graph input.
    Train,
    /// `y = x` (test phase).
    Inference,
}

/// The analysed nodes with every Dropout rewritten. Records the shapes of the
/// new tensors so the rules can use them.
fn rewrite_dropouts(a: &mut Analysis, mode: DropoutMode) -> Vec<pb::NodeProto> {
    let mut out = Vec::with_capacity(a.nodes.len());
    for (i, n) in a.nodes.iter().enumerate() {
        let Some(d) = a.dropouts.iter().find(|d| d.node_index == i) else {
            out.push(n.clone());
            continue;
        };
        // `graph::analyse` checked that input 0 exists; output 0 likewise.
        let x = n.input.first().cloned().unwrap_or_default();
        let y = n.output.first().cloned().unwrap_or_default();
        match mode {
            DropoutMode::Inference => {
                out.push(proto::node(&n.name, "Identity", &[&x], &[&y], vec![]));
            }
            DropoutMode::Train if d.ratio == 0.0 => {
                out.push(proto::node(&n.name, "Mul", &[&x, &d.mask], &[&y], vec![]));
                a.shapes.insert(d.mask.clone(), d.shape.clone());
            }
            DropoutMode::Train => {
                let masked = format!("{}/masked", d.mask);
                let scale = format!("{}/scale", d.mask);
                let t = proto::float_tensor(&scale, a.float, &[1.0 / (1.0 - d.ratio as f64)], &[]);
                out.push(proto::node(
                    &scale,
                    "Constant",
                    &[],
                    &[&scale],
                    vec![proto::attr_tensor("value", t.clone())],
                ));
                out.push(proto::node(
                    &format!("{}/mask", n.name),
                    "Mul",
                    &[&x, &d.mask],
                    &[&masked],
                    vec![],
                ));
                out.push(proto::node(
                    &n.name,
                    "Mul",
                    &[&masked, &scale],
                    &[&y],
                    vec![],
                ));
                a.shapes.insert(d.mask.clone(), d.shape.clone());
                a.shapes.insert(masked.clone(), d.shape.clone());
                a.shapes.insert(scale.clone(), vec![]);
                a.float_tensors
                    .extend([d.mask.clone(), masked, scale.clone()]);
                a.consts.insert(scale, t);
            }
        }
    }
    out
}

fn make_model(
    a: &Analysis,
    name: &str,
    nodes: Vec<pb::NodeProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
) -> pb::ModelProto {
    let mut opset_import = a.opset_import.clone();
    if !opset_import
        .iter()
        .any(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        opset_import.push(pb::OperatorSetIdProto {
            domain: String::new(),
            version: a.opset,
        });
    }
    // Initializers only for the constants some node still reads.
    let read: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let initializer = a
        .constants
        .iter()
        .filter(|t| read.contains(t.name.as_str()))
        .cloned()
        .collect();
    pb::ModelProto {
        ir_version: a.ir_version,
        opset_import,
        producer_name: "mixnn-grad".into(),
        graph: Some(pb::GraphProto {
            name: name.into(),
            node: nodes,
            initializer,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Drops nodes that no output depends on (forward nodes the backward pass
/// does not need, constants of unused branches).
fn prune(nodes: Vec<pb::NodeProto>, outputs: &[String]) -> Vec<pb::NodeProto> {
    let mut needed: HashSet<String> = outputs.iter().cloned().collect();
    let keep = saved::mark_needed(&nodes, &mut needed);
    saved::pick(&nodes, &keep)
}

fn param_inputs(a: &Analysis) -> Vec<pb::ValueInfoProto> {
    let f = a.float.onnx();
    let mut v = vec![proto::value_info(&a.input_name, f, &a.input_shape)];
    v.extend(
        a.params
            .iter()
            .map(|p| proto::value_info(&p.name, f, &p.shape)),
    );
    v
}

fn output_info(a: &Analysis) -> pb::ValueInfoProto {
    proto::value_info(&a.output_name, a.float.onnx(), &a.output_shape)
}

/// See [`crate::build`].
pub(crate) fn build(
    model: &pb::ModelProto,
    opts: &GradOptions,
) -> Result<TrainingGraphs, GradError> {
    let mut a = graph::analyse(model, &opts.input_shape)?;
    for reserved in [GRAD_OUT, GRAD_INPUT] {
        if a.shapes.contains_key(reserved) {
            return Err(GradError::Invalid(format!(
                "the shard uses the reserved tensor name `{reserved}`"
            )));
        }
    }
    let mut nodes = rewrite_dropouts(&mut a, DropoutMode::Train);
    let f = a.float.onnx();

    let mut inputs = param_inputs(&a);
    inputs.extend(
        a.dropouts
            .iter()
            .map(|d| proto::value_info(&d.mask, f, &d.shape)),
    );
    let forward = make_model(
        &a,
        "mixnn_forward",
        nodes.clone(),
        inputs.clone(),
        vec![output_info(&a)],
    );

    let requires = requires_grad(&a, &nodes, opts.need_input_grad);
    let mut taken = taken_names(&a, &inputs, &nodes);
    let indices = expose_maxpool_indices(&mut a, &mut nodes, &requires, &mut taken);

    let mut ctx = Ctx::new(&a, &requires, taken);
    let grads = chain_rules(&mut ctx, &nodes, &a.output_name, &requires)?;
    let (outputs, out_names) = gradient_outputs(&mut ctx, &a, &grads, opts.need_input_grad)?;
    let gradient = std::mem::take(&mut ctx.nodes);

    let mut all = nodes.clone();
    all.extend(gradient.iter().cloned());
    let all = prune(all, &out_names);
    let mut b_inputs = inputs.clone();
    b_inputs.push(proto::value_info(GRAD_OUT, f, &a.output_shape));
    let backward = make_model(&a, "mixnn_backward", all, b_inputs.clone(), outputs.clone());

    let pair = Pair {
        nodes,
        gradient,
        out_names,
        inputs,
        b_inputs,
        outputs,
    };
    let (train_forward, train_backward, saved) = training_pair(&a, pair, &indices)?;

    Ok(TrainingGraphs {
        forward,
        backward,
        train_forward,
        train_backward,
        saved,
        masks: a
            .dropouts
            .iter()
            .map(|d| crate::MaskSpec {
                name: d.mask.clone(),
                shape: d.shape.clone(),
                ratio: d.ratio,
            })
            .collect(),
        params: a.params.clone(),
        input_name: a.input_name.clone(),
        output_name: a.output_name.clone(),
        input_shape: a.input_shape.clone(),
        output_shape: a.output_shape.clone(),
    })
}

/// Every tensor and node name the forward graph uses, and the reserved
/// names: fresh names must avoid them all.
fn taken_names(
    a: &Analysis,
    inputs: &[pb::ValueInfoProto],
    nodes: &[pb::NodeProto],
) -> HashSet<String> {
    let mut taken: HashSet<String> = a.shapes.keys().cloned().collect();
    taken.extend(inputs.iter().map(|i| i.name.clone()));
    taken.extend(
        nodes
            .iter()
            .flat_map(|n| n.output.iter().chain([&n.name]).cloned()),
    );
    taken.extend([GRAD_OUT.to_string(), GRAD_INPUT.to_string()]);
    taken
}

/// Which tensors need a gradient: those depending, through differentiable
/// slots, on a parameter (or on the input when dX is wanted).
fn requires_grad(a: &Analysis, nodes: &[pb::NodeProto], need_input_grad: bool) -> HashSet<String> {
    let mut requires: HashSet<String> = a.params.iter().map(|p| p.name.clone()).collect();
    if need_input_grad {
        requires.insert(a.input_name.clone());
    }
    for n in nodes {
        if reads_required(n, &requires) {
            requires.extend(
                n.output
                    .iter()
                    .filter(|o| a.float_tensors.contains(*o))
                    .cloned(),
            );
        }
    }
    requires
}

/// Whether `n` reads a tensor that needs a gradient in a differentiable slot.
fn reads_required(n: &pb::NodeProto, requires: &HashSet<String>) -> bool {
    n.input
        .iter()
        .enumerate()
        .any(|(k, s)| rules::is_differentiable_input(&n.op_type, k) && requires.contains(s))
}

/// MaxPool's rule reads the argmax indices: have the forward node itself
/// produce them, so the training pair saves them instead of pooling again.
/// Returns the names of the new index tensors.
fn expose_maxpool_indices(
    a: &mut Analysis,
    nodes: &mut [pb::NodeProto],
    requires: &HashSet<String>,
    taken: &mut HashSet<String>,
) -> HashSet<String> {
    let mut indices: HashSet<String> = HashSet::new();
    for n in nodes {
        let wants = n.op_type == "MaxPool"
            && n.output.get(1).is_none_or(|o| o.is_empty())
            && proto::find_attr(n, "storage_order").is_none_or(|a| a.i == 0)
            && n.input.first().is_some_and(|x| requires.contains(x));
        let Some(y_shape) = n.output.first().and_then(|y| a.shapes.get(y)).cloned() else {
            continue;
        };
        if !wants {
            continue;
        }
        let mut name = format!("{}/indices", n.name);
        while !taken.insert(name.clone()) {
            name.push('_');
        }
        n.output.truncate(1);
        n.output.push(name.clone());
        a.shapes.insert(name.clone(), y_shape);
        indices.insert(name);
    }
    indices
}

/// Runs the gradient rules in reverse topological order, from dZ on the
/// output. Returns the gradient parts of every tensor that received some
/// and was not consumed by a rule (the inputs and parameters).
fn chain_rules(
    ctx: &mut Ctx<'_>,
    nodes: &[pb::NodeProto],
    output: &str,
    requires: &HashSet<String>,
) -> Result<HashMap<String, Vec<String>>, GradError> {
    let mut grads: HashMap<String, Vec<String>> = HashMap::new();
    grads.insert(output.to_string(), vec![GRAD_OUT.to_string()]);
    for n in nodes.iter().rev() {
        if !reads_required(n, requires) || !n.output.iter().any(|o| grads.contains_key(o)) {
            continue;
        }
        ctx.set_prefix(&n.name);
        let mut gy = Vec::with_capacity(n.output.len());
        for o in &n.output {
            gy.push(match grads.remove(o) {
                Some(parts) => Some(ctx.sum(&parts)?),
                None => None,
            });
        }
        let rule = rules::rule_for(&n.op_type).ok_or_else(|| GradError::UnsupportedOp {
            node: n.name.clone(),
            op: n.op_type.clone(),
        })?;
        let gx = rule(ctx, n, &gy)?;
        for (k, g) in gx.into_iter().enumerate() {
            if let (Some(g), Some(x)) = (g, n.input.get(k))
                && requires.contains(x)
            {
                grads.entry(x.clone()).or_default().push(g);
            }
        }
    }
    Ok(grads)
}

/// Gradients of the backward outputs (dX when wanted, then one per
/// parameter), renamed by Identity nodes appended to `ctx.nodes` so every
/// output has its own name even when two gradients are the same tensor.
/// Returns the output infos and names.
fn gradient_outputs(
    ctx: &mut Ctx<'_>,
    a: &Analysis,
    grads: &HashMap<String, Vec<String>>,
    need_input_grad: bool,
) -> Result<(Vec<pb::ValueInfoProto>, Vec<String>), GradError> {
    ctx.set_prefix("mixnn");
    let mut wanted: Vec<(String, String, Vec<usize>)> = Vec::new();
    if need_input_grad {
        wanted.push((
            a.input_name.clone(),
            GRAD_INPUT.to_string(),
            a.input_shape.clone(),
        ));
    }
    for p in &a.params {
        let preferred = format!("mixnn_grad/{}", p.name);
        let name = if ctx.take_name(&preferred) {
            preferred
        } else {
            ctx.fresh(&format!("{}.grad", p.name))
        };
        wanted.push((p.name.clone(), name, p.shape.clone()));
    }
    let mut outputs = Vec::new();
    let mut out_nodes = Vec::new();
    for (src, out_name, shape) in &wanted {
        let g = match grads.get(src) {
            Some(parts) => ctx.sum(parts)?,
            None => ctx.zeros(shape)?,
        };
        out_nodes.push(proto::node(
            out_name,
            "Identity",
            &[&g],
            &[out_name],
            vec![],
        ));
        outputs.push(proto::value_info(out_name, a.float.onnx(), shape));
    }
    ctx.nodes.append(&mut out_nodes);
    let out_names = wanted.into_iter().map(|w| w.1).collect();
    Ok((outputs, out_names))
}

/// What [`training_pair`] is made from.
struct Pair {
    /// Forward nodes (Dropout rewritten, MaxPool indices exposed).
    nodes: Vec<pb::NodeProto>,
    /// Gradient nodes, output Identities last.
    gradient: Vec<pb::NodeProto>,
    /// Names of the backward outputs.
    out_names: Vec<String>,
    /// Forward inputs.
    inputs: Vec<pb::ValueInfoProto>,
    /// Backward inputs (forward inputs, then dZ).
    b_inputs: Vec<pb::ValueInfoProto>,
    /// Backward outputs.
    outputs: Vec<pb::ValueInfoProto>,
}

/// The training pair (see `saved`): forward returns [output, saved...],
/// backward takes them after dZ.
fn training_pair(
    a: &Analysis,
    p: Pair,
    indices: &HashSet<String>,
) -> Result<(pb::ModelProto, pb::ModelProto, Vec<SavedSpec>), GradError> {
    let mut available: HashSet<String> = p.b_inputs.iter().map(|i| i.name.clone()).collect();
    available.insert(a.output_name.clone());
    let storable = |t: &str| indices.contains(t) || a.float_tensors.contains(t);
    let split = saved::split(&p.nodes, &p.gradient, &p.out_names, &available, storable);
    let saved: Vec<SavedSpec> = split
        .saved
        .iter()
        .map(|name| {
            Ok(SavedSpec {
                name: name.clone(),
                shape: a.shapes.get(name).cloned().ok_or_else(|| {
                    GradError::Invalid(format!("no static shape known for tensor `{name}`"))
                })?,
                integer: indices.contains(name),
            })
        })
        .collect::<Result<_, GradError>>()?;
    let saved_info = |s: &SavedSpec| {
        let elem = if s.integer {
            pb::tensor_proto::DataType::Int64 as i32
        } else {
            a.float.onnx()
        };
        proto::value_info(&s.name, elem, &s.shape)
    };
    let mut tf_outputs = vec![output_info(a)];
    tf_outputs.extend(saved.iter().map(saved_info));
    let train_forward = make_model(
        a,
        "mixnn_train_forward",
        p.nodes,
        p.inputs,
        tf_outputs.clone(),
    );
    let mut tb_inputs = p.b_inputs;
    tb_inputs.extend(tf_outputs);
    let train_backward = make_model(a, "mixnn_train_backward", split.nodes, tb_inputs, p.outputs);
    Ok((train_forward, train_backward, saved))
}

/// See [`crate::inference_graph`].
pub(crate) fn inference_graph(
    model: &pb::ModelProto,
    input_shape: &[usize],
) -> Result<(pb::ModelProto, Vec<ParamSpec>), GradError> {
    let mut a = graph::analyse(model, input_shape)?;
    let nodes = rewrite_dropouts(&mut a, DropoutMode::Inference);
    let m = make_model(
        &a,
        "mixnn_inference",
        nodes,
        param_inputs(&a),
        vec![output_info(&a)],
    );
    Ok((m, a.params))
}
