//! The packet shell: threads, queue and timers around the hop.
//!
//! Packets come off the inbox onto a few worker threads (guest calls are
//! CPU work and must not stall the network tasks). Each worker hands the
//! packet to the [`hop`](crate::hop), which decides everything (unwrap,
//! replay check, the op, re-seal), and carries out its [`Action`]: send
//! to the next hop, count a returned loop, or count a drop under its
//! reason. This module adds only what needs a clock, a lock or a socket:
//! the key ring rebuilt as epochs rotate, the shared replay cache, the
//! metrics, the job views and the cover's trackers. Nothing a peer sends
//! can panic a worker.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use mixnn_p2p::unix_now;
use mixnn_sphinx::{Geometry, KeyRing, MixKeyPair, Op, ReplayCache};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::cover::LoopTracker;
use crate::hop::{self, Action, DropReason, Outcome, Seen, Stage, op_label};
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::mixkeys::MixKeys;
use crate::slots::SlotQueue;
use crate::views::JobViews;
use mixnn_p2p::{PacketInbox, PacketSender};

struct Ring {
    epochs: Vec<u64>,
    ring: Arc<KeyRing>,
    checked: Instant,
}

/// What the workers share.
pub struct Processor {
    geometry: Geometry,
    keys: MixKeys,
    ring: RwLock<Ring>,
    replay: Mutex<ReplayCache>,
    jobs: Arc<Jobs>,
    sender: PacketSender,
    metrics: Arc<Metrics>,
    views: Arc<JobViews>,
    loops: Arc<LoopTracker>,
    /// Send slots: real packets wait here for their link's next slot.
    slots: Option<Arc<SlotQueue>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn build_ring(keys: &MixKeys) -> (Vec<u64>, KeyRing) {
    let now = unix_now();
    let mut ring = KeyRing::new();
    let mut epochs = Vec::new();
    for e in keys.read(|s| s.epochs()) {
        if let Some(secret) = keys.secret(e, now) {
            let Ok(e32) = u32::try_from(e) else { continue };
            if ring
                .insert(MixKeyPair::from_secret_bytes(e32, secret.to_bytes()))
                .is_ok()
            {
                epochs.push(e);
            }
        }
    }
    (epochs, ring)
}

impl Processor {
    /// A processor for `geometry` that decrypts with `keys`, runs hops of
    /// `jobs` and sends on through `sender`.
    pub fn new(
        geometry: Geometry,
        keys: MixKeys,
        jobs: Arc<Jobs>,
        sender: PacketSender,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (epochs, ring) = build_ring(&keys);
        Processor {
            geometry,
            keys,
            ring: RwLock::new(Ring {
                epochs,
                ring: Arc::new(ring),
                checked: Instant::now(),
            }),
            replay: Mutex::new(ReplayCache::default()),
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

    /// The key ring, rebuilt when the node's epochs change (checked at most
    /// once a second); replay sets of epochs that left the ring are dropped.
    fn ring(&self) -> Arc<KeyRing> {
        {
            let r = self.ring.read().unwrap_or_else(|p| p.into_inner());
            if r.checked.elapsed() < Duration::from_secs(1) {
                return r.ring.clone();
            }
        }
        let mut r = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let (epochs, ring) = build_ring(&self.keys);
        if epochs != r.epochs {
            let keep: BTreeSet<u32> = ring.epochs().into_iter().collect();
            lock(&self.replay).retain_epochs(|e| keep.contains(&e));
            r.epochs = epochs;
            r.ring = Arc::new(ring);
        }
        r.checked = Instant::now();
        r.ring.clone()
    }

    /// Handles one packet from `from`: the replay cache is locked only
    /// while the header is peeled, not during the op.
    pub fn handle(&self, from: PeerId, bytes: Vec<u8>) {
        let ring = self.ring();
        let peeled = {
            let mut replay = lock(&self.replay);
            hop::peel(&self.geometry, &ring, &mut replay, bytes)
        };
        let outcome = match peeled {
            Ok(p) => p.serve(&self.geometry, &self.jobs),
            Err(reason) => {
                debug!(%from, %reason, "packet refused");
                Outcome {
                    action: Action::Drop(reason),
                    seen: None,
                }
            }
        };
        if let Some(seen) = &outcome.seen {
            self.record(from, seen);
        }
        // A relayed packet's handle names nothing (the designer draws it
        // per packet, as cover does): it is no job of this node's views.
        let job = (outcome.seen.as_ref())
            .filter(|s| s.op != Op::Relay)
            .map_or([0; 32], |s| s.job);
        self.act(job, outcome.action);
    }

    /// Notes what the hop saw in the metrics and the views.
    fn record(&self, from: PeerId, seen: &Seen) {
        self.metrics.count_op(op_label(seen.op));
        if seen.decoded && seen.op != Op::Relay {
            let shape = seen.input_shape.as_deref();
            (self.views).received(&seen.job, from, op_label(seen.op), shape);
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

/// Moves packets from the inbox to `workers` threads until `stop` changes.
pub fn spawn(
    processor: Arc<Processor>,
    mut inbox: PacketInbox,
    workers: usize,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(PeerId, Vec<u8>)>(256);
    let rx = Arc::new(Mutex::new(rx));
    let rt = tokio::runtime::Handle::current();
    for i in 0..workers.max(1) {
        let rx = rx.clone();
        let processor = processor.clone();
        let rt = rt.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("mixnn-worker-{i}"))
            .spawn(move || {
                let _guard = rt.enter();
                loop {
                    let next = lock(&rx).recv();
                    match next {
                        Ok((from, bytes)) => processor.handle(from, bytes),
                        Err(_) => return,
                    }
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a packet worker");
        }
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                p = inbox.recv() => match p {
                    Some(p) => match tx.try_send((p.from, p.data)) {
                        Ok(()) => {}
                        Err(std::sync::mpsc::TrySendError::Full(item)) => {
                            // Workers busy in guests: wait for room off the runtime.
                            let tx = tx.clone();
                            if tokio::task::spawn_blocking(move || tx.send(item)).await.is_err() {
                                return;
                            }
                        }
                        Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
                    },
                    None => return,
                },
            }
        }
    })
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
