//! `--verify-replicas`: the job on two cascades of distinct nodes, in
//! pure-wasm mode, compared hop by hop through witnesses (PROTOCOL.md
//! §12.9).
//!
//! Every step, test batch, checkpoint and export runs on both replicas;
//! each answer's witnesses are checked along its own chain and against
//! the other replica's. What a check finds is a [`PoolError::Lie`], which
//! the training loop hands back to [`Model::repair`]:
//!
//! - a broken **chain** (hop i says it sent what hop i+1 says it did not
//!   take) names a pair in one replica: both nodes are replaced and
//!   excluded, as the witnesses cannot say which of the two lied;
//! - an **end** hop contradicting what it exchanged with the designer over
//!   their authenticated link is the liar;
//! - two **replicas** of a position parting on the same input is resolved
//!   by a third replica: replica A's node of that position is replaced by
//!   a fresh node and the job replays from its latest checkpoint. If the
//!   fresh node and replica B then agree past the step, A's old node was
//!   the liar; if they part again at that position, B's node is, and it is
//!   replaced in turn.
//!
//! Each verdict is a [`Detection`]; every replaced node is excluded for the
//! rest of the job, and the two replicas never share a node.

use std::time::Instant;

use mixnn_grad::pb;
use mixnn_layer::{NamedTensor, Tensor, TrainConfig};
use mixnn_sandbox::Sandbox;

use super::witness::{Finding, check_chain, compare};
use super::{NetworkReport, PoolCascade, PoolError, PoolOptions};
use crate::DesignerError;
use crate::cascade::Model;
use crate::report::{Detection, Repair};

/// Which replica a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The first replica (the one `--kill`/`--lie` hop numbers name).
    A,
    /// The second replica.
    B,
    /// The two against each other.
    Both,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::A => "replica A",
            Side::B => "replica B",
            Side::Both => "replicas A and B",
        })
    }
}

/// A disagreement of the two replicas waiting for the third's word.
struct Pending {
    hop: usize,
    step: u64,
    a_node: String,
    b_node: String,
}

/// A job on two replica cascades (see the module doc).
pub struct Replicated {
    a: PoolCascade,
    b: PoolCascade,
    /// Steps trained, as the training loop counts them.
    step: u64,
    /// The replica whose call failed last (for a crash repair).
    failed: Option<Side>,
    pending: Option<Pending>,
    /// Nodes replaced for a lie or a suspicion: never taken again.
    excluded: Vec<[u8; 32]>,
    detections: Vec<Detection>,
}

impl Replicated {
    /// Deploys replica A, then replica B on other nodes with A's job secret
    /// (so the same dummy positions and masks, and the same witness plan).
    pub fn deploy(
        shards: &[pb::ModelProto],
        base: &TrainConfig,
        sandbox: Option<&Sandbox>,
        opts: &PoolOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, DesignerError> {
        let mut oa = opts.clone();
        oa.witness = true;
        progress("replica A");
        let a = PoolCascade::deploy(shards, base, sandbox, &oa, progress)?;
        let mut ob = oa;
        ob.job_secret = Some(a.job_secret());
        ob.exclude.extend(a.node_ids());
        ob.exclude.extend(a.failed_nodes());
        progress("replica B");
        let b = PoolCascade::deploy(shards, base, sandbox, &ob, progress)?;
        // Nodes that failed before (the job directory's) or at either
        // deployment stay out of both replicas' repairs.
        let mut excluded = opts.exclude.clone();
        excluded.extend(a.failed_nodes());
        excluded.extend(b.failed_nodes());
        let mut me = Replicated {
            a,
            b,
            step: 0,
            failed: None,
            pending: None,
            excluded,
            detections: Vec::new(),
        };
        me.share_avoid();
        Ok(me)
    }

    /// The nodes that failed in this job on either replica (see
    /// [`PoolCascade::failed_nodes`]).
    pub fn failed_nodes(&self) -> Vec<[u8; 32]> {
        let mut ids = self.a.failed_nodes();
        ids.extend(self.b.failed_nodes());
        ids
    }

    /// The job's secret (both replicas share it).
    pub fn job_secret(&self) -> [u8; 32] {
        self.a.job_secret()
    }

    /// Closes the job on both replicas.
    pub fn close(&mut self) {
        self.a.close();
        self.b.close();
    }

    /// Replica B's network figures (replica A's are [`Model::network`]).
    pub fn network_b(&self) -> NetworkReport {
        self.b.network()
    }

    /// Each replica's repairs avoid the other's nodes and the excluded.
    fn share_avoid(&mut self) {
        let mut for_a = self.b.node_ids();
        for_a.extend(&self.excluded);
        let mut for_b = self.a.node_ids();
        for_b.extend(&self.excluded);
        self.a.avoid(for_a);
        self.b.avoid(for_b);
    }

    fn side(&mut self, s: Side) -> &mut PoolCascade {
        match s {
            Side::B => &mut self.b,
            Side::A | Side::Both => &mut self.a,
        }
    }

    /// `f` on A and on B at the same time (B on a second thread: the two
    /// replicas share no node, so a step costs the slower replica, not
    /// both); a failure remembers its replica, A's first when both fail.
    fn both<R: Send>(
        &mut self,
        f: impl Fn(&mut PoolCascade) -> Result<R, DesignerError> + Sync,
    ) -> Result<(R, R), DesignerError> {
        let (a, b) = (&mut self.a, &mut self.b);
        let (ra, rb) = std::thread::scope(|s| {
            let hb = s.spawn(|| f(b));
            let ra = f(a);
            let rb = match hb.join() {
                Ok(rb) => rb,
                // A panic on B's thread is a bug: carry it here.
                Err(p) => std::panic::resume_unwind(p),
            };
            (ra, rb)
        });
        let ra = ra.inspect_err(|_| self.failed = Some(Side::A))?;
        let rb = rb.inspect_err(|_| self.failed = Some(Side::B))?;
        Ok((ra, rb))
    }

    /// The chain and replica checks of everything both replicas answered
    /// since the last check.
    fn check(&mut self, step: u64) -> Result<(), DesignerError> {
        let ra = self.a.take_readings();
        let rb = self.b.take_readings();
        let lie = |finding: Finding, side: Side| -> DesignerError {
            PoolError::Lie {
                step,
                finding,
                side,
            }
            .into()
        };
        for (side, readings) in [(Side::A, &ra), (Side::B, &rb)] {
            if let Some(f) = readings.iter().find_map(check_chain) {
                return Err(lie(f, side));
            }
        }
        if ra.len() != rb.len() {
            let f = Finding::Shape(format!("{} answers against {}", ra.len(), rb.len()));
            return Err(lie(f, Side::Both));
        }
        match ra.iter().zip(&rb).find_map(|(x, y)| compare(x, y)) {
            Some(f) => Err(lie(f, Side::Both)),
            None => Ok(()),
        }
    }

    /// A position whose outputs agree on both replicas and yet whose
    /// answers differ (a loss, a state, parameters): the replicas of that
    /// position part.
    fn parted(&self, step: u64, hop: usize) -> DesignerError {
        PoolError::Lie {
            step,
            finding: Finding::Replicas { hop },
            side: Side::Both,
        }
        .into()
    }

    /// The first layer (shard order) whose entries differ, as the hop
    /// that holds it on the pool (`None`: a layer the designer keeps, or
    /// no difference).
    fn first_parting<T: PartialEq>(&self, a: &[T], b: &[T]) -> Option<usize> {
        let i = a.iter().zip(b).position(|(x, y)| x != y)?;
        self.a.hop_of_layer(i)
    }

    fn resolve_pending(&mut self) {
        if let Some(p) = self.pending.take_if(|p| p.step <= self.step) {
            self.detections.push(Detection {
                step: p.step,
                hop: Some(p.hop),
                node: Some(p.a_node),
                how: format!(
                    "replicas parted at hop {}; a third replica on a fresh node in replica A's \
                     place agreed with replica B's node {} past step {}",
                    p.hop + 1,
                    p.b_node,
                    p.step
                ),
            });
        }
    }

    /// Replaces hop `t` of replica `s` for a lie, excluding its node.
    fn replace(&mut self, s: Side, t: usize, step: u64) -> Result<Repair, DesignerError> {
        let (_, peer) = self.side(s).describe_hop(t);
        let id = self.side(s).node_ids().get(t).copied();
        self.excluded.extend(id);
        self.share_avoid();
        let mut r = self.side(s).replace_liar(t)?;
        r.step = step;
        tracing::warn!(hop = t + 1, %peer, side = %s, "node replaced after a lie");
        self.share_avoid();
        Ok(r)
    }

    fn repair_lie(
        &mut self,
        step: u64,
        finding: &Finding,
        side: Side,
    ) -> Result<Option<Repair>, DesignerError> {
        let started = Instant::now();
        let repair = match *finding {
            Finding::Replicas { hop } => match self.pending.take_if(|p| p.hop == hop) {
                Some(p) => {
                    let r = self.replace(Side::B, hop, step)?;
                    self.detections.push(Detection {
                        step: p.step,
                        hop: Some(hop),
                        node: Some(p.b_node.clone()),
                        how: format!(
                            "replicas parted at hop {} at step {}; a third replica on a fresh \
                             node in replica A's place parted from replica B's node again at \
                             step {step}",
                            hop + 1,
                            p.step
                        ),
                    });
                    r
                }
                None => {
                    let (_, a_node) = self.a.describe_hop(hop);
                    let (_, b_node) = self.b.describe_hop(hop);
                    self.pending = Some(Pending {
                        hop,
                        step,
                        a_node,
                        b_node,
                    });
                    self.replace(Side::A, hop, step)?
                }
            },
            Finding::End { hop } => {
                let (_, node) = self.side(side).describe_hop(hop);
                let r = self.replace(side, hop, step)?;
                self.detections.push(Detection {
                    step,
                    hop: Some(hop),
                    node: Some(node),
                    how: format!("{side}: {finding}"),
                });
                r
            }
            Finding::Link { from, to } => {
                let (_, n1) = self.side(side).describe_hop(from);
                let (_, n2) = self.side(side).describe_hop(to);
                let r = self.replace(side, from, step)?;
                self.replace(side, to, step)?;
                self.detections.push(Detection {
                    step,
                    hop: Some(from),
                    node: Some(format!("{n1} or {n2}")),
                    how: format!("{side}: {finding}; one of the two lied, both replaced"),
                });
                r
            }
            Finding::Shape(_) => return Ok(None),
        };
        Ok(Some(Repair {
            repaired_after_ms: started.elapsed().as_millis() as u64,
            ..repair
        }))
    }
}

impl Model for Replicated {
    fn train_batch(&mut self, x: Tensor, labels: &[i64]) -> Result<f32, DesignerError> {
        let step = self.step + 1;
        let (la, lb) = self.both(|c| c.train_batch(x.clone(), labels))?;
        self.check(step)?;
        if la.to_bits() != lb.to_bits() {
            return Err(self.parted(step, self.a.turn_hop()));
        }
        self.step = step;
        self.resolve_pending();
        Ok(la)
    }

    fn infer(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        let (ya, yb) = self.both(|c| c.infer(x.clone()))?;
        self.check(self.step)?;
        if ya != yb {
            let hop = self.a.last_hop();
            return Err(self.parted(self.step, hop));
        }
        Ok(ya)
    }

    fn export_params(&mut self) -> Result<Vec<Vec<NamedTensor>>, DesignerError> {
        let (pa, pb) = self.both(|c| c.export_params())?;
        if let Some(hop) = self.first_parting(&pa, &pb) {
            return Err(self.parted(self.step, hop));
        }
        Ok(pa)
    }

    fn save_state(&mut self) -> Result<Vec<Vec<u8>>, DesignerError> {
        let (sa, sb) = self.both(|c| c.save_states())?;
        if let Some(hop) = self.first_parting(&sa, &sb) {
            return Err(self.parted(self.step, hop));
        }
        Ok(sa)
    }

    fn load_state(&mut self, states: &[Vec<u8>]) -> Result<(), DesignerError> {
        self.both(|c| c.load_states(states)).map(|_| ())
    }

    fn repair(&mut self, failure: &DesignerError) -> Result<Option<Repair>, DesignerError> {
        if let DesignerError::Job(PoolError::Lie {
            step,
            finding,
            side,
        }) = failure
        {
            return self.repair_lie(*step, finding, *side);
        }
        let Some(side) = self.failed.take() else {
            return Ok(None);
        };
        self.share_avoid();
        let r = self.side(side).repair_failure(failure)?;
        self.share_avoid();
        Ok(r)
    }

    fn take_detections(&mut self) -> Vec<Detection> {
        std::mem::take(&mut self.detections)
    }

    fn rolled_back(&mut self, step: u64) {
        self.step = step;
        // What each replica answered before the rollback is moot.
        self.a.take_readings();
        self.b.take_readings();
    }

    fn network(&self) -> Option<NetworkReport> {
        Some(self.a.network())
    }

    fn networks(&self) -> Vec<NetworkReport> {
        vec![self.a.network(), self.b.network()]
    }
}
