//! Hand-built ONNX models for tests that need a shard no builder makes,
//! assembled from `mixnn_shard::proto`'s building blocks.
#![allow(dead_code)]

use mixnn_grad::pb;
use mixnn_shard::proto::{f32_tensor, node, opset_imports, value_info};

const FLOAT: i32 = 1;

pub fn vinfo(name: &str, dims: &[usize]) -> pb::ValueInfoProto {
    value_info(name, FLOAT, dims)
}

/// x[4,3] -> MatMul W[3,2] -> `op` -> y[4,2]
pub fn matmul_then(op: &str) -> pb::ModelProto {
    let w: Vec<f32> = (0..6).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    pb::ModelProto {
        ir_version: 8,
        opset_import: opset_imports(),
        graph: Some(pb::GraphProto {
            name: "test".into(),
            node: vec![
                node("mm", "MatMul", &["x", "w"], &["h"], vec![]),
                node("act", op, &["h"], &["y"], vec![]),
            ],
            initializer: vec![f32_tensor("w", &[3, 2], &w)],
            input: vec![vinfo("x", &[4, 3])],
            output: vec![vinfo("y", &[4, 2])],
            ..Default::default()
        }),
        ..Default::default()
    }
}
