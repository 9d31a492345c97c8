//! The packet processor: Sphinx unwrap, the hop's op, re-seal, forward.
//!
//! Packets come off the inbox onto a few worker threads (guest calls are
//! CPU work and must not stall the network tasks). Each worker peels the
//! header with the node's key ring and replay cache, does what the hop's
//! routing info says (PROTOCOL.md §12) and hands the packet, same length,
//! to the next hop. Every refusal is a counted drop under the Sphinx
//! reason or a job reason; nothing a peer sends can panic a worker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use mixnn_p2p::unix_now;
use mixnn_protocol::job::{self, E2eDirection, FromHop, JobPayload, ToHop, WireTensor, app_flags};
use mixnn_sphinx::{Geometry, KeyRing, MixKeyPair, NodeId, Op, Processed, ReplayCache};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::mixkeys::MixKeys;
use mixnn_p2p::{PacketInbox, PacketSender};

/// The NodeId a peer is addressed by in routing info: its ed25519 public
/// key, from which the peer id follows.
pub fn node_id_of(identity_key: &[u8; 32]) -> NodeId {
    NodeId(*identity_key)
}

/// The peer a NodeId names, if it is an ed25519 key.
pub fn peer_of(id: &NodeId) -> Option<PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(&id.0).ok()?;
    Some(PeerId::from_public_key(&libp2p::identity::PublicKey::from(
        key,
    )))
}

/// What a node saw of one job: for operators' audits and for the tests of
/// the threat model (a node must know only its two neighbours).
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
}

/// Views of all jobs, keyed by the job handle this node knows.
pub type Views = Arc<Mutex<HashMap<[u8; 32], JobView>>>;

struct Ring {
    epochs: Vec<u64>,
    ring: Arc<KeyRing>,
    checked: Instant,
}

/// What the workers share.
pub struct Processor {
    pub geometry: Geometry,
    pub keys: MixKeys,
    ring: RwLock<Ring>,
    replay: Mutex<ReplayCache>,
    pub jobs: Jobs,
    pub sender: PacketSender,
    pub metrics: Arc<Metrics>,
    pub views: Views,
    pub self_id: NodeId,
    /// Loops this node sent, by the replay tag the loop's last hop (this
    /// node) will see: a returning loop is recognised by it.
    pub loops: Mutex<HashMap<[u8; 16], Instant>>,
    /// Payload classes of job (link-mode) packets, with when each was last
    /// seen: cover traffic copies them so that job packets do not stand out
    /// by length. At most one entry per class of the geometry.
    pub classes: Mutex<HashMap<usize, Instant>>,
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
    pub fn new(
        geometry: Geometry,
        keys: MixKeys,
        jobs: Jobs,
        sender: PacketSender,
        metrics: Arc<Metrics>,
        self_id: NodeId,
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
            views: Arc::new(Mutex::new(HashMap::new())),
            self_id,
            loops: Mutex::new(HashMap::new()),
            classes: Mutex::new(HashMap::new()),
        }
    }

    /// The payload classes job packets used within `window`, smallest first.
    pub fn classes_in_use(&self, window: Duration) -> Vec<usize> {
        let mut c: Vec<usize> = lock(&self.classes)
            .iter()
            .filter(|(_, seen)| seen.elapsed() <= window)
            .map(|(&class, _)| class)
            .collect();
        c.sort_unstable();
        c
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

    /// Handles one packet from `from`.
    pub fn handle(&self, from: PeerId, mut bytes: Vec<u8>) {
        let ring = self.ring();
        let processed = {
            let mut replay = lock(&self.replay);
            mixnn_sphinx::process(&self.geometry, &ring, &mut replay, &mut bytes)
        };
        let p = match processed {
            Ok(p) => p,
            Err(e) => {
                debug!(%from, reason = e.reason(), "packet refused");
                self.metrics.drop_processed(e.reason());
                return;
            }
        };
        let op = p.routing.op;
        self.metrics.count_op(op_label(op));
        match op {
            Op::Loop => {
                self.loop_returned(&p);
                return;
            }
            Op::Drop => return,
            _ => {}
        }
        if p.routing.is_layered() {
            // Cover or reply traffic: the layer is already stripped.
            self.forward(&p, bytes);
            return;
        }
        // A link-mode packet is job traffic: remember its class for cover.
        lock(&self.classes).insert(p.class, Instant::now());
        let h = self.geometry.header_len();
        let job = p.routing.job.0;
        let opened = mixnn_sphinx::open_payload(&p.routing.key_in, &p.incoming, &mut bytes[h..])
            .map_err(|e| e.reason())
            .and_then(|m| JobPayload::decode(m).map_err(|_| "job_payload"));
        let mut payload = match opened {
            Ok(pl) => pl,
            Err(reason) => {
                self.metrics.drop_processed(reason);
                return;
            }
        };
        self.note(&job, |v| {
            v.from.insert(from);
            *v.ops.entry(op_label(op).into()).or_default() += 1;
            if let Some(t) = &payload.tensor {
                v.input_shapes.insert(t.shape.clone());
            }
        });
        self.run_op(&p, &job, &mut payload);
        let Some(outgoing) = p.outgoing else {
            return;
        };
        let message = payload.encode();
        if let Err(e) =
            mixnn_sphinx::seal_payload(&p.routing.key_out, &outgoing, &message, &mut bytes[h..])
        {
            warn!(error = %e, "output does not fit the packet class");
            self.metrics.drop_processed("output_too_large");
            return;
        }
        self.forward(&p, bytes);
    }

    /// Does the op's work on `payload` in place. A failure becomes an error
    /// message to the designer in the end-to-end section (and no tensor), so
    /// the designer learns which hop failed and why; hops after it pass a
    /// payload without a tensor on untouched.
    fn run_op(&self, p: &Processed, job: &[u8; 32], payload: &mut JobPayload) {
        let app = (p.routing.flags >> 8) as u8;
        let key = p.e2e_key.as_bytes();
        let target = app & app_flags::E2E_TARGET != 0;
        let compute = matches!(p.routing.op, Op::Forward | Op::Test | Op::Backward);
        if compute && payload.tensor.is_none() {
            // An earlier hop failed: its error travels on under one more
            // layer, like any section this hop is not the target of.
            job::e2e_layer(key, &mut payload.e2e);
            return;
        }
        let mut to_hop = None;
        if target {
            match job::open_e2e(key, E2eDirection::ToHop, &payload.e2e)
                .and_then(|b| job::decode_msg::<ToHop>("end-to-end message", &b))
            {
                Ok(m) => {
                    let kind = match &m {
                        ToHop::Init { .. } => "init",
                        ToHop::Labels(_) => "labels",
                        ToHop::Export { .. } => "export",
                        ToHop::Close => "close",
                    };
                    self.note(job, |v| *v.e2e_read.entry(kind.into()).or_default() += 1);
                    to_hop = Some(m);
                }
                Err(e) => {
                    self.reply(
                        payload,
                        key,
                        FromHop::Error(format!("end-to-end section: {e}")),
                    );
                    payload.tensor = None;
                    return;
                }
            }
        } else {
            job::e2e_layer(key, &mut payload.e2e);
        }
        let result: Result<(), String> = match p.routing.op {
            Op::Init => match to_hop {
                Some(m) => {
                    let answer = self.jobs.control(job, m);
                    self.reply(payload, key, answer);
                    Ok(())
                }
                None => Ok(()),
            },
            Op::Relay | Op::Deliver => Ok(()),
            Op::Forward | Op::Test | Op::Backward => match payload.tensor.take() {
                Some(x) => self.compute(p, job, x, to_hop, payload),
                None => Ok(()),
            },
            Op::Loop | Op::Drop => Ok(()),
        };
        if let Err(e) = result {
            debug!(error = %e, "job op failed");
            self.metrics.drop_processed("job_error");
            payload.tensor = None;
            self.reply(payload, key, FromHop::Error(e));
        }
    }

    fn compute(
        &self,
        p: &Processed,
        job: &[u8; 32],
        x: WireTensor,
        to_hop: Option<ToHop>,
        payload: &mut JobPayload,
    ) -> Result<(), String> {
        let app = (p.routing.flags >> 8) as u8;
        match p.routing.op {
            Op::Forward => payload.tensor = Some(self.jobs.forward(job, x)?),
            Op::Test => payload.tensor = Some(self.jobs.infer(job, x)?),
            Op::Backward if app & app_flags::TURN != 0 => {
                let Some(ToHop::Labels(labels)) = to_hop else {
                    return Err("the turning layer got no labels".into());
                };
                let (loss, dx) = self.jobs.turn(job, x, &labels)?;
                payload.tensor = dx;
                let key = p.e2e_key.as_bytes();
                self.reply(
                    payload,
                    key,
                    FromHop::Loss {
                        bits: loss.to_bits(),
                    },
                );
            }
            Op::Backward => payload.tensor = self.jobs.backward(job, x)?,
            _ => {}
        }
        Ok(())
    }

    fn reply(&self, payload: &mut JobPayload, key: &[u8; 32], msg: FromHop) {
        let body = job::encode_msg("reply", &msg).unwrap_or_else(|_| {
            job::encode_msg("reply", &FromHop::Error("reply too large".into())).unwrap_or_default()
        });
        payload.e2e = job::seal_e2e(key, E2eDirection::FromHop, &body);
    }

    fn forward(&self, p: &Processed, bytes: Vec<u8>) {
        if p.outgoing.is_none() {
            return;
        }
        let next = p.routing.next_hop;
        let Some(peer) = peer_of(&next) else {
            self.metrics.drop_processed("bad_next_hop");
            return;
        };
        self.note(&p.routing.job.0, |v| {
            v.to.insert(peer);
        });
        if let Err(e) = self.sender.send(peer, bytes) {
            debug!(%peer, error = %e, "forwarding failed");
        }
    }

    fn loop_returned(&self, p: &Processed) {
        if lock(&self.loops).remove(&p.replay_tag.0).is_some() {
            self.metrics
                .cover_loops_returned
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn note(&self, job: &[u8; 32], f: impl FnOnce(&mut JobView)) {
        if job == &[0u8; 32] {
            return; // cover traffic has no job
        }
        f(lock(&self.views).entry(*job).or_default());
    }
}

pub fn op_label(op: Op) -> &'static str {
    match op {
        Op::Init => "init",
        Op::Forward => "forward",
        Op::Backward => "backward",
        Op::Test => "test",
        Op::Relay => "relay",
        Op::Deliver => "deliver",
        Op::Loop => "loop",
        Op::Drop => "drop",
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
    let expire = processor.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    let n = expire.jobs.expire();
                    if n > 0 {
                        debug!(expired = n, "idle jobs forgotten");
                    }
                }
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
