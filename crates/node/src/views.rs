//! What a node saw of each job it served: for operators' audits and for the
//! tests of the threat model (a node must know only its two neighbours).
//!
//! The packet shell records into [`JobViews`] from what the hop reports
//! ([`crate::hop::Seen`]); the node hands out copies ([`JobViews::snapshot`]).
//! Cover traffic carries no job (an all-zero handle) and is never recorded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use libp2p::PeerId;

/// What a node saw of one job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobView {
    /// Peers that sent this node packets of the job.
    pub from: BTreeSet<PeerId>,
    /// Peers this node sent packets of the job to.
    pub to: BTreeSet<PeerId>,
    /// Ops it performed, with counts.
    pub ops: BTreeMap<String, u64>,
    /// Shapes of the tensors it received in the clear.
    pub input_shapes: BTreeSet<Vec<u32>>,
    /// End-to-end messages it could read, by kind (`init`, `labels`, …).
    pub e2e_read: BTreeMap<String, u64>,
    /// Lengths of the end-to-end sections it received, per op, with counts:
    /// what the size of the section tells a hop (PROTOCOL.md §12.3).
    pub e2e_lens: BTreeMap<(String, usize), u64>,
}

/// The views of all jobs, keyed by the job handle this node knows.
#[derive(Debug, Default)]
pub struct JobViews {
    map: Mutex<HashMap<[u8; 32], JobView>>,
}

impl JobViews {
    /// A packet of `job` came in from `from` for `op`, with a tensor of
    /// `shape` in the clear (if any).
    pub fn received(&self, job: &[u8; 32], from: PeerId, op: &str, shape: Option<&[u32]>) {
        self.note(job, |v| {
            v.from.insert(from);
            *v.ops.entry(op.into()).or_default() += 1;
            if let Some(s) = shape {
                v.input_shapes.insert(s.to_vec());
            }
        });
    }

    /// A packet of `job` for `op` came with an end-to-end section of `len` bytes.
    pub fn section(&self, job: &[u8; 32], op: &str, len: usize) {
        self.note(job, |v| {
            *v.e2e_lens.entry((op.into(), len)).or_default() += 1
        });
    }

    /// This node read an end-to-end message of `kind` for `job`.
    pub fn read_e2e(&self, job: &[u8; 32], kind: &str) {
        self.note(job, |v| *v.e2e_read.entry(kind.into()).or_default() += 1);
    }

    /// A packet of `job` went to `to`.
    pub fn sent(&self, job: &[u8; 32], to: PeerId) {
        self.note(job, |v| {
            v.to.insert(to);
        });
    }

    /// A copy of every job's view.
    pub fn snapshot(&self) -> Vec<JobView> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], JobView>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, job: &[u8; 32], f: impl FnOnce(&mut JobView)) {
        if job == &[0u8; 32] {
            return; // cover traffic has no job
        }
        f(self.lock().entry(*job).or_default());
    }
}
