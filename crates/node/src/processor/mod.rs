//! The packet shell: threads, queue and timers around the hop.
//!
//! Packets come off the inbox onto worker threads in two pools
//! ([`workers`]): relay workers open every packet (Sphinx unwrap, replay
//! check) and carry out at once what needs no guest (relay, cover, loops,
//! drops); packets with guest work go on to the guest workers through a
//! bounded queue with a share per job, so a slow guest stalls neither the
//! relaying nor other jobs. The [`hop`](crate::hop) decides everything
//! (unwrap, replay check, the op, re-seal); this shell carries out its
//! [`Action`]: send to the next hop, count a returned loop, or count a drop
//! under its reason. This module adds only what needs a clock, a lock or a socket:
//! the key ring rebuilt as epochs rotate, the shared replay cache, the
//! metrics, the job views and the cover's trackers. Nothing a peer sends
//! can panic a worker.

mod replay;
#[cfg(test)]
mod tests;
mod workers;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use mixnn_p2p::unix_now;
use mixnn_sphinx::{Geometry, KeyRing, MixKeyPair, Op};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::cover::LoopTracker;
use crate::hop::{self, Action, DropReason, Outcome, Peeled, Seen, Stage, op_label};
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::mixkeys::MixKeys;
use crate::slots::SlotQueue;
use crate::views::JobViews;
use mixnn_p2p::PacketSender;
pub use replay::{REPLAY_DIR, Replay};
pub use workers::{GUEST_QUEUE, GUEST_QUEUE_PER_JOB, Pools, spawn};

struct Ring {
    epochs: Vec<u64>,
    ring: Arc<KeyRing>,
    /// The key store's generation the ring was built from.
    generation: u64,
    checked: Instant,
}

/// What the workers share.
pub struct Processor {
    geometry: Geometry,
    keys: MixKeys,
    ring: RwLock<Ring>,
    replay: Replay,
    jobs: Arc<Jobs>,
    sender: PacketSender,
    metrics: Arc<Metrics>,
    views: Arc<JobViews>,
    loops: Arc<LoopTracker>,
    /// Send slots: real packets wait here for their link's next slot.
    slots: Option<Arc<SlotQueue>>,
}

/// Whether the packet's handle names a job of this node: every op but a
/// relay, and a relay that carries a section for this hop (export, close).
/// A plain relay's handle is fresh per packet (cover's too), so keeping it
/// would name nothing and fill the views.
fn names_a_job(seen: &Seen) -> bool {
    let app = (seen.flags >> 8) as u8;
    seen.op != Op::Relay || app & mixnn_protocol::job::app_flags::E2E_TARGET != 0
}

/// Where a processor keeps its replay tags, and how many per epoch.
pub struct ReplayStore<'a> {
    /// The node's data dir (`None`: in memory only).
    pub data_dir: Option<&'a Path>,
    /// Tags per key epoch (the cache's cap).
    pub max_per_epoch: usize,
}

/// The usable keys of `keys` as a ring, with their epochs and the store's
/// generation they were read at (read first: a rotation meanwhile leaves
/// the ring older than the store, never newer, so it is rebuilt next time).
fn build_ring(keys: &MixKeys) -> (Vec<u64>, KeyRing, u64) {
    let now = unix_now();
    let mut ring = KeyRing::new();
    let mut epochs = Vec::new();
    let (generation, stored) = keys.read(|s| (s.generation(), s.epochs()));
    for e in stored {
        if let Some(secret) = keys.secret(e, now) {
            let Ok(e32) = u32::try_from(e) else { continue };
            let bytes = zeroize::Zeroizing::new(secret.to_bytes());
            if ring
                .insert(MixKeyPair::from_secret_bytes(e32, *bytes))
                .is_ok()
            {
                epochs.push(e);
            }
        }
    }
    (epochs, ring, generation)
}

impl Processor {
    /// A processor for `geometry` that decrypts with `keys`, runs hops of
    /// `jobs` and sends on through `sender`; its replay cache is read back
    /// from (and kept in) `replay`.
    pub fn new(
        geometry: Geometry,
        keys: MixKeys,
        jobs: Arc<Jobs>,
        sender: PacketSender,
        metrics: Arc<Metrics>,
        replay: ReplayStore<'_>,
    ) -> Self {
        let (epochs, ring, generation) = build_ring(&keys);
        let replay = Replay::open(replay.data_dir, replay.max_per_epoch, &ring.epochs());
        Processor {
            geometry,
            keys,
            ring: RwLock::new(Ring {
                epochs,
                ring: Arc::new(ring),
                generation,
                checked: Instant::now(),
            }),
            replay,
            jobs,
            sender,
            metrics,
            views: Arc::new(JobViews::default()),
            loops: Arc::new(LoopTracker::default()),
            slots: None,
        }
    }

    /// Sends forwarded packets through send slots (`slot_ms`).
    pub fn with_slots(mut self, slots: Arc<SlotQueue>) -> Self {
        self.slots = Some(slots);
        self
    }

    /// What this node saw of each job.
    pub fn views(&self) -> Arc<JobViews> {
        self.views.clone()
    }

    /// The loops in flight: cover registers them, this shell answers them.
    pub fn loops(&self) -> Arc<LoopTracker> {
        self.loops.clone()
    }

    /// The key ring: rebuilt at once when the key store gained or lost a
    /// key (a new key is published as soon as it is stored, and packets
    /// for it may follow within milliseconds), and at most once a second
    /// otherwise, for keys whose grace ran out. Replay sets of epochs that
    /// left the ring are dropped.
    fn ring(&self) -> Arc<KeyRing> {
        let generation = self.keys.read(|s| s.generation());
        {
            let r = self.ring.read().unwrap_or_else(|p| p.into_inner());
            if r.generation == generation && r.checked.elapsed() < Duration::from_secs(1) {
                return r.ring.clone();
            }
        }
        let mut r = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let (epochs, ring, generation) = build_ring(&self.keys);
        if epochs != r.epochs {
            let keep: BTreeSet<u32> = ring.epochs().into_iter().collect();
            self.replay.retain_epochs(|e| keep.contains(&e));
            r.epochs = epochs;
            r.ring = Arc::new(ring);
        }
        r.generation = generation;
        r.checked = Instant::now();
        r.ring.clone()
    }

    /// The replay cache (shared by the workers, persisted).
    pub fn replay(&self) -> &Replay {
        &self.replay
    }

    /// Handles one packet from `from` on the calling thread: [`peel`](Self::peel)
    /// then [`serve`](Self::serve).
    pub fn handle(&self, from: PeerId, bytes: Vec<u8>) {
        if let Some(p) = self.peel(from, bytes) {
            self.serve(from, p);
        }
    }

    /// Opens the header of a packet from `from`; the replay cache is locked
    /// only for the tag's check and insert. A refused packet is counted and
    /// `None` returned.
    pub fn peel(&self, from: PeerId, bytes: Vec<u8>) -> Option<Peeled> {
        let ring = self.ring();
        match hop::peel(&self.geometry, &ring, &mut self.replay.checker(), bytes) {
            Ok(p) => Some(p),
            Err(reason) => {
                debug!(%from, %reason, "packet refused");
                self.act([0; 32], Action::Drop(reason));
                None
            }
        }
    }

    /// Does the op of a peeled packet from `from` and carries out the
    /// outcome.
    pub fn serve(&self, from: PeerId, peeled: Peeled) {
        let outcome: Outcome = peeled.serve(&self.geometry, &self.jobs);
        if let Some(seen) = &outcome.seen {
            self.record(from, seen);
        }
        // A relayed packet's handle names nothing (the designer draws it
        // per packet, as cover does): it is no job of this node's views.
        let job = (outcome.seen.as_ref())
            .filter(|s| names_a_job(s))
            .map_or([0; 32], |s| s.job);
        self.act(job, outcome.action);
    }

    /// Notes what the hop saw in the metrics and the views.
    fn record(&self, from: PeerId, seen: &Seen) {
        self.metrics.count_op(op_label(seen.op));
        if seen.decoded && names_a_job(seen) {
            let shape = seen.input_shape.as_deref();
            (self.views).received(&seen.job, from, op_label(seen.op), shape);
            if let Some(n) = seen.e2e_len {
                self.views.section(&seen.job, op_label(seen.op), n);
            }
        }
        if let Some(kind) = seen.e2e_read {
            self.views.read_e2e(&seen.job, kind);
        }
        if let Some(f) = &seen.failure
            && f.stage == Stage::Compute
        {
            self.metrics.drop_processed("job_error");
        }
    }

    /// Carries out the hop's action for a packet of `job`.
    fn act(&self, job: [u8; 32], action: Action) {
        match action {
            Action::Forward { to, bytes, .. } | Action::Deliver { to, bytes, .. } => {
                self.views.sent(&job, to);
                let bytes = match &self.slots {
                    Some(q) => match q.push(to, bytes) {
                        Some(now) => now,
                        None => return,
                    },
                    None => bytes,
                };
                if let Err(e) = self.sender.send(to, bytes) {
                    debug!(peer = %to, error = %e, "forwarding failed");
                }
            }
            Action::LoopReturned { tag } => {
                if self.loops.returned(&tag) {
                    (self.metrics.cover_loops_returned)
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Action::Drop(reason) => {
                if let DropReason::OutputTooLarge(e) = &reason {
                    warn!(error = %e, "output does not fit the packet class");
                }
                if let Some(label) = reason.label() {
                    self.metrics.drop_processed(label);
                }
            }
        }
    }
}

/// Forgets idle jobs every 30 s until `stop` changes. Expiry skips jobs in
/// use, so it never waits on a running guest.
pub fn spawn_expiry(
    jobs: Arc<Jobs>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    let n = jobs.expire();
                    if n > 0 {
                        debug!(expired = n, "idle jobs forgotten");
                    }
                }
            }
        }
    })
}
