//! The job directory and its checkpoints (issue 11): what a training job
//! needs to survive a failed hop (roll every layer back and replay) and a
//! dead designer (`mixnn train --resume DIR`).
//!
//! Why the designer holds them: the layers are deterministic, so a job put
//! back to a checkpoint's states and data position continues bit for bit
//! as if nothing had happened. A checkpoint is only useful if it is whole,
//! so each is written into a temporary directory, synced, and renamed into
//! place; its manifest carries the SHA-256 of every state file, and
//! [`JobDir::latest_valid`] falls back to an older checkpoint (and says
//! so) when the newest is torn or corrupted. The layout is documented in
//! `docs/faults.md`.

mod recipe;
mod store;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::report::EpochReport;

pub use recipe::{JobRecipe, PoolRecipe};
pub use store::{JobDir, KEEP_CHECKPOINTS};

/// Steps between two checkpoints when the user gives none: a pool step
/// costs a round trip through the cascade, a checkpoint one state export
/// per layer, so about 1% of the steps' cost at most.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 100;

/// Where a job is in its data order: enough to replay it exactly (the data
/// order is a pure function of the seed and the epoch).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Position {
    /// Epoch being run, from 1; `epochs + 1` once every epoch is done.
    pub epoch: usize,
    /// Batches of that epoch already trained.
    pub batch: usize,
    /// Steps over the whole job already trained.
    pub step: u64,
    /// Sum of the epoch's training losses so far.
    pub loss_sum: f64,
    /// Training time of the epoch so far, in seconds (checkpoints excluded).
    pub epoch_seconds: f64,
}

impl Position {
    /// The start of a job: epoch 1, nothing trained.
    pub fn start() -> Self {
        Position {
            epoch: 1,
            ..Position::default()
        }
    }
}

/// One checkpoint: the position, the finished epochs' figures, and every
/// layer's state in shard order (opaque bytes from `Model::save_state`).
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// Where the job was.
    pub position: Position,
    /// Reports of the epochs finished before it.
    pub epochs: Vec<EpochReport>,
    /// One state per shard, in shard order.
    pub states: Vec<Vec<u8>>,
}

impl Checkpoint {
    /// Total bytes of the layer states.
    pub fn state_bytes(&self) -> u64 {
        self.states.iter().map(|s| s.len() as u64).sum()
    }
}

/// The manifest of a checkpoint, written last: a checkpoint without one is
/// incomplete.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    step: u64,
    epoch: usize,
    batch: usize,
    /// The epoch's running loss sum as `f64::to_bits` (exact through JSON).
    loss_sum_bits: u64,
    /// The epoch's training seconds so far.
    epoch_seconds: f64,
    epochs: Vec<EpochReport>,
    states: Vec<StateEntry>,
}

/// One state file of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StateEntry {
    file: String,
    bytes: u64,
    sha256: String,
}

/// Everything the job directory can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory operated on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A secret or private file could not be written or read.
    #[error(transparent)]
    Secret(#[from] mixnn_p2p::secret_file::SecretFileError),
    /// A file of the job directory is not what it should be.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The refused file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory already holds a job.
    #[error(
        "{} already holds a job (job.json); continue it with `mixnn train --resume {}` or pick another directory",
        path.display(),
        path.display()
    )]
    Exists {
        /// The job directory.
        path: PathBuf,
    },
    /// The directory holds no job.
    #[error("{} holds no job: job.json is missing (was it made by `mixnn train --job-dir`?)", path.display())]
    NoJob {
        /// The directory.
        path: PathBuf,
    },
    /// No checkpoint in the directory can be used.
    #[error("{}: no valid checkpoint{}", path.display(), describe(problems))]
    NoValidCheckpoint {
        /// The checkpoints directory.
        path: PathBuf,
        /// Why each checkpoint found was refused, newest first.
        problems: Vec<String>,
    },
}

fn describe(problems: &[String]) -> String {
    if problems.is_empty() {
        " (none was written)".into()
    } else {
        format!(": {}", problems.join("; "))
    }
}
