//! Fork-join models: the 8 Bident networks and a PyTorch export split into
//! their parts, and the parts (with the merge computed by hand) compute
//! the whole model.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{max_rel_diff, op_kinds, random_input, run, run_fork};
use mixnn_shard::{
    BidentMerge, BidentShape, ForkJoin, Form, MergeOp, bident, decode, encode, fork_join,
    get_params, lenet5, mlp, pb, render_fork_plan, set_params,
};

const MERGES: [BidentMerge; 4] = [
    BidentMerge::Concat,
    BidentMerge::Mul,
    BidentMerge::Max,
    BidentMerge::Avg,
];
const SHAPES: [BidentShape; 2] = [BidentShape::Symmetric, BidentShape::Asymmetric];

fn kinds(v: &[&[&str]]) -> Vec<Vec<String>> {
    v.iter()
        .map(|s| s.iter().map(|o| o.to_string()).collect())
        .collect()
}

fn param_count(shards: &[pb::ModelProto]) -> usize {
    shards
        .iter()
        .flat_map(|s| get_params(s).expect("params"))
        .map(|(_, _, v)| v.len())
        .sum()
}

const FULL: &[&[&str]] = &[
    &["Conv", "Relu", "MaxPool"],
    &["Conv", "Relu", "MaxPool", "MaxPool", "Flatten"],
    &["Gemm", "Relu"],
    &["Gemm", "Relu"],
];
const SMALL: &[&[&str]] = &[
    &["Conv", "Relu", "MaxPool", "MaxPool", "MaxPool", "Flatten"],
    &["Gemm", "Relu"],
];

#[test]
fn bident_networks_split_into_their_parts() {
    for merge in MERGES {
        for shape in SHAPES {
            let what = format!("{merge:?} {shape:?}");
            let model = decode(&encode(&bident(merge, shape, 3, 4))).expect("decode");
            let fj = fork_join(&model, None)
                .expect("fork_join")
                .expect("a fork-join");
            assert_eq!(
                fj.untrusted_slot, 0,
                "{what}: the untrusted branch is input 0"
            );
            let expected_merge = match merge {
                BidentMerge::Concat => MergeOp::Concat { axis: 1 },
                BidentMerge::Mul => MergeOp::Mul,
                BidentMerge::Max => MergeOp::Max,
                BidentMerge::Avg => MergeOp::Mean,
            };
            assert_eq!(fj.merge, expected_merge, "{what}");
            assert_eq!(op_kinds(&fj.untrusted), kinds(FULL), "{what}");
            let trusted = match shape {
                BidentShape::Symmetric => FULL,
                BidentShape::Asymmetric => SMALL,
            };
            assert_eq!(op_kinds(&fj.trusted), kinds(trusted), "{what}");
            assert_eq!(op_kinds(&fj.head), kinds(&[&["Gemm"]]), "{what}");
            // Every shard is a standalone file with the original names.
            for s in fj.untrusted.iter().chain(&fj.trusted).chain(&fj.head) {
                decode(&encode(s)).expect("shard decodes");
            }
            let first = &fj.untrusted[0].graph.as_ref().expect("graph").node[0];
            assert_eq!(first.name, "/untrusted/conv1/Conv");
            let trusted_first = &fj.trusted[0].graph.as_ref().expect("graph").node[0];
            assert_eq!(trusted_first.name, "/trusted/conv1/Conv");
            let untrusted_params = param_count(&fj.untrusted);
            let trusted_params = param_count(&fj.trusted);
            assert_eq!(untrusted_params, 30_136, "{what}");
            let expected_trusted = match shape {
                BidentShape::Symmetric => 30_136,
                BidentShape::Asymmetric => 4_776,
            };
            assert_eq!(trusted_params, expected_trusted, "{what}");
            let head_in = if merge == BidentMerge::Concat {
                168
            } else {
                84
            };
            assert_eq!(param_count(&fj.head), head_in * 10 + 10, "{what}");
            // Nothing lost, nothing duplicated.
            let whole: usize = get_params(&model)
                .expect("params")
                .iter()
                .map(|p| p.2.len())
                .sum();
            assert_eq!(
                whole,
                untrusted_params + trusted_params + param_count(&fj.head)
            );
        }
    }
}

#[test]
fn bident_parts_compute_the_whole_model() {
    for merge in MERGES {
        for shape in SHAPES {
            let model = bident(merge, shape, 11, 3);
            let fj = fork_join(&model, None)
                .expect("fork_join")
                .expect("a fork-join");
            let x = random_input(3, 5);
            let whole = run(&model, &x);
            assert_eq!(whole.shape(), &[3, 10]);
            let parts = run_fork(&fj, &x);
            let d = max_rel_diff(&whole, &parts);
            assert!(d <= 1e-5, "{merge:?} {shape:?}: parts differ by {d}");
        }
    }
}

/// Trained weights (here: scaled) written back by initializer name into
/// the original model give what the parts compute with them.
#[test]
fn set_params_writes_part_weights_back_into_the_fork_join_model() {
    let model = bident(BidentMerge::Max, BidentShape::Asymmetric, 2, 2);
    let fj = fork_join(&model, None)
        .expect("fork_join")
        .expect("a fork-join");
    let scale = |shards: &[pb::ModelProto]| -> Vec<pb::ModelProto> {
        shards
            .iter()
            .map(|s| {
                let p: Vec<_> = get_params(s)
                    .expect("params")
                    .into_iter()
                    .map(|(n, d, v)| (n, d, v.iter().map(|x| x * 0.7 + 0.01).collect()))
                    .collect();
                set_params(s, &p).expect("set shard")
            })
            .collect()
    };
    let trained = ForkJoin {
        untrusted: scale(&fj.untrusted),
        trusted: scale(&fj.trusted),
        head: scale(&fj.head),
        ..fj
    };
    let all: Vec<_> = trained
        .untrusted
        .iter()
        .chain(&trained.trusted)
        .chain(&trained.head)
        .flat_map(|s| get_params(s).expect("params"))
        .collect();
    let updated = set_params(&model, &all).expect("set whole");
    assert_eq!(get_params(&updated).expect("params").len(), all.len());
    let x = random_input(2, 8);
    let d = max_rel_diff(&run(&updated, &x), &run_fork(&trained, &x));
    assert!(
        d <= 1e-5,
        "written-back model differs from the parts by {d}"
    );
    assert!(max_rel_diff(&run(&model, &x), &run(&updated, &x)) > 1e-3);
}

#[test]
fn chain_models_are_not_fork_joins() {
    for form in [Form::Gemm, Form::MatMulAdd] {
        assert!(fork_join(&mlp(1, 2, form), None).expect("mlp").is_none());
        assert!(
            fork_join(&lenet5(1, 2, form), None)
                .expect("lenet5")
                .is_none()
        );
    }
}

#[test]
fn trusted_branch_can_be_chosen_by_node_name() {
    let model = bident(BidentMerge::Concat, BidentShape::Asymmetric, 1, 2);
    let fj = fork_join(&model, Some("/untrusted/fc2/Gemm"))
        .expect("ok")
        .expect("fj");
    assert_eq!(fj.untrusted_slot, 1);
    assert_eq!(op_kinds(&fj.untrusted), kinds(SMALL));
    assert_eq!(op_kinds(&fj.trusted), kinds(FULL));
    let x = random_input(2, 3);
    assert!(max_rel_diff(&run(&model, &x), &run_fork(&fj, &x)) <= 1e-5);
}

#[test]
fn fork_plan_shows_parts_shapes_and_places() {
    let model = bident(BidentMerge::Concat, BidentShape::Asymmetric, 1, 64);
    let fj = fork_join(&model, None).expect("ok").expect("fj");
    let table = render_fork_plan(&fj);
    for want in [
        "untrusted",
        "/untrusted/conv1/Conv (Conv)",
        "[64, 144]",
        "pool",
        "designer",
        "Concat (axis 1), untrusted branch = input 0",
        "[64, 168]",
        "/head/fc/Gemm (Gemm)",
        "pool: 30136 parameters in 4 shard(s); designer: 6466 parameters in 3 shard(s)",
    ] {
        assert!(table.contains(want), "missing {want:?} in\n{table}");
    }
}

fn torch_fixture() -> pb::ModelProto {
    let bytes = include_bytes!("fixtures/torch_fork_concat.onnx");
    decode(bytes).expect("the PyTorch export decodes")
}

/// A model exported by PyTorch (node names like `/branch_a/conv/Conv`,
/// Gemm with transB, Flatten in one branch and the
/// Shape/Gather/Unsqueeze/Concat/Reshape of `x.view(x.size(0), -1)` in the
/// other, a dynamic batch axis) splits as it is.
#[test]
fn pytorch_export_splits_without_editing() {
    let model = torch_fixture();
    let fj = fork_join(&model, None)
        .expect("fork_join")
        .expect("a fork-join");
    // branch_b (one convolution, then 784 -> 8) has more parameters than
    // branch_a (6384 against 4128): it goes to the pool, so the untrusted
    // branch feeds the second input of the Concat.
    assert_eq!(fj.untrusted_slot, 1);
    assert_eq!(fj.merge, MergeOp::Concat { axis: 1 });
    assert_eq!(
        op_kinds(&fj.trusted),
        kinds(&[
            &["Conv", "Relu", "MaxPool"],
            &["Conv", "Relu", "MaxPool", "Flatten"],
            &["Gemm", "Relu"],
        ])
    );
    assert_eq!(
        op_kinds(&fj.untrusted),
        kinds(&[
            &[
                "Conv",
                "Relu",
                "MaxPool",
                "Shape",
                "Constant",
                "Gather",
                "Constant",
                "Unsqueeze",
                "Constant",
                "Concat",
                "Reshape",
            ],
            &["Gemm", "Relu"],
        ])
    );
    assert_eq!(op_kinds(&fj.head), kinds(&[&["Gemm"]]));
    let first = &fj.untrusted[0].graph.as_ref().expect("graph").node[0];
    assert_eq!(first.name, "/branch_b/conv/Conv");
    // The dynamic batch stays dynamic: every shard runs at any batch size.
    let table = render_fork_plan(&fj);
    assert!(table.contains("[batch, 10]"), "{table}");
    println!("{table}");
    for batch in [1usize, 5] {
        let x = random_input(batch, 21);
        let whole = run(&model, &x);
        assert_eq!(whole.shape(), &[batch, 10]);
        let d = max_rel_diff(&whole, &run_fork(&fj, &x));
        assert!(d <= 1e-5, "batch {batch}: parts differ by {d}");
    }
    // Every shard passes tract's shape analysis on its own.
    for s in fj.untrusted.iter().chain(&fj.trusted).chain(&fj.head) {
        let analysed = mixnn_onnx_analyse(s);
        assert!(analysed, "a shard fails tract's analysis");
    }
    // The other branch can be kept trusted instead.
    let swapped = fork_join(&model, Some("/branch_b/fc/Gemm"))
        .expect("ok")
        .expect("fj");
    assert_eq!(swapped.untrusted_slot, 0);
    let x = random_input(2, 4);
    assert!(max_rel_diff(&run(&model, &x), &run_fork(&swapped, &x)) <= 1e-5);
}

fn mixnn_onnx_analyse(m: &pb::ModelProto) -> bool {
    mixnn_onnx::analyse(m, false).is_ok_and(|a| a.error().is_none())
}
