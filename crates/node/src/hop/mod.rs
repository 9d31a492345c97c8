//! The hop: what a node does with one packet, without I/O.
//!
//! Why a module of its own: every decision the node takes on a packet lives
//! here, as plain functions of the packet bytes, the key ring, the replay
//! cache and the job table, returning an [`Action`] for the caller to carry
//! out. The packet shell (`processor`) keeps the threads, the queue, the
//! timers, the metrics and the sockets; this module keeps none of them, so
//! each op and each drop reason is unit-tested on packets built in memory.
//!
//! A packet goes through two steps: [`peel`] opens the header (Sphinx unwrap, MAC,
//! replay check) and [`Peeled::serve`] does the hop's op (PROTOCOL.md §12:
//! open the link payload, the end-to-end section, the job's layer call,
//! re-seal for the next link). [`handle`] does both.

mod ops;
#[cfg(test)]
pub(crate) mod tests;

use libp2p::PeerId;
use mixnn_protocol::job::{self, JobPayload};
use mixnn_sphinx::{Geometry, KeyRing, NodeId, Op, Processed, ReplayCheck, ReplayTag, SphinxError};

use crate::jobs::{JobError, Jobs};

/// The NodeId a peer is addressed by in routing info: its ed25519 public
/// key, from which the peer id follows.
pub fn node_id_of(identity_key: &[u8; 32]) -> NodeId {
    NodeId(*identity_key)
}

/// The peer a NodeId names, if it is an ed25519 key.
///
/// Memoised: decoding the key decompresses a curve point (a field
/// inversion, ~10 µs), once per packet otherwise, while a node forwards
/// to a handful of neighbours. The memo is bounded (cleared when full),
/// since the next hop is chosen by whoever built the packet.
pub fn peer_of(id: &NodeId) -> Option<PeerId> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    const MAX: usize = 4096;
    static MEMO: LazyLock<Mutex<HashMap<[u8; 32], Option<PeerId>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    if let Some(p) = MEMO.lock().unwrap_or_else(|p| p.into_inner()).get(&id.0) {
        return *p;
    }
    let peer = libp2p::identity::ed25519::PublicKey::try_from_bytes(&id.0)
        .ok()
        .map(|key| PeerId::from_public_key(&libp2p::identity::PublicKey::from(key)));
    let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    if memo.len() >= MAX {
        memo.clear();
    }
    memo.insert(id.0, peer);
    peer
}

/// The metrics label of an op (`mixnn_packets_handled_total{op=…}`).
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

/// What the node must do with a packet after the hop.
#[derive(Debug)]
pub enum Action {
    /// Send `bytes` (same length as they came) to the next mix node.
    Forward {
        /// Sphinx node id of the next mix.
        next: NodeId,
        /// The next mix's libp2p peer id.
        to: PeerId,
        /// The processed packet.
        bytes: Vec<u8>,
    },
    /// Send `bytes` to the endpoint the route ends at (the designer or a
    /// client), which is not a mix.
    Deliver {
        /// Sphinx node id of the endpoint.
        next: NodeId,
        /// The endpoint's libp2p peer id.
        to: PeerId,
        /// The processed packet.
        bytes: Vec<u8>,
    },
    /// A cover loop ended here: if `tag` is one this node sent, its loop
    /// came back (the loop tracker knows).
    LoopReturned {
        /// Replay tag of the packet's header, which identifies the loop.
        tag: ReplayTag,
    },
    /// Nothing is sent on.
    Drop(DropReason),
}

/// Why a packet goes no further.
#[derive(Debug, thiserror::Error)]
pub enum DropReason {
    /// The length is no packet length of the geometry's size classes.
    #[error("length {len} is no packet length of this geometry")]
    WrongSize {
        /// The packet's length in bytes.
        len: usize,
    },
    /// The header MAC does not verify: tampered, or not for this node.
    #[error("header MAC check failed")]
    TamperedHeader,
    /// The header was processed before in this key epoch.
    #[error("replayed packet")]
    Replay,
    /// The packet names a key epoch this node holds no key for.
    #[error("no mix key for the packet's key epoch")]
    UnknownEpoch,
    /// The replay cache of the epoch is full (fail closed).
    #[error("replay cache full")]
    ReplayCacheFull,
    /// Any other refusal of the header (malformed fields, unknown version).
    #[error("header: {0}")]
    Header(SphinxError),
    /// The link payload does not authenticate or its framing is broken.
    #[error("payload: {0}")]
    TamperedPayload(SphinxError),
    /// The link payload opened but is no job payload.
    #[error("job payload: {0}")]
    MalformedJobPayload(job::JobError),
    /// The hop's output does not fit the packet's class.
    #[error("output does not fit the packet class: {0}")]
    OutputTooLarge(SphinxError),
    /// The next hop is no ed25519 key, so no peer.
    #[error("the next hop names no peer")]
    BadNextHop,
    /// A cover drop packet reached the hop that discards it.
    #[error("cover drop packet ends here")]
    CoverDrop,
    /// The header ends the route here and the op delivers nowhere.
    #[error("the route ends here")]
    RouteEnds,
}

impl DropReason {
    fn of_header(e: SphinxError) -> DropReason {
        match e {
            SphinxError::WrongSize { len } => DropReason::WrongSize { len },
            SphinxError::BadMac => DropReason::TamperedHeader,
            SphinxError::Replay => DropReason::Replay,
            SphinxError::UnknownEpoch => DropReason::UnknownEpoch,
            SphinxError::ReplayCacheFull { .. } => DropReason::ReplayCacheFull,
            other => DropReason::Header(other),
        }
    }

    /// The drop counter's label (`mixnn_packets_dropped_total{reason=…}`),
    /// or `None` for packets that end here by design and are not counted.
    pub fn label(&self) -> Option<&'static str> {
        Some(match self {
            DropReason::WrongSize { .. } => "wrong_size",
            DropReason::TamperedHeader => "bad_mac",
            DropReason::Replay => "replay",
            DropReason::UnknownEpoch => "unknown_epoch",
            DropReason::ReplayCacheFull => "replay_cache_full",
            DropReason::Header(e) | DropReason::TamperedPayload(e) => e.reason(),
            DropReason::MalformedJobPayload(_) => "job_payload",
            DropReason::OutputTooLarge(_) => "output_too_large",
            DropReason::BadNextHop => "bad_next_hop",
            DropReason::CoverDrop | DropReason::RouteEnds => return None,
        })
    }
}

/// Where in the hop a job failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Opening or decoding the end-to-end section addressed to this hop.
    EndToEnd,
    /// A control message (init chunk, export, close).
    Control,
    /// The layer's work on the tensor (forward, test, backward, turn);
    /// counted as a `job_error` drop.
    Compute,
}

/// A job failure the hop sealed to the designer in place of its answer; the
/// packet still travels on (tensor-less) so the designer learns of it.
#[derive(Debug)]
pub struct Failure {
    /// Where in the hop the job failed.
    pub stage: Stage,
    /// What failed.
    pub error: JobError,
}

/// What the hop learned of a packet whose header opened: what the shell
/// records in the metrics and the job views.
#[derive(Debug)]
pub struct Seen {
    /// The op the header gives this hop.
    pub op: Op,
    /// The routing flags (the library's and the application's bits).
    pub flags: u16,
    /// The job handle (drawn afresh per packet for a relay, real or cover).
    pub job: [u8; 32],
    /// The payload class, when the packet is job (link-mode) traffic.
    pub job_class: Option<usize>,
    /// The link payload opened as a job payload (link mode only).
    pub decoded: bool,
    /// Shape of the tensor that came in the clear, if any.
    pub input_shape: Option<Vec<u32>>,
    /// Length of the end-to-end section that came in (link mode only).
    pub e2e_len: Option<usize>,
    /// Kind of the end-to-end message this hop read, if any (`init`, …).
    pub e2e_read: Option<&'static str>,
    /// The job failure sealed to the designer, if the job's work failed.
    pub failure: Option<Failure>,
}

/// The hop's verdict on one packet.
#[derive(Debug)]
pub struct Outcome {
    /// What to do with the packet.
    pub action: Action,
    /// `None` when the header did not open.
    pub seen: Option<Seen>,
}

/// A packet whose header this node opened and recorded in the replay
/// cache; its payload is not touched yet.
pub struct Peeled {
    p: Processed,
    bytes: Vec<u8>,
}

/// Opens the header of `bytes` with the key ring and records its replay
/// tag: the only step that needs the replay cache (`replay` is asked only
/// after the Diffie-Hellman step and the MAC, so a shell may lock its
/// shared cache inside the check alone).
pub fn peel(
    geometry: &Geometry,
    ring: &KeyRing,
    replay: &mut impl ReplayCheck,
    mut bytes: Vec<u8>,
) -> Result<Peeled, DropReason> {
    let p =
        mixnn_sphinx::process(geometry, ring, replay, &mut bytes).map_err(DropReason::of_header)?;
    Ok(Peeled { p, bytes })
}

/// Both steps: [`peel`], then [`Peeled::serve`].
pub fn handle(
    geometry: &Geometry,
    ring: &KeyRing,
    replay: &mut impl ReplayCheck,
    jobs: &Jobs,
    bytes: Vec<u8>,
) -> Outcome {
    match peel(geometry, ring, replay, bytes) {
        Ok(p) => p.serve(geometry, jobs),
        Err(reason) => Outcome {
            action: Action::Drop(reason),
            seen: None,
        },
    }
}

impl Peeled {
    /// The op the routing info asks of this hop.
    pub fn op(&self) -> Op {
        self.p.routing.op
    }

    /// The job handle the routing info names (all zero for cover).
    pub fn job(&self) -> [u8; 32] {
        self.p.routing.job.0
    }

    /// Whether [`serve`](Self::serve) may call into the job table (and so
    /// a guest): a job packet (link mode) with a layer op. Cover, replies,
    /// loops and drops never do.
    pub fn needs_guest(&self) -> bool {
        !self.p.routing.is_layered()
            && matches!(
                self.p.routing.op,
                Op::Init | Op::Forward | Op::Test | Op::Backward
            )
    }

    /// Does the hop's op and says what to do with the packet.
    pub fn serve(self, geometry: &Geometry, jobs: &Jobs) -> Outcome {
        let Peeled { p, mut bytes } = self;
        let mut seen = Seen {
            op: p.routing.op,
            flags: p.routing.flags,
            job: p.routing.job.0,
            job_class: None,
            decoded: false,
            input_shape: None,
            e2e_len: None,
            e2e_read: None,
            failure: None,
        };
        let action = match p.routing.op {
            Op::Loop => Action::LoopReturned { tag: p.replay_tag },
            Op::Drop => Action::Drop(DropReason::CoverDrop),
            // Cover or reply traffic: the layer is already stripped.
            _ if p.routing.is_layered() => send_on(&p, bytes),
            _ => match serve_link(geometry, jobs, &p, &mut bytes, &mut seen) {
                Ok(()) => send_on(&p, bytes),
                Err(reason) => Action::Drop(reason),
            },
        };
        Outcome {
            action,
            seen: Some(seen),
        }
    }
}

/// A job (link-mode) packet: opens the payload for the incoming link, does
/// the op on it, and seals the result for the outgoing link in place.
fn serve_link(
    geometry: &Geometry,
    jobs: &Jobs,
    p: &Processed,
    bytes: &mut [u8],
    seen: &mut Seen,
) -> Result<(), DropReason> {
    seen.job_class = Some(p.class);
    let h = geometry.header_len();
    let message = mixnn_sphinx::open_payload(&p.routing.key_in, &p.incoming, &mut bytes[h..])
        .map_err(DropReason::TamperedPayload)?;
    let mut payload = JobPayload::decode(message).map_err(DropReason::MalformedJobPayload)?;
    seen.decoded = true;
    seen.input_shape = payload.tensor.as_ref().map(|t| t.shape.clone());
    seen.e2e_len = Some(payload.e2e.len());
    ops::run(jobs, p, &mut payload, seen);
    let Some(outgoing) = p.outgoing else {
        return Err(DropReason::RouteEnds);
    };
    mixnn_sphinx::seal_payload(
        &p.routing.key_out,
        &outgoing,
        &payload.encode(),
        &mut bytes[h..],
    )
    .map_err(DropReason::OutputTooLarge)
}

/// Hands the packet to the next hop the routing info names.
fn send_on(p: &Processed, bytes: Vec<u8>) -> Action {
    if p.outgoing.is_none() {
        return Action::Drop(DropReason::RouteEnds);
    }
    let next = p.routing.next_hop;
    let Some(to) = peer_of(&next) else {
        return Action::Drop(DropReason::BadNextHop);
    };
    if p.routing.op == Op::Deliver {
        Action::Deliver { next, to, bytes }
    } else {
        Action::Forward { next, to, bytes }
    }
}
