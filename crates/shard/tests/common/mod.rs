//! Helpers shared by the shard tests: running models with native tract.
#![allow(dead_code)]

use mixnn_shard::pb;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::*;

/// Runs a model on one f32 input with native tract, returns the output.
pub fn run(model: &pb::ModelProto, input: &Tensor) -> Tensor {
    let plan = tract_onnx::onnx()
        .model_for_proto_model(model)
        .expect("tract loads the model")
        .into_optimized()
        .expect("tract optimizes the model")
        .into_runnable()
        .expect("tract plans the model");
    let out = plan
        .run(tvec!(input.clone().into()))
        .expect("tract runs the model");
    out[0].clone().into_tensor()
}

/// Runs shards one after another.
pub fn run_chain(shards: &[pb::ModelProto], input: &Tensor) -> Tensor {
    let mut cur = input.clone();
    for s in shards {
        cur = run(s, &cur);
    }
    cur
}

/// A random [batch, 1, 28, 28] input in [0, 1).
pub fn random_input(batch: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..batch * 784).map(|_| rng.r#gen::<f32>()).collect();
    Tensor::from_shape(&[batch, 1, 28, 28], &v).expect("shape matches data")
}

/// Largest elementwise relative difference, with a floor of 1 on the scale
/// so values near zero are compared absolutely.
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let a = a.to_plain_array_view::<f32>().expect("f32 tensor");
    let b = b.to_plain_array_view::<f32>().expect("f32 tensor");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1.0))
        .fold(0.0, f32::max)
}

/// A float32 tensor type with fixed dims.
pub fn vinfo(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            denotation: String::new(),
                            value: Some(Value::DimValue(d)),
                        })
                        .collect(),
                }),
            })),
        }),
        doc_string: String::new(),
    }
}

/// A float32 initializer filled with `v`.
pub fn init(name: &str, dims: &[i64], v: f32) -> pb::TensorProto {
    let n: i64 = dims.iter().product();
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: vec![v; n as usize],
        ..Default::default()
    }
}

/// A node with no attributes.
pub fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
    pb::NodeProto {
        name: name.into(),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A model around a graph, opset 13.
pub fn model(
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    input: pb::ValueInfoProto,
    output: pb::ValueInfoProto,
) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "test".into(),
            node: nodes,
            initializer: inits,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The merge of a fork-join computed by hand on the two branch outputs
/// (untrusted first), independent of the splitter and of tract's ops.
pub fn merge_by_hand(fj: &mixnn_shard::ForkJoin, untrusted: &Tensor, trusted: &Tensor) -> Tensor {
    use mixnn_shard::MergeOp;
    use tract_onnx::prelude::tract_ndarray::{Axis, concatenate};
    let (a, b) = if fj.untrusted_slot == 0 {
        (untrusted, trusted)
    } else {
        (trusted, untrusted)
    };
    let a = a.to_plain_array_view::<f32>().expect("f32 tensor");
    let b = b.to_plain_array_view::<f32>().expect("f32 tensor");
    let out = match fj.merge {
        MergeOp::Concat { axis } => concatenate(Axis(axis), &[a, b]).expect("concat"),
        MergeOp::Mul => &a * &b,
        MergeOp::Max => {
            let mut m = a.to_owned();
            m.zip_mut_with(&b, |x, &y| *x = x.max(y));
            m
        }
        MergeOp::Mean => (&a + &b).mapv(|v| v / 2.0),
        MergeOp::Add => &a + &b,
    };
    out.into_tensor()
}

/// Runs a fork-join's parts on `x`: both branches, the merge by hand, the
/// head; the result must equal the whole model's output.
pub fn run_fork(fj: &mixnn_shard::ForkJoin, x: &Tensor) -> Tensor {
    let u = run_chain(&fj.untrusted, x);
    let t = run_chain(&fj.trusted, x);
    run_chain(&fj.head, &merge_by_hand(fj, &u, &t))
}

/// The op types of each shard, for comparing splits.
pub fn op_kinds(shards: &[pb::ModelProto]) -> Vec<Vec<String>> {
    shards
        .iter()
        .map(|s| {
            s.graph
                .as_ref()
                .expect("graph")
                .node
                .iter()
                .map(|n| n.op_type.clone())
                .collect()
        })
        .collect()
}
