//! Host-kernel mode, natively: a reference kernel installed in this test
//! process stands in for the host. Every 2-D product of the paper's MLP
//! (forward, backward, inference) must go through it, in all the operand
//! layouts the graphs use, and training must match the pure-tract run up to
//! float rounding.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use mixnn_layer::host_kernels::{MatMulDims, install_host_matmul};
use mixnn_layer::{Layer, LossKind, Tensor, TrainConfig};

static CALLS: AtomicUsize = AtomicUsize::new(0);
static LAYOUTS: Mutex<Vec<(bool, bool)>> = Mutex::new(Vec::new());

/// The textbook triple loop, in f64: a reference, not a fast path.
fn reference(a: &[f32], b: &[f32], d: MatMulDims) -> Result<Vec<f32>, String> {
    if a.len() != d.m * d.k || b.len() != d.k * d.n {
        return Err(format!("lengths {} {} for {d:?}", a.len(), b.len()));
    }
    CALLS.fetch_add(1, Ordering::Relaxed);
    let mut seen = LAYOUTS.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.contains(&(d.a_trans, d.b_trans)) {
        seen.push((d.a_trans, d.b_trans));
    }
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

fn shards() -> Vec<Vec<u8>> {
    let model = mixnn_shard::mlp(3, 16, mixnn_shard::Form::Gemm);
    let plan = mixnn_shard::plan(&model, None).expect("plan");
    let shards = mixnn_shard::split(&model, &plan).expect("split");
    shards.iter().map(mixnn_shard::encode).collect()
}

/// Two training steps and an inference through the whole cascade; returns
/// the losses and the final logits.
fn run(host_kernels: bool) -> (Vec<f32>, Tensor) {
    let shards = shards();
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
    let x = Tensor::new(
        vec![16, 1, 28, 28],
        (0..16 * 784)
            .map(|i| ((i * 37) % 255) as f32 / 255.0)
            .collect(),
    )
    .expect("input");
    let labels: Vec<i64> = (0..16).map(|i| i % 10).collect();
    let mut losses = Vec::new();
    for _ in 0..2 {
        let mut h = x.clone();
        for l in layers.iter_mut() {
            h = l.forward(h).expect("forward");
        }
        let out = layers[n - 1].loss(&h, &labels).expect("loss");
        losses.push(out.loss);
        let mut g = out.grad;
        for l in layers.iter_mut().rev() {
            match l.backward(g.clone()).expect("backward") {
                Some(dx) => g = dx,
                None => break,
            }
        }
        for l in layers.iter_mut() {
            l.step().expect("step");
        }
    }
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
