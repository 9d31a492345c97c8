//! Whole-graph tests: loss graphs, error reporting, a small MLP shard in f32
//! (forward, backward and a few SGD steps), the inference graph.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_grad::FloatType::{F32, F64};
use mixnn_grad::testing::{CheckOptions, ModelBuilder, Runner, attr_int, check_gradients};
use mixnn_grad::{
    GradError, GradOptions, LossKind, build, inference_graph, loss_graph, loss_graph_typed, pb,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn values(r: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| r.gen_range(-scale..scale)).collect()
}

fn log_softmax_row(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    row.iter().map(|v| v - lse).collect()
}

#[test]
fn loss_graphs_values_and_gradients() {
    let mut r = ChaCha8Rng::seed_from_u64(5);
    for kind in [LossKind::Nll, LossKind::SoftmaxCrossEntropy] {
        for _ in 0..3 {
            let (n, c) = (r.gen_range(1..6), r.gen_range(2..7));
            let logits = values(&mut r, n * c, 2.0);
            let labels: Vec<f64> = (0..n).map(|_| r.gen_range(0..c) as f64).collect();
            let model = loss_graph_typed(kind, n, c, F64);
            let run = Runner::new(&model, &[vec![n, c], vec![n]], F64, &[1])
                .unwrap_or_else(|e| panic!("{e}"));
            let eval = |lg: &[f64]| {
                run.run(
                    &[(vec![n, c], lg.to_vec()), (vec![n], labels.clone())],
                    &[1],
                )
                .unwrap_or_else(|e| panic!("{e}"))
            };
            let out = eval(&logits);
            assert_eq!(out[0].0, Vec::<usize>::new(), "loss is a scalar");
            assert_eq!(out[1].0, vec![n, c]);

            // Value, computed directly.
            let mut want = 0.0;
            for i in 0..n {
                let row = &logits[i * c..(i + 1) * c];
                let lp = match kind {
                    LossKind::Nll => row.to_vec(),
                    LossKind::SoftmaxCrossEntropy => log_softmax_row(row),
                };
                want -= lp[labels[i] as usize];
            }
            want /= n as f64;
            assert!(
                (out[0].1[0] - want).abs() < 1e-12,
                "{kind:?}: loss {} != {want}",
                out[0].1[0]
            );

            // Gradient output vs central differences of the loss output.
            let eps = 1e-6;
            for k in 0..n * c {
                let mut p = logits.clone();
                p[k] += eps;
                let mut m = logits.clone();
                m[k] -= eps;
                let num = (eval(&p)[0].1[0] - eval(&m)[0].1[0]) / (2.0 * eps);
                let ana = out[1].1[k];
                assert!(
                    (num - ana).abs() < 1e-7 + 1e-6 * num.abs(),
                    "{kind:?} grad[{k}]: {ana} vs {num}"
                );
            }

            // The production (f32) graph agrees.
            let m32 = loss_graph(kind, n, c);
            let r32 = Runner::new(&m32, &[vec![n, c], vec![n]], F32, &[1])
                .unwrap_or_else(|e| panic!("{e}"));
            let o32 = r32
                .run(
                    &[(vec![n, c], logits.clone()), (vec![n], labels.clone())],
                    &[1],
                )
                .unwrap_or_else(|e| panic!("{e}"));
            assert!((o32[0].1[0] - want).abs() < 1e-5 * want.abs().max(1.0));
            for (a, b) in o32[1].1.iter().zip(&out[1].1) {
                assert!((a - b).abs() < 1e-6);
            }
        }
    }
}

fn unsupported(op: &str) -> GradError {
    let model = ModelBuilder::new(F32)
        .input("X", &[2, 3])
        .init("W", &[3, 3], &[0.5; 9])
        .node("MatMul", &["X", "W"], &["H"], vec![])
        .node(op, &["H"], &["Y"], vec![])
        .output("Y")
        .build();
    match build(
        &model,
        &GradOptions {
            input_shape: vec![2, 3],
            need_input_grad: false,
        },
    ) {
        Ok(_) => panic!("{op} has no rule, build must fail"),
        Err(e) => e,
    }
}

#[test]
fn op_without_rule_is_reported_with_node_and_op() {
    for op in ["Erf", "Exp", "Softplus"] {
        match unsupported(op) {
            GradError::UnsupportedOp { node, op: o } => {
                assert_eq!(node, "n_Y");
                assert_eq!(o, op);
            }
            e => panic!("unexpected error {e}"),
        }
    }
    let msg = unsupported("Erf").to_string();
    assert!(msg.contains("n_Y") && msg.contains("Erf"), "{msg}");

    // TopK (two outputs, an int64 K input) after the data input.
    let model = ModelBuilder::new(F32)
        .input("X", &[2, 5])
        .init_i64("k", &[1], &[2])
        .node("TopK", &["X", "k"], &["V", "I"], vec![attr_int("axis", 1)])
        .output("V")
        .build();
    match build(
        &model,
        &GradOptions {
            input_shape: vec![2, 5],
            need_input_grad: true,
        },
    ) {
        Err(GradError::UnsupportedOp { node, op }) => {
            assert_eq!((node.as_str(), op.as_str()), ("n_V", "TopK"))
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
}

#[test]
fn shape_computations_need_no_rule() {
    // Reshape(Relu(X), Shape(X)): Shape reads X but only feeds a shape slot.
    let model = ModelBuilder::new(F64)
        .input("X", &[2, 3, 4])
        .node("Relu", &["X"], &["H"], vec![])
        .node("Flatten", &["H"], &["F"], vec![])
        .node("Shape", &["X"], &["S"], vec![])
        .node("Reshape", &["F", "S"], &["Y"], vec![])
        .output("Y")
        .build();
    check_gradients(&model, &CheckOptions::default()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn invalid_shards_give_clear_errors() {
    let opts = GradOptions {
        input_shape: vec![2, 3],
        need_input_grad: true,
    };
    let base = || ModelBuilder::new(F32).input("X", &[2, 3]);

    let old = base()
        .opset(11)
        .node("Relu", &["X"], &["Y"], vec![])
        .output("Y")
        .build();
    assert!(matches!(build(&old, &opts), Err(GradError::Invalid(m)) if m.contains("opset 11")));

    let two = base()
        .node("Relu", &["X"], &["Y"], vec![])
        .node("Neg", &["X"], &["Z"], vec![])
        .output("Y")
        .output("Z")
        .build();
    assert!(
        matches!(build(&two, &opts), Err(GradError::Invalid(m)) if m.contains("exactly one output"))
    );

    let dangling = base()
        .node("Add", &["X", "nowhere"], &["Y"], vec![])
        .output("Y")
        .build();
    match build(&dangling, &opts) {
        Err(GradError::Node { node, reason, .. }) => {
            assert!(node == "n_Y" && reason.contains("nowhere"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    // An initializer declaring 2^40 elements but carrying none: rejected
    // before anything is allocated.
    let mut absurd = base()
        .init("W", &[3, 3], &[0.0; 9])
        .node("MatMul", &["X", "W"], &["Y"], vec![])
        .output("Y")
        .build();
    if let Some(g) = absurd.graph.as_mut() {
        g.initializer[0].dims = vec![1 << 20, 1 << 20];
        g.initializer[0].float_data.clear();
    }
    assert!(matches!(build(&absurd, &opts), Err(GradError::Invalid(m)) if m.contains("`W`")));

    let wrong_rank = base()
        .node("Relu", &["X"], &["Y"], vec![])
        .output("Y")
        .build();
    let bad = GradOptions {
        input_shape: vec![2, 3, 4],
        need_input_grad: true,
    };
    assert!(matches!(
        build(&wrong_rank, &bad),
        Err(GradError::Invalid(_))
    ));
}

/// The paper's MLP as PyTorch exports it, scaled down: Flatten, Gemm
/// (transB=1), Relu, Gemm (transB=1), LogSoftmax.
fn mlp(r: &mut ChaCha8Rng, batch: usize) -> pb::ModelProto {
    let (d_in, h, c) = (16, 8, 3);
    ModelBuilder::new(F32)
        .input("input", &[batch, 1, 4, 4])
        .init("fc1.weight", &[h, d_in], &values(r, h * d_in, 0.5))
        .init("fc1.bias", &[h], &values(r, h, 0.1))
        .init("fc2.weight", &[c, h], &values(r, c * h, 0.5))
        .init("fc2.bias", &[c], &values(r, c, 0.1))
        .node("Flatten", &["input"], &["flat"], vec![attr_int("axis", 1)])
        .linear(&["flat", "fc1.weight", "fc1.bias"], "h1")
        .node("Relu", &["h1"], &["a1"], vec![])
        .linear(&["a1", "fc2.weight", "fc2.bias"], "h2")
        .node(
            "LogSoftmax",
            &["h2"],
            &["output"],
            vec![attr_int("axis", 1)],
        )
        .output("output")
        .build()
}

#[test]
fn mlp_shard_builds_and_runs_in_f32() {
    let mut r = ChaCha8Rng::seed_from_u64(9);
    let batch = 4;
    let model = mlp(&mut r, batch);
    for need_input_grad in [false, true] {
        let g = build(
            &model,
            &GradOptions {
                input_shape: vec![batch, 1, 4, 4],
                need_input_grad,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = g.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
        assert!(g.params.iter().all(|p| p.init.is_some()));
        assert_eq!(g.output_shape, vec![batch, 3]);
        assert_eq!(
            (g.input_name.as_str(), g.output_name.as_str()),
            ("input", "output")
        );
        let bw = g.backward.graph.as_ref().map(|gr| gr.output.len());
        assert_eq!(bw, Some(4 + need_input_grad as usize));
    }
    // f32 finite differences (tolerance as in tests/rules.rs: eps 1e-2,
    // rtol 1e-2, atol 2e-3; Relu kinks are unlikely at this eps).
    let opts = CheckOptions {
        seed: 3,
        eps: 1e-2,
        rtol: 1e-2,
        atol: 2e-3,
        ..Default::default()
    };
    let rep = check_gradients(&model, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert!(rep.checked > 50);
}

#[test]
fn mlp_trains_with_the_loss_graph() {
    // A few SGD steps on one fixed batch must lower the loss: forward,
    // loss, backward and update wired together as the layer crate will.
    let mut r = ChaCha8Rng::seed_from_u64(10);
    let batch = 8;
    let model = mlp(&mut r, batch);
    let g = build(
        &model,
        &GradOptions {
            input_shape: vec![batch, 1, 4, 4],
            need_input_grad: false,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut shapes = vec![g.input_shape.clone()];
    shapes.extend(g.params.iter().map(|p| p.shape.clone()));
    let fwd = Runner::new(&g.forward, &shapes, F32, &[]).unwrap_or_else(|e| panic!("{e}"));
    let mut bshapes = shapes.clone();
    bshapes.push(g.output_shape.clone());
    let bwd = Runner::new(&g.backward, &bshapes, F32, &[]).unwrap_or_else(|e| panic!("{e}"));
    let loss = Runner::new(
        &loss_graph(LossKind::Nll, batch, 3),
        &[vec![batch, 3], vec![batch]],
        F32,
        &[1],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let x = (g.input_shape.clone(), values(&mut r, batch * 16, 1.0));
    let labels = (
        vec![batch],
        (0..batch).map(|i| (i % 3) as f64).collect::<Vec<_>>(),
    );
    let mut params: Vec<(Vec<usize>, Vec<f64>)> = g
        .params
        .iter()
        .map(|p| {
            (
                p.shape.clone(),
                p.init
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(f64::from)
                    .collect(),
            )
        })
        .collect();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let mut inputs = vec![x.clone()];
        inputs.extend(params.iter().cloned());
        let out = fwd.run(&inputs, &[]).unwrap_or_else(|e| panic!("{e}"));
        let l = loss
            .run(&[out[0].clone(), labels.clone()], &[1])
            .unwrap_or_else(|e| panic!("{e}"));
        losses.push(l[0].1[0]);
        inputs.push(l[1].clone());
        let grads = bwd.run(&inputs, &[]).unwrap_or_else(|e| panic!("{e}"));
        for (p, gr) in params.iter_mut().zip(&grads) {
            for (v, d) in p.1.iter_mut().zip(&gr.1) {
                *v -= 0.5 * d;
            }
        }
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.5 * first, "loss did not go down: {losses:?}");
}

#[test]
fn matmul_add_mlp_in_f64() {
    // The other exporter form: MatMul + Add.
    let mut r = ChaCha8Rng::seed_from_u64(11);
    let model = ModelBuilder::new(F64)
        .input("x", &[3, 6])
        .init("w1", &[6, 5], &values(&mut r, 30, 0.5))
        .init("b1", &[5], &values(&mut r, 5, 0.1))
        .init("w2", &[5, 4], &values(&mut r, 20, 0.5))
        .init("b2", &[4], &values(&mut r, 4, 0.1))
        .node("MatMul", &["x", "w1"], &["m1"], vec![])
        .node("Add", &["m1", "b1"], &["h1"], vec![])
        .node("Relu", &["h1"], &["a1"], vec![])
        .node("MatMul", &["a1", "w2"], &["m2"], vec![])
        .node("Add", &["m2", "b2"], &["h2"], vec![])
        .node("LogSoftmax", &["h2"], &["y"], vec![attr_int("axis", 1)])
        .output("y")
        .build();
    let rep = check_gradients(&model, &CheckOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.graphs.params.len(), 4);
}

#[test]
fn parameters_declared_as_inputs_and_inference_graph() {
    let mut r = ChaCha8Rng::seed_from_u64(12);
    // W is a graph input with no initializer: a parameter the caller seeds.
    let model = ModelBuilder::new(F64)
        .input("x", &[2, 4])
        .input("W", &[4, 3])
        .init("b", &[3], &values(&mut r, 3, 0.1))
        .init("ratio", &[], &[0.25])
        .node("MatMul", &["x", "W"], &["m"], vec![])
        .node("Add", &["m", "b"], &["h"], vec![])
        .node("Dropout", &["h", "ratio"], &["y"], vec![])
        .output("y")
        .build();
    let g = build(
        &model,
        &GradOptions {
            input_shape: vec![2, 4],
            need_input_grad: true,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.params.len(), 2);
    assert_eq!(
        (g.params[0].name.as_str(), g.params[0].init.is_none()),
        ("W", true)
    );
    assert_eq!(
        (g.params[1].name.as_str(), g.params[1].init.is_some()),
        ("b", true)
    );
    assert_eq!(g.masks.len(), 1);
    let fwd_inputs: Vec<&str> = g
        .forward
        .graph
        .iter()
        .flat_map(|gr| gr.input.iter().map(|i| i.name.as_str()))
        .collect();
    assert_eq!(fwd_inputs, ["x", "W", "b", g.masks[0].name.as_str()]);
    check_gradients(&model, &CheckOptions::default()).unwrap_or_else(|e| panic!("{e}"));

    // Inference: Dropout is the identity, params are inputs in the same order.
    let (inf, params) = inference_graph(&model, &[2, 4]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(params, g.params);
    let x = values(&mut r, 8, 1.0);
    let w = values(&mut r, 12, 1.0);
    let b: Vec<f64> = params[1]
        .init
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(f64::from)
        .collect();
    let run = Runner::new(&inf, &[vec![2, 4], vec![4, 3], vec![3]], F64, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let y = run
        .run(
            &[
                (vec![2, 4], x.clone()),
                (vec![4, 3], w.clone()),
                (vec![3], b.clone()),
            ],
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..2 {
        for j in 0..3 {
            let want: f64 = (0..4).map(|k| x[i * 4 + k] * w[k * 3 + j]).sum::<f64>() + b[j];
            assert!((y[0].1[i * 3 + j] - want).abs() < 1e-6);
        }
    }
}

#[test]
fn newer_opset_and_backward_without_the_data_input() {
    // Opset 18 (newer exporters): the emitted ops must keep their meaning.
    let mut r = ChaCha8Rng::seed_from_u64(13);
    let model = ModelBuilder::new(F64)
        .opset(18)
        .input("x", &[2, 3, 4])
        .init("w", &[4, 2], &values(&mut r, 8, 0.5))
        .node("MatMul", &["x", "w"], &["m"], vec![])
        .node("Softmax", &["m"], &["y"], vec![attr_int("axis", 1)])
        .output("y")
        .build();
    let rep = check_gradients(&model, &CheckOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.graphs.backward.opset_import[0].version, 18);

    // y = x + b without dX: the backward graph reads only dZ, yet still
    // declares (and accepts) every forward input.
    let model = ModelBuilder::new(F64)
        .input("x", &[3, 2])
        .init("b", &[2], &[0.1, 0.2])
        .node("Add", &["x", "b"], &["y"], vec![])
        .output("y")
        .build();
    let opts = CheckOptions {
        need_input_grad: false,
        ..Default::default()
    };
    let rep = check_gradients(&model, &opts).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = rep
        .graphs
        .backward
        .graph
        .iter()
        .flat_map(|g| g.input.iter().map(|i| i.name.clone()))
        .collect();
    assert_eq!(names, ["x", "b", mixnn_grad::GRAD_OUT]);
}

#[test]
fn symbolic_batch_dims_take_the_given_shape() {
    // Exporters declare the batch as a symbol ("N") on inputs, outputs and
    // intermediate value infos; the concrete input shape must win.
    use pb::tensor_shape_proto::dimension::Value;
    let mut model = ModelBuilder::new(F64)
        .input("x", &[1, 3])
        .init("w", &[3, 2], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
        .node("MatMul", &["x", "w"], &["m"], vec![])
        .node("Relu", &["m"], &["y"], vec![])
        .output("y")
        .build();
    let g = model.graph.as_mut().unwrap_or_else(|| unreachable!());
    let set_batch = |vi: &mut pb::ValueInfoProto, rank: usize| {
        let mut v = mixnn_grad::testing::value_info_f64(&vi.name, &vec![0; rank]);
        if let Some(pb::type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
            && let Some(s) = t.shape.as_mut()
        {
            s.dim[0].value = Some(Value::DimParam("N".into()));
            s.dim[1].value = Some(Value::DimValue(if vi.name == "x" { 3 } else { 2 }));
        }
        *vi = v;
    };
    set_batch(&mut g.input[0], 2);
    set_batch(&mut g.output[0], 2);
    let mut m_info = pb::ValueInfoProto {
        name: "m".into(),
        ..Default::default()
    };
    set_batch(&mut m_info, 2);
    g.value_info.push(m_info);
    let opts = CheckOptions {
        input_shape: Some(vec![5, 3]),
        ..Default::default()
    };
    let rep = check_gradients(&model, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.graphs.output_shape, vec![5, 2]);
}
