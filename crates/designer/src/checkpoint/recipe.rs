//! The recipe of a job (`job.json`): everything `--resume` needs besides
//! the model file, the secret and the checkpoints.

use std::time::Duration;

use mixnn_layer::TrainConfig;
use serde::{Deserialize, Serialize};

use crate::backend::EngineKind;
use crate::pool::{Distinct, PoolOptions};
use crate::train::TrainOptions;

/// Version of `job.json` and of the checkpoint manifests.
pub const FORMAT_VERSION: u32 = 1;

/// What a job was started with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecipe {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// SHA-256 of `model.onnx`, checked when it is read back.
    pub model_sha256: String,
    /// The model's label in reports (e.g. the file it came from).
    pub model_name: String,
    /// The data directory the job was given; `None`: the bundled MNIST.
    pub data: Option<String>,
    /// Engine of the local layers.
    pub engine: EngineKind,
    /// Passes over the training data.
    pub epochs: usize,
    /// Training batch size.
    pub batch: usize,
    /// The layers' training config.
    pub config: TrainConfig,
    /// Training samples limit.
    pub train_limit: Option<usize>,
    /// Test samples limit.
    pub test_limit: Option<usize>,
    /// Test batch size.
    pub eval_batch: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// The pool settings of a pool job; `None` for a job in one process.
    pub pool: Option<PoolRecipe>,
    /// A fork-join job's `--trusted-branch` (a node inside the trusted
    /// branch); `None`: the automatic choice, or a chain.
    #[serde(default)]
    pub trusted_branch: Option<String>,
}

impl JobRecipe {
    /// The recipe of a job trained with `opts`.
    pub fn new(
        opts: &TrainOptions,
        model_sha256: String,
        data: Option<String>,
        checkpoint_every: u64,
        pool: Option<PoolRecipe>,
    ) -> Self {
        JobRecipe {
            version: FORMAT_VERSION,
            model_sha256,
            model_name: opts.model_name.clone(),
            data,
            engine: opts.engine,
            epochs: opts.epochs,
            batch: opts.batch,
            config: opts.config.clone(),
            train_limit: opts.train_limit,
            test_limit: opts.test_limit,
            eval_batch: opts.eval_batch,
            checkpoint_every,
            pool,
            trusted_branch: None,
        }
    }

    /// The training options the job runs with.
    pub fn options(&self) -> TrainOptions {
        TrainOptions {
            engine: self.engine,
            epochs: self.epochs,
            batch: self.batch,
            config: self.config.clone(),
            train_limit: self.train_limit,
            test_limit: self.test_limit,
            eval_batch: self.eval_batch,
            model_name: self.model_name.clone(),
        }
    }
}

/// The pool settings that matter to a job: its layout (dummies, kept
/// shards, class) decides the masked states the checkpoints hold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolRecipe {
    /// Bootstrap multiaddrs (`--resume --pool` may give new ones).
    pub bootstrap: Vec<String>,
    /// Bootstraps that must list a node.
    pub quorum: Option<usize>,
    /// Hops told apart by port (one machine) rather than by host.
    pub local_pool: bool,
    /// Dummy relay hops.
    pub dummies: usize,
    /// The designer runs the first shard.
    pub keep_first: bool,
    /// The designer runs the last shard.
    pub keep_last: bool,
    /// Engine of the kept shards.
    pub local_engine: EngineKind,
    /// Payload class of the packets.
    pub class: Option<usize>,
    /// Answer timeout, in milliseconds.
    pub timeout_ms: u64,
    /// Wait for enough listed nodes, in milliseconds.
    pub wait_for_nodes_ms: u64,
    /// Batch sizes the job sends.
    pub batches: Vec<usize>,
    /// Two replicas compared by witnesses (`--verify-replicas`).
    #[serde(default)]
    pub verify_replicas: bool,
    /// The pool runs a fork-join's untrusted branch.
    #[serde(default)]
    pub branch: bool,
}

impl PoolRecipe {
    /// The recipe of `p` (its secret is kept apart, in `secret`).
    pub fn new(p: &PoolOptions) -> Self {
        PoolRecipe {
            bootstrap: p.bootstrap.clone(),
            quorum: p.quorum,
            local_pool: matches!(p.distinct, Distinct::HostPort),
            dummies: p.dummies,
            keep_first: p.keep_first,
            keep_last: p.keep_last,
            local_engine: p.local_engine,
            class: p.class,
            timeout_ms: u64::try_from(p.timeout.as_millis()).unwrap_or(u64::MAX),
            wait_for_nodes_ms: u64::try_from(p.wait_for_nodes.as_millis()).unwrap_or(u64::MAX),
            batches: p.batches.clone(),
            verify_replicas: p.witness,
            branch: p.branch,
        }
    }

    /// The pool options of a job with secret `job_secret`.
    pub fn options(&self, job_secret: [u8; 32]) -> PoolOptions {
        PoolOptions {
            bootstrap: self.bootstrap.clone(),
            quorum: self.quorum,
            distinct: if self.local_pool {
                Distinct::HostPort
            } else {
                Distinct::Host
            },
            dummies: self.dummies,
            keep_first: self.keep_first,
            keep_last: self.keep_last,
            branch: self.branch,
            local_engine: self.local_engine,
            class: self.class,
            timeout: Duration::from_millis(self.timeout_ms),
            wait_for_nodes: Duration::from_millis(self.wait_for_nodes_ms),
            batches: self.batches.clone(),
            job_secret: Some(job_secret),
            witness: self.verify_replicas,
            exclude: Vec::new(),
        }
    }
}
