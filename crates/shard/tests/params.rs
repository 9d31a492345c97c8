//! Trained weights go back into shards, and merged models carry them.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{max_rel_diff, random_input, run, run_chain};
use mixnn_shard::{
    Form, ShardError, decode, encode, get_params, lenet5, merge, mlp, plan, set_params, split,
};

#[test]
fn set_params_round_trips() {
    let model = mlp(5, 4, Form::Gemm);
    let shards = split(&model, &plan(&model, None).expect("plan")).expect("split");
    let before = get_params(&shards[1]).expect("params");
    assert_eq!(
        before.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
        vec!["fc2.weight", "fc2.bias"]
    );
    let trained: Vec<_> = before
        .iter()
        .map(|(n, d, v)| {
            (
                n.clone(),
                d.clone(),
                v.iter().map(|x| x * 0.5 + 0.01).collect(),
            )
        })
        .collect();
    let updated = set_params(&shards[1], &trained).expect("set");
    // Through bytes, as export writes a file.
    let updated = decode(&encode(&updated)).expect("decode");
    assert_eq!(get_params(&updated).expect("params"), trained);
    // Only the weights changed.
    let (a, b) = (
        shards[1].graph.as_ref().expect("g"),
        updated.graph.as_ref().expect("g"),
    );
    assert_eq!(a.node, b.node);
    assert_eq!(a.input, b.input);
    assert_eq!(a.output, b.output);
}

#[test]
fn merged_model_carries_the_new_weights() {
    let model = lenet5(5, 2, Form::MatMulAdd);
    let p = plan(&model, None).expect("plan");
    let mut shards = split(&model, &p).expect("split");
    // Swap in the weights of another seed, layer by layer.
    let other = lenet5(6, 2, Form::MatMulAdd);
    let other_shards = split(&other, &p).expect("split");
    for (s, o) in shards.iter_mut().zip(&other_shards) {
        *s = set_params(s, &get_params(o).expect("params")).expect("set");
    }
    let x = random_input(2, 3);
    let want = run(&other, &x);
    assert!(max_rel_diff(&want, &run_chain(&shards, &x)) <= 1e-5);
    let merged = merge(&shards).expect("merge");
    assert!(max_rel_diff(&want, &run(&merged, &x)) <= 1e-5);
    assert_eq!(
        get_params(&merged).expect("params"),
        get_params(&other).expect("params")
    );
}

#[test]
fn set_params_refuses_what_does_not_fit() {
    let model = mlp(5, 4, Form::Gemm);
    let shard = &split(&model, &plan(&model, None).expect("plan")).expect("split")[0];
    let cases = [
        (("fc9.weight", vec![2], vec![0.0; 2]), "no initializer"),
        (("fc1.bias", vec![64], vec![0.0; 64]), "differ"),
        (("fc1.bias", vec![128], vec![0.0; 3]), "values given"),
    ];
    for ((name, dims, values), why) in cases {
        let e = set_params(shard, &[(name.to_string(), dims, values)]).expect_err(why);
        assert!(matches!(e, ShardError::Params { .. }));
        let msg = e.to_string();
        assert!(msg.contains(name) && msg.contains(why), "{msg}");
    }
}

#[test]
fn merge_refuses_broken_chains() {
    let model = mlp(5, 4, Form::Gemm);
    let shards = split(&model, &plan(&model, None).expect("plan")).expect("split");
    assert!(merge(&[]).is_err());
    let msg = merge(&[shards[0].clone(), shards[2].clone()])
        .expect_err("gap")
        .to_string();
    assert!(
        msg.contains("shard 0 writes") && msg.contains("shard 1 reads"),
        "{msg}"
    );
    let msg = merge(&[shards[1].clone(), shards[0].clone()])
        .expect_err("order")
        .to_string();
    assert!(msg.contains("cannot merge"), "{msg}");
    // One shard merges to itself.
    let one = merge(&shards[..1]).expect("single");
    assert_eq!(
        one.graph.as_ref().expect("g").node,
        shards[0].graph.as_ref().expect("g").node
    );
}
