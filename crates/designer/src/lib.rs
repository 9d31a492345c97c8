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

pub use backend::{EngineKind, LayerBackend, NativeLayer, WasmLayer, layer_config, to_wit_config};
pub use bench::{
    BenchOptions, BenchReport, DEFAULT_BATCHES, GuestMode, ShardBench, bench_guest, render_bench,
};
pub use cascade::{Cascade, Model};
pub use report::{EpochReport, TrainReport, params_sha256};
pub use train::{TrainOptions, evaluate, sample_shape, train_local, train_model};

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
    #[error("data: {0}")]
    Data(String),
    #[error("{0}")]
    Invalid(String),
    #[error("pool: {0}")]
    Pool(String),
}
