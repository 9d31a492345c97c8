//! The rules the leakage audit trains through: ConvTranspose (the inverse
//! network's layers) against central finite differences, in f64 with every
//! element of x, W and B perturbed (as `conv_pool_grad.rs` does for Conv),
//! and the mean-squared-error loss graph's value and gradient output.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_grad::FloatType::{F32, F64};
use mixnn_grad::testing::{
    CheckOptions, ModelBuilder, Runner, attr_int, attr_ints, attr_string, check_gradients,
};
use mixnn_grad::{GradError, GradOptions, build, mse_graph, mse_graph_typed, pb};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn values(r: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| r.gen_range(-1.0..1.0)).collect()
}

/// One ConvTranspose: x shape, output channels, group, bias, kernel,
/// strides, pads (begins then ends), dilations, output_padding.
struct Case {
    x: [usize; 4],
    out_ch: usize,
    group: usize,
    bias: bool,
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
    out_pad: [usize; 2],
}

fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

fn model(c: &Case, r: &mut ChaCha8Rng) -> pb::ModelProto {
    let w_shape = [c.x[1], c.out_ch / c.group, c.kernel[0], c.kernel[1]];
    let mut b = ModelBuilder::new(F64).input("x", &c.x).init(
        "w",
        &w_shape,
        &values(r, w_shape.iter().product()),
    );
    let mut inputs = vec!["x", "w"];
    if c.bias {
        b = b.init("b", &[c.out_ch], &values(r, c.out_ch));
        inputs.push("b");
    }
    let attrs = vec![
        attr_ints("kernel_shape", &i64s(&c.kernel)),
        attr_ints("strides", &i64s(&c.strides)),
        attr_ints("pads", &i64s(&c.pads)),
        attr_ints("dilations", &i64s(&c.dilations)),
        attr_ints("output_padding", &i64s(&c.out_pad)),
        attr_int("group", c.group as i64),
    ];
    b.node("ConvTranspose", &inputs, &["y"], attrs)
        .output("y")
        .build()
}

fn check(m: &pb::ModelProto, seed: u64) -> usize {
    let opts = CheckOptions {
        seed,
        max_points: usize::MAX,
        ..Default::default()
    };
    match check_gradients(m, &opts) {
        Ok(rep) => {
            assert!(rep.checked > 0, "nothing was checked");
            rep.checked
        }
        Err(e) => panic!("gradient check failed: {e}\nmodel: {m:#?}"),
    }
}

#[test]
fn conv_transpose_fixed_geometries() {
    #[rustfmt::skip]
    let case = |x, out_ch, group, bias, kernel, strides, pads, dilations, out_pad| Case {
        x, out_ch, group, bias, kernel, strides, pads, dilations, out_pad,
    };
    #[rustfmt::skip]
    let cases = [
        // The audit decoder's layers: LeNet conv1 mirrored (5x5 pad 2) ...
        case([2, 3, 6, 6], 1, 1, true, [5, 5], [1, 1], [2; 4], [1, 1], [0, 0]),
        // ... a pool mirrored (2x2 stride 2) ...
        case([2, 2, 4, 5], 2, 1, true, [2, 2], [2, 2], [0; 4], [1, 1], [0, 0]),
        // ... and conv2 mirrored (5x5, no pad, grows 10 -> 14 in LeNet).
        case([1, 3, 4, 4], 2, 1, true, [5, 5], [1, 1], [0; 4], [1, 1], [0, 0]),
        // stride 3 with output_padding and asymmetric pads
        case([2, 2, 3, 4], 3, 1, false, [3, 2], [3, 2], [1, 0, 0, 1], [1, 1], [2, 1]),
        // dilation with stride
        case([1, 2, 3, 3], 2, 1, true, [2, 3], [2, 1], [0, 1, 1, 0], [2, 2], [1, 0]),
        // groups
        case([2, 4, 3, 4], 6, 2, true, [3, 2], [2, 1], [1, 1, 1, 0], [1, 1], [0, 0]),
    ];
    let mut r = ChaCha8Rng::seed_from_u64(11);
    for (i, c) in cases.iter().enumerate() {
        let n = check(&model(c, &mut r), 300 + i as u64);
        eprintln!("conv_transpose case {i}: {n} gradient elements match");
    }
}

#[test]
fn conv_transpose_random_geometries() {
    let mut r = ChaCha8Rng::seed_from_u64(77);
    for k in 0..10 {
        let group = if r.gen_bool(0.25) { 2 } else { 1 };
        let kernel = [r.gen_range(1..=3), r.gen_range(1..=3)];
        let strides = [r.gen_range(1..=3), r.gen_range(1..=3)];
        let dilations = [r.gen_range(1..=2), r.gen_range(1..=2)];
        // Pads below the field keep the output non-empty.
        let field = |a: usize| (kernel[a] - 1) * dilations[a] + 1;
        let pads = [
            r.gen_range(0..field(0)) / 2,
            r.gen_range(0..field(1)) / 2,
            r.gen_range(0..field(0)) / 2,
            r.gen_range(0..field(1)) / 2,
        ];
        let out_pad = [r.gen_range(0..strides[0]), r.gen_range(0..strides[1])];
        let c = Case {
            x: [
                r.gen_range(1..=2),
                group * r.gen_range(1..=2),
                r.gen_range(2..=5),
                r.gen_range(2..=5),
            ],
            out_ch: group * r.gen_range(1..=2),
            group,
            bias: r.gen_bool(0.5),
            kernel,
            strides,
            pads,
            dilations,
            out_pad,
        };
        let n = check(&model(&c, &mut r), 400 + k);
        eprintln!("random conv_transpose {k}: {n} elements match");
    }
}

#[test]
fn conv_transpose_with_implicit_pads_is_refused() {
    let m = ModelBuilder::new(F32)
        .input("x", &[1, 1, 3, 3])
        .init("w", &[1, 1, 3, 3], &[0.5; 9])
        .node(
            "ConvTranspose",
            &["x", "w"],
            &["y"],
            vec![
                attr_ints("strides", &[2, 2]),
                attr_string("auto_pad", "SAME_UPPER"),
            ],
        )
        .output("y")
        .build();
    let opts = GradOptions {
        input_shape: vec![1, 1, 3, 3],
        need_input_grad: true,
    };
    match build(&m, &opts) {
        Err(GradError::Node { op, reason, .. }) => {
            assert_eq!(op, "ConvTranspose");
            assert!(reason.contains("explicit pads"), "{reason}");
        }
        other => panic!("expected a Node error, got {other:?}"),
    }
}

#[test]
fn mse_graph_value_and_gradient() {
    let mut r = ChaCha8Rng::seed_from_u64(3);
    for shape in [vec![3, 4], vec![2, 1, 3, 3]] {
        let numel: usize = shape.iter().product();
        let pred = values(&mut r, numel);
        let target = values(&mut r, numel);
        let g = mse_graph_typed(&shape, F64);
        let run = Runner::new(&g, &[shape.clone(), shape.clone()], F64, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        let eval = |p: &[f64]| {
            run.run(
                &[(shape.clone(), p.to_vec()), (shape.clone(), target.clone())],
                &[],
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let out = eval(&pred);
        assert_eq!(out[0].0, Vec::<usize>::new(), "loss is a scalar");
        assert_eq!(out[1].0, shape);
        let want: f64 = pred
            .iter()
            .zip(&target)
            .map(|(p, t)| (p - t) * (p - t))
            .sum::<f64>()
            / numel as f64;
        assert!(
            (out[0].1[0] - want).abs() < 1e-12,
            "{} vs {want}",
            out[0].1[0]
        );
        let eps = 1e-6;
        for k in 0..numel {
            let mut p = pred.clone();
            p[k] += eps;
            let mut m = pred.clone();
            m[k] -= eps;
            let num = (eval(&p)[0].1[0] - eval(&m)[0].1[0]) / (2.0 * eps);
            let ana = out[1].1[k];
            assert!(
                (num - ana).abs() < 1e-8 + 1e-6 * num.abs(),
                "grad[{k}]: {ana} vs {num}"
            );
        }
        // The production (f32) graph agrees.
        let g32 = mse_graph(&shape);
        let r32 = Runner::new(&g32, &[shape.clone(), shape.clone()], F32, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        let o32 = r32
            .run(
                &[
                    (shape.clone(), pred.clone()),
                    (shape.clone(), target.clone()),
                ],
                &[],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!((o32[0].1[0] - want).abs() < 1e-5 * want.max(1.0));
        for (a, b) in o32[1].1.iter().zip(&out[1].1) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
