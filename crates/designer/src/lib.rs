//! The designer (model owner): runs a split model as a cascade of layers,
//! trains it, tests it, benchmarks it and exports it.
//!
//! This crate drives layers only through [`LayerBackend`], so the same
//! training loop runs the native engine (plain tract, the accuracy reference)
//! and the sandboxed guests; [`pool::PoolCascade`] runs the same loop over pool nodes.

mod backend;
mod bench;
mod cascade;
pub mod pool;
mod report;
mod train;

pub use backend::{EngineKind, LayerBackend, NativeLayer, WasmLayer, layer_config, load_layer};
pub use bench::{
    BenchError, BenchOptions, BenchReport, DEFAULT_BATCHES, GuestMode, ShardBench, bench_guest,
    render_bench,
};
pub use cascade::{Cascade, Model};
pub use report::{EpochReport, TrainReport, params_sha256};
pub use train::{TrainOptions, evaluate, sample_shape, train_local, train_model};

/// Everything the designer's library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DesignerError {
    #[error("layer {index}: {source}")]
    Layer {
        index: usize,
        source: mixnn_layer::LayerError,
    },
    #[error("guest layer {index}: {source}")]
    Guest {
        index: usize,
        source: mixnn_sandbox::SandboxError,
    },
    #[error(transparent)]
    Sandbox(#[from] mixnn_sandbox::SandboxError),
    #[error(transparent)]
    Shard(#[from] mixnn_shard::ShardError),
    #[error("no shards")]
    NoShards,
    #[error("the wasm engine needs a sandbox")]
    NoSandbox,
    #[error("batch sizes must be positive")]
    ZeroBatch,
    #[error("{shards} shards for {layers} layers")]
    ShardCount { shards: usize, layers: usize },
    #[error("layer {0} returned no input gradient")]
    NoInputGradient(usize),
    #[error("model output of shape {0:?} is not [batch, classes]")]
    OutputShape(Vec<usize>),
    #[error("data: the model takes samples of shape {sample:?}, the data has {rows}x{cols} images")]
    SampleShape {
        sample: Vec<usize>,
        rows: usize,
        cols: usize,
    },
    #[error("data: {0}")]
    Batch(mixnn_layer::TensorError),
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
    /// The libp2p side of a pool run (the designer's peer, its packets).
    #[error("pool: {0}")]
    Pool(String),
    #[error("pool: {0}")]
    Job(#[from] pool::PoolError),
}
