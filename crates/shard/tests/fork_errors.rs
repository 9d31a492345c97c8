//! Graphs that are fork-joins the designer cannot run get an error naming
//! the node; the edge cases it can run (negative Concat axis, an empty
//! trusted branch, unnamed nodes) split correctly.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{init, max_rel_diff, model, node, run, run_fork, vinfo};
use mixnn_shard::{BidentMerge, BidentShape, MergeOp, bident, fork_join, pb};
use tract_onnx::prelude::Tensor;

/// `name`: out = in x W (W [k, n] filled with a value depending on the name).
fn mm(name: &str, input: &str, k: i64, n: i64) -> (pb::NodeProto, pb::TensorProto) {
    let w = format!("{name}.weight");
    let v = 0.1 + (name.len() % 7) as f32 * 0.05;
    (
        node(name, "MatMul", &[input, &w], &[name]),
        init(&w, &[k, n], v),
    )
}

/// A model on x [2, 4] from a list of MatMul layers and other nodes; the
/// graph output is `out` with `dims`.
fn graph(
    layers: &[(&str, &str, i64, i64)],
    others: Vec<pb::NodeProto>,
    out: &str,
    dims: &[i64],
) -> pb::ModelProto {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    for (name, input, k, n) in layers {
        let (nd, w) = mm(name, input, *k, *n);
        nodes.push(nd);
        inits.push(w);
    }
    nodes.extend(others);
    // Keep the graph order topological: MatMuls that read a later node go last.
    let mut ordered: Vec<pb::NodeProto> = Vec::new();
    while !nodes.is_empty() {
        let known = |t: &String| {
            t == "x"
                || inits.iter().any(|i| &i.name == t)
                || ordered.iter().any(|n| n.output.contains(t))
        };
        let pos = nodes
            .iter()
            .position(|n| n.input.iter().all(known))
            .expect("graph is acyclic");
        ordered.push(nodes.remove(pos));
    }
    model(ordered, inits, vinfo("x", &[2, 4]), vinfo(out, dims))
}

fn op(name: &str, op: &str, inputs: &[&str]) -> pb::NodeProto {
    node(name, op, inputs, &[name])
}

fn fork_err(m: &pb::ModelProto, trusted: Option<&str>, want: &[&str]) -> String {
    let e = match fork_join(m, trusted) {
        Ok(Some(_)) => panic!("expected an error mentioning {want:?}, got a fork-join"),
        Ok(None) => panic!("expected an error mentioning {want:?}, got a chain"),
        Err(e) => e,
    };
    let msg = e.to_string();
    for w in want {
        assert!(msg.contains(w), "error {msg:?} lacks {w:?}");
    }
    msg
}

fn x() -> Tensor {
    let v: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
    Tensor::from_shape(&[2, 4], &v).expect("shape")
}

#[test]
fn three_branches_into_one_merge() {
    let m = graph(
        &[
            ("a", "x", 4, 4),
            ("b", "x", 4, 4),
            ("c", "x", 4, 4),
            ("h", "m", 12, 3),
        ],
        vec![{
            let mut n = op("m", "Concat", &["a", "b", "c"]);
            n.attribute.push(mixnn_onnx::attr_int("axis", 1));
            n
        }],
        "h",
        &[2, 3],
    );
    let e = fork_err(&m, None, &["'m' (Concat)", "3 inputs", "exactly two"]);
    assert!(e.starts_with("fork-join"), "{e}");
}

#[test]
fn a_second_merge_is_refused() {
    let m = graph(
        &[
            ("a", "x", 4, 4),
            ("b", "x", 4, 4),
            ("c", "x", 4, 4),
            ("h", "m", 4, 3),
        ],
        vec![
            op("inner", "Add", &["a", "b"]),
            op("m", "Add", &["inner", "c"]),
        ],
        "h",
        &[2, 3],
    );
    fork_err(&m, None, &["'inner' (Add)", "already meet", "'m'"]);
}

#[test]
fn a_merge_op_outside_the_list_is_refused() {
    let m = graph(
        &[("a", "x", 4, 4), ("b", "x", 4, 4), ("h", "m", 4, 3)],
        vec![op("m", "Sub", &["a", "b"])],
        "h",
        &[2, 3],
    );
    fork_err(&m, None, &["'m' (Sub)", "Concat, Mul, Max, Mean, Add, Sum"]);
}

#[test]
fn a_branch_reading_the_other_is_refused() {
    let m = graph(
        &[
            ("a1", "x", 4, 4),
            ("a2", "a1", 4, 4),
            ("b1", "x", 4, 4),
            ("h", "m", 4, 3),
        ],
        vec![
            op("b2", "Mul", &["b1", "a1"]),
            op("m", "Add", &["a2", "b2"]),
        ],
        "h",
        &[2, 3],
    );
    fork_err(
        &m,
        None,
        &["'a1' (MatMul)", "both branches", "'a2'", "'b2'"],
    );
}

#[test]
fn a_head_that_forks_again_is_refused() {
    let m = graph(
        &[("a", "x", 4, 4), ("b", "x", 4, 4), ("h1", "m", 4, 4)],
        vec![
            op("m", "Max", &["a", "b"]),
            op("r", "Relu", &["h1"]),
            op("s", "Sigmoid", &["h1"]),
            op("out", "Add", &["r", "s"]),
        ],
        "out",
        &[2, 4],
    );
    fork_err(&m, None, &["'out' (Add)", "head forks again", "'m'"]);
}

#[test]
fn a_merge_without_a_head_is_refused() {
    let m = graph(
        &[("a", "x", 4, 4), ("b", "x", 4, 4)],
        vec![op("m", "Mul", &["a", "b"])],
        "m",
        &[2, 4],
    );
    fork_err(
        &m,
        None,
        &["'m' (Mul)", "at least one layer after the merge"],
    );
}

#[test]
fn a_parameter_shared_by_both_branches_is_refused() {
    let mut m = graph(
        &[("a", "x", 4, 4), ("b", "x", 4, 4), ("h", "m", 4, 3)],
        vec![op("m", "Add", &["a", "b"])],
        "h",
        &[2, 3],
    );
    let g = m.graph.as_mut().expect("graph");
    g.node[1].input[1] = "a.weight".into();
    g.initializer.retain(|t| t.name != "b.weight");
    fork_err(
        &m,
        None,
        &[
            "'a.weight'",
            "both the untrusted branch and the trusted branch",
        ],
    );
}

#[test]
fn a_dead_node_in_a_branch_is_refused() {
    let m = graph(
        &[
            ("a", "x", 4, 4),
            ("b", "x", 4, 4),
            ("h", "m", 4, 3),
            ("dead", "a", 4, 2),
        ],
        vec![op("m", "Mean", &["a", "b"])],
        "h",
        &[2, 3],
    );
    fork_err(
        &m,
        None,
        &["'dead' (MatMul)", "never reaches the model output"],
    );
}

#[test]
fn merge_inputs_of_different_shapes_are_refused() {
    let m = graph(
        &[("a", "x", 4, 4), ("b", "x", 4, 3), ("h", "m", 4, 3)],
        vec![op("m", "Mul", &["a", "b"])],
        "h",
        &[2, 3],
    );
    let e = fork_err(
        &m,
        None,
        &["'m' (Mul)", "[2, 4]", "[2, 3]", "do not broadcast"],
    );
    assert!(e.starts_with("fork-join"), "{e}");
    let mut c = op("m", "Concat", &["a", "b"]);
    c.attribute.push(mixnn_onnx::attr_int("axis", 0));
    let m = graph(
        &[("a", "x", 4, 4), ("b", "x", 4, 3), ("h", "m", 4, 3)],
        vec![c],
        "h",
        &[4, 3],
    );
    // tract's analysis already refuses this Concat, naming it.
    fork_err(
        &m,
        None,
        &["\"m\"", "Concat", "Impossible to unify Val(4) with Val(3)"],
    );
}

#[test]
fn a_trusted_branch_outside_both_branches_is_refused() {
    let model = bident(BidentMerge::Mul, BidentShape::Symmetric, 1, 2);
    for (name, want) in [
        ("/nowhere/Conv", "names no node of the model"),
        ("/head/fc/Gemm", "after the merge"),
        ("/merge/Mul", "is the merge node"),
    ] {
        let e = fork_err(&model, Some(name), &[name, want]);
        assert!(e.starts_with("trusted branch"), "{e}");
    }
}

#[test]
fn negative_concat_axis_is_normalised() {
    let mut c = op("m", "Concat", &["a", "b"]);
    c.attribute.push(mixnn_onnx::attr_int("axis", -1));
    let m = graph(
        &[
            ("a", "x", 4, 4),
            ("bb", "x", 4, 2),
            ("b", "bb", 2, 3),
            ("h", "m", 7, 3),
        ],
        vec![c],
        "h",
        &[2, 3],
    );
    let fj = fork_join(&m, None).expect("ok").expect("a fork-join");
    assert_eq!(fj.merge, MergeOp::Concat { axis: 1 });
    // 'a' has 16 parameters, 'bb' + 'b' 8 + 6 = 14: the branch into the
    // second input has fewer and stays trusted.
    assert_eq!(fj.untrusted_slot, 0);
    assert_eq!(
        (fj.untrusted.len(), fj.trusted.len(), fj.head.len()),
        (1, 2, 1)
    );
    assert!(max_rel_diff(&run(&m, &x()), &run_fork(&fj, &x())) <= 1e-6);
}

#[test]
fn the_merge_may_take_the_raw_input() {
    let m = graph(
        &[("a", "x", 4, 4), ("h", "m", 4, 3)],
        vec![op("m", "Add", &["x", "a"])],
        "h",
        &[2, 3],
    );
    let fj = fork_join(&m, None).expect("ok").expect("a fork-join");
    assert!(
        fj.trusted.is_empty(),
        "the input itself is the trusted branch"
    );
    assert_eq!(fj.untrusted_slot, 1);
    assert_eq!(fj.merge, MergeOp::Add);
    assert!(max_rel_diff(&run(&m, &x()), &run_fork(&fj, &x())) <= 1e-6);
    fork_err(&m, Some("a"), &["other branch is empty"]);
}

#[test]
fn unnamed_nodes_are_named_by_their_output() {
    let mut m = graph(
        &[("a", "x", 4, 4), ("b", "x", 4, 4), ("h", "m", 8, 3)],
        vec![{
            let mut n = op("m", "Concat", &["a", "b"]);
            n.attribute.push(mixnn_onnx::attr_int("axis", 1));
            n
        }],
        "h",
        &[2, 3],
    );
    for n in &mut m.graph.as_mut().expect("graph").node {
        n.name.clear();
    }
    // Equal parameters: the second input stays trusted unless told otherwise.
    let auto = fork_join(&m, None).expect("ok").expect("fj");
    assert_eq!(auto.untrusted_slot, 0);
    let chosen = fork_join(&m, Some("a")).expect("ok").expect("fj");
    assert_eq!(chosen.untrusted_slot, 1);
    assert!(max_rel_diff(&run(&m, &x()), &run_fork(&chosen, &x())) <= 1e-6);
}

/// A fork after a shared first layer is not a Bident fork-join (the
/// branches would not both read the data input): `fork_join` leaves it to
/// the chain splitter, which names the node where it is not a chain.
#[test]
fn a_fork_after_a_shared_stem_is_not_a_fork_join() {
    let m = graph(
        &[
            ("stem", "x", 4, 4),
            ("a", "stem", 4, 4),
            ("b", "stem", 4, 4),
            ("h", "m", 4, 3),
        ],
        vec![op("m", "Add", &["a", "b"])],
        "h",
        &[2, 3],
    );
    assert!(fork_join(&m, None).expect("no fork-join error").is_none());
    let e = mixnn_shard::plan(&m, None).expect_err("not a chain");
    assert!(e.to_string().contains("not a chain here"), "{e}");
}
