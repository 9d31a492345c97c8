//! Test support for the routed-kernel tests: a reference product and a
//! cascade of layers trained a few steps.

use mixnn_layer::host_kernels::MatMulDims;
use mixnn_layer::{Layer, LossKind, Tensor, TrainConfig};

/// The textbook triple loop, in f64: a reference, not a fast path.
pub fn reference_product(a: &[f32], b: &[f32], d: MatMulDims) -> Result<Vec<f32>, String> {
    if a.len() != d.m * d.k || b.len() != d.k * d.n {
        return Err(format!("lengths {} {} for {d:?}", a.len(), b.len()));
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

/// The shards of `model`, encoded, as the automatic plan splits it.
pub fn shards(model: &mixnn_shard::pb::ModelProto) -> Vec<Vec<u8>> {
    let plan = mixnn_shard::plan(model, None).expect("plan");
    let shards = mixnn_shard::split(model, &plan).expect("split");
    shards.iter().map(mixnn_shard::encode).collect()
}

/// Every shard loaded as a layer of one cascade (NLL loss on the last).
pub fn cascade(shards: &[Vec<u8>], host_kernels: bool) -> Vec<Layer> {
    let n = shards.len();
    shards
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
        .collect()
}

/// `steps` SGD steps of the whole cascade on one batch; returns the losses.
pub fn train(layers: &mut [Layer], x: &Tensor, labels: &[i64], steps: usize) -> Vec<f32> {
    let n = layers.len();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let mut h = x.clone();
        for l in layers.iter_mut() {
            h = l.forward(h).expect("forward");
        }
        let out = layers[n - 1].loss(&h, labels).expect("loss");
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
}
