//! Host-kernel mode for convolutions, natively: a reference kernel installed
//! in this test process stands in for the host. Conv, its weight gradient
//! (a Conv with dilation = stride) and its input gradient (a ConvTranspose)
//! must reach the host as products, and every result must match tract's own
//! lowering up to float rounding, over many geometries.

use std::cell::RefCell;

use mixnn_grad::FloatType;
use mixnn_grad::testing::{ModelBuilder, attr_int, attr_ints};
use mixnn_layer::host_kernels::{MatMulDims, install_host_matmul};
use mixnn_layer::{Layer, LossKind, Tensor, TrainConfig};

thread_local! {
    /// The products this test's thread sent to the kernel (tests run in
    /// parallel; tract evaluates on the caller's thread).
    static SEEN: RefCell<Vec<MatMulDims>> = const { RefCell::new(Vec::new()) };
}

/// The textbook triple loop, in f64: a reference, not a fast path.
fn reference(a: &[f32], b: &[f32], d: MatMulDims) -> Result<Vec<f32>, String> {
    if a.len() != d.m * d.k || b.len() != d.k * d.n {
        return Err(format!("lengths {} {} for {d:?}", a.len(), b.len()));
    }
    SEEN.with(|s| s.borrow_mut().push(d));
    let at = |i: usize, p: usize| {
        if d.a_trans {
            a[p * d.m + i]
        } else {
            a[i * d.k + p]
        }
    };
    let bt = |p: usize, j: usize| {
        if d.b_trans {
            b[j * d.k + p]
        } else {
            b[p * d.n + j]
        }
    };
    let mut c = vec![0f32; d.m * d.n];
    for i in 0..d.m {
        for j in 0..d.n {
            let s: f64 = (0..d.k).map(|p| at(i, p) as f64 * bt(p, j) as f64).sum();
            c[i * d.n + j] = s as f32;
        }
    }
    Ok(c)
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

struct Case {
    x: [usize; 4],
    out_ch: usize,
    kernel: [usize; 2],
    strides: [usize; 2],
    /// Begins, then ends.
    pads: [usize; 4],
    dilations: [usize; 2],
    group: usize,
}

fn conv_shard(c: &Case, seed: u64) -> Vec<u8> {
    let w = [c.out_ch, c.x[1] / c.group, c.kernel[0], c.kernel[1]];
    let wv: Vec<f64> = values(seed, w.iter().product())
        .iter()
        .map(|v| *v as f64 * 0.3)
        .collect();
    let bv: Vec<f64> = values(seed + 1, c.out_ch)
        .iter()
        .map(|v| *v as f64)
        .collect();
    let i64s = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    let model = ModelBuilder::new(FloatType::F32)
        .input("x", &c.x)
        .init("w", &w, &wv)
        .init("b", &[c.out_ch], &bv)
        .node(
            "Conv",
            &["x", "w", "b"],
            &["y"],
            vec![
                attr_ints("kernel_shape", &i64s(&c.kernel)),
                attr_ints("strides", &i64s(&c.strides)),
                attr_ints("pads", &i64s(&c.pads)),
                attr_ints("dilations", &i64s(&c.dilations)),
                attr_int("group", c.group as i64),
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
        Case {
            x: [2, 1, 12, 12],
            out_ch: 3,
            kernel: [5, 5],
            strides: [1, 1],
            pads: [2, 2, 2, 2],
            dilations: [1, 1],
            group: 1,
        },
        Case {
            x: [3, 4, 9, 8],
            out_ch: 5,
            kernel: [3, 3],
            strides: [1, 1],
            pads: [0, 0, 0, 0],
            dilations: [1, 1],
            group: 1,
        },
        // Strides, uneven pads, rectangular kernels.
        Case {
            x: [2, 3, 11, 10],
            out_ch: 4,
            kernel: [3, 2],
            strides: [2, 3],
            pads: [1, 0, 2, 1],
            dilations: [1, 1],
            group: 1,
        },
        // Dilation, and stride with dilation.
        Case {
            x: [2, 2, 10, 9],
            out_ch: 3,
            kernel: [3, 3],
            strides: [1, 1],
            pads: [1, 1, 1, 1],
            dilations: [2, 2],
            group: 1,
        },
        Case {
            x: [1, 2, 13, 12],
            out_ch: 2,
            kernel: [2, 3],
            strides: [2, 2],
            pads: [0, 1, 1, 0],
            dilations: [2, 1],
            group: 1,
        },
        // Groups (the forward and weight gradient are routed; the grouped
        // input gradient stays in tract).
        Case {
            x: [2, 4, 7, 7],
            out_ch: 6,
            kernel: [3, 3],
            strides: [1, 1],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            group: 2,
        },
        // Kernel wider than the output: the weight gradient gathers by position.
        Case {
            x: [2, 2, 6, 6],
            out_ch: 2,
            kernel: [5, 5],
            strides: [1, 1],
            pads: [0, 0, 0, 0],
            dilations: [1, 1],
            group: 1,
        },
        // A 1×1 conv.
        Case {
            x: [2, 3, 5, 4],
            out_ch: 2,
            kernel: [1, 1],
            strides: [1, 1],
            pads: [0, 0, 0, 0],
            dilations: [1, 1],
            group: 1,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let shard = conv_shard(case, i as u64 + 10);
        let x = Tensor::new(case.x.to_vec(), values(i as u64, case.x.iter().product())).expect("x");
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
    let plan = mixnn_shard::plan(&model, None).expect("plan");
    let shards: Vec<Vec<u8>> = mixnn_shard::split(&model, &plan)
        .expect("split")
        .iter()
        .map(mixnn_shard::encode)
        .collect();
    let x = Tensor::new(
        vec![4, 1, 28, 28],
        values(5, 4 * 784).iter().map(|v| v.abs()).collect(),
    )
    .expect("x");
    let labels = [3i64, 1, 4, 1];
    let run = |host_kernels: bool| {
        let n = shards.len();
        let mut layers: Vec<Layer> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let cfg = TrainConfig {
                    seed: 7,
                    loss: if i + 1 == n {
                        LossKind::Nll
                    } else {
                        LossKind::None
                    },
                    need_input_grad: i > 0,
                    host_kernels,
                    ..TrainConfig::default()
                };
                Layer::load(s, cfg).expect("layer loads").0
            })
            .collect();
        let mut losses = vec![];
        for _ in 0..2 {
            let mut h = x.clone();
            for l in layers.iter_mut() {
                h = l.forward(h).expect("forward");
            }
            let out = layers[n - 1].loss(&h, &labels).expect("loss");
            losses.push(out.loss);
            let mut g = out.grad;
            for l in layers.iter_mut().rev() {
                match l.backward(g).expect("backward") {
                    Some(dx) => g = dx,
                    None => break,
                }
            }
            for l in layers.iter_mut() {
                l.step().expect("step");
            }
        }
        losses
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
