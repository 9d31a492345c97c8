//! The training pair (forward returning its saved activations, backward
//! taking them): what it saves, that it recomputes no forward arithmetic,
//! and that the MaxPool gradient routes through the argmax the forward
//! saved. `check_gradients` compares every training pair with the
//! self-contained backward graph, so the finite-difference checks here cover
//! both.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_grad::FloatType::{F32, F64};
use mixnn_grad::testing::{
    CheckOptions, ModelBuilder, Runner, attr_int, attr_ints, check_gradients,
};
use mixnn_grad::{GradOptions, TrainingGraphs, build, pb};

fn ops(m: &pb::ModelProto) -> Vec<String> {
    m.graph
        .as_ref()
        .map(|g| g.node.iter().map(|n| n.op_type.clone()).collect())
        .unwrap_or_default()
}

fn count(m: &pb::ModelProto, op: &str) -> usize {
    ops(m).iter().filter(|o| *o == op).count()
}

fn graphs(model: &pb::ModelProto, shape: &[usize], need_input_grad: bool) -> TrainingGraphs {
    build(
        model,
        &GradOptions {
            input_shape: shape.to_vec(),
            need_input_grad,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn check(model: &pb::ModelProto, seed: u64) {
    let opts = CheckOptions {
        seed,
        max_points: usize::MAX,
        ..Default::default()
    };
    check_gradients(model, &opts).unwrap_or_else(|e| panic!("gradient check failed: {e}"));
}

#[test]
fn dense_relu_saves_nothing_and_multiplies_once_per_gradient() {
    // The paper's first layer: Flatten, Gemm (transB = 1), Relu.
    let model = ModelBuilder::new(F32)
        .input("x", &[4, 1, 3, 3])
        .init("w", &[5, 9], &[0.1; 45])
        .init("b", &[5], &[0.0; 5])
        .node("Flatten", &["x"], &["f"], vec![attr_int("axis", 1)])
        .linear(&["f", "w", "b"], "h")
        .node("Relu", &["h"], &["y"], vec![])
        .output("y")
        .build();
    let first = graphs(&model, &[4, 1, 3, 3], false);
    // Relu's mask comes from the output, Gemm's operands are x and w:
    // nothing to keep between the calls.
    assert!(first.saved.is_empty(), "{:?}", first.saved);
    assert_eq!(count(&first.train_backward, "Gemm"), 1, "dW only");
    // The self-contained backward recomputes the forward product.
    assert_eq!(count(&first.backward, "Gemm"), 2);
    let middle = graphs(&model, &[4, 1, 3, 3], true);
    assert!(middle.saved.is_empty());
    assert_eq!(count(&middle.train_backward, "Gemm"), 2, "dX and dW");
}

#[test]
fn conv_relu_pool_saves_the_activation_and_the_argmax() {
    let model = ModelBuilder::new(F64)
        .input("x", &[2, 1, 6, 6])
        .init("w", &[3, 1, 3, 3], &[0.2; 27])
        .init("b", &[3], &[0.1; 3])
        .node(
            "Conv",
            &["x", "w", "b"],
            &["c"],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[1; 4]),
            ],
        )
        .node("Relu", &["c"], &["r"], vec![])
        .max_pool("r", "y", &[2, 2], &[2, 2])
        .output("y")
        .build();
    let g = graphs(&model, &[2, 1, 6, 6], true);
    let saved: Vec<(&str, bool)> = g
        .saved
        .iter()
        .map(|s| (s.name.as_str(), s.integer))
        .collect();
    assert_eq!(saved.len(), 2, "{saved:?}");
    assert_eq!(saved[0], ("r", false));
    assert!(saved[1].1, "the argmax indices are INT64");
    assert_eq!(g.saved[1].shape, vec![2, 3, 3, 3]);
    // One Conv (dW), one ConvTranspose (dX), no pool: the forward's
    // argmax is scattered.
    let tb = ops(&g.train_backward);
    assert_eq!(count(&g.train_backward, "Conv"), 1, "{tb:?}");
    assert_eq!(count(&g.train_backward, "ConvTranspose"), 1, "{tb:?}");
    assert_eq!(count(&g.train_backward, "MaxPool"), 0, "{tb:?}");
    assert_eq!(count(&g.train_backward, "ScatterElements"), 1, "{tb:?}");
    // The training forward pools once, with the Indices output.
    assert_eq!(count(&g.train_forward, "MaxPool"), 1);
    check(&model, 7);
}

fn max_pool(x: &[usize], kernel: &[i64], strides: &[i64]) -> pb::ModelProto {
    ModelBuilder::new(F64)
        .opset(19)
        .input("x", x)
        .max_pool("x", "y", kernel, strides)
        .output("y")
        .build()
}

#[test]
fn pools_whose_windows_tile_the_input() {
    let tiled = [
        (vec![2, 3, 9], vec![3], vec![3]),
        (vec![2, 3, 6, 4], vec![2, 2], vec![2, 2]),
        (vec![1, 2, 6, 9], vec![3, 3], vec![3, 3]),
        (vec![1, 2, 4, 2, 6], vec![2, 1, 3], vec![2, 1, 3]),
    ];
    for (i, (x, k, s)) in tiled.iter().enumerate() {
        let model = max_pool(x, k, s);
        check(&model, 40 + i as u64);
        let g = graphs(&model, x, true);
        assert_eq!(count(&g.train_backward, "MaxPool"), 0, "case {i}");
    }
}

#[test]
fn ties_go_where_max_pool_indices_point() {
    // Windows full of equal values (what ReLU leaves behind): finite
    // differences cannot see where the gradient goes, so compare with the
    // Indices tract's MaxPool reports.
    let x_shape = [2usize, 2, 4, 6];
    let model = max_pool(&x_shape, &[2, 2], &[2, 2]);
    let g = graphs(&model, &x_shape, true);
    let n: usize = x_shape.iter().product();
    let x: Vec<f64> = (0..n).map(|i| if i % 5 == 0 { 0.5 } else { 0.0 }).collect();
    let y_shape = g.output_shape.clone();
    let m: usize = y_shape.iter().product();
    let dy: Vec<f64> = (0..m).map(|i| 1.0 + i as f64).collect();

    let tf = Runner::new(&g.train_forward, &[x_shape.to_vec()], F64, &[]).unwrap();
    let fwd = tf.run(&[(x_shape.to_vec(), x.clone())], &[]).unwrap();
    assert_eq!(fwd.len(), 2, "output and indices");
    let indices = &fwd[1].1;
    let mut b_in = vec![(x_shape.to_vec(), x), (y_shape.clone(), dy.clone())];
    b_in.extend(fwd.iter().cloned());
    let shapes: Vec<Vec<usize>> = b_in.iter().map(|d| d.0.clone()).collect();
    let tb = Runner::new(&g.train_backward, &shapes, F64, &[3]).unwrap();
    let dx = &tb.run(&b_in, &[3]).unwrap()[0].1;
    let mut want = vec![0.0; n];
    for (o, &i) in indices.iter().enumerate() {
        want[i as usize] += dy[o];
    }
    assert_eq!(dx, &want);
}
