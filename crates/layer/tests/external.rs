//! The hooks for callers that run their own optimizer (`take_grads`,
//! `set_learning_rate`): the gradients are the backward's, named in load
//! order, taken once; a new step size applies to the next `step`.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_grad::FloatType;
use mixnn_grad::testing::ModelBuilder;
use mixnn_layer::{Layer, OptimizerKind, Tensor, TrainConfig};

/// y = x·w + b with w = 2, b = 0.5, one sample.
fn layer() -> Layer {
    let model = ModelBuilder::new(FloatType::F32)
        .input("x", &[1, 1])
        .init("w", &[1, 1], &[2.0])
        .init("b", &[1], &[0.5])
        .linear(&["x", "w", "b"], "y")
        .output("y")
        .build();
    let cfg = TrainConfig {
        optimizer: OptimizerKind::Sgd,
        learning_rate: 0.1,
        momentum: 0.0,
        need_input_grad: false,
        host_kernels: false,
        ..TrainConfig::default()
    };
    Layer::load(&mixnn_shard::encode(&model), cfg).unwrap().0
}

fn pass(l: &mut Layer, x: f32, g: f32) {
    l.forward(Tensor::new(vec![1, 1], vec![x]).unwrap())
        .unwrap();
    l.backward(Tensor::new(vec![1, 1], vec![g]).unwrap())
        .unwrap();
}

#[test]
fn gradients_are_taken_once_and_a_new_step_size_applies_to_the_next_step() {
    let mut l = layer();
    assert!(l.take_grads().is_err(), "no backward yet");
    pass(&mut l, 3.0, 2.0);
    let grads = l.take_grads().unwrap();
    let names: Vec<_> = grads.iter().map(|g| g.name.as_str()).collect();
    let order: Vec<_> = l.export_params().unwrap();
    let want: Vec<_> = order.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, want, "load order");
    // dy/dw = x·g = 6, dy/db = g = 2.
    for g in &grads {
        let v = if g.name == "w" { 6.0 } else { 2.0 };
        assert_eq!(g.tensor.data, vec![v], "{}", g.name);
    }
    assert!(l.step().is_err(), "the gradients were taken");
    assert!(l.take_grads().is_err(), "taken once");

    assert!(l.set_learning_rate(0.0).is_err());
    assert!(l.set_learning_rate(f32::NAN).is_err());
    l.set_learning_rate(0.5).unwrap();
    pass(&mut l, 3.0, 2.0);
    l.step().unwrap();
    // SGD without momentum at the new step: w = 2 − 0.5·6, b = 0.5 − 0.5·2.
    for p in l.export_params().unwrap() {
        let v = if p.name == "w" { -1.0 } else { -0.5 };
        assert_eq!(p.tensor.data, vec![v], "{}", p.name);
    }
}
