//! `mixnn bench guest`: per shard and batch size, forward and backward
//! medians of the native layer against the sandboxed guest, measured in the
//! same run so the ratio does not depend on the machine.
//!
//! The guest runs under the sandbox it is given, with its real limits
//! (memory cap, epoch deadline per call, NaN canonicalisation): the figure is
//! what a node pays, not what an unguarded wasm runtime would. Native and
//! guest calls alternate in short blocks, so a burst of load from other
//! processes hits both sides of a ratio alike.

use std::time::Instant;

use mixnn_grad::pb;
use mixnn_layer::{LossKind, Tensor, TrainConfig};
use mixnn_sandbox::{GuestKernels, Sandbox};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::DesignerError;
use crate::backend::{LayerBackend, NativeLayer, WasmLayer, layer_config};

/// Batch sizes measured when none are given (SPEC §11, issue 4).
pub const DEFAULT_BATCHES: [usize; 3] = [1, 64, 256];

/// Warm-up calls (forward + backward) before timing: plan building for the
/// batch size happens in the first one.
const WARMUP: usize = 3;

/// Native and guest calls alternate in blocks of this many iterations: short
/// enough that both sides see the same load, long enough that each side
/// mostly runs with its own data in cache.
const BLOCK: usize = 5;

/// What `mixnn bench guest` measures, and how often.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Batch sizes to measure, each shard at each size.
    pub batches: Vec<usize>,
    /// Timed iterations per measurement (after warm-up).
    pub iterations: usize,
    /// Seed of the layers' config and of the random inputs and output gradients.
    pub seed: u64,
    /// Only these shard indices (all when `None`). A shard keeps its position
    /// in the cascade, so the first shard still skips the input gradient.
    pub only: Option<Vec<usize>>,
    /// The guest modes to measure, each against the same native layer.
    pub modes: Vec<GuestMode>,
}

/// How the guest computes its matrix products (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMode {
    /// Everything inside the sandbox; bit-identical on every machine.
    Wasm,
    /// Products on the host's native kernels, the rest in the guest.
    Host,
}

impl GuestMode {
    /// The mode's name in the report: `wasm` or `host`.
    pub fn name(self) -> &'static str {
        match self {
            GuestMode::Wasm => "wasm",
            GuestMode::Host => "host",
        }
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            batches: DEFAULT_BATCHES.to_vec(),
            iterations: 30,
            seed: 0,
            only: None,
            modes: vec![GuestMode::Wasm, GuestMode::Host],
        }
    }
}

/// One row of the benchmark: a shard in one guest mode at one batch size;
/// times are medians over the timed iterations.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardBench {
    /// `shard{i}` and its main op, e.g. `shard0 (Conv)`.
    pub name: String,
    /// `wasm` (everything inside the sandbox) or `host` (products on the
    /// host's kernels).
    pub mode: String,
    /// What bounds the shard: `conv`, `matmul` or `other` (SPEC §11 sets a
    /// figure per kind).
    #[serde(default)]
    pub kind: String,
    /// Batch size of the inputs.
    pub batch: usize,
    /// Forward time of the native layer, in µs.
    pub forward_native_us: f64,
    /// Forward time of the guest, in µs.
    pub forward_guest_us: f64,
    /// Backward time of the native layer, in µs.
    pub backward_native_us: f64,
    /// Backward time of the guest, in µs.
    pub backward_guest_us: f64,
    /// (forward + backward guest) ÷ (forward + backward native).
    pub ratio: f64,
}

/// The result of `mixnn bench guest`: every row and the conditions measured under.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// One row per shard, guest mode and batch size, in measuring order.
    pub shards: Vec<ShardBench>,
    /// Timed iterations per figure.
    #[serde(default)]
    pub iterations: usize,
    /// The guest limits in force while measuring.
    #[serde(default)]
    pub guest_memory_bytes: usize,
    /// Deadline of one guest call, in ms.
    #[serde(default)]
    pub guest_call_timeout_ms: u64,
}

/// Median of a series, NaN when empty.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times one forward and one backward call, in µs.
fn round(
    layer: &mut dyn LayerBackend,
    x: &Tensor,
    dz: &Tensor,
) -> Result<(f64, f64), DesignerError> {
    // The clones are outside the timed region: a caller owns its tensors.
    let (x, dz) = (x.clone(), dz.clone());
    let t = Instant::now();
    layer.forward(x)?;
    let f = t.elapsed().as_secs_f64() * 1e6;
    let t = Instant::now();
    layer.backward(dz)?;
    let b = t.elapsed().as_secs_f64() * 1e6;
    Ok((f, b))
}

/// The shard's main op (the parametrised one), for its name and kind.
fn main_op(shard: &pb::ModelProto) -> Option<&str> {
    let nodes = &shard.graph.as_ref()?.node;
    nodes
        .iter()
        .find(|n| matches!(n.op_type.as_str(), "Conv" | "Gemm" | "MatMul"))
        .or_else(|| nodes.first())
        .map(|n| n.op_type.as_str())
}

fn kind_of(op: Option<&str>) -> &'static str {
    match op {
        Some("Conv") => "conv",
        Some("Gemm" | "MatMul") => "matmul",
        _ => "other",
    }
}

/// A benchmark that cannot run as asked.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// No batch size given, or a batch size of 0.
    #[error("bench needs at least one batch size, each at least 1")]
    Batches,
    /// No guest mode given.
    #[error("bench needs at least one mode")]
    Modes,
    /// Host mode asked for, but the sandbox lends no host kernels.
    #[error("host mode asked for, but this sandbox lends no host kernels (--guest-kernels wasm)")]
    NoHostKernels,
    /// Zero timed iterations asked for.
    #[error("bench needs at least one iteration")]
    Iterations,
    /// `only` names a shard the model does not have.
    #[error("shard {shard} does not exist (the model has {shards} shards)")]
    NoSuchShard {
        /// The shard index asked for.
        shard: usize,
        /// Number of shards of the model.
        shards: usize,
    },
}

fn check_options(opts: &BenchOptions, sandbox: &Sandbox, shards: usize) -> Result<(), BenchError> {
    if opts.batches.is_empty() || opts.batches.contains(&0) {
        return Err(BenchError::Batches);
    }
    if opts.modes.is_empty() {
        return Err(BenchError::Modes);
    }
    if opts.modes.contains(&GuestMode::Host) && sandbox.kernels() != GuestKernels::Host {
        return Err(BenchError::NoHostKernels);
    }
    if opts.iterations == 0 {
        return Err(BenchError::Iterations);
    }
    if let Some(&shard) = opts.only.iter().flatten().find(|&&i| i >= shards) {
        return Err(BenchError::NoSuchShard { shard, shards });
    }
    Ok(())
}

/// Times every selected shard at every batch size, in every guest mode,
/// against the native layer; calls `progress` after each row.
pub fn bench_guest(
    shards: &[pb::ModelProto],
    opts: &BenchOptions,
    sandbox: &Sandbox,
    progress: &mut dyn FnMut(&ShardBench),
) -> Result<BenchReport, DesignerError> {
    check_options(opts, sandbox, shards.len())?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let base = TrainConfig {
        seed: opts.seed,
        ..TrainConfig::default()
    };
    let mut out = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        if opts.only.as_ref().is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        let bytes = mixnn_shard::encode(shard);
        // Every shard is measured as a middle layer: no loss, and the input
        // gradient on except for the first shard, which never computes it.
        let mut cfg = layer_config(&base, i, shards.len(), LossKind::None);
        cfg.need_input_grad = i > 0;
        let declared = mixnn_layer::declared_input_shape(shard)
            .map_err(|source| DesignerError::Layer { index: i, source })?;
        let op = main_op(shard);
        let name = match op {
            Some(op) => format!("shard{i} ({op})"),
            None => format!("shard{i}"),
        };
        let mut native = NativeLayer::load(i, &bytes, cfg.clone())?;
        let mut guests = Vec::new();
        for &mode in &opts.modes {
            let cfg = TrainConfig {
                host_kernels: mode == GuestMode::Host,
                ..cfg.clone()
            };
            guests.push((mode, WasmLayer::load(i, sandbox, &bytes, &cfg)?));
        }
        for &batch in &opts.batches {
            let mut shape = declared.clone();
            shape[0] = batch;
            let n: usize = shape.iter().product();
            let x = Tensor {
                shape,
                data: (0..n).map(|_| rng.gen_range(0.0f32..1.0)).collect(),
            };
            let z = native.forward(x.clone())?;
            let dz = Tensor {
                data: (0..z.data.len())
                    .map(|_| rng.gen_range(-0.01f32..0.01))
                    .collect(),
                shape: z.shape,
            };
            for (mode, guest) in guests.iter_mut() {
                for _ in 0..WARMUP {
                    round(&mut native, &x, &dz)?;
                    round(guest, &x, &dz)?;
                }
                let mut t: [Vec<f64>; 4] = Default::default();
                let mut left = opts.iterations;
                while left > 0 {
                    let block = left.min(BLOCK);
                    left -= block;
                    for _ in 0..block {
                        let (f, b) = round(&mut native, &x, &dz)?;
                        t[0].push(f);
                        t[1].push(b);
                    }
                    for _ in 0..block {
                        let (f, b) = round(guest, &x, &dz)?;
                        t[2].push(f);
                        t[3].push(b);
                    }
                }
                let [fwd_n, bwd_n, fwd_g, bwd_g] = t.map(|mut v| median(&mut v));
                let row = ShardBench {
                    name: name.clone(),
                    mode: mode.name().into(),
                    kind: kind_of(op).into(),
                    batch,
                    forward_native_us: fwd_n,
                    forward_guest_us: fwd_g,
                    backward_native_us: bwd_n,
                    backward_guest_us: bwd_g,
                    ratio: (fwd_g + bwd_g) / (fwd_n + bwd_n),
                };
                progress(&row);
                out.push(row);
            }
        }
    }
    let limits = sandbox.limits();
    Ok(BenchReport {
        shards: out,
        iterations: opts.iterations,
        guest_memory_bytes: limits.memory_bytes,
        guest_call_timeout_ms: limits.call_timeout.as_millis() as u64,
    })
}

/// The report as a fixed-width text table, one line per row.
pub fn render_bench(r: &BenchReport) -> String {
    let mut s = format!(
        "{:<16} {:>5} {:>6} {:>12} {:>12} {:>12} {:>12} {:>7}\n",
        "shard", "mode", "batch", "fwd native", "fwd guest", "bwd native", "bwd guest", "ratio"
    );
    for b in &r.shards {
        s += &format!(
            "{:<16} {:>5} {:>6} {:>10.0}µs {:>10.0}µs {:>10.0}µs {:>10.0}µs {:>6.2}x\n",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_series() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn kinds_follow_the_main_op() {
        assert_eq!(kind_of(Some("Conv")), "conv");
        assert_eq!(kind_of(Some("Gemm")), "matmul");
        assert_eq!(kind_of(Some("MatMul")), "matmul");
        assert_eq!(kind_of(Some("Relu")), "other");
        assert_eq!(kind_of(None), "other");
    }
}
