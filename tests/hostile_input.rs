//! Hostile shards and tensors sent to the sandboxed standard guest: each gets
//! a clear error, and the same guest (and the sandbox) serves the next call.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use mixnn_sandbox::{
    GuestKind, GuestLayer, LossKind, Sandbox, SandboxError, SandboxOptions, Tensor, TrainConfig,
};
use prost::Message;

fn config() -> TrainConfig {
    TrainConfig::default()
}

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxOptions {
        cache_dir: SandboxOptions::default_cache_dir(),
        ..Default::default()
    })
    .expect("sandbox")
}

fn guest(sb: &Sandbox) -> GuestLayer {
    sb.instantiate(sb.guest(GuestKind::Standard).expect("standard guest"))
        .expect("instantiate")
}

fn guest_error(e: SandboxError) -> String {
    match e {
        SandboxError::Guest { message, .. } => message,
        other => panic!("expected a guest error, got {other}"),
    }
}

/// The same instance still loads and runs a good shard after the failure.
fn serves_next(g: &mut GuestLayer) {
    let good = common::matmul_then("Relu").encode_to_vec();
    g.load(&good, &config())
        .expect("good shard loads after a bad one");
    let y = g
        .forward(&Tensor {
            shape: vec![4, 3],
            data: vec![1.0; 12],
        })
        .expect("forward");
    assert_eq!(y.shape, vec![4, 2]);
}

#[test]
fn an_op_without_a_gradient_rule_is_named_in_the_error() {
    let sb = sandbox();
    let mut g = guest(&sb);
    let msg = guest_error(
        g.load(&common::matmul_then("Erf").encode_to_vec(), &config())
            .unwrap_err(),
    );
    assert!(
        msg.contains("act") && msg.contains("Erf"),
        "error must name node and op: {msg}"
    );
    serves_next(&mut g);
}

#[test]
fn absurd_dimensions_are_refused_before_allocation() {
    let sb = sandbox();
    let mut g = guest(&sb);
    let mut m = common::matmul_then("Relu");
    let graph = m.graph.as_mut().unwrap();
    graph.input[0] = common::vinfo("x", &[1 << 20, 1 << 20]);
    let msg = guest_error(g.load(&m.encode_to_vec(), &config()).unwrap_err());
    assert!(msg.contains("limit") || msg.contains("exceeds"), "{msg}");
    serves_next(&mut g);
}

#[test]
fn a_truncated_onnx_file_is_an_error() {
    let sb = sandbox();
    let mut g = guest(&sb);
    let model = mixnn_shard::mlp(1, 64, mixnn_shard::Form::Gemm);
    let shards = mixnn_shard::split(&model, &mixnn_shard::plan(&model, None).unwrap()).unwrap();
    let bytes = mixnn_shard::encode(&shards[0]);
    let msg = guest_error(g.load(&bytes[..bytes.len() / 2], &config()).unwrap_err());
    assert!(msg.contains("ONNX") || msg.contains("shard"), "{msg}");
    assert!(guest_error(g.load(b"", &config()).unwrap_err()).len() > 5);
    serves_next(&mut g);
}

#[test]
fn wrong_shape_tensors_are_refused_and_the_layer_keeps_working() {
    let sb = sandbox();
    let mut g = guest(&sb);
    g.load(&common::matmul_then("Relu").encode_to_vec(), &config())
        .unwrap();
    for bad in [
        Tensor {
            shape: vec![4, 5],
            data: vec![0.0; 20],
        },
        Tensor {
            shape: vec![4, 3],
            data: vec![0.0; 5],
        },
        Tensor {
            shape: vec![12],
            data: vec![0.0; 12],
        },
        Tensor {
            shape: vec![0, 3],
            data: vec![],
        },
    ] {
        let msg = guest_error(g.forward(&bad).unwrap_err());
        assert!(msg.contains("shape"), "{msg}");
    }
    // backward before forward, and a gradient of the wrong shape
    assert!(
        guest_error(
            g.backward(&Tensor {
                shape: vec![4, 2],
                data: vec![0.0; 8]
            })
            .unwrap_err()
        )
        .contains("forward")
    );
    g.forward(&Tensor {
        shape: vec![4, 3],
        data: vec![1.0; 12],
    })
    .unwrap();
    let msg = guest_error(
        g.backward(&Tensor {
            shape: vec![4, 3],
            data: vec![0.0; 12],
        })
        .unwrap_err(),
    );
    assert!(msg.contains("shape"), "{msg}");
    // The pending forward survived the bad gradient.
    g.backward(&Tensor {
        shape: vec![4, 2],
        data: vec![0.1; 8],
    })
    .unwrap();
    g.step().unwrap();
    // Labels out of range are refused by the loss.
    let mut cfg = config();
    cfg.loss = LossKind::SoftmaxCrossEntropy;
    g.load(&common::matmul_then("Relu").encode_to_vec(), &cfg)
        .unwrap();
    let msg = guest_error(
        g.loss(
            &Tensor {
                shape: vec![4, 2],
                data: vec![0.0; 8],
            },
            &[0, 1, 2, -1],
        )
        .unwrap_err(),
    );
    assert!(msg.contains("label"), "{msg}");
    serves_next(&mut g);
}
