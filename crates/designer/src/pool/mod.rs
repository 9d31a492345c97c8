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

mod endpoint;
mod onion;

use std::time::{Duration, Instant};

use mixnn_grad::pb;
use mixnn_layer::{NamedTensor, Tensor, TrainConfig};
use mixnn_protocol::job::{FromHop, LayerKind, LayerSpec, ParamTensor, ToHop, WireTensor};
use mixnn_sandbox::Sandbox;
use mixnn_sphinx::{Geometry, JobHandle, MixPublicKey, Op};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::DesignerError;
use crate::backend::{EngineKind, LayerBackend, NativeLayer, WasmLayer, layer_config};
use crate::cascade::{Model, loss_for};
use endpoint::Endpoint;
use onion::{Hop, Role, Sent, Slot};

/// How long connecting to a cascade end (dial, Noise, stream) may take.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

fn err(m: impl std::fmt::Display) -> DesignerError {
    DesignerError::Pool(m.to_string())
}

/// How to run on the pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Bootstrap multiaddrs (`/…/p2p/<id>`).
    pub bootstrap: Vec<String>,
    /// Dummy relay hops placed at random positions.
    pub dummies: usize,
    /// The designer runs the first shard itself.
    pub keep_first: bool,
    /// The designer runs the last shard (and the loss) itself.
    pub keep_last: bool,
    /// Engine of the shards the designer keeps.
    pub local_engine: EngineKind,
    /// Payload class of the job's packets; `None` picks the smallest that
    /// fits the largest tensor.
    pub class: Option<usize>,
    /// How long to wait for an answer before calling a hop failed.
    pub timeout: Duration,
    /// How long to wait for enough nodes to be listed.
    pub wait_for_nodes: Duration,
    /// Batch sizes the job will send (training and test), for the class.
    pub batches: Vec<usize>,
}

/// Network figures of a job, for the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetworkReport {
    /// The cascade in order: `layer K` or `dummy`, and the node's peer id.
    pub cascade: Vec<(String, String)>,
    pub payload_class: usize,
    pub packet_len: usize,
    /// Messages (packets the designer sent and got an answer to).
    pub messages: u64,
    /// Sum over messages of the hops each crossed.
    pub hop_crossings: u64,
    /// The same for training messages only (the per-hop overhead's base).
    pub train_messages: u64,
    pub train_hop_crossings: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Seconds spent per phase, waiting on the network included.
    pub init_seconds: f64,
    pub train_seconds: f64,
    pub test_seconds: f64,
    pub export_seconds: f64,
    /// Distinct lengths of the packets the designer sent and received.
    pub packet_lengths: Vec<usize>,
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
    first: Option<Box<dyn LayerBackend>>,
    last: Option<Box<dyn LayerBackend>>,
    shards: usize,
    timeout: Duration,
    rng: ChaCha20Rng,
    net: NetworkReport,
}

impl PoolCascade {
    /// Chooses nodes, places dummies and deploys every hop (init, op 0).
    pub fn deploy(
        shards: &[pb::ModelProto],
        base: &TrainConfig,
        sandbox: Option<&Sandbox>,
        opts: &PoolOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, DesignerError> {
        let n = shards.len();
        let lo = usize::from(opts.keep_first);
        let hi = n - usize::from(opts.keep_last);
        if n == 0 || lo >= hi {
            return Err(err(
                "no shard left for the pool (keeping both ends of a 1- or 2-shard model?)",
            ));
        }
        let g = Geometry::default();
        let remote = hi - lo;
        let count = remote + opts.dummies;
        let route_len = if opts.keep_last { count } else { 2 * count - 1 };
        if route_len > g.max_hops() {
            return Err(err(format!(
                "{remote} layers and {} dummies make routes of {route_len} hops; \
                 packets carry at most {}",
                opts.dummies,
                g.max_hops()
            )));
        }
        let ep = Endpoint::start(&opts.bootstrap, &g)?;
        progress(&format!("reading the pool directory (need {count} nodes)"));
        let mut pool = ep.directory(count, opts.wait_for_nodes)?;
        if pool.len() < count {
            return Err(err(format!(
                "the pool lists {} nodes, the cascade needs {count} distinct ones \
                 ({remote} layers + {} dummies)",
                pool.len(),
                opts.dummies
            )));
        }
        // Node choice and dummy positions are secrets of the designer: OS
        // randomness, not the training seed.
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| err(format!("OS randomness: {e}")))?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        pool.shuffle(&mut rng);
        let mut roles: Vec<Role> = (lo..hi).map(Role::Layer).collect();
        for _ in 0..opts.dummies {
            // A dummy never takes the turn: with the last layer remote it
            // goes somewhere before it.
            let max = if opts.keep_last {
                roles.len()
            } else {
                roles.len() - 1
            };
            roles.insert(rng.gen_range(0..=max), Role::Dummy);
        }
        let mut hops = Vec::with_capacity(count);
        for (d, role) in pool.iter().zip(&roles) {
            let mix_key = MixPublicKey::from_bytes(d.mix_key.public)
                .map_err(|e| err(format!("node {}: {e}", d.peer_id)))?;
            let epoch = u32::try_from(d.mix_key.epoch)
                .map_err(|_| err(format!("node {}: epoch out of range", d.peer_id)))?;
            let peer = d
                .peer_id
                .parse()
                .map_err(|e| err(format!("node {}: {e}", d.peer_id)))?;
            let mut job = [0u8; 32];
            rng.fill_bytes(&mut job);
            hops.push(Hop {
                node: mixnn_sphinx::NodeId(d.identity_key),
                peer,
                mix_key,
                epoch,
                job: JobHandle(job),
                role: *role,
            });
        }
        for h in [hops.first(), hops.last()].into_iter().flatten() {
            if let Some(d) = pool.iter().find(|d| d.identity_key == h.node.0) {
                ep.connect(h.peer, &d.addrs, CONNECT_WAIT)?;
            }
        }
        let class = match opts.class {
            Some(c) => c,
            None => payload_class(&g, shards, lo, hi, &opts.batches)?,
        };
        let loss = loss_for(&shards[n - 1]);
        let local = |i: usize| -> Result<Box<dyn LayerBackend>, DesignerError> {
            let bytes = mixnn_shard::encode(&shards[i]);
            let cfg = layer_config(base, i, n, loss);
            Ok(match opts.local_engine {
                EngineKind::Native => Box::new(NativeLayer::load(i, &bytes, cfg)?),
                EngineKind::Wasm => {
                    let sb = sandbox.ok_or_else(|| err("the wasm engine needs a sandbox"))?;
                    Box::new(WasmLayer::load(i, sb, &bytes, &cfg)?)
                }
            })
        };
        let first = if opts.keep_first {
            Some(local(0)?)
        } else {
            None
        };
        let last = if opts.keep_last {
            Some(local(n - 1)?)
        } else {
            None
        };
        let mut me = PoolCascade {
            net: NetworkReport {
                cascade: hops
                    .iter()
                    .map(|h| (describe_role(h.role), h.peer.to_base58()))
                    .collect(),
                payload_class: class,
                packet_len: g.packet_len(class).map_err(err)?,
                ..Default::default()
            },
            ep,
            g,
            class,
            hops,
            first,
            last,
            shards: n,
            timeout: opts.timeout,
            rng,
        };
        for t in 0..me.hops.len() {
            let (kind, shard, cfg) = match me.hops[t].role {
                Role::Layer(i) => (
                    LayerKind::Standard,
                    mixnn_shard::encode(&shards[i]),
                    layer_config(base, i, n, loss),
                ),
                Role::Dummy => (
                    LayerKind::Relay("identity".into()),
                    Vec::new(),
                    base.clone(),
                ),
            };
            progress(&format!(
                "init: {} on hop {} ({} bytes)",
                describe_role(me.hops[t].role),
                t + 1,
                shard.len()
            ));
            me.init_hop(t, spec(kind, &cfg, shard.len()), &shard)?;
        }
        Ok(me)
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

    fn init_hop(&mut self, t: usize, spec: LayerSpec, shard: &[u8]) -> Result<(), DesignerError> {
        let chunk = self
            .g
            .capacity(self.class)
            .map_err(err)?
            .saturating_sub(1024)
            .max(1);
        let parts: Vec<&[u8]> = if shard.is_empty() {
            vec![&[]]
        } else {
            shard.chunks(chunk).collect()
        };
        let total = parts.len() as u32;
        let mut spec = Some(spec);
        for (i, part) in parts.into_iter().enumerate() {
            let msg = ToHop::Init {
                index: i as u32,
                total,
                spec: spec.take(),
                bytes: part.to_vec(),
            };
            match self.control(t, msg, Phase::Init)? {
                FromHop::Received { .. } if (i as u32) + 1 < total => {}
                FromHop::Ready { .. } if (i as u32) + 1 == total => {}
                other => return Err(err(format!("hop {}: unexpected answer {other:?}", t + 1))),
            }
        }
        Ok(())
    }

    /// A control message to hop `t`: every other hop relays.
    fn control(&mut self, t: usize, msg: ToHop, phase: Phase) -> Result<FromHop, DesignerError> {
        let slots: Vec<Slot> = (0..self.hops.len())
            .map(|j| {
                if j == t {
                    Slot::target(j, Op::Init, 0)
                } else {
                    Slot::new(j, Op::Relay)
                }
            })
            .collect();
        let (_, reply) = self.exchange(slots, None, Some((t, msg)), phase)?;
        reply.ok_or_else(|| err(format!("hop {} did not answer", t + 1)))
    }

    /// Sends one message and waits for its answer.
    fn exchange(
        &mut self,
        slots: Vec<Slot>,
        tensor: Option<WireTensor>,
        e2e: Option<(usize, ToHop)>,
        phase: Phase,
    ) -> Result<(Option<WireTensor>, Option<FromHop>), DesignerError> {
        let start = Instant::now();
        let target = e2e.as_ref().map(|(t, _)| *t);
        let first = self.hops[slots[0].hop].peer;
        let (bytes, sent) = onion::build(
            &self.g,
            self.class,
            &self.hops,
            slots,
            self.ep.node_id(),
            tensor,
            e2e,
            &mut self.rng,
        )?;
        self.ep.send(first, bytes)?;
        let answer = self.ep.receive(&sent.exit_id, self.timeout)?;
        let payload = onion::open(&self.g, &sent, answer)?;
        let hops = &self.hops;
        let describe = |s: &Slot| describe_slot(hops, s);
        let reply = onion::reply(&sent, &payload.e2e, target, describe)?;
        self.account(&sent, phase, start);
        Ok((payload.tensor, reply))
    }

    fn account(&mut self, sent: &Sent, phase: Phase, start: Instant) {
        self.net.messages += 1;
        self.net.hop_crossings += sent.slots.len() as u64;
        let s = start.elapsed().as_secs_f64();
        match phase {
            Phase::Init => self.net.init_seconds += s,
            Phase::Train => {
                self.net.train_seconds += s;
                self.net.train_messages += 1;
                self.net.train_hop_crossings += sent.slots.len() as u64;
            }
            Phase::Test => self.net.test_seconds += s,
            Phase::Export => self.net.export_seconds += s,
        }
    }

    fn forward_slots(&self, op: Op) -> Vec<Slot> {
        (0..self.hops.len()).map(|j| Slot::new(j, op)).collect()
    }

    fn backward_slots(&self) -> Vec<Slot> {
        (0..self.hops.len())
            .rev()
            .map(|j| Slot::new(j, Op::Backward))
            .collect()
    }

    /// Closes the job on every hop (best effort: a failure is logged).
    pub fn close(&mut self) {
        for t in 0..self.hops.len() {
            if let Err(e) = self.control(t, ToHop::Close, Phase::Export) {
                tracing::warn!(hop = t + 1, error = %e, "closing the job");
            }
        }
    }
}

fn to_wire(t: Tensor) -> Result<WireTensor, DesignerError> {
    let shape = t
        .shape
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| err(format!("dimension {d} too large"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WireTensor::compact(shape, t.data))
}

fn from_wire(t: Option<WireTensor>, what: &str) -> Result<Tensor, DesignerError> {
    let t = t.ok_or_else(|| err(format!("the answer carries no {what}")))?;
    let shape = t.shape.iter().map(|&d| d as usize).collect();
    Tensor::new(shape, t.into_f32()).map_err(|e| err(format!("{what}: {e}")))
}

impl Model for PoolCascade {
    fn train_batch(&mut self, x: Tensor, labels: &[i64]) -> Result<f32, DesignerError> {
        let mut z = x;
        if let Some(l) = self.first.as_mut() {
            z = l.forward(z)?;
        }
        let (loss, grad) = if let Some(mut last) = self.last.take() {
            let step = (|| {
                let slots = self.forward_slots(Op::Forward);
                let (out, _) = self.exchange(slots, Some(to_wire(z)?), None, Phase::Train)?;
                let y = last.forward(from_wire(out, "activations")?)?;
                let (loss, dy) = last.loss(&y, labels)?;
                let dx = last
                    .backward(dy)?
                    .ok_or_else(|| err("the last shard gave no input gradient"))?;
                last.step()?;
                let slots = self.backward_slots();
                let (grad, _) = self.exchange(slots, Some(to_wire(dx)?), None, Phase::Train)?;
                Ok::<_, DesignerError>((loss, grad))
            })();
            self.last = Some(last);
            step?
        } else {
            let n = self.hops.len();
            let mut slots: Vec<Slot> = (0..n - 1).map(|j| Slot::new(j, Op::Forward)).collect();
            slots.push(Slot::target(
                n - 1,
                Op::Backward,
                mixnn_protocol::job::app_flags::TURN,
            ));
            slots.extend((0..n - 1).rev().map(|j| Slot::new(j, Op::Backward)));
            let e2e = (n - 1, ToHop::Labels(labels.to_vec()));
            let (grad, reply) = self.exchange(slots, Some(to_wire(z)?), Some(e2e), Phase::Train)?;
            let loss = match reply {
                Some(FromHop::Loss { bits }) => f32::from_bits(bits),
                other => return Err(err(format!("expected the loss, got {other:?}"))),
            };
            (loss, grad)
        };
        if let Some(l) = self.first.as_mut() {
            // The first shard's own input gradient is not needed.
            l.backward(from_wire(grad, "input gradient")?)?;
            l.step()?;
        }
        Ok(loss)
    }

    fn infer(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        let mut z = x;
        if let Some(l) = self.first.as_mut() {
            z = l.infer(&z)?;
        }
        let slots = self.forward_slots(Op::Test);
        let (out, _) = self.exchange(slots, Some(to_wire(z)?), None, Phase::Test)?;
        let mut y = from_wire(out, "test output")?;
        if let Some(l) = self.last.as_mut() {
            y = l.infer(&y)?;
        }
        Ok(y)
    }

    fn export_params(&mut self) -> Result<Vec<Vec<NamedTensor>>, DesignerError> {
        let mut out: Vec<Option<Vec<NamedTensor>>> = vec![None; self.shards];
        if let Some(l) = self.first.as_mut() {
            out[0] = Some(l.export_params()?);
        }
        if let Some(l) = self.last.as_mut() {
            out[self.shards - 1] = Some(l.export_params()?);
        }
        for t in 0..self.hops.len() {
            let Role::Layer(i) = self.hops[t].role else {
                continue;
            };
            let mut bytes = Vec::new();
            let mut part = 0;
            loop {
                match self.control(t, ToHop::Export { part }, Phase::Export)? {
                    FromHop::ExportPart {
                        part: p,
                        total,
                        bytes: b,
                    } if p == part => {
                        bytes.extend_from_slice(&b);
                        part += 1;
                        if part >= total {
                            break;
                        }
                    }
                    other => {
                        return Err(err(format!("hop {}: unexpected answer {other:?}", t + 1)));
                    }
                }
            }
            let list: Vec<ParamTensor> =
                mixnn_protocol::cbor::decode("parameters", &bytes, usize::MAX).map_err(err)?;
            out[i] = Some(
                list.into_iter()
                    .map(|p| {
                        let shape = p.shape.iter().map(|&d| d as usize).collect();
                        Ok(NamedTensor {
                            name: p.name,
                            tensor: Tensor::new(shape, p.data).map_err(|e| err(e.to_string()))?,
                        })
                    })
                    .collect::<Result<_, DesignerError>>()?,
            );
        }
        out.into_iter()
            .enumerate()
            .map(|(i, p)| p.ok_or_else(|| err(format!("no parameters for shard {i}"))))
            .collect()
    }
}

fn spec(kind: LayerKind, c: &TrainConfig, shard_len: usize) -> LayerSpec {
    use mixnn_layer::{LossKind, OptimizerKind};
    LayerSpec {
        kind,
        optimizer: match c.optimizer {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
        .into(),
        learning_rate: c.learning_rate,
        momentum: c.momentum,
        weight_decay: c.weight_decay,
        beta1: c.beta1,
        beta2: c.beta2,
        epsilon: c.epsilon,
        seed: c.seed,
        loss: match c.loss {
            LossKind::None => "none",
            LossKind::Nll => "nll",
            LossKind::SoftmaxCrossEntropy => "softmax-ce",
        }
        .into(),
        need_input_grad: c.need_input_grad,
        host_kernels: c.host_kernels,
        shard_len: shard_len as u64,
    }
}

/// The payload class a job uses: the smallest that carries the largest
/// tensor of the job, i.e. the inputs of the pool's shards `lo..=hi` (as
/// f32; image input as bytes when the first shard is remote) at every
/// batch size used, plus room for framing and end-to-end messages. Public
/// so a harness can give cover traffic the job's class.
pub fn payload_class(
    g: &Geometry,
    shards: &[pb::ModelProto],
    lo: usize,
    hi: usize,
    batches: &[usize],
) -> Result<usize, DesignerError> {
    let mut largest = 0usize;
    let last = hi.min(shards.len().saturating_sub(1));
    for (i, shard) in shards.iter().enumerate().take(last + 1).skip(lo) {
        let shape = mixnn_layer::declared_input_shape(shard)
            .map_err(|source| DesignerError::Layer { index: i, source })?;
        let per_sample: usize = shape.get(1..).unwrap_or_default().iter().product();
        let width = if i == 0 { 1 } else { 4 };
        for &b in batches {
            largest = largest.max(per_sample.saturating_mul(b).saturating_mul(width));
        }
    }
    // Output of the last shard on the test path: classes per sample.
    g.class_for(largest + 2048).map_err(|e| {
        err(format!(
            "a {largest}-byte tensor fits no packet class ({e}); use a smaller batch"
        ))
    })
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
