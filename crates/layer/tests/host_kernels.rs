//! Host-kernel mode, natively: a reference kernel installed in this test
//! process stands in for the host. Every 2-D product of the paper's MLP
//! (forward, backward, inference) must go through it, in all the operand
//! layouts the graphs use, and training must match the pure-tract run up to
//! float rounding.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;

use mixnn_layer::Tensor;
use mixnn_layer::host_kernels::{MatMulDims, install_host_matmul};

static CALLS: AtomicUsize = AtomicUsize::new(0);
static LAYOUTS: Mutex<Vec<(bool, bool)>> = Mutex::new(Vec::new());

/// The reference product, recording what reached it.
fn reference(a: &[f32], b: &[f32], d: MatMulDims) -> Result<Vec<f32>, String> {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let mut seen = LAYOUTS.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.contains(&(d.a_trans, d.b_trans)) {
        seen.push((d.a_trans, d.b_trans));
    }
    common::reference_product(a, b, d)
}

/// Two training steps and an inference through the whole cascade; returns
/// the losses and the final logits.
fn run(host_kernels: bool) -> (Vec<f32>, Tensor) {
    let model = mixnn_shard::mlp(3, 16, mixnn_shard::Form::Gemm);
    let mut layers = common::cascade(&common::shards(&model), host_kernels);
    let x = Tensor::new(
        vec![16, 1, 28, 28],
        (0..16 * 784)
            .map(|i| ((i * 37) % 255) as f32 / 255.0)
            .collect(),
    )
    .expect("input");
    let labels: Vec<i64> = (0..16).map(|i| i % 10).collect();
    let losses = common::train(&mut layers, &x, &labels, 2);
    let mut h = x;
    for l in layers.iter_mut() {
        h = l.infer(&h).expect("infer");
    }
    (losses, h)
}

#[test]
fn products_go_to_the_host_and_training_matches_tract() {
    let (pure_losses, pure_out) = run(false);
    assert_eq!(CALLS.load(Ordering::Relaxed), 0, "no kernel installed yet");
    assert!(install_host_matmul(reference, 1 << 32));

    // Host kernels requested but off for this run: still pure tract.
    let (again, _) = run(false);
    assert_eq!(again, pure_losses);
    assert_eq!(CALLS.load(Ordering::Relaxed), 0);

    let (host_losses, host_out) = run(true);
    let calls = CALLS.load(Ordering::Relaxed);
    // 3 Gemm layers: per step 3 forward products, 3 weight gradients and 2
    // input gradients; then 3 inference products.
    assert_eq!(calls, 2 * 8 + 3, "products that reached the host");
    let layouts = LAYOUTS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(layouts.len() >= 2, "layouts seen: {layouts:?}");

    for (p, h) in pure_losses.iter().zip(&host_losses) {
        assert!((p - h).abs() < 1e-4, "loss {p} vs {h}");
    }
    let max = pure_out
        .data
        .iter()
        .zip(&host_out.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-3, "outputs differ by {max}");
}
