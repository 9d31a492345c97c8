//! Host-kernel mode for convolutions, natively: a reference kernel installed
//! in this test process stands in for the host. Conv, its weight gradient
//! (a Conv with dilation = stride) and its input gradient (a ConvTranspose)
//! must reach the host as products, and every result must match tract's own
//! lowering up to float rounding, over many geometries.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;

use mixnn_grad::FloatType;
use mixnn_grad::testing::{ModelBuilder, attr_int, attr_ints};
use mixnn_layer::host_kernels::{MatMulDims, install_host_matmul};
use mixnn_layer::{Layer, LossKind, Tensor, TrainConfig};

mod common;

thread_local! {
    /// The products this test's thread sent to the kernel (tests run in
    /// parallel; tract evaluates on the caller's thread).
    static SEEN: RefCell<Vec<MatMulDims>> = const { RefCell::new(Vec::new()) };
}

/// The reference product, recording what reached it.
fn reference(a: &[f32], b: &[f32], d: MatMulDims) -> Result<Vec<f32>, String> {
    SEEN.with(|s| s.borrow_mut().push(d));
    common::reference_product(a, b, d)
}

fn install() {
    // Every test of this binary installs the same kernel; the first wins.
    install_host_matmul(reference, 1 << 32);
}

fn seen() -> Vec<MatMulDims> {
    SEEN.with(|s| s.borrow().clone())
}

/// A deterministic pseudo-random stream in [-1, 1).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A case: input (N, C, H, W), output channels, kernel, strides, pads
/// (begins, then ends), dilations, group.
type Case = (
    [usize; 4],
    usize,
    [usize; 2],
    [usize; 2],
    [usize; 4],
    [usize; 2],
    usize,
);

fn conv_shard(c: &Case, seed: u64) -> Vec<u8> {
    let (x, out_ch, kernel, strides, pads, dilations, group) = *c;
    let w = [out_ch, x[1] / group, kernel[0], kernel[1]];
    let wv: Vec<f64> = values(seed, w.iter().product())
        .iter()
        .map(|v| *v as f64 * 0.3)
        .collect();
    let bv: Vec<f64> = values(seed + 1, out_ch).iter().map(|v| *v as f64).collect();
    let i64s = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    let model = ModelBuilder::new(FloatType::F32)
        .input("x", &x)
        .init("w", &w, &wv)
        .init("b", &[out_ch], &bv)
        .node(
            "Conv",
            &["x", "w", "b"],
            &["y"],
            vec![
                attr_ints("kernel_shape", &i64s(&kernel)),
                attr_ints("strides", &i64s(&strides)),
                attr_ints("pads", &i64s(&pads)),
                attr_ints("dilations", &i64s(&dilations)),
                attr_int("group", group as i64),
            ],
        )
        .output("y")
        .build();
    mixnn_shard::encode(&model)
}

/// Forward, backward with a fixed dZ, one SGD step, then inference:
/// (output, dX, inference output after the step).
fn run_case(shard: &[u8], x: &Tensor, host_kernels: bool) -> (Tensor, Tensor, Tensor) {
    let cfg = TrainConfig {
        seed: 1,
        loss: LossKind::None,
        need_input_grad: true,
        host_kernels,
        ..TrainConfig::default()
    };
    let (mut layer, _) = Layer::load(shard, cfg).expect("layer loads");
    let y = layer.forward(x.clone()).expect("forward");
    let dz = Tensor::new(y.shape.clone(), values(99, y.data.len())).expect("dZ");
    let dx = layer.backward(dz).expect("backward").expect("dX asked for");
    layer.step().expect("step");
    let after = layer.infer(x).expect("infer");
    (y, dx, after)
}

#[test]
fn conv_geometries_match_tract() {
    install();
    let cases = [
        // LeNet's first layer and a plain valid conv.
        ([2, 1, 12, 12], 3, [5, 5], [1, 1], [2, 2, 2, 2], [1, 1], 1),
        ([3, 4, 9, 8], 5, [3, 3], [1, 1], [0, 0, 0, 0], [1, 1], 1),
        // Strides, uneven pads, rectangular kernels.
        ([2, 3, 11, 10], 4, [3, 2], [2, 3], [1, 0, 2, 1], [1, 1], 1),
        // Dilation, and stride with dilation.
        ([2, 2, 10, 9], 3, [3, 3], [1, 1], [1, 1, 1, 1], [2, 2], 1),
        ([1, 2, 13, 12], 2, [2, 3], [2, 2], [0, 1, 1, 0], [2, 1], 1),
        // Groups (the forward and weight gradient are routed; the grouped
        // input gradient stays in tract).
        ([2, 4, 7, 7], 6, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 2),
        // Kernel wider than the output: the weight gradient gathers by position.
        ([2, 2, 6, 6], 2, [5, 5], [1, 1], [0, 0, 0, 0], [1, 1], 1),
        // A 1×1 conv.
        ([2, 3, 5, 4], 2, [1, 1], [1, 1], [0, 0, 0, 0], [1, 1], 1),
    ];
    for (i, case) in cases.iter().enumerate() {
        let shard = conv_shard(case, i as u64 + 10);
        let x = Tensor::new(case.0.to_vec(), values(i as u64, case.0.iter().product())).expect("x");
        let before = seen().len();
        let pure = run_case(&shard, &x, false);
        assert_eq!(seen().len(), before, "case {i}: pure run called the host");
        let host = run_case(&shard, &x, true);
        assert!(seen().len() > before, "case {i}: nothing reached the host");
        for (what, p, h) in [
            ("output", &pure.0, &host.0),
            ("dX", &pure.1, &host.1),
            ("after a step", &pure.2, &host.2),
        ] {
            assert_eq!(p.shape, h.shape, "case {i}: {what} shape");
            let d = max_diff(&p.data, &h.data);
            assert!(d < 1e-4, "case {i}: {what} differs by {d}");
        }
    }
}

#[test]
fn lenet_convolutions_reach_the_host() {
    install();
    let model = mixnn_shard::lenet5(3, 4, mixnn_shard::Form::Gemm);
    let shards = common::shards(&model);
    let x = Tensor::new(
        vec![4, 1, 28, 28],
        values(5, 4 * 784).iter().map(|v| v.abs()).collect(),
    )
    .expect("x");
    let labels = [3i64, 1, 4, 1];
    let run = |host_kernels: bool| {
        common::train(&mut common::cascade(&shards, host_kernels), &x, &labels, 2)
    };
    let pure = run(false);
    let before = seen().len();
    let host = run(true);
    for (p, h) in pure.iter().zip(&host) {
        assert!((p - h).abs() < 1e-4, "loss {p} vs {h}");
    }
    let calls = &seen()[before..];
    let has = |m: usize, k: usize, n: usize| calls.iter().any(|d| (d.m, d.k, d.n) == (m, k, n));
    // conv1 forward per image: 6 filters × 25 taps × 28·28 positions.
    assert!(has(6, 25, 784), "conv1 forward not routed");
    // conv2 forward: 16 × (6·25) × 10·10.
    assert!(has(16, 150, 100), "conv2 forward not routed");
    // conv1 weight gradient: a conv with dZ as a 28×28 kernel, gathered by
    // position (B transposed).
    assert!(
        calls
            .iter()
            .any(|d| d.m == 6 && d.k == 4 * 784 && d.n == 25 && d.b_trans),
        "conv1 dW not routed"
    );
    // conv2 input gradient: (6 channels · 25 taps) × 16 × 10·10.
    assert!(has(150, 16, 100), "conv2 dX not routed");
}
