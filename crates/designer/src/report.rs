//! Training reports: what `train --report` writes and the demo compares.

use mixnn_layer::NamedTensor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_accuracy: f64,
    /// Training time of the epoch (testing excluded).
    pub seconds: f64,
    pub test_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    pub engine: String,
    pub model: String,
    pub shards: usize,
    pub optimizer: String,
    pub learning_rate: f32,
    pub momentum: f32,
    pub batch: usize,
    pub seed: u64,
    pub train_samples: usize,
    pub test_samples: usize,
    pub epochs: Vec<EpochReport>,
    pub final_test_accuracy: f64,
    /// Whole training time (all epochs, testing excluded).
    pub train_seconds: f64,
    /// SHA-256 of every final parameter, shard order, little-endian f32:
    /// equal digests mean bit-identical models.
    pub params_sha256: String,
    /// Network figures of a pool run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::pool::NetworkReport>,
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
