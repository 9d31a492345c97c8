//! The designer (model owner): runs a split model as a cascade of layers,
//! trains it, tests it, benchmarks it and exports it.
//!
//! This crate drives layers only through [`LayerBackend`], so the same
//! training loop runs the native engine (plain tract, the accuracy reference)
//! and the sandboxed guests; [`pool::PoolCascade`] runs the same loop over pool nodes.

mod backend;
mod bench;
mod cascade;
pub mod checkpoint;
pub mod defence;
pub mod fork;
pub mod pool;
mod report;
mod train;

pub use backend::{EngineKind, LayerBackend, NativeLayer, WasmLayer, layer_config, load_layer};
pub use bench::{
    BenchError, BenchOptions, BenchReport, DEFAULT_BATCHES, GuestMode, ShardBench, bench_guest,
    render_bench,
};
pub use cascade::{Cascade, Model};
pub use report::{CheckpointReport, Detection, EpochReport, Repair, TrainReport, params_sha256};
pub use train::{
    Checkpointing, DEFAULT_MAX_REPAIRS, HeldOut, Quiet, StepProgress, TrainEvent, TrainObserver,
    TrainOptions, evaluate, infer_dataset, sample_shape, train_checkpointed, train_local,
    train_model,
};

/// Everything the designer's library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DesignerError {
    /// A native layer failed.
    #[error("layer {index}: {source}")]
    Layer {
        /// Position of the layer in the cascade (its shard index).
        index: usize,
        /// The layer engine's error.
        source: mixnn_layer::LayerError,
    },
    /// A sandboxed guest layer failed.
    #[error("guest layer {index}: {source}")]
    Guest {
        /// Position of the layer in the cascade (its shard index).
        index: usize,
        /// The sandbox's error.
        source: mixnn_sandbox::SandboxError,
    },
    /// A sandbox error not tied to one layer.
    #[error(transparent)]
    Sandbox(#[from] mixnn_sandbox::SandboxError),
    /// A shard operation failed (e.g. setting the trained parameters or merging
    /// the shards back into one model on export).
    #[error(transparent)]
    Shard(#[from] mixnn_shard::ShardError),
    /// The model has no shards.
    #[error("no shards")]
    NoShards,
    /// The wasm engine was asked for without a sandbox.
    #[error("the wasm engine needs a sandbox")]
    NoSandbox,
    /// A training or test batch size of 0.
    #[error("batch sizes must be positive")]
    ZeroBatch,
    /// The layers returned a different number of parameter sets than the
    /// model has shards, or `load_state` got a different number of states.
    #[error("{shards} shards for {layers} layers")]
    ShardCount {
        /// Shards of the model.
        shards: usize,
        /// Layers that returned parameters.
        layers: usize,
    },
    /// A cut-noise defence placed where there is no cut: it must come after
    /// 1..shards-1 layers.
    #[error(
        "cut noise after {after} shards: the model has {shards} shards, so the cut must be in 1..{shards}"
    )]
    NoiseCut {
        /// The shard count before the cut that was asked for.
        after: usize,
        /// Shards of the model.
        shards: usize,
    },
    /// The gradient reaching a dropout defence has another size than the
    /// Z_K it masked.
    #[error("cut noise: a gradient of {grad} elements for a Z_K of {z}")]
    NoiseGradient {
        /// Elements of the gradient.
        grad: usize,
        /// Elements of the masked Z_K.
        z: usize,
    },
    /// A layer other than the first returned no input gradient; holds its index.
    #[error("layer {0} returned no input gradient")]
    NoInputGradient(usize),
    /// The model's output is not a `[batch, classes]` matrix for the batch; holds
    /// the shape it had.
    #[error("model output of shape {0:?} is not [batch, classes]")]
    OutputShape(Vec<usize>),
    /// The sample shape the first shard declares does not match the data's images.
    #[error("data: the model takes samples of shape {sample:?}, the data has {rows}x{cols} images")]
    SampleShape {
        /// Shape of one sample as the first shard takes it (batch dimension dropped).
        sample: Vec<usize>,
        /// Image height of the data, in pixels.
        rows: usize,
        /// Image width of the data, in pixels.
        cols: usize,
    },
    /// Building a batch tensor from the data failed.
    #[error("data: {0}")]
    Batch(mixnn_layer::TensorError),
    /// A model's streamed test phase gave an output for a batch index it
    /// was never given ([`Model::infer_stream`]).
    #[error("the test phase answered batch {0}, which was not sent")]
    UnknownBatch(usize),
    /// A benchmark that cannot run as asked.
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
    /// The libp2p side of a pool run (the designer's peer, its packets).
    #[error("pool: {0}")]
    Pool(String),
    /// A pool job failed (deployment, a phase, an answer).
    #[error("pool: {0}")]
    Job(#[from] pool::PoolError),
    /// The job directory or a checkpoint could not be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// A checkpoint that does not fit the job (its position or settings).
    #[error("checkpoint: {0}")]
    BadCheckpoint(String),
    /// The merge of a fork-join job got tensors it cannot join.
    #[error("merge: {0}")]
    Merge(String),
    /// A fork-join job asked for something it cannot do (yet).
    #[error("fork-join: {0}")]
    Fork(String),
    /// The job failed more often than it may be repaired.
    #[error("giving up after {limit} repairs; the last failure: {last}")]
    TooManyRepairs {
        /// Repairs allowed per job.
        limit: usize,
        /// The failure that was not repaired.
        last: Box<DesignerError>,
    },
}
