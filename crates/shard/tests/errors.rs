//! Models the splitter must refuse, each with an error that names the node
//! (or tensor) and says why; and hostile files that must not panic.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{init, model, node, vinfo};
use mixnn_shard::{Form, ShardError, decode, encode, mlp, pb, plan, split};

fn cuts(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Plans `m` (at `at` when given), expecting an error whose message holds
/// every one of `parts`.
fn assert_plan_fails(m: &pb::ModelProto, at: Option<&[&str]>, parts: &[&str]) {
    let msg = plan(m, at.map(cuts).as_deref())
        .expect_err("the plan must fail")
        .to_string();
    assert!(parts.iter().all(|p| msg.contains(p)), "{msg}");
}

/// A model from `x` of shape [2, 4] to `y` of shape [2, 4].
fn model_2x4(nodes: Vec<pb::NodeProto>, inits: Vec<pb::TensorProto>) -> pb::ModelProto {
    model(nodes, inits, vinfo("x", &[2, 4]), vinfo("y", &[2, 4]))
}

/// x -> MatMul(W1) -> a -> Relu -> b -> MatMul(W2) -> c -> Add(c, a) -> y:
/// a residual connection around the Relu and second MatMul.
fn residual() -> pb::ModelProto {
    model_2x4(
        vec![
            node("/l1/MatMul", "MatMul", &["x", "W1"], &["a"]),
            node("/act/Relu", "Relu", &["a"], &["b"]),
            node("/l2/MatMul", "MatMul", &["b", "W2"], &["c"]),
            node("/skip/Add", "Add", &["c", "a"], &["y"]),
        ],
        vec![init("W1", &[4, 4], 0.5), init("W2", &[4, 4], 0.25)],
    )
}

/// Two MatMuls sharing one weight (tied weights).
fn tied() -> pb::ModelProto {
    model_2x4(
        vec![
            node("/l1/MatMul", "MatMul", &["x", "W"], &["a"]),
            node("/act/Relu", "Relu", &["a"], &["b"]),
            node("/l2/MatMul", "MatMul", &["b", "W"], &["y"]),
        ],
        vec![init("W", &[4, 4], 0.5)],
    )
}

#[test]
fn unknown_cut_name_is_named_in_the_error() {
    let m = mlp(1, 2, Form::Gemm);
    let e = plan(&m, Some(&cuts(&["/fc9/Gemm"]))).expect_err("bad name");
    assert!(matches!(e, ShardError::UnknownNode { .. }));
    let msg = e.to_string();
    assert!(msg.contains("'/fc9/Gemm'"), "{msg}");
    assert!(msg.contains("/fc1/Gemm"), "lists the real names: {msg}");
}

#[test]
fn cut_after_the_last_node_or_twice_is_refused() {
    let m = mlp(1, 2, Form::Gemm);
    let last = ["/log_softmax/LogSoftmax"];
    assert_plan_fails(&m, Some(&last), &["/log_softmax/LogSoftmax", "empty"]);
    assert_plan_fails(&m, Some(&["/fc1/Gemm", "/fc1/Gemm"]), &["twice"]);
}

#[test]
fn skip_connection_is_not_a_chain() {
    let m = residual();
    let e = plan(&m, Some(&cuts(&["/act/Relu"]))).expect_err("not a chain");
    let msg = e.to_string();
    assert!(matches!(e, ShardError::Cut { .. }), "{msg}");
    assert!(
        msg.contains("/act/Relu (Relu)") || msg.contains("'/act/Relu' (Relu)"),
        "{msg}"
    );
    assert!(
        msg.contains("not a chain") && msg.contains("'a'") && msg.contains("'b'"),
        "{msg}"
    );
    // The automatic plan wants a cut before /l2/MatMul, inside the skip.
    assert_plan_fails(&m, None, &["not a chain"]);
    // Cutting outside the residual block is fine: nothing to cut -> one shard.
    let p = plan(&m, Some(&[])).expect("one shard");
    assert_eq!(p.shards.len(), 1);
    assert_eq!(p.shards[0].param_count, 32);
}

#[test]
fn tied_weights_cannot_be_split() {
    let m = tied();
    let parts = ["'W'", "both sides", "/l1/MatMul"];
    assert_plan_fails(&m, Some(&["/l1/MatMul"]), &parts);
}

#[test]
fn truncated_files_are_errors() {
    let bytes = encode(&mlp(1, 64, Form::Gemm));
    assert!(decode(&bytes).is_ok());
    // Every cut point near both ends, and a spread through the middle.
    let mut points: Vec<usize> = (0..200).chain(bytes.len() - 200..bytes.len()).collect();
    points.extend((1..512).map(|i| i * bytes.len() / 512));
    for n in points {
        assert!(
            decode(&bytes[..n]).is_err(),
            "decode of the first {n} bytes succeeded"
        );
    }
    let msg = decode(&bytes[..bytes.len() / 2])
        .expect_err("half")
        .to_string();
    assert!(msg.contains("not a valid ONNX model"), "{msg}");
    assert!(decode(b"this is not onnx at all").is_err());
}

#[test]
fn absurd_declared_dims_are_refused_before_allocation() {
    // An initializer that claims 2^40 elements and holds none.
    let mut m = mlp(1, 2, Form::Gemm);
    let g = m.graph.as_mut().expect("graph");
    g.initializer[0].dims = vec![1 << 20, 1 << 20];
    let e = decode(&encode(&m)).expect_err("huge initializer");
    assert!(matches!(e, ShardError::TooLarge { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("fc1.weight") && msg.contains("2^28"), "{msg}");
    assert!(plan(&m, None).is_err());

    // A graph input with absurd dims.
    let mut m = mlp(1, 2, Form::Gemm);
    m.graph.as_mut().expect("graph").input[0] = vinfo("input", &[1 << 30, 1, 1 << 20, 28]);
    let msg = decode(&encode(&m)).expect_err("huge input").to_string();
    assert!(
        msg.contains("graph input 'input'") && msg.contains("cap"),
        "{msg}"
    );

    // A constant shape that would make shape analysis allocate.
    let shape = pb::TensorProto {
        name: "shape".into(),
        dims: vec![3],
        data_type: 7,
        int64_data: vec![1 << 20, 1 << 20, 1 << 10],
        ..Default::default()
    };
    let m = model(
        vec![
            node(
                "/big/ConstantOfShape",
                "ConstantOfShape",
                &["shape"],
                &["z"],
            ),
            node("/use/Add", "Add", &["x", "z"], &["y"]),
        ],
        vec![shape],
        vinfo("x", &[1]),
        vinfo("y", &[1]),
    );
    assert_plan_fails(&m, None, &["/big/ConstantOfShape", "cap"]);
}

/// The routes around a size check that only looked at a constant operand
/// directly: each is refused before tract would fold it (and allocate).
#[test]
fn constants_folded_at_analysis_are_bounded_whatever_their_route() {
    let ints = |name: &str, v: &[i64]| pb::TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: 7,
        int64_data: v.to_vec(),
        ..Default::default()
    };
    let then_add = |mut nodes: Vec<pb::NodeProto>, inits, out: &str| {
        nodes.push(node("/use/Add", "Add", &["x", out], &["y"]));
        model(nodes, inits, vinfo("x", &[1]), vinfo("y", &[1]))
    };
    // A Constant's `value_ints` attribute.
    let mut c = node("/c/Constant", "Constant", &[], &["s"]);
    c.attribute.push(pb::AttributeProto {
        name: "value_ints".into(),
        ints: vec![1 << 16, 1 << 16, 1 << 12],
        r#type: 7,
        ..Default::default()
    });
    let cos = node("/big/ConstantOfShape", "ConstantOfShape", &["s"], &["z"]);
    let m = then_add(vec![c, cos.clone()], vec![], "z");
    assert_plan_fails(&m, None, &["/big/ConstantOfShape", "cap"]);
    // A shape of 65 values: 64 ones, then 2^32.
    let mut long = vec![1i64; 64];
    long.push(1 << 32);
    let m = then_add(vec![cos.clone()], vec![ints("s", &long)], "z");
    assert_plan_fails(&m, None, &["/big/ConstantOfShape", "64 values"]);
    // A shape passed through another op first.
    let m = then_add(
        vec![node("/id", "Identity", &["s0"], &["s"]), cos],
        vec![ints("s0", &[1 << 20, 1 << 20])],
        "z",
    );
    assert_plan_fails(
        &m,
        None,
        &["/big/ConstantOfShape", "computed inside the graph"],
    );
    // Expand of a large initializer by a small shape: the data counts too.
    let m = then_add(
        vec![node("/big/Expand", "Expand", &["d", "s"], &["z"])],
        vec![init("d", &[1 << 16, 1], 0.0), ints("s", &[1, 1 << 16])],
        "z",
    );
    assert_plan_fails(&m, None, &["/big/Expand", "cap"]);
    // Tile of an initializer by repeats.
    let m = then_add(
        vec![node("/big/Tile", "Tile", &["d", "r"], &["z"])],
        vec![init("d", &[1 << 16], 0.0), ints("r", &[1 << 14])],
        "z",
    );
    assert_plan_fails(&m, None, &["/big/Tile", "cap"]);
}

#[test]
fn malformed_graphs_are_errors_not_panics() {
    // Raw data that does not match the dims.
    let mut m = mlp(1, 2, Form::Gemm);
    m.graph.as_mut().expect("graph").initializer[1]
        .raw_data
        .truncate(10);
    let msg = decode(&encode(&m)).expect_err("short raw data").to_string();
    assert!(msg.contains("fc1.bias"), "{msg}");

    // External data.
    let mut m = mlp(1, 2, Form::Gemm);
    let t = &mut m.graph.as_mut().expect("graph").initializer[0];
    t.raw_data.clear();
    t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
    t.external_data = vec![pb::StringStringEntryProto {
        key: "location".into(),
        value: "../../etc/passwd".into(),
    }];
    let msg = decode(&encode(&m)).expect_err("external").to_string();
    assert!(msg.contains("external"), "{msg}");

    // A graph output nothing produces (tract would panic on this).
    let mut m = mlp(1, 2, Form::Gemm);
    m.graph.as_mut().expect("graph").output[0].name = "nowhere".into();
    assert_plan_fails(&m, None, &["nowhere"]);

    // A node reading a name defined later (not topologically sorted).
    let mut m = mlp(1, 2, Form::Gemm);
    m.graph.as_mut().expect("graph").node.swap(0, 1);
    assert_plan_fails(&m, None, &["/fc1/Gemm", "not defined before"]);

    // No graph, no opset.
    let mut m = mlp(1, 2, Form::Gemm);
    m.opset_import.clear();
    assert!(decode(&encode(&m)).is_err());
    assert!(decode(&encode(&pb::ModelProto::default())).is_err());

    // A string tensor (tract has `unimplemented!` for raw string data).
    let mut m = mlp(1, 2, Form::Gemm);
    m.graph.as_mut().expect("graph").initializer[0].data_type = 8;
    assert!(plan(&m, None).is_err());
}

#[test]
fn unknown_ops_and_shape_errors_name_the_node() {
    let m = model_2x4(
        vec![
            node("/l1/MatMul", "MatMul", &["x", "W"], &["a"]),
            node("/weird/Frobnicate", "Frobnicate", &["a"], &["y"]),
        ],
        vec![init("W", &[4, 4], 0.5)],
    );
    let parts = ["'/weird/Frobnicate' (Frobnicate)", "no implementation"];
    assert_plan_fails(&m, None, &parts);
    // An unknown op in the middle is reported as itself, not as a downstream
    // shape failure.
    let mut m = mlp(1, 2, Form::Gemm);
    m.graph.as_mut().expect("graph").node[2].op_type = "Frob".into();
    assert_plan_fails(&m, None, &["'/relu1/Relu' (Frob)"]);

    // Mismatched MatMul shapes.
    let m = model_2x4(
        vec![node("/l1/MatMul", "MatMul", &["x", "W"], &["y"])],
        vec![init("W", &[5, 4], 0.5)],
    );
    assert_plan_fails(&m, None, &["/l1/MatMul", "MatMul"]);
}

#[test]
fn symbolic_batch_is_reported() {
    use pb::tensor_shape_proto::dimension::Value;
    let mut m = mlp(1, 2, Form::Gemm);
    let g = m.graph.as_mut().expect("graph");
    for v in g.input.iter_mut().chain(g.output.iter_mut()) {
        if let Some(pb::type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
            && let Some(s) = t.shape.as_mut()
        {
            s.dim[0].value = Some(Value::DimParam("N".into()));
        }
    }
    assert_plan_fails(&m, None, &["concrete shape"]);
}

#[test]
fn multiple_inputs_or_outputs_are_refused() {
    let mut m = mlp(1, 2, Form::Gemm);
    let extra = vinfo("output2", &[2, 10]);
    m.graph.as_mut().expect("graph").output.push(extra);
    assert!(plan(&m, None).is_err());
    let m2 = mlp(1, 2, Form::Gemm);
    let p = plan(&m2, None).expect("plan");
    assert!(split(&m, &p).is_err());
}
