//! Loss graphs. NLL, softmax cross-entropy and mean squared error are not
//! tract ops, so each is decomposed into standard ONNX ops, with the
//! analytic gradient as a second output (so the caller needs no backward
//! pass through the loss).

use crate::pb;
use crate::proto::{self, FloatType};

/// Which loss [`loss_graph`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Negative log-likelihood: the logits are already log-probabilities
    /// (e.g. the model ends in LogSoftmax). `loss = -mean_n logits[n, label_n]`.
    Nll,
    /// Softmax cross-entropy on raw logits:
    /// `loss = -mean_n log_softmax(logits)[n, label_n]`.
    SoftmaxCrossEntropy,
}

/// The loss model, in f32: inputs `logits` float `[batch, classes]` and
/// `labels` int64 `[batch]`; outputs `loss` (float, shape `[]`, mean over
/// the batch) and `grad_logits` (`[batch, classes]`, d loss / d logits).
pub fn loss_graph(kind: LossKind, batch: usize, classes: usize) -> pb::ModelProto {
    loss_graph_typed(kind, batch, classes, FloatType::F32)
}

/// [`loss_graph`] in a chosen float type (f64 for the gradient checks).
pub fn loss_graph_typed(
    kind: LossKind,
    batch: usize,
    classes: usize,
    float: FloatType,
) -> pb::ModelProto {
    let f = float.onnx();
    let inv_n = 1.0 / batch.max(1) as f64;
    let mut nodes = Vec::new();
    let n = &mut nodes;
    constant(n, proto::i64_tensor("axes_1", &[1], &[1]));
    constant(n, proto::i64_tensor("axes_01", &[0, 1], &[2]));
    let range: Vec<i64> = (0..classes as i64).collect();
    constant(n, proto::i64_tensor("class_ids", &range, &[1, classes]));
    constant(n, proto::float_tensor("minus_inv_n", float, &[-inv_n], &[]));
    constant(n, proto::float_tensor("inv_n", float, &[inv_n], &[]));

    let logp = match kind {
        LossKind::Nll => "logits",
        LossKind::SoftmaxCrossEntropy => {
            n.push(proto::node(
                "log_softmax",
                "LogSoftmax",
                &["logits"],
                &["logp"],
                vec![proto::attr_int("axis", 1)],
            ));
            "logp"
        }
    };
    let axis_1 = || vec![proto::attr_int("axis", 1)];
    step(n, "labels_col", "Unsqueeze", &["labels", "axes_1"], vec![]);
    step(
        n,
        "picked",
        "GatherElements",
        &[logp, "labels_col"],
        axis_1(),
    );
    let keepdims_0 = vec![proto::attr_int("keepdims", 0)];
    step(n, "total", "ReduceSum", &["picked", "axes_01"], keepdims_0);
    step(n, "loss", "Mul", &["total", "minus_inv_n"], vec![]);
    // One-hot of the labels without OneHot: labels_col == [0..C).
    step(n, "is_label", "Equal", &["labels_col", "class_ids"], vec![]);
    let to_f = vec![proto::attr_int("to", f as i64)];
    step(n, "one_hot", "Cast", &["is_label"], to_f);
    match kind {
        LossKind::Nll => {
            // d/dlogits of -mean(logits[n, label_n]) = -onehot / N.
            step(n, "grad_logits", "Mul", &["one_hot", "minus_inv_n"], vec![]);
        }
        LossKind::SoftmaxCrossEntropy => {
            // (softmax - onehot) / N, softmax recovered as exp(log_softmax).
            step(n, "probs", "Exp", &["logp"], vec![]);
            step(n, "residual", "Sub", &["probs", "one_hot"], vec![]);
            step(n, "grad_logits", "Mul", &["residual", "inv_n"], vec![]);
        }
    }
    loss_model(nodes, f, batch, classes)
}

/// The loss model around `nodes`: inputs `logits` (of float type `f`) and
/// `labels`, outputs `loss` and `grad_logits`.
fn loss_model(nodes: Vec<pb::NodeProto>, f: i32, batch: usize, classes: usize) -> pb::ModelProto {
    let graph = pb::GraphProto {
        name: "mixnn_loss".into(),
        node: nodes,
        input: vec![
            proto::value_info("logits", f, &[batch, classes]),
            proto::value_info("labels", pb::tensor_proto::DataType::Int64 as i32, &[batch]),
        ],
        output: vec![
            proto::value_info("loss", f, &[]),
            proto::value_info("grad_logits", f, &[batch, classes]),
        ],
        ..Default::default()
    };
    model_of(graph)
}

/// Appends a node named after its one output.
fn step(
    nodes: &mut Vec<pb::NodeProto>,
    out: &str,
    op: &str,
    inputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) {
    nodes.push(proto::node(out, op, inputs, &[out], attrs));
}

/// Appends a Constant node named after its tensor.
fn constant(nodes: &mut Vec<pb::NodeProto>, t: pb::TensorProto) {
    let name = t.name.clone();
    step(
        nodes,
        &name,
        "Constant",
        &[],
        vec![proto::attr_tensor("value", t)],
    );
}

/// The mean-squared-error model in f32, for regression outputs such as the
/// audit's reconstructed images: inputs `prediction` and `target`, both
/// float of `shape`; outputs `loss` (shape `[]`) `= mean((prediction −
/// target)²)` over every element, and `grad_prediction` (of `shape`)
/// `= 2 (prediction − target) / numel`.
pub fn mse_graph(shape: &[usize]) -> pb::ModelProto {
    mse_graph_typed(shape, FloatType::F32)
}

/// [`mse_graph`] in a chosen float type (f64 for the gradient checks).
pub fn mse_graph_typed(shape: &[usize], float: FloatType) -> pb::ModelProto {
    let f = float.onnx();
    let numel = shape.iter().product::<usize>().max(1) as f64;
    let mut nodes = Vec::new();
    let n = &mut nodes;
    let axes: Vec<i64> = (0..shape.len() as i64).collect();
    constant(n, proto::i64_tensor("all_axes", &axes, &[axes.len()]));
    constant(
        n,
        proto::float_tensor("inv_numel", float, &[1.0 / numel], &[]),
    );
    constant(
        n,
        proto::float_tensor("two_inv_numel", float, &[2.0 / numel], &[]),
    );
    step(n, "residual", "Sub", &["prediction", "target"], vec![]);
    step(n, "squared", "Mul", &["residual", "residual"], vec![]);
    let keepdims_0 = vec![proto::attr_int("keepdims", 0)];
    step(
        n,
        "total",
        "ReduceSum",
        &["squared", "all_axes"],
        keepdims_0,
    );
    step(n, "loss", "Mul", &["total", "inv_numel"], vec![]);
    step(
        n,
        "grad_prediction",
        "Mul",
        &["residual", "two_inv_numel"],
        vec![],
    );
    let graph = pb::GraphProto {
        name: "mixnn_mse".into(),
        node: nodes,
        input: vec![
            proto::value_info("prediction", f, shape),
            proto::value_info("target", f, shape),
        ],
        output: vec![
            proto::value_info("loss", f, &[]),
            proto::value_info("grad_prediction", f, shape),
        ],
        ..Default::default()
    };
    model_of(graph)
}

/// A model around `graph`, ai.onnx opset 13.
fn model_of(graph: pb::GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "mixnn-grad".into(),
        graph: Some(graph),
        ..Default::default()
    }
}
