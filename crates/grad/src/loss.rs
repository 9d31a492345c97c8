//! Loss graphs. NLL and softmax cross-entropy are not tract ops, so each is
//! decomposed into standard ONNX ops, with the analytic gradient as a second
//! output (so the caller needs no backward pass through the loss).

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
    let konst = |nodes: &mut Vec<pb::NodeProto>, name: &str, t: pb::TensorProto| {
        nodes.push(proto::node(
            name,
            "Constant",
            &[],
            &[name],
            vec![proto::attr_tensor("value", t)],
        ));
    };
    konst(
        &mut nodes,
        "axes_1",
        proto::i64_tensor("axes_1", &[1], &[1]),
    );
    konst(
        &mut nodes,
        "axes_01",
        proto::i64_tensor("axes_01", &[0, 1], &[2]),
    );
    let range: Vec<i64> = (0..classes as i64).collect();
    konst(
        &mut nodes,
        "class_ids",
        proto::i64_tensor("class_ids", &range, &[1, classes]),
    );
    konst(
        &mut nodes,
        "minus_inv_n",
        proto::float_tensor("minus_inv_n", float, &[-inv_n], &[]),
    );
    konst(
        &mut nodes,
        "inv_n",
        proto::float_tensor("inv_n", float, &[inv_n], &[]),
    );

    let logp = match kind {
        LossKind::Nll => "logits",
        LossKind::SoftmaxCrossEntropy => {
            nodes.push(proto::node(
                "log_softmax",
                "LogSoftmax",
                &["logits"],
                &["logp"],
                vec![proto::attr_int("axis", 1)],
            ));
            "logp"
        }
    };
    nodes.push(proto::node(
        "labels_col",
        "Unsqueeze",
        &["labels", "axes_1"],
        &["labels_col"],
        vec![],
    ));
    nodes.push(proto::node(
        "picked",
        "GatherElements",
        &[logp, "labels_col"],
        &["picked"],
        vec![proto::attr_int("axis", 1)],
    ));
    nodes.push(proto::node(
        "total",
        "ReduceSum",
        &["picked", "axes_01"],
        &["total"],
        vec![proto::attr_int("keepdims", 0)],
    ));
    nodes.push(proto::node(
        "loss",
        "Mul",
        &["total", "minus_inv_n"],
        &["loss"],
        vec![],
    ));
    // One-hot of the labels without OneHot: labels_col == [0..C).
    nodes.push(proto::node(
        "is_label",
        "Equal",
        &["labels_col", "class_ids"],
        &["is_label"],
        vec![],
    ));
    nodes.push(proto::node(
        "one_hot",
        "Cast",
        &["is_label"],
        &["one_hot"],
        vec![proto::attr_int("to", f as i64)],
    ));
    match kind {
        LossKind::Nll => {
            // d/dlogits of -mean(logits[n, label_n]) = -onehot / N.
            nodes.push(proto::node(
                "grad_logits",
                "Mul",
                &["one_hot", "minus_inv_n"],
                &["grad_logits"],
                vec![],
            ));
        }
        LossKind::SoftmaxCrossEntropy => {
            // (softmax - onehot) / N, softmax recovered as exp(log_softmax).
            nodes.push(proto::node("probs", "Exp", &["logp"], &["probs"], vec![]));
            nodes.push(proto::node(
                "residual",
                "Sub",
                &["probs", "one_hot"],
                &["residual"],
                vec![],
            ));
            nodes.push(proto::node(
                "grad_logits",
                "Mul",
                &["residual", "inv_n"],
                &["grad_logits"],
                vec![],
            ));
        }
    }
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
