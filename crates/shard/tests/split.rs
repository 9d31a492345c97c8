//! The splitter's central promise: shards run in sequence compute the whole
//! model, for both reference models, both forms and two batch sizes; and
//! merge/set_params undo split faithfully.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{max_rel_diff, random_input, run, run_chain};
use mixnn_shard::{
    Form, Plan, decode, encode, lenet5, lenet5_he, merge, mlp, pb, plan, render_plan, split,
};

type Builder = fn(u64, usize, Form) -> pb::ModelProto;

fn check_equivalence(name: &str, build: Builder, shards_expected: usize) {
    for form in [Form::Gemm, Form::MatMulAdd] {
        for batch in [1usize, 64] {
            let model = build(7, batch, form);
            // Through bytes, as the CLI does.
            let model = decode(&encode(&model)).expect("decode of our own model");
            let p = plan(&model, None).expect("automatic plan");
            assert_eq!(
                p.shards.len(),
                shards_expected,
                "{name} {form:?} batch {batch}"
            );
            let shards = split(&model, &p).expect("split");
            // Every shard is a standalone file.
            let shards: Vec<_> = shards
                .iter()
                .map(|s| decode(&encode(s)).expect("shard decodes"))
                .collect();
            let x = random_input(batch, 99);
            let whole = run(&model, &x);
            assert_eq!(whole.shape(), &[batch, 10]);
            let chained = run_chain(&shards, &x);
            let d = max_rel_diff(&whole, &chained);
            assert!(
                d <= 1e-5,
                "{name} {form:?} batch {batch}: shards differ by {d}"
            );
            let merged = merge(&shards).expect("merge");
            let d = max_rel_diff(&whole, &run(&merged, &x));
            assert!(
                d <= 1e-5,
                "{name} {form:?} batch {batch}: merged differs by {d}"
            );
            // The merged model is the original graph again.
            let g = merged.graph.as_ref().expect("graph");
            let orig = model.graph.as_ref().expect("graph");
            assert_eq!(g.node, orig.node);
            assert_eq!(g.initializer, orig.initializer);
            assert_eq!(g.input, orig.input);
            assert_eq!(g.output, orig.output);
        }
    }
}

#[test]
fn mlp_shards_compute_the_whole_model() {
    check_equivalence("mlp", mlp, 3);
}

#[test]
fn lenet5_shards_compute_the_whole_model() {
    check_equivalence("lenet5", lenet5, 5);
}

#[test]
fn mlp_plan_has_the_papers_table_shape() {
    let p = plan(&mlp(1, 64, Form::Gemm), None).expect("plan");
    let ops: Vec<Vec<&str>> = p
        .shards
        .iter()
        .map(|s| s.ops.iter().map(String::as_str).collect())
        .collect();
    assert_eq!(
        ops,
        vec![
            vec![
                "/flatten/Flatten (Flatten)",
                "/fc1/Gemm (Gemm)",
                "/relu1/Relu (Relu)"
            ],
            vec!["/fc2/Gemm (Gemm)", "/relu2/Relu (Relu)"],
            vec!["/fc3/Gemm (Gemm)", "/log_softmax/LogSoftmax (LogSoftmax)"],
        ]
    );
    let shapes: Vec<(Vec<usize>, Vec<usize>, usize)> = p
        .shards
        .iter()
        .map(|s| (s.input_shape.clone(), s.output_shape.clone(), s.param_count))
        .collect();
    assert_eq!(
        shapes,
        vec![
            (vec![64, 1, 28, 28], vec![64, 128], 784 * 128 + 128),
            (vec![64, 128], vec![64, 64], 128 * 64 + 64),
            (vec![64, 64], vec![64, 10], 64 * 10 + 10),
        ]
    );
    assert_eq!(p.shards[0].input_name, "input");
    assert_eq!(p.shards[2].output_name, "output");
    assert_eq!(p.shards[0].output_name, p.shards[1].input_name);

    // MatMul+Add form: the bias Add stays with its MatMul.
    let p = plan(&mlp(1, 8, Form::MatMulAdd), None).expect("plan");
    assert_eq!(
        p.shards[1].ops,
        vec![
            "/fc2/MatMul (MatMul)",
            "/fc2/Add (Add)",
            "/relu2/Relu (Relu)"
        ]
    );
    assert_eq!(p.shards[1].param_count, 128 * 64 + 64);
}

#[test]
fn lenet5_plan_shapes_and_params() {
    let p = plan(&lenet5(1, 4, Form::Gemm), None).expect("plan");
    let got: Vec<(Vec<usize>, usize, usize)> = p
        .shards
        .iter()
        .map(|s| (s.output_shape.clone(), s.ops.len(), s.param_count))
        .collect();
    assert_eq!(
        got,
        vec![
            (vec![4, 6, 14, 14], 3, 6 * 25 + 6),
            (vec![4, 400], 4, 16 * 6 * 25 + 16),
            (vec![4, 120], 2, 400 * 120 + 120),
            (vec![4, 84], 2, 120 * 84 + 84),
            (vec![4, 10], 2, 84 * 10 + 10),
        ]
    );
    let table = render_plan(&p);
    assert!(table.starts_with("shard"), "{table}");
    assert!(table.contains("/conv2/Conv (Conv)"), "{table}");
    assert!(table.contains("[4, 6, 14, 14]"), "{table}");
    assert!(table.contains("48120"), "{table}");
    assert!(
        table.contains("5 shard(s), 61706 parameters in total"),
        "{table}"
    );
}

#[test]
fn he_lenet_plan_shapes_and_params() {
    check_equivalence("lenet5_he", lenet5_he, 5);
    let p = plan(&lenet5_he(1, 4, Form::Gemm), None).expect("plan");
    let got: Vec<(Vec<usize>, usize)> = p
        .shards
        .iter()
        .map(|s| (s.output_shape.clone(), s.param_count))
        .collect();
    assert_eq!(
        got,
        vec![
            (vec![4, 8, 12, 12], 8 * 25 + 8),
            (vec![4, 256], 16 * 8 * 25 + 16),
            (vec![4, 120], 256 * 120 + 120),
            (vec![4, 84], 120 * 84 + 84),
            (vec![4, 10], 84 * 10 + 10),
        ]
    );
}

#[test]
fn both_forms_of_one_seed_compute_the_same_function() {
    let x = random_input(3, 5);
    for build in [mlp as Builder, lenet5] {
        let a = run(&build(11, 3, Form::Gemm), &x);
        let b = run(&build(11, 3, Form::MatMulAdd), &x);
        assert!(max_rel_diff(&a, &b) <= 1e-5);
    }
}

#[test]
fn builders_are_deterministic_and_use_pytorch_init_bounds() {
    assert_eq!(mlp(3, 64, Form::Gemm), mlp(3, 64, Form::Gemm));
    assert_ne!(mlp(3, 64, Form::Gemm), mlp(4, 64, Form::Gemm));
    let m = lenet5(3, 1, Form::Gemm);
    let params = mixnn_shard::get_params(&m).expect("params");
    for (name, dims, values) in &params {
        let fan_in = match name.as_str() {
            "conv1.weight" | "conv1.bias" => 25,
            "conv2.weight" | "conv2.bias" => 150,
            "fc1.weight" | "fc1.bias" => 400,
            "fc2.weight" | "fc2.bias" => 120,
            "fc3.weight" | "fc3.bias" => 84,
            other => panic!("unexpected initializer {other}"),
        };
        let bound = 1.0 / (fan_in as f32).sqrt();
        assert_eq!(values.len(), dims.iter().product::<usize>());
        assert!(
            values.iter().all(|v| v.abs() <= bound),
            "{name} out of bounds"
        );
        // Spread over the interval, not stuck near zero.
        let max = values.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert!(max > 0.5 * bound, "{name}: max {max} vs bound {bound}");
    }
    assert_eq!(params.len(), 10);
}

#[test]
fn explicit_cuts_split_where_asked() {
    let model = mlp(2, 4, Form::Gemm);
    let x = random_input(4, 1);
    let whole = run(&model, &x);
    // Names in any order; a cut may fall inside the paper's layers.
    let cuts = vec!["/fc2/Gemm".to_string(), "/flatten/Flatten".to_string()];
    let p = plan(&model, Some(&cuts)).expect("plan with cuts");
    assert_eq!(p.shards.len(), 3);
    assert_eq!(p.shards[0].ops, vec!["/flatten/Flatten (Flatten)"]);
    assert_eq!(p.shards[0].param_count, 0);
    assert_eq!(p.shards[0].output_shape, vec![4, 784]);
    assert_eq!(
        p.shards[1].ops.last().map(String::as_str),
        Some("/fc2/Gemm (Gemm)")
    );
    let shards = split(&model, &p).expect("split");
    assert!(max_rel_diff(&whole, &run_chain(&shards, &x)) <= 1e-5);

    // Between a MatMul and its bias Add is a legal cut too.
    let model = mlp(2, 4, Form::MatMulAdd);
    let p = plan(&model, Some(&["/fc1/MatMul".to_string()])).expect("plan");
    assert_eq!(p.shards.len(), 2);
    let shards = split(&model, &p).expect("split");
    assert!(max_rel_diff(&run(&model, &x), &run_chain(&shards, &x)) <= 1e-5);

    // No cuts: one shard, the whole model.
    let p = plan(&model, Some(&[])).expect("plan");
    assert_eq!(p.shards.len(), 1);
}

#[test]
fn plan_round_trips_through_json_and_stale_plans_are_refused() {
    let model = lenet5(1, 2, Form::MatMulAdd);
    let p = plan(&model, None).expect("plan");
    let json = serde_json::to_string_pretty(&p).expect("serialize");
    let back: Plan = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, p);
    assert_eq!(split(&model, &back).expect("split").len(), 5);

    // A plan for another batch size: shapes disagree.
    let other = plan(&lenet5(1, 3, Form::MatMulAdd), None).expect("plan");
    let e = split(&model, &other).expect_err("stale plan").to_string();
    assert!(e.contains("shape"), "{e}");
    // A plan for another model: ops disagree.
    let other = plan(&mlp(1, 2, Form::MatMulAdd), None).expect("plan");
    let e = split(&model, &other).expect_err("wrong model").to_string();
    assert!(e.contains("plan does not match"), "{e}");
    // Edited op lists: moved node.
    let mut edited = p.clone();
    let moved = edited.shards[1].ops.remove(0);
    edited.shards[0].ops.push(moved);
    assert!(split(&model, &edited).is_err());
}

/// Constant nodes and integer initializers (shape tensors) read on both
/// sides of a cut are copied into each shard; merge keeps one copy.
#[test]
fn constants_are_copied_into_the_shards_that_read_them() {
    use common::{init, model, node, vinfo};
    let shape_const = pb::NodeProto {
        name: "/shape/Constant".into(),
        op_type: "Constant".into(),
        output: vec!["s".into()],
        attribute: vec![pb::AttributeProto {
            name: "value".into(),
            r#type: pb::attribute_proto::AttributeType::Tensor as i32,
            t: Some(pb::TensorProto {
                dims: vec![2],
                data_type: 7,
                int64_data: vec![2, 4],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let flat = pb::TensorProto {
        name: "flat".into(),
        dims: vec![2],
        data_type: 7,
        int64_data: vec![2, -1],
        ..Default::default()
    };
    let m = model(
        vec![
            shape_const,
            node("/l1/MatMul", "MatMul", &["x", "W1"], &["a"]),
            node("/l1/Relu", "Relu", &["a"], &["b"]),
            node("/l1/Reshape", "Reshape", &["b", "s"], &["c"]),
            node("/l2/MatMul", "MatMul", &["c", "W2"], &["d"]),
            node("/l2/Reshape", "Reshape", &["d", "s"], &["e"]),
            node("/l2/Flat", "Reshape", &["e", "flat"], &["f"]),
            node("/l3/MatMul", "MatMul", &["f", "W3"], &["g"]),
            node("/l3/Reshape", "Reshape", &["g", "flat"], &["y"]),
        ],
        vec![
            init("W1", &[4, 4], 0.5),
            flat,
            init("W2", &[4, 4], -0.25),
            init("W3", &[4, 4], 0.125),
        ],
        vinfo("x", &[2, 4]),
        vinfo("y", &[2, 4]),
    );
    let p = plan(&m, None).expect("plan");
    assert_eq!(p.shards.len(), 3);
    assert_eq!(p.shards[0].ops[0], "/shape/Constant (Constant)");
    assert_eq!(
        p.shards.iter().map(|s| s.param_count).collect::<Vec<_>>(),
        vec![16, 16, 16]
    );
    let shards = split(&m, &p).expect("split");
    let nodes = |k: usize| -> Vec<String> {
        shards[k]
            .graph
            .as_ref()
            .expect("g")
            .node
            .iter()
            .map(|n| n.name.clone())
            .collect()
    };
    assert_eq!(
        nodes(1),
        vec!["/shape/Constant", "/l2/MatMul", "/l2/Reshape", "/l2/Flat"]
    );
    assert_eq!(nodes(2), vec!["/l3/MatMul", "/l3/Reshape"]);
    let inits = |k: usize| -> Vec<String> {
        shards[k]
            .graph
            .as_ref()
            .expect("g")
            .initializer
            .iter()
            .map(|t| t.name.clone())
            .collect()
    };
    assert_eq!(inits(1), vec!["flat", "W2"]);
    assert_eq!(inits(2), vec!["flat", "W3"]);

    let x = tract_onnx::prelude::Tensor::from_shape(
        &[2, 4],
        &[0.1f32, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8],
    )
    .expect("tensor");
    let whole = run(&m, &x);
    assert!(max_rel_diff(&whole, &run_chain(&shards, &x)) <= 1e-6);
    let merged = merge(&shards).expect("merge");
    let g = merged.graph.as_ref().expect("g");
    assert_eq!(g.node, m.graph.as_ref().expect("g").node);
    assert_eq!(g.initializer.len(), 4);
    assert!(max_rel_diff(&whole, &run(&merged, &x)) <= 1e-6);
}
