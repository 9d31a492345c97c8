//! A hop in memory for the tests: one node's key ring, replay cache and job
//! table, and a designer's side that builds packets for it with
//! `mixnn_sphinx` and `mixnn_protocol` directly, the way the designer's
//! onion code does (the node may not depend on the designer).

use mixnn_types::{LossKind, OptimizerKind, TrainConfig};
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mixnn_protocol::job::{
    self, E2eDirection, FromHop, HopFailure, JobPayload, LayerKind, LayerSpec, ToHop, WireTensor,
    app_flags,
};
use mixnn_sandbox::{Sandbox, SandboxOptions};
use mixnn_sphinx::{
    DesignerState, Exit, Geometry, HeaderBinding, JobHandle, KeyRing, LinkKey, MixKeyPair,
    MixPublicKey, NodeId, Op, PayloadMode, ReplayCache, ReplayTag, RouteHop,
};
use rand::SeedableRng as _;
use rand_chacha::ChaCha20Rng;

use crate::cover::{CoverHop, Kind};
use crate::hop::{self, Outcome, node_id_of};
use crate::jobs::{JobLimits, Jobs};
use crate::metrics::Metrics;

/// The payload class of the tests' packets.
pub const CLASS: usize = 2048;
/// The key epoch of the node under test.
pub const EPOCH: u32 = 1;

/// One sandbox for every test of the binary (each compiles a guest once).
pub fn sandbox() -> Arc<Sandbox> {
    static SANDBOX: OnceLock<Arc<Sandbox>> = OnceLock::new();
    SANDBOX
        .get_or_init(|| Arc::new(Sandbox::new(SandboxOptions::default()).expect("sandbox")))
        .clone()
}

/// The paper MLP's last shard (64 → 10, LogSoftmax) at batch 2: the
/// smallest standard layer that takes a turn.
pub fn last_mlp_shard() -> Vec<u8> {
    let model = mixnn_shard::mlp(5, 2, mixnn_shard::Form::Gemm);
    let plan = mixnn_shard::plan(&model, None).expect("plan");
    let shards = mixnn_shard::split(&model, &plan).expect("split");
    mixnn_shard::encode(shards.last().expect("a shard"))
}

/// A layer spec as the designer sends it with the first init chunk.
pub fn spec(kind: LayerKind, loss: LossKind, shard_len: usize) -> LayerSpec {
    LayerSpec {
        kind,
        train: TrainConfig {
            optimizer: OptimizerKind::Sgd,
            learning_rate: 0.1,
            momentum: 0.0,
            seed: 3,
            loss,
            ..TrainConfig::default()
        },
        shard_len: shard_len as u64,
        witness: None,
    }
}

/// An ed25519 public key, so a NodeId that names a peer.
pub fn peer_node(seed: u8) -> NodeId {
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    node_id_of(&key.verifying_key().to_bytes())
}

/// How one hop of a test packet is set.
#[derive(Clone, Copy)]
pub struct Slot {
    pub op: Op,
    pub flags: u8,
    pub job: [u8; 32],
}

impl Slot {
    pub fn new(op: Op, job: [u8; 32]) -> Slot {
        Slot { op, flags: 0, job }
    }
    pub fn target(op: Op, job: [u8; 32]) -> Slot {
        Slot {
            op,
            flags: app_flags::E2E_TARGET,
            job,
        }
    }
    pub fn turn(job: [u8; 32]) -> Slot {
        Slot {
            op: Op::Backward,
            flags: app_flags::E2E_TARGET | app_flags::TURN,
            job,
        }
    }
}

/// What the designer keeps of a packet it sent: to open the answer.
pub struct Sent {
    pub state: DesignerState,
    links: Vec<LinkKey>,
}

/// The node under test and its designer.
pub struct World {
    pub geometry: Geometry,
    pub ring: KeyRing,
    pub replay: RefCell<ReplayCache>,
    pub jobs: Jobs,
    pub me: NodeId,
    /// The public half of the node's mix key (the ring holds the secret).
    public: MixPublicKey,
    /// Where the node's packets go next (the designer's endpoint).
    pub next: NodeId,
    /// The key epoch of the node's mix key.
    epoch: u32,
    /// Seal end-to-end messages into sections of this many bytes (the
    /// designer's fixed lengths); `None`: at their natural length.
    pub section_len: Option<usize>,
    rng: ChaCha20Rng,
}

impl World {
    pub fn new() -> World {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        World::with_key(MixKeyPair::generate(EPOCH, &mut rng))
    }

    /// A world whose node holds `key` (packets are built for it).
    pub fn with_key(key: MixKeyPair) -> World {
        let rng = ChaCha20Rng::seed_from_u64(9);
        let limits = JobLimits {
            max_jobs: 8,
            max_shard_bytes: 1 << 20,
            idle: Duration::from_secs(60),
        };
        let metrics = Arc::new(Metrics::new("test".into()));
        World {
            geometry: Geometry::default(),
            epoch: key.epoch(),
            public: *key.public(),
            ring: KeyRing::with_key(key),
            replay: RefCell::new(ReplayCache::default()),
            jobs: Jobs::new(sandbox(), limits, metrics),
            me: peer_node(1),
            next: peer_node(2),
            section_len: None,
            rng,
        }
    }

    /// The hop on `bytes`.
    pub fn handle(&self, bytes: Vec<u8>) -> Outcome {
        let mut replay = self.replay.borrow_mut();
        hop::handle(&self.geometry, &self.ring, &mut *replay, &self.jobs, bytes)
    }

    fn route_hop(&self, s: Slot, key_in: LinkKey, key_out: LinkKey) -> RouteHop {
        RouteHop {
            node_id: self.me,
            mix_key: self.public,
            epoch: self.epoch,
            op: s.op,
            job: JobHandle(s.job),
            key_in,
            key_out,
            app_flags: s.flags,
        }
    }

    /// A job packet for a one-hop route through this node to `next`,
    /// carrying `tensor` and, if the slot is the target, `msg` end to end.
    pub fn packet(
        &mut self,
        slot: Slot,
        tensor: Option<WireTensor>,
        msg: Option<ToHop>,
    ) -> (Vec<u8>, Sent) {
        let body = msg.map(|m| job::encode_msg("end-to-end message", &m).expect("encode"));
        self.packet_with_section(slot, tensor, body, None)
    }

    /// Like [`packet`](Self::packet), with the end-to-end body given raw
    /// (`None`: no section) and the link payload replaced by `raw` if set.
    pub fn packet_with_section(
        &mut self,
        slot: Slot,
        tensor: Option<WireTensor>,
        body: Option<Vec<u8>>,
        raw: Option<Vec<u8>>,
    ) -> (Vec<u8>, Sent) {
        let links = vec![
            LinkKey::random(&mut self.rng),
            LinkKey::random(&mut self.rng),
        ];
        let route = [self.route_hop(slot, links[0].clone(), links[1].clone())];
        let (packet, state) = mixnn_sphinx::build_packet(
            &self.geometry,
            &route,
            Exit::Endpoint(self.next),
            PayloadMode::Link,
            CLASS,
            &[],
            &mut self.rng,
        )
        .expect("build");
        let e2e = body.map_or_else(Vec::new, |b| {
            let key = state.e2e_key(0).expect("e2e key");
            match self.section_len {
                Some(n) => job::seal_e2e_padded(key.as_bytes(), E2eDirection::ToHop, &b, n)
                    .expect("fits its section"),
                None => job::seal_e2e(key.as_bytes(), E2eDirection::ToHop, &b),
            }
        });
        let message = raw.unwrap_or_else(|| JobPayload { tensor, e2e }.encode());
        let mut bytes = packet.into_bytes();
        let h = self.geometry.header_len();
        let first = state.bindings()[0];
        mixnn_sphinx::seal_payload(&links[0], &first, &message, &mut bytes[h..]).expect("seal");
        (bytes, Sent { state, links })
    }

    /// A cover packet as the node's cover task builds it, of `kind`:
    /// relayed by this node to `next` (where it ends) when `relay`, else
    /// ending here.
    pub fn cover_packet(&mut self, kind: Kind, relay: bool) -> (Vec<u8>, ReplayTag) {
        let me = CoverHop {
            id: self.me,
            key: self.public,
            epoch: self.epoch,
        };
        let mut route = vec![me];
        if relay {
            let other = MixKeyPair::generate(EPOCH, &mut self.rng);
            route.push(CoverHop {
                id: self.next,
                key: *other.public(),
                epoch: EPOCH,
            });
        }
        crate::cover::packet::build(&self.geometry, &route, kind, CLASS, &mut self.rng)
            .expect("build")
    }

    /// A fresh random job handle, as the designer draws for a relay slot.
    pub fn fresh_handle(&mut self) -> [u8; 32] {
        let mut h = [0u8; 32];
        rand::RngCore::fill_bytes(&mut self.rng, &mut h);
        h
    }

    /// The job payload the node sent on, opened as the next link would.
    pub fn open(&self, sent: &Sent, mut bytes: Vec<u8>) -> JobPayload {
        let h = self.geometry.header_len();
        let binding = HeaderBinding::of_header(&bytes[..h]).expect("binding");
        let msg = mixnn_sphinx::open_payload(&sent.links[1], &binding, &mut bytes[h..])
            .expect("the output opens");
        JobPayload::decode(msg).expect("a job payload")
    }

    /// The node's end-to-end reply in `payload`.
    pub fn reply(&self, sent: &Sent, payload: &JobPayload) -> FromHop {
        let key = sent.state.e2e_key(0).expect("e2e key");
        let body = job::open_e2e(key.as_bytes(), E2eDirection::FromHop, &payload.e2e)
            .expect("the reply opens");
        job::decode_msg("reply", &body).expect("a reply")
    }

    /// The failure the node sealed into `payload`; fails the test otherwise.
    pub fn error(&self, sent: &Sent, payload: &JobPayload) -> HopFailure {
        match self.reply(sent, payload) {
            FromHop::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// The to-hop body under the node's layer in `payload`, as a later hop
    /// that is the section's target would open it.
    pub fn under_layer(&self, sent: &Sent, payload: &JobPayload) -> Vec<u8> {
        let key = sent.state.e2e_key(0).expect("key");
        let mut section = payload.e2e.clone();
        job::e2e_layer(key.as_bytes(), &mut section);
        job::open_e2e(key.as_bytes(), E2eDirection::ToHop, &section).expect("opens")
    }

    /// Sends `shard` to job `job` in init chunks of 1 KiB (the first with
    /// `spec`); returns the answer to the last.
    pub fn init(&mut self, job: [u8; 32], spec: LayerSpec, shard: Vec<u8>) -> FromHop {
        let chunks: Vec<Vec<u8>> = match shard.len() {
            0 => vec![Vec::new()],
            _ => shard.chunks(1024).map(<[u8]>::to_vec).collect(),
        };
        let total = chunks.len() as u32;
        let mut answer = None;
        for (i, bytes) in chunks.into_iter().enumerate() {
            let msg = ToHop::Init {
                index: i as u32,
                total,
                spec: (i == 0).then(|| spec.clone()),
                bytes,
            };
            let (packet, sent) = self.packet(Slot::target(Op::Init, job), None, Some(msg));
            let out = self.forwarded(self.handle(packet));
            answer = Some(self.reply(&sent, &self.open(&sent, out)));
        }
        answer.expect("at least one chunk")
    }

    /// Sets up a dummy hop (relay guest with `op`) as job `job`.
    pub fn relay_job(&mut self, job: [u8; 32], op: &str) {
        let spec = spec(LayerKind::Relay(op.into()), mixnn_types::LossKind::None, 0);
        assert_eq!(
            self.init(job, spec, Vec::new()),
            FromHop::Ready { params: 0 }
        );
    }

    /// The bytes of a forwarded packet; fails the test otherwise.
    pub fn forwarded(&self, outcome: Outcome) -> Vec<u8> {
        match outcome.action {
            hop::Action::Forward { next, to, bytes } => {
                assert_eq!(next, self.next);
                assert_eq!(Some(to), hop::peer_of(&self.next));
                bytes
            }
            other => panic!("expected a forward, got {other:?}"),
        }
    }
}

/// The job failure the hop reported; fails the test otherwise.
pub fn failure(outcome: &Outcome) -> &hop::Failure {
    let seen = outcome.seen.as_ref().expect("the header opened");
    seen.failure.as_ref().expect("a job failure")
}

/// A tensor of `shape` with `data`.
pub fn tensor(shape: &[u32], data: Vec<f32>) -> WireTensor {
    WireTensor {
        shape: shape.to_vec(),
        data: job::TensorData::F32(data),
    }
}
