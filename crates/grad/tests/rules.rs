//! One finite-difference test per gradient rule, in f64, on random shapes
//! and values from a seeded generator.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_grad::FloatType::{self, F32, F64};
use mixnn_grad::pb;
use mixnn_grad::testing::{CheckOptions, ModelBuilder, attr_float, attr_int, check_gradients};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn values(r: &mut ChaCha8Rng, shape: &[usize]) -> Vec<f64> {
    (0..shape.iter().product::<usize>())
        .map(|_| r.gen_range(-1.0..1.0))
        .collect()
}

fn dims(r: &mut ChaCha8Rng, rank: usize) -> Vec<usize> {
    (0..rank).map(|_| r.gen_range(1..5)).collect()
}

/// `Y = op(X)` with input shape `x`.
fn one_op(
    float: FloatType,
    op: &str,
    x: &[usize],
    attrs: Vec<pb::AttributeProto>,
) -> pb::ModelProto {
    ModelBuilder::new(float)
        .input("X", x)
        .node(op, &["X"], &["Y"], attrs)
        .output("Y")
        .build()
}

/// Checks a model in f64 (dX and every parameter), printing what was checked.
fn check(model: &pb::ModelProto, seed: u64) {
    let opts = CheckOptions {
        seed,
        ..Default::default()
    };
    check_with(model, &opts);
}

/// Runs the checker, failing the test on a mismatch or when nothing was
/// compared.
fn check_with(model: &pb::ModelProto, opts: &CheckOptions) {
    match check_gradients(model, opts) {
        Ok(rep) => assert!(rep.checked > 0, "nothing was checked"),
        Err(e) => panic!("gradient check failed: {e}\nmodel: {model:#?}"),
    }
}

/// Checks a model in f32, for ops tract cannot run in f64 (Sigmoid; Gemm
/// with a bias or alpha, whose constants tract builds in f32). Tolerance: with
/// eps = 1e-2 the central difference has a truncation error ~1e-4 and an f32
/// rounding error ~1e-5 on values of order 1, so rtol 1e-2 and atol 2e-3.
fn check_f32(model: &pb::ModelProto, seed: u64) {
    let opts = CheckOptions {
        seed,
        eps: 1e-2,
        rtol: 1e-2,
        atol: 2e-3,
        ..Default::default()
    };
    check_with(model, &opts);
}

#[test]
fn gemm_all_transposes_alpha_beta_and_bias_shapes() {
    let mut r = rng(11);
    let mut case = 0;
    for ta in [0, 1] {
        for tb in [0, 1] {
            for (bias_kind, scaled) in [
                (0, false),
                (1, true),
                (2, false),
                (3, true),
                (4, false),
                (5, true),
            ] {
                let (m, k, n) = (r.gen_range(1..5), r.gen_range(1..5), r.gen_range(1..5));
                let a_s = if ta == 1 { vec![k, m] } else { vec![m, k] };
                let b_s = if tb == 1 { vec![n, k] } else { vec![k, n] };
                let mut attrs = vec![attr_int("transA", ta), attr_int("transB", tb)];
                if scaled {
                    attrs.push(attr_float("alpha", r.gen_range(0.5..2.0)));
                    attrs.push(attr_float("beta", r.gen_range(-2.0..-0.5)));
                }
                let c_s: Option<Vec<usize>> = match bias_kind {
                    0 => None,
                    1 => Some(vec![n]),
                    2 => Some(vec![1, n]),
                    3 => Some(vec![m, n]),
                    4 => Some(vec![m, 1]),
                    _ => Some(vec![]),
                };
                // tract runs Gemm in f64 only without C and alpha (it builds
                // its alpha/beta constants in f32): the rest is checked in f32.
                let in_f64 = !scaled && bias_kind == 0;
                let float = if in_f64 { F64 } else { F32 };
                let mut b = ModelBuilder::new(float).input("A", &a_s).init(
                    "B",
                    &b_s,
                    &values(&mut r, &b_s),
                );
                let inputs: Vec<&str> = if let Some(c_s) = &c_s {
                    b = b.init("C", c_s, &values(&mut r, c_s));
                    vec!["A", "B", "C"]
                } else {
                    vec!["A", "B"]
                };
                let model = b.node("Gemm", &inputs, &["Y"], attrs).output("Y").build();
                if in_f64 {
                    check(&model, case);
                } else {
                    check_f32(&model, case);
                }
                case += 1;
            }
        }
    }
}

#[test]
fn gemm_with_data_as_second_operand() {
    // B is the data input, A a parameter: covers dB flowing as dX.
    let mut r = rng(12);
    for tb in [0, 1] {
        let (m, k, n) = (3, 4, 2);
        let b_s = if tb == 1 { vec![n, k] } else { vec![k, n] };
        let model = ModelBuilder::new(F64)
            .input("B", &b_s)
            .init("A", &[m, k], &values(&mut r, &[m, k]))
            .node("Gemm", &["A", "B"], &["Y"], vec![attr_int("transB", tb)])
            .output("Y")
            .build();
        check(&model, tb as u64);
    }
}

#[test]
fn matmul_2d_batched_broadcast_and_vectors() {
    let mut r = rng(13);
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![3, 4], vec![4, 5]),
        (vec![2, 3, 4], vec![4, 5]),
        (vec![2, 1, 3, 4], vec![3, 4, 2]),
        (vec![3, 4], vec![2, 4, 5]),
        (vec![4], vec![4, 3]),
        (vec![2, 3, 4], vec![4]),
        (vec![4], vec![2, 4, 3]),
    ];
    for (i, (a, b)) in cases.into_iter().enumerate() {
        let model = ModelBuilder::new(F64)
            .input("A", &a)
            .init("B", &b, &values(&mut r, &b))
            .node("MatMul", &["A", "B"], &["Y"], vec![])
            .output("Y")
            .build();
        check(&model, i as u64);
        // And with the parameter on the left.
        let model = ModelBuilder::new(F64)
            .input("B", &b)
            .init("A", &a, &values(&mut r, &a))
            .node("MatMul", &["A", "B"], &["Y"], vec![])
            .output("Y")
            .build();
        check(&model, 100 + i as u64);
    }
}

/// Random shape `x` and a parameter shape that broadcasts against it.
fn broadcast_pair(r: &mut ChaCha8Rng) -> (Vec<usize>, Vec<usize>) {
    let rank = r.gen_range(1..4);
    let x = dims(r, rank);
    let prank = r.gen_range(0..=rank);
    let p: Vec<usize> = x[rank - prank..]
        .iter()
        .map(|&d| if r.gen_bool(0.5) { 1 } else { d })
        .collect();
    (x, p)
}

fn binary_op(op: &str, seed: u64) {
    let mut r = rng(seed);
    for case in 0..8u64 {
        let (x, p) = broadcast_pair(&mut r);
        let pv = values(&mut r, &p);
        // Parameter on the right, then on the left (the output shape comes from x either way).
        for (order, ins) in [["X", "P"], ["P", "X"]].iter().enumerate() {
            let model = ModelBuilder::new(F64)
                .input("X", &x)
                .init("P", &p, &pv)
                .node(op, ins, &["Y"], vec![])
                .output("Y")
                .build();
            check(&model, case * 2 + order as u64);
        }
    }
    // Both operands the same tensor.
    let x = dims(&mut r, 3);
    let model = ModelBuilder::new(F64)
        .input("X", &x)
        .node(op, &["X", "X"], &["Y"], vec![])
        .output("Y")
        .build();
    if op != "Sub" {
        check(&model, 99);
    }
}

#[test]
fn add_broadcasting() {
    binary_op("Add", 21);
}

#[test]
fn sub_broadcasting() {
    binary_op("Sub", 22);
}

#[test]
fn mul_broadcasting() {
    binary_op("Mul", 23);
}

#[test]
fn div_broadcasting() {
    // Keep the divisor away from zero.
    let mut r = rng(24);
    for case in 0..6u64 {
        let (x, p) = broadcast_pair(&mut r);
        let pv: Vec<f64> = values(&mut r, &p)
            .into_iter()
            .map(|v| v.signum() * (1.0 + v.abs()))
            .collect();
        let model = ModelBuilder::new(F64)
            .input("X", &x)
            .init("P", &p, &pv)
            .node("Div", &["X", "P"], &["Y"], vec![])
            .output("Y")
            .build();
        check(&model, case);
    }
}

fn unary(op: &str, seed: u64, attrs: Vec<pb::AttributeProto>, float: FloatType) {
    let mut r = rng(seed);
    for case in 0..3u64 {
        let rank = r.gen_range(1..4);
        let x = dims(&mut r, rank);
        let model = ModelBuilder::new(float)
            .input("X", &x)
            .node(op, &["X"], &["Y"], attrs.clone())
            .output("Y")
            .build();
        match float {
            F64 => check(&model, case),
            F32 => check_f32(&model, case),
        }
    }
}

#[test]
fn relu() {
    unary("Relu", 31, vec![], F64);
}

#[test]
fn sigmoid() {
    // tract has no f64 Sigmoid: checked in f32.
    unary("Sigmoid", 32, vec![], F32);
}

#[test]
fn tanh() {
    unary("Tanh", 33, vec![], F64);
}

#[test]
fn neg_and_identity() {
    unary("Neg", 34, vec![], F64);
    unary("Identity", 35, vec![], F64);
}

fn softmax_like(op: &str, seed: u64) {
    let mut r = rng(seed);
    let x = dims(&mut r, 3);
    for axis in [-1i64, 0, 1, 2, -2] {
        let model = one_op(F64, op, &x, vec![attr_int("axis", axis)]);
        check(&model, axis as u64);
    }
    // Default axis (-1) on a 2-D input.
    let model = one_op(F64, op, &[3, 5], vec![]);
    check(&model, 7);
}

#[test]
fn softmax_and_log_softmax_axes() {
    softmax_like("Softmax", 41);
    softmax_like("LogSoftmax", 42);
}

#[test]
fn flatten_every_axis() {
    let mut r = rng(51);
    let x = dims(&mut r, 4);
    for axis in [0i64, 1, 2, 3, 4, -1] {
        let model = one_op(F64, "Flatten", &x, vec![attr_int("axis", axis)]);
        check(&model, axis as u64);
    }
}

#[test]
fn reshape_squeeze_unsqueeze() {
    let mut r = rng(52);
    let x = vec![2, 1, 3, 4];
    let w = values(&mut r, &[4]);
    // Reshape with 0 (copy) and -1 (infer); a Mul by a parameter so a
    // parameter gradient flows through the reshape too.
    let model = ModelBuilder::new(F64)
        .input("X", &x)
        .init("W", &[4], &w)
        .init_i64("shape", &[2], &[0, -1])
        .node("Mul", &["X", "W"], &["H"], vec![])
        .node("Reshape", &["H", "shape"], &["Y"], vec![])
        .output("Y")
        .build();
    check(&model, 1);
    for (seed, op, axes) in [(2, "Squeeze", vec![1]), (3, "Unsqueeze", vec![0, -1])] {
        let model = ModelBuilder::new(F64)
            .input("X", &x)
            .init_i64("axes", &[axes.len()], &axes)
            .node(op, &["X", "axes"], &["Y"], vec![])
            .output("Y")
            .build();
        check(&model, seed);
    }
}

#[test]
fn concat_several_axes() {
    let mut r = rng(61);
    let base = dims(&mut r, 3);
    for axis in [0i64, 1, 2, -1] {
        let a = if axis < 0 {
            (axis + 3) as usize
        } else {
            axis as usize
        };
        let mut p = base.clone();
        p[a] = r.gen_range(1..4);
        let model = ModelBuilder::new(F64)
            .input("X", &base)
            .init("P", &p, &values(&mut r, &p))
            .node(
                "Concat",
                &["X", "P", "X"],
                &["Y"],
                vec![attr_int("axis", axis)],
            )
            .output("Y")
            .build();
        check(&model, axis as u64);
    }
}

fn variadic(op: &str, seed: u64) {
    let mut r = rng(seed);
    for case in 0..4u64 {
        let (x, p) = broadcast_pair(&mut r);
        let (_, q) = broadcast_pair(&mut r);
        // q must broadcast with x: take it from x's trailing dims.
        let q: Vec<usize> = x[x.len() - q.len().min(x.len())..].to_vec();
        let model = ModelBuilder::new(F64)
            .input("X", &x)
            .init("P", &p, &values(&mut r, &p))
            .init("Q", &q, &values(&mut r, &q))
            .node(op, &["X", "P", "Q"], &["Y"], vec![])
            .output("Y")
            .build();
        check(&model, case);
    }
    let model = one_op(F64, op, &[3, 2], vec![]);
    check(&model, 9);
}

#[test]
fn max_variadic() {
    variadic("Max", 71);
}

#[test]
fn max_ties_go_to_the_first_input() {
    // max(X, X): the whole gradient goes to one operand, so dX = dY exactly once.
    let model = ModelBuilder::new(F64)
        .input("X", &[2, 3])
        .node("Max", &["X", "X"], &["Y"], vec![])
        .output("Y")
        .build();
    check(&model, 1);
}

#[test]
fn mean_variadic() {
    variadic("Mean", 72);
}

#[test]
fn sum_variadic() {
    variadic("Sum", 73);
    // Three contributions to one tensor: the driver accumulates them with Sum.
    let model = ModelBuilder::new(F64)
        .input("X", &[2, 3])
        .node("Sum", &["X", "X", "X"], &["Y"], vec![])
        .output("Y")
        .build();
    check(&model, 5);
}

#[test]
fn dropout_with_random_mask() {
    let mut r = rng(81);
    for (case, ratio) in [0.0f64, 0.3, 0.5].into_iter().enumerate() {
        let x = dims(&mut r, 3);
        let w_s = vec![x[2]];
        let model = ModelBuilder::new(F64)
            .input("X", &x)
            .init("W", &w_s, &values(&mut r, &w_s))
            .init("ratio", &[], &[ratio])
            .node("Mul", &["X", "W"], &["H"], vec![])
            .node("Dropout", &["H", "ratio"], &["Y"], vec![])
            .output("Y")
            .build();
        let opts = CheckOptions {
            seed: case as u64,
            ..Default::default()
        };
        let rep = check_gradients(&model, &opts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rep.graphs.masks.len(), 1);
        assert_eq!(rep.graphs.masks[0].shape, x);
        assert!((rep.graphs.masks[0].ratio as f64 - ratio).abs() < 1e-7);
        assert_eq!(rep.graphs.params.len(), 1, "the ratio is not a parameter");
    }
}
