//! Conv, MaxPool and AveragePool gradients against central finite differences.
//!
//! Every model here is float64 end to end (tract runs Conv, ConvTranspose,
//! MaxPool with Indices, ScatterElements and AveragePool in f64), so the
//! checks use the f64 defaults of `check_gradients` (step 1e-6, rtol 1e-5,
//! atol 1e-7) and perturb *every* element of x and of each parameter.
//! Shapes and attributes are drawn from seeded RNGs; the fixed cases pin the
//! geometries the random ones may miss: `(H + pb + pe - k) mod s != 0`,
//! dilation, group > 1, overlapping and padded pools, ceil mode, both
//! `count_include_pad` values, `auto_pad`, 1-D and 3-D.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_grad::FloatType::F64;
use mixnn_grad::pb;
use mixnn_grad::testing::{
    CheckOptions, ModelBuilder, attr_int, attr_ints, attr_string, check_gradients,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Checks every gradient element of `model` (dX and all parameters) in f64.
fn check(model: &pb::ModelProto, seed: u64) -> usize {
    let opts = CheckOptions {
        seed,
        max_points: usize::MAX,
        ..Default::default()
    };
    match check_gradients(model, &opts) {
        Ok(rep) => {
            assert!(rep.checked > 0, "nothing was checked");
            rep.checked
        }
        Err(e) => panic!("gradient check failed: {e}\nmodel: {model:#?}"),
    }
}

fn values(r: &mut ChaCha8Rng, shape: &[usize]) -> Vec<f64> {
    (0..shape.iter().product::<usize>())
        .map(|_| r.gen_range(-1.0..1.0))
        .collect()
}

fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// Window attributes shared by Conv and the pools (explicit pads).
#[derive(Debug, Clone)]
struct Window {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    /// Begins, then ends.
    pads: Vec<usize>,
    dilations: Vec<usize>,
    ceil: bool,
}

fn win(kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4], dilations: [usize; 2]) -> Window {
    Window {
        kernel: kernel.to_vec(),
        strides: strides.to_vec(),
        pads: pads.to_vec(),
        dilations: dilations.to_vec(),
        ceil: false,
    }
}

impl Window {
    fn attrs(&self) -> Vec<pb::AttributeProto> {
        let mut a = vec![
            attr_ints("kernel_shape", &i64s(&self.kernel)),
            attr_ints("strides", &i64s(&self.strides)),
            attr_ints("pads", &i64s(&self.pads)),
        ];
        if self.dilations.iter().any(|&d| d != 1) {
            a.push(attr_ints("dilations", &i64s(&self.dilations)));
        }
        if self.ceil {
            a.push(attr_int("ceil_mode", 1));
        }
        a
    }

    /// Whether every spatial axis of `x` (N, C, spatial...) gets at least one
    /// window, with ONNX's formula.
    fn fits(&self, x: &[usize]) -> bool {
        let r = self.kernel.len();
        (0..r).all(|i| {
            let field = (self.kernel[i] - 1) * self.dilations[i] + 1;
            x[2 + i] + self.pads[i] + self.pads[r + i] >= field
        })
    }
}

// ---- Conv -------------------------------------------------------------------

struct ConvCase {
    /// N, C, spatial...
    x: Vec<usize>,
    out_ch: usize,
    group: usize,
    bias: bool,
    win: Window,
}

fn conv_model(case: &ConvCase, r: &mut ChaCha8Rng) -> pb::ModelProto {
    let w_shape: Vec<usize> = [case.out_ch, case.x[1] / case.group]
        .iter()
        .chain(&case.win.kernel)
        .copied()
        .collect();
    let mut attrs = case.win.attrs();
    attrs.push(attr_int("group", case.group as i64));
    let mut b =
        ModelBuilder::new(F64)
            .input("x", &case.x)
            .init("w", &w_shape, &values(r, &w_shape));
    let mut inputs = vec!["x", "w"];
    if case.bias {
        b = b.init("b", &[case.out_ch], &values(r, &[case.out_ch]));
        inputs.push("b");
    }
    b.node("Conv", &inputs, &["y"], attrs).output("y").build()
}

#[test]
fn conv_fixed_geometries() {
    let case = |x: [usize; 4], out_ch, group, bias, win| ConvCase {
        x: x.to_vec(),
        out_ch,
        group,
        bias,
        win,
    };
    // One case a row: x shape, output channels, group, bias, window.
    #[rustfmt::skip]
    let cases = [
        // plain 3x3 with bias
        case([2, 3, 6, 6], 4, 1, true, win([3, 3], [1, 1], [0; 4], [1, 1])),
        // (H + 2p - k) mod s != 0 on both axes: (7+2-3) mod 4 = 2, (8+2-2) mod 3 = 2
        case([2, 2, 7, 8], 3, 1, true, win([3, 2], [4, 3], [1, 1, 1, 1], [1, 1])),
        // asymmetric pads, stride 2, no bias, unpadded remainder at the end
        case([1, 3, 8, 9], 2, 1, false, win([2, 3], [2, 2], [1, 0, 0, 2], [1, 1])),
        // dilation with stride
        case([2, 2, 9, 8], 3, 1, true, win([2, 3], [2, 1], [1, 2, 0, 1], [3, 2])),
        // groups, stride and dilation
        case([2, 4, 7, 6], 6, 2, true, win([3, 2], [2, 1], [1, 1, 1, 0], [1, 2])),
        // depthwise, stride 2
        case([1, 3, 5, 6], 3, 3, false, win([3, 3], [2, 2], [1, 1, 1, 1], [1, 1])),
        // LeNet-5's first layer (smaller batch and image): 5x5 pad 2
        case([2, 1, 12, 12], 2, 1, true, win([5, 5], [1, 1], [2; 4], [1, 1])),
    ];
    let mut r = ChaCha8Rng::seed_from_u64(7);
    for (i, c) in cases.iter().enumerate() {
        let n = check(&conv_model(c, &mut r), 100 + i as u64);
        eprintln!("conv case {i}: {n} gradient elements match");
    }
}

#[test]
fn conv_random_geometries() {
    let mut r = ChaCha8Rng::seed_from_u64(2024);
    let mut done = 0;
    while done < 12 {
        let group = if r.gen_bool(0.25) { 2 } else { 1 };
        let c = group * r.gen_range(1..=2);
        let out_ch = group * r.gen_range(1..=2);
        let kernel = [r.gen_range(1..=3), r.gen_range(1..=3)];
        let strides = [r.gen_range(1..=3), r.gen_range(1..=3)];
        let dilations = [r.gen_range(1..=2), r.gen_range(1..=2)];
        let pads = [0usize; 4].map(|_| r.gen_range(0..=2));
        let x = vec![
            r.gen_range(1..=2),
            c,
            r.gen_range(3..=8),
            r.gen_range(3..=8),
        ];
        let bias = r.gen_bool(0.5);
        let case = ConvCase {
            x,
            out_ch,
            group,
            bias,
            win: win(kernel, strides, pads, dilations),
        };
        if !case.win.fits(&case.x) {
            continue;
        }
        let n = check(&conv_model(&case, &mut r), 200 + done);
        eprintln!(
            "random conv {done}: x {:?} {:?}: {n} elements match",
            case.x, case.win
        );
        done += 1;
    }
}

#[test]
fn conv_1d_3d_and_auto_pad() {
    let mut r = ChaCha8Rng::seed_from_u64(3);
    let one_d = ConvCase {
        x: vec![2, 3, 9],
        out_ch: 2,
        group: 1,
        bias: true,
        win: Window {
            kernel: vec![3],
            strides: vec![2],
            pads: vec![1, 0],
            dilations: vec![2],
            ceil: false,
        },
    };
    check(&conv_model(&one_d, &mut r), 1);
    let three_d = ConvCase {
        x: vec![1, 2, 5, 4, 5],
        out_ch: 2,
        group: 1,
        bias: false,
        win: Window {
            kernel: vec![2, 2, 3],
            strides: vec![2, 1, 2],
            pads: vec![1, 0, 0, 0, 1, 1],
            dilations: vec![1; 3],
            ceil: false,
        },
    };
    check(&conv_model(&three_d, &mut r), 2);
    for (i, mode) in ["SAME_UPPER", "SAME_LOWER", "VALID"]
        .into_iter()
        .enumerate()
    {
        let model = ModelBuilder::new(F64)
            .input("x", &[1, 2, 7, 6])
            .init("w", &[2, 2, 3, 2], &values(&mut r, &[2, 2, 3, 2]))
            .node(
                "Conv",
                &["x", "w"],
                &["y"],
                vec![attr_string("auto_pad", mode), attr_ints("strides", &[2, 2])],
            )
            .output("y")
            .build();
        check(&model, 10 + i as u64);
    }
}

// ---- pools ------------------------------------------------------------------

/// `include_pad`: `None` for MaxPool, `Some(count_include_pad)` for AveragePool.
fn pool_model(x: &[usize], w: &Window, include_pad: Option<bool>) -> pb::ModelProto {
    let mut attrs = w.attrs();
    let op = match include_pad {
        None => "MaxPool",
        Some(inc) => {
            attrs.push(attr_int("count_include_pad", inc as i64));
            "AveragePool"
        }
    };
    ModelBuilder::new(F64)
        .opset(19)
        .input("x", x)
        .node(op, &["x"], &["y"], attrs)
        .output("y")
        .build()
}

fn pool_cases() -> Vec<(Vec<usize>, Window)> {
    let mut ceil = win([3, 2], [2, 3], [1, 0, 1, 1], [1, 1]);
    ceil.ceil = true;
    let mut ceil_unpadded = win([2, 2], [2, 2], [0; 4], [1, 1]);
    ceil_unpadded.ceil = true;
    vec![
        // LeNet's 2x2 stride 2: disjoint windows
        (vec![2, 3, 6, 6], win([2, 2], [2, 2], [0; 4], [1, 1])),
        // overlapping 3x3 stride 2 with a remainder
        (vec![2, 2, 7, 8], win([3, 3], [2, 2], [0; 4], [1, 1])),
        // overlapping and padded, asymmetric
        (vec![2, 3, 7, 6], win([3, 3], [2, 1], [1, 1, 1, 0], [1, 1])),
        // stride 1, pad 1 all round: every input in several windows
        (vec![1, 2, 5, 5], win([3, 3], [1, 1], [1; 4], [1, 1])),
        // ceil mode: the last window runs past the end padding
        (vec![1, 2, 8, 7], ceil),
        // ceil mode on odd dims without padding (partial last windows)
        (vec![2, 2, 5, 7], ceil_unpadded),
        // dilated
        (vec![1, 2, 7, 7], win([2, 2], [1, 2], [1, 0, 0, 1], [2, 2])),
    ]
}

#[test]
fn max_pool_fixed_geometries() {
    for (i, (x, w)) in pool_cases().iter().enumerate() {
        let n = check(&pool_model(x, w, None), 300 + i as u64);
        eprintln!("max pool case {i}: {n} elements match");
    }
}

#[test]
fn average_pool_fixed_geometries() {
    for (i, (x, w)) in pool_cases().iter().enumerate() {
        for inc in [false, true] {
            let n = check(&pool_model(x, w, Some(inc)), 400 + i as u64);
            eprintln!("average pool case {i}, count_include_pad={inc}: {n} elements match");
        }
    }
}

#[test]
fn pools_random_geometries() {
    let mut r = ChaCha8Rng::seed_from_u64(99);
    let mut done = 0;
    while done < 12 {
        let kernel = [r.gen_range(1..=3), r.gen_range(1..=3)];
        let strides = [r.gen_range(1..=3), r.gen_range(1..=3)];
        // ONNX pools want pads smaller than the kernel.
        let pads = [kernel[0], kernel[1], kernel[0], kernel[1]].map(|k| r.gen_range(0..k));
        let mut w = win(kernel, strides, pads, [1, 1]);
        w.ceil = r.gen_bool(0.3);
        let x = vec![
            r.gen_range(1..=2),
            r.gen_range(1..=3),
            r.gen_range(3..=8),
            r.gen_range(3..=8),
        ];
        if !w.fits(&x) {
            continue;
        }
        let seed = 500 + done;
        check(&pool_model(&x, &w, None), seed);
        check(&pool_model(&x, &w, Some(r.gen_bool(0.5))), seed);
        eprintln!("random pools {done}: x {x:?} {w:?} match");
        done += 1;
    }
}

#[test]
fn pools_1d_auto_pad_and_storage_order() {
    // storage_order = 1 changes the forward Indices only; the rule recomputes
    // row-major ones, so the gradient must not care.
    let one_d = ModelBuilder::new(F64)
        .input("x", &[2, 2, 9])
        .node(
            "MaxPool",
            &["x"],
            &["y"],
            vec![
                attr_ints("kernel_shape", &[3]),
                attr_ints("strides", &[2]),
                attr_ints("pads", &[1, 1]),
                attr_int("storage_order", 1),
            ],
        )
        .output("y")
        .build();
    check(&one_d, 1);
    for (i, mode) in ["SAME_UPPER", "SAME_LOWER", "VALID"]
        .into_iter()
        .enumerate()
    {
        for op in ["MaxPool", "AveragePool"] {
            let model = ModelBuilder::new(F64)
                .input("x", &[1, 2, 7, 6])
                .node(
                    op,
                    &["x"],
                    &["y"],
                    vec![
                        attr_ints("kernel_shape", &[3, 2]),
                        attr_string("auto_pad", mode),
                        attr_ints("strides", &[2, 2]),
                    ],
                )
                .output("y")
                .build();
            check(&model, 20 + i as u64);
        }
    }
}

#[test]
fn lenet_shaped_chain() {
    // Conv -> MaxPool -> Conv -> AveragePool, as one shard: the rules must
    // compose (dX of the second Conv feeds the MaxPool rule).
    let mut r = ChaCha8Rng::seed_from_u64(5);
    let model = ModelBuilder::new(F64)
        .input("x", &[2, 1, 10, 10])
        .init("w1", &[3, 1, 3, 3], &values(&mut r, &[3, 1, 3, 3]))
        .init("b1", &[3], &values(&mut r, &[3]))
        .init("w2", &[4, 3, 2, 2], &values(&mut r, &[4, 3, 2, 2]))
        .node(
            "Conv",
            &["x", "w1", "b1"],
            &["c1"],
            vec![attr_ints("pads", &[1, 1, 1, 1])],
        )
        .max_pool("c1", "p1", &[2, 2], &[2, 2])
        .node(
            "Conv",
            &["p1", "w2"],
            &["c2"],
            vec![attr_ints("strides", &[2, 2])],
        )
        .node(
            "AveragePool",
            &["c2"],
            &["y"],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("pads", &[0, 0, 1, 1]),
            ],
        )
        .output("y")
        .build();
    check(&model, 6);
}

#[test]
fn max_pool_with_its_own_indices_output() {
    // A forward MaxPool that already yields Indices: the rule reuses them
    // (row-major) or pools again (column-major).
    for order in [0, 1] {
        let model = ModelBuilder::new(F64)
            .input("x", &[2, 2, 7, 6])
            .node(
                "MaxPool",
                &["x"],
                &["y", "ind"],
                vec![
                    attr_ints("kernel_shape", &[3, 2]),
                    attr_ints("strides", &[2, 1]),
                    attr_ints("pads", &[1, 0, 1, 1]),
                    attr_int("storage_order", order),
                ],
            )
            .output("y")
            .build();
        let opts = CheckOptions {
            seed: 30 + order as u64,
            max_points: usize::MAX,
            ..Default::default()
        };
        let rep =
            check_gradients(&model, &opts).unwrap_or_else(|e| panic!("gradient check failed: {e}"));
        let nodes = rep
            .graphs
            .backward
            .graph
            .map(|g| g.node)
            .unwrap_or_default();
        let pools = nodes.iter().filter(|n| n.op_type == "MaxPool").count();
        assert_eq!(
            pools, 1,
            "storage_order {order}: the backward graph pools once"
        );
    }
}
