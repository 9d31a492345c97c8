//! Training reports: what `train --report` writes and the demo compares.

use mixnn_layer::NamedTensor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Figures of one training epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochReport {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean loss over the epoch's training batches.
    pub train_loss: f64,
    /// Test accuracy after the epoch, as a fraction in [0, 1].
    pub test_accuracy: f64,
    /// Training time of the epoch (testing excluded).
    pub seconds: f64,
    /// Time of the epoch's test pass, in seconds.
    pub test_seconds: f64,
}

/// A whole training run: its settings, per-epoch figures and a digest of the
/// final parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    /// Where the layers ran: `native`, `wasm` or `pool`.
    pub engine: String,
    /// A label for the model (e.g. the model file).
    pub model: String,
    /// Number of shards (layers) of the model.
    pub shards: usize,
    /// Name of the optimizer.
    pub optimizer: String,
    /// Learning rate of the optimizer.
    pub learning_rate: f32,
    /// Momentum of the optimizer.
    pub momentum: f32,
    /// Training batch size.
    pub batch: usize,
    /// Seed of the data order and of the layers' config.
    pub seed: u64,
    /// Training samples used (after any limit).
    pub train_samples: usize,
    /// Test samples used (after any limit).
    pub test_samples: usize,
    /// One report per epoch, in order.
    pub epochs: Vec<EpochReport>,
    /// Test accuracy of the final model, as a fraction in [0, 1].
    pub final_test_accuracy: f64,
    /// Whole training time (all epochs, testing excluded).
    pub train_seconds: f64,
    /// SHA-256 of every final parameter, shard order, little-endian f32:
    /// equal digests mean bit-identical models.
    pub params_sha256: String,
    /// Network figures of a pool run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::pool::NetworkReport>,
    /// Wall-clock seconds of this process's run: training, test passes,
    /// checkpoints, and any detection, repair and replay. `train_seconds`
    /// is the epochs' training time as the finished run counts it (a
    /// rollback restores the checkpoint's), so the difference shows what
    /// faults cost.
    #[serde(default)]
    pub wall_seconds: f64,
    /// Replica B's network figures of a verified pool run
    /// (`--verify-replicas`; `network` is replica A's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_b: Option<crate::pool::NetworkReport>,
    /// Repairs of a pool job, in order.
    #[serde(default)]
    pub repairs: Vec<Repair>,
    /// What checkpointing cost, when the job checkpointed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<CheckpointReport>,
    /// Lies found: replicas that disagreed, held-out alarms.
    #[serde(default)]
    pub detections: Vec<Detection>,
    /// Where a fork-join's steps spent their time (each branch, the merge
    /// and head, whole steps): shows the trusted branch overlapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork: Option<crate::fork::ForkTiming>,
}

/// The cost of a job's checkpoints and where it resumed from: checkpoints
/// are the price of repair and resume, so the report shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckpointReport {
    /// Steps between checkpoints (there is also one at step 0 and one at
    /// each epoch end).
    pub every: u64,
    /// The job directory; `None`: checkpoints held in memory only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Checkpoints taken by this run.
    pub count: u64,
    /// Time they took (state export and writing), in seconds.
    pub seconds: f64,
    /// Bytes they wrote (states and manifests).
    pub bytes: u64,
    /// The checkpoint's step this run resumed from (`--resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
    /// Checkpoints refused on resume and why (torn or corrupted).
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

/// Digest of all parameters in shard order (names excluded: they are fixed by the shards).
pub fn params_sha256(params: &[Vec<NamedTensor>]) -> String {
    let mut h = Sha256::new();
    for p in params.iter().flatten() {
        for v in &p.tensor.data {
            h.update(v.to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// One repair of a pool job: a hop that failed and the node that took its
/// place.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Repair {
    /// Position of the failed hop in the cascade (0-based).
    pub hop: usize,
    /// What the hop held: `layer K` or `dummy`.
    pub role: String,
    /// Training step (1-based, counted over the whole job) whose exchange failed.
    pub step: u64,
    /// Peer id of the node that failed.
    pub failed_node: String,
    /// Peer id of the node that replaced it.
    pub new_node: String,
    /// From the send of the failed exchange to the failure being noticed.
    pub detected_after_ms: u64,
    /// From the failure being noticed to the cascade being whole again.
    pub repaired_after_ms: u64,
    /// Steps replayed from the checkpoint (filled by the training loop).
    pub steps_replayed: u64,
}

/// A lie found in a pool job (issue 11's Byzantine layers): where, when,
/// and how it was decided.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Training step (1-based over the job) at which it showed.
    pub step: u64,
    /// Position of the hop (0-based), when one was named.
    pub hop: Option<usize>,
    /// Peer id of the node found lying (or the two of a disputed link).
    pub node: Option<String>,
    /// How it was decided: the check and what it saw.
    pub how: String,
}
