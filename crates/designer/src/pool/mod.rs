//! The cascade on pool nodes (`mixnn train --pool`): the four phases of
//! MixNN over onion packets.
//!
//! [`PoolCascade::deploy`] reads the verified directory, picks distinct
//! nodes, places dummy hops at random positions and sends every hop its
//! shard end-to-end encrypted (init). Then each training step is **one**
//! packet: forward through the cascade, the turn at the last layer (which
//! alone gets the labels, end-to-end), backward through the cascade and
//! back to the designer with the loss, end-to-end (PROTOCOL.md §12). With
//! `keep_last` the designer holds the last shard, so a step is a forward
//! packet and a backward packet; with `keep_first` it runs the first shard
//! and the pool never sees the raw input.
//!
//! The jobs are apart: `placement` chooses the nodes and where the dummies
//! go, `deploy` connects the ends and sends every hop its shard, `exchange`
//! sends one message and accounts for it, `phases` runs training, test and
//! export over messages, `class` sizes the packets, and `onion` and
//! `endpoint` are the packet format and the designer's libp2p peer.
//! Faults (PROTOCOL.md §12.8): `detect` sets the bound T after which an
//! answer counts as lost, and `repair` locates the failed hop with probes
//! and puts a fresh node in its place.

mod attach;
mod bringup;
mod class;
mod deploy;
mod detect;
mod directory;
mod endpoint;
mod error;
mod exchange;
pub mod mask;
mod onion;
mod phases;
mod pipeline;
mod placement;
mod prebuild;
mod rekey;
mod repair;
mod replica;
mod state;
mod witness;

use std::time::Duration;

use mixnn_sphinx::Geometry;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::backend::{EngineKind, LayerBackend};
pub use attach::{DEPLOYMENT_VERSION, DeployedHop, Deployment};
pub use class::payload_class;
pub use directory::Distinct;
use endpoint::Endpoint;
pub use error::PoolError;
use onion::{Hop, Role, Slot};
pub use pipeline::MAX_TEST_WINDOW;
pub use replica::{Replicated, Side};
pub use witness::Finding;

/// How to run on the pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Bootstrap multiaddrs (`/…/p2p/<id>`); every one is asked.
    pub bootstrap: Vec<String>,
    /// How many bootstraps must list a node before it is trusted; `None`
    /// is a majority of those given (1 of 1: one bootstrap is trusted).
    pub quorum: Option<usize>,
    /// What counts as one address: no two hops of the cascade share one.
    pub distinct: Distinct,
    /// Dummy relay hops placed at random positions.
    pub dummies: usize,
    /// The designer runs the first shard itself.
    pub keep_first: bool,
    /// The designer runs the last shard (and the loss) itself.
    pub keep_last: bool,
    /// The cascade is a fork-join's untrusted branch
    /// ([`crate::fork::Branch`]): the output of its last layer comes back
    /// to the designer (no turn, no labels, no loss on the pool), and its
    /// backward starts from the gradient the designer sends. Excludes
    /// `keep_first` and `keep_last`.
    pub branch: bool,
    /// Engine of the shards the designer keeps.
    pub local_engine: EngineKind,
    /// Payload class of the job's packets; `None` picks the smallest that
    /// fits the largest tensor.
    pub class: Option<usize>,
    /// The longest wait for an answer: the detection bound's ceiling. Once
    /// a kind of message was measured, the bound is derived from its
    /// answer times instead (PROTOCOL.md §12.8); deployment and control
    /// messages always wait this long.
    pub timeout: Duration,
    /// How long to wait for enough nodes to be listed.
    pub wait_for_nodes: Duration,
    /// Batch sizes the job will send (training and test), for the class.
    pub batches: Vec<usize>,
    /// The job's secret seed: where the dummies sit and their sign masks
    /// derive from it, so a resumed or repaired job rebuilds the same
    /// masked shards (its checkpoints hold masked parameters). `None`: a
    /// fresh random seed. Kept 0600 in the job directory, never sent.
    pub job_secret: Option<[u8; 32]>,
    /// Every hop writes witnesses of what it computes (PROTOCOL.md §12.9):
    /// set for the cascades of `--verify-replicas`.
    pub witness: bool,
    /// Identities (ed25519 keys) no hop of this cascade may be: the other
    /// replica's nodes.
    pub exclude: Vec<[u8; 32]>,
}

/// Network figures of a job, for the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetworkReport {
    /// The cascade in order: `layer K` or `dummy`, and the node's peer id.
    pub cascade: Vec<(String, String)>,
    /// Payload class of the job's packets, in bytes.
    pub payload_class: usize,
    /// Wire length of a packet of that class, in bytes.
    pub packet_len: usize,
    /// Messages (packets the designer sent and got an answer to).
    pub messages: u64,
    /// Sum over messages of the hops each crossed.
    pub hop_crossings: u64,
    /// The same for training messages only (the per-hop overhead's base).
    pub train_messages: u64,
    /// Hop crossings of the training messages.
    pub train_hop_crossings: u64,
    /// Packets the designer's peer sent, all phases.
    pub packets_sent: u64,
    /// Packets the designer's peer received, all phases.
    pub packets_received: u64,
    /// Bytes the designer's peer sent, all phases.
    pub bytes_sent: u64,
    /// Bytes the designer's peer received, all phases.
    pub bytes_received: u64,
    /// Seconds spent per phase, waiting on the network included.
    pub init_seconds: f64,
    /// Seconds of the training steps.
    pub train_seconds: f64,
    /// Seconds of the test passes.
    pub test_seconds: f64,
    /// Seconds of the parameter export and of closing the job.
    pub export_seconds: f64,
    /// Distinct lengths of the packets the designer sent and received.
    pub packet_lengths: Vec<usize>,
    /// Hop mix keys replaced during the job (nodes rotate them per epoch).
    #[serde(default)]
    pub key_refreshes: u64,
    /// Probe messages sent to locate failed hops, and to sweep a cascade
    /// before its inits (`pool/bringup.rs`).
    #[serde(default)]
    pub probes: u64,
    /// Nodes a bring-up (deploy, resume, or a repair's new node) found
    /// unreachable and replaced, in order: `hop N (role, node P): why`.
    #[serde(default)]
    pub unreachable: Vec<String>,
}

#[derive(Clone, Copy)]
enum Phase {
    Init,
    Train,
    Test,
    Export,
}

/// A cascade whose layers run on pool nodes.
pub struct PoolCascade {
    ep: Endpoint,
    g: Geometry,
    class: usize,
    hops: Vec<Hop>,
    keys: rekey::KeyWatch,
    first: Option<Box<dyn LayerBackend>>,
    last: Option<Box<dyn LayerBackend>>,
    shards: usize,
    /// Deployed as a fork-join branch ([`PoolOptions::branch`]).
    branch: bool,
    rng: ChaCha20Rng,
    /// Headers built ahead while messages are in flight (`None`: the
    /// thread could not start; every message builds its own).
    prebuilt: Option<prebuild::Prebuilder>,
    net: NetworkReport,
    /// End-to-end section length of packets without a tensor (control).
    control_section: usize,
    /// End-to-end section length of packets with a tensor (training, test).
    compute_section: usize,
    /// Control packets per round: the longest cascade the mode allows.
    pad_hops: usize,
    /// Shards whose first linear op carries the dummies' masks (index,
    /// fold, combined mask), un-folded at export.
    folds: Vec<(usize, mask::Fold, Vec<bool>)>,
    /// The job's secret: the dummies' positions and masks derive from it.
    secret: placement::JobSecret,
    /// The detection bound's measurements.
    detect: detect::Detect,
    /// What a repair needs: each hop's init, the directory rule, the nodes
    /// that failed in this job.
    spares: repair::Spares,
    /// Where the hops write their witnesses, in a verified job.
    witness: Option<witness::WitnessPlan>,
    /// The witnesses read since [`PoolCascade::take_readings`] last took
    /// them.
    readings: Vec<witness::Reading>,
    /// Test batches kept in flight (`pool/pipeline.rs`; 1: one at a time).
    test_window: usize,
}

impl PoolCascade {
    /// The job's secret seed (the given [`PoolOptions::job_secret`], or the
    /// fresh one drawn at deployment): the caller stores it (0600) so a
    /// resumed job rebuilds the same dummy positions and masked shards.
    pub fn job_secret(&self) -> [u8; 32] {
        self.secret.bytes()
    }

    /// The identities of the cascade's nodes, in order.
    pub fn node_ids(&self) -> Vec<[u8; 32]> {
        self.hops.iter().map(|h| h.node.0).collect()
    }

    /// Which role hop `t` has and its node's peer id.
    pub fn describe_hop(&self, t: usize) -> (String, String) {
        self.hops
            .get(t)
            .map(|h| (describe_role(h.role), h.peer.to_base58()))
            .unwrap_or_default()
    }

    /// The identities of the nodes that failed in this job (replaced after
    /// a failure or a lie, or found unreachable at deployment): the job
    /// directory records them so a resumed job avoids them up front.
    pub fn failed_nodes(&self) -> Vec<[u8; 32]> {
        self.spares.failed().to_vec()
    }

    /// Nodes a repair must not take (the other replica's, the liars).
    pub fn avoid(&mut self, ids: Vec<[u8; 32]>) {
        self.spares.avoid = ids;
    }

    /// The hop that serves shard `i`, if the pool serves it.
    fn hop_of_layer(&self, i: usize) -> Option<usize> {
        self.hops.iter().position(|h| h.role == Role::Layer(i))
    }

    /// The hop that answers the loss (the last one).
    fn turn_hop(&self) -> usize {
        self.hops.len().saturating_sub(1)
    }

    /// The last hop of a forward pass.
    fn last_hop(&self) -> usize {
        self.turn_hop()
    }

    fn take_readings(&mut self) -> Vec<witness::Reading> {
        std::mem::take(&mut self.readings)
    }

    /// Network figures so far.
    pub fn network(&self) -> NetworkReport {
        let mut r = self.net.clone();
        let m = &self.ep.metrics;
        r.packets_sent = mixnn_p2p::LinkMetrics::get(&m.packets_out);
        r.packets_received = mixnn_p2p::LinkMetrics::get(&m.packets_in);
        r.bytes_sent = mixnn_p2p::LinkMetrics::get(&m.bytes_out);
        r.bytes_received = mixnn_p2p::LinkMetrics::get(&m.bytes_in);
        r.packet_lengths = m.lengths().keys().copied().collect();
        r
    }
}

fn describe_role(r: Role) -> String {
    match r {
        Role::Layer(i) => format!("layer {i}"),
        Role::Dummy => "dummy".into(),
    }
}

fn describe_slot(hops: &[Hop], s: &Slot) -> String {
    let h = &hops[s.hop];
    format!(
        "hop {} ({}, node {})",
        s.hop + 1,
        describe_role(h.role),
        h.peer
    )
}
