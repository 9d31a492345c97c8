//! `mixnn bench guest`: per shard, forward and backward medians of the
//! native layer against the sandboxed guest, measured in the same run so the
//! ratio does not depend on the machine.

use std::time::Instant;

use mixnn_grad::pb;
use mixnn_layer::{LossKind, Tensor, TrainConfig};
use mixnn_sandbox::Sandbox;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::DesignerError;
use crate::backend::{LayerBackend, NativeLayer, WasmLayer, layer_config};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub batch: usize,
    /// Timed iterations per measurement (after warm-up).
    pub iterations: usize,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardBench {
    pub name: String,
    /// `wasm` (everything inside the sandbox).
    pub mode: String,
    pub batch: usize,
    pub forward_native_us: f64,
    pub forward_guest_us: f64,
    pub backward_native_us: f64,
    pub backward_guest_us: f64,
    /// (forward + backward guest) ÷ (forward + backward native).
    pub ratio: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub shards: Vec<ShardBench>,
}

/// Median (µs) of forward and backward over `iterations` runs.
fn measure(
    layer: &mut dyn LayerBackend,
    x: &Tensor,
    dz: &Tensor,
    iterations: usize,
) -> Result<(f64, f64), DesignerError> {
    for _ in 0..3 {
        layer.forward(x.clone())?;
        layer.backward(dz.clone())?;
    }
    let (mut f, mut b) = (
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
    );
    for _ in 0..iterations {
        let t = Instant::now();
        layer.forward(x.clone())?;
        f.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        layer.backward(dz.clone())?;
        b.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((median(&mut f), median(&mut b)))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn bench_guest(
    shards: &[pb::ModelProto],
    opts: &BenchOptions,
    sandbox: &Sandbox,
    progress: &mut dyn FnMut(&ShardBench),
) -> Result<BenchReport, DesignerError> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let base = TrainConfig {
        seed: opts.seed,
        ..TrainConfig::default()
    };
    let mut out = Vec::with_capacity(shards.len());
    for (i, shard) in shards.iter().enumerate() {
        let bytes = mixnn_shard::encode(shard);
        // Every shard is measured as a middle layer: input gradient on, no loss.
        let mut cfg = layer_config(&base, i, shards.len(), LossKind::None);
        cfg.need_input_grad = i > 0;
        let mut shape = mixnn_layer::declared_input_shape(shard)
            .map_err(|source| DesignerError::Layer { index: i, source })?;
        shape[0] = opts.batch;
        let n: usize = shape.iter().product();
        let x = Tensor {
            shape,
            data: (0..n).map(|_| rng.gen_range(0.0f32..1.0)).collect(),
        };
        let mut native = NativeLayer::load(i, &bytes, cfg.clone())?;
        let z = native.forward(x.clone())?;
        let dz = Tensor {
            data: (0..z.data.len())
                .map(|_| rng.gen_range(-0.01f32..0.01))
                .collect(),
            shape: z.shape,
        };
        let (fwd_n, bwd_n) = measure(&mut native, &x, &dz, opts.iterations)?;
        drop(native);
        let mut guest = WasmLayer::load(i, sandbox, &bytes, &cfg)?;
        let (fwd_g, bwd_g) = measure(&mut guest, &x, &dz, opts.iterations)?;
        let name = shard
            .graph
            .as_ref()
            .and_then(|g| g.node.first())
            .map(|n| format!("shard{i} ({})", n.op_type))
            .unwrap_or_else(|| format!("shard{i}"));
        let row = ShardBench {
            name,
            mode: "wasm".into(),
            batch: opts.batch,
            forward_native_us: fwd_n,
            forward_guest_us: fwd_g,
            backward_native_us: bwd_n,
            backward_guest_us: bwd_g,
            ratio: (fwd_g + bwd_g) / (fwd_n + bwd_n),
        };
        progress(&row);
        out.push(row);
    }
    Ok(BenchReport { shards: out })
}

pub fn render_bench(r: &BenchReport) -> String {
    let mut s = format!(
        "{:<22} {:>5} {:>6} {:>12} {:>12} {:>12} {:>12} {:>7}\n",
        "shard", "mode", "batch", "fwd native", "fwd guest", "bwd native", "bwd guest", "ratio"
    );
    for b in &r.shards {
        s += &format!(
            "{:<22} {:>5} {:>6} {:>10.0}µs {:>10.0}µs {:>10.0}µs {:>10.0}µs {:>6.2}x\n",
            b.name,
            b.mode,
            b.batch,
            b.forward_native_us,
            b.forward_guest_us,
            b.backward_native_us,
            b.backward_guest_us,
            b.ratio
        );
    }
    s
}
