//! Fork-join (Bident) jobs: two branches on the same input, a merge, a
//! head (SPEC section 8, docs/bident.md).
//!
//! The untrusted branch is any [`Branch`]: a local [`Cascade`] for the
//! single-process reference, or a [`crate::pool::PoolCascade`] deployed in
//! branch mode, whose output comes back to the designer instead of
//! turning at its last hop. The trusted branch, the merge and the head run
//! here, so the pool never holds the labels, the loss, the merge's output
//! or the trusted branch's activations. A training step runs the trusted
//! branch on a second thread while the untrusted one is computed (or in
//! flight through the pool), forward and backward, so a step costs the
//! longer branch, not the sum.
//!
//! Every layer's seed, loss and input-gradient need come from
//! [`part_config`], one function for the local and the pool run, so both
//! train the same numbers and agree bit for bit.

pub mod merge;

use std::time::Instant;

use mixnn_grad::pb;
use mixnn_layer::{LossKind, NamedTensor, Tensor, TrainConfig};
use mixnn_sandbox::Sandbox;
use mixnn_shard::fork::{ForkJoin, MergeOp};
use serde::{Deserialize, Serialize};

use crate::DesignerError;
use crate::backend::{EngineKind, layer_config};
use crate::cascade::{Cascade, Model, loss_for};
use crate::report::Repair;

/// What the fork-join needs of its untrusted branch beyond a [`Model`]:
/// a training forward whose output comes back, and the backward from the
/// gradient of that output (each layer stepping its optimizer).
pub trait Branch: Model {
    /// Training forward; the branch keeps what its backward needs.
    fn forward_train(&mut self, x: Tensor) -> Result<Tensor, DesignerError>;
    /// Backward from the output gradient, with the optimizer steps.
    fn backward_train(&mut self, dz: Tensor) -> Result<(), DesignerError>;
}

impl Branch for Cascade {
    fn forward_train(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        Cascade::forward_train(self, x)
    }

    fn backward_train(&mut self, dz: Tensor) -> Result<(), DesignerError> {
        Cascade::backward_train(self, dz).map(|_| ())
    }
}

/// Which part of a fork-join a shard belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The branch on the pool.
    Untrusted,
    /// The branch in the trusted place.
    Trusted,
    /// After the merge.
    Head,
}

/// Seeds of the trusted branch and the head start this far from the job's
/// seed, so no two layers of the job draw the same stream (the untrusted
/// branch takes `seed + i` as a chain does, which keeps the pool's
/// deployment code unchanged).
const PART_SEED_STRIDE: u64 = 1 << 32;

/// The training config of shard `i` of `part` (of `count` shards): the
/// untrusted branch's first layer needs no input gradient and no branch
/// layer computes a loss; the head's first layer must pass a gradient back
/// to the merge and its last computes `loss`.
pub fn part_config(
    base: &TrainConfig,
    part: Part,
    i: usize,
    count: usize,
    loss: LossKind,
) -> TrainConfig {
    match part {
        Part::Untrusted => layer_config(base, i, count, LossKind::None),
        Part::Trusted => {
            let b = TrainConfig {
                seed: base.seed.wrapping_add(PART_SEED_STRIDE),
                ..base.clone()
            };
            layer_config(&b, i, count, LossKind::None)
        }
        Part::Head => {
            let b = TrainConfig {
                seed: base.seed.wrapping_add(2 * PART_SEED_STRIDE),
                ..base.clone()
            };
            TrainConfig {
                need_input_grad: true,
                ..layer_config(&b, i, count, loss)
            }
        }
    }
}

/// Loads the shards of one part of a fork-join here.
pub fn load_part(
    engine: EngineKind,
    shards: &[pb::ModelProto],
    part: Part,
    base: &TrainConfig,
    loss: LossKind,
    sandbox: Option<&Sandbox>,
) -> Result<Cascade, DesignerError> {
    Cascade::load_with(engine, shards, sandbox, |i| {
        part_config(base, part, i, shards.len(), loss)
    })
}

/// The loss a fork-join trains with: the one that fits its head's last op.
pub fn fork_loss(fj: &ForkJoin) -> Result<LossKind, DesignerError> {
    fj.head.last().map(loss_for).ok_or(DesignerError::NoShards)
}

/// Wall time of the fork-join's parts, summed over training steps: what
/// shows that the trusted branch overlaps the untrusted one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ForkTiming {
    /// Training steps measured.
    pub steps: u64,
    /// The untrusted branch, forward and backward (on the pool: the two
    /// round trips through the cascade).
    pub untrusted_seconds: f64,
    /// The trusted branch, forward and backward (on its own thread).
    pub trusted_seconds: f64,
    /// The merge, the head and the loss (after both branches).
    pub merge_head_seconds: f64,
    /// Whole steps: with the branches overlapped this is about the longer
    /// branch plus the head, not the sum of all three.
    pub step_seconds: f64,
}

/// A fork-join model: an untrusted branch `U`, the trusted branch (none:
/// the raw input), the merge and the head. Its layers are listed, saved
/// and exported in the order untrusted, trusted, head.
pub struct ForkJoinModel<U: Branch> {
    untrusted: U,
    untrusted_len: usize,
    trusted: Option<Cascade>,
    merge: MergeOp,
    /// Which merge input the untrusted branch feeds.
    untrusted_slot: usize,
    /// The untrusted branch's output shape past the batch axis, as its last
    /// shard declares it (`None` where a dim is symbolic): the pool's
    /// answer is checked against it before the merge uses it.
    untrusted_out: Option<Vec<usize>>,
    head: Cascade,
    timing: ForkTiming,
}

/// A shard's output shape past the batch axis, if every dim is declared.
fn declared_sample_shape(shard: &pb::ModelProto) -> Option<Vec<usize>> {
    let out = shard.graph.as_ref()?.output.first()?;
    let dims = mixnn_shard::proto::type_dims(out.r#type.as_ref()?)?;
    dims.get(1..)?
        .iter()
        .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
        .collect()
}

/// The merge's inputs in its own order, from the untrusted and trusted
/// branches' outputs.
fn ordered<'a>(slot: usize, u: &'a Tensor, t: &'a Tensor) -> (&'a Tensor, &'a Tensor) {
    if slot == 0 { (u, t) } else { (t, u) }
}

impl<U: Branch> ForkJoinModel<U> {
    /// Joins an untrusted branch (`untrusted_len` shards) with the trusted
    /// parts of `fj` loaded here on `engine`.
    pub fn new(
        untrusted: U,
        fj: &ForkJoin,
        engine: EngineKind,
        base: &TrainConfig,
        sandbox: Option<&Sandbox>,
    ) -> Result<Self, DesignerError> {
        if fj.untrusted_slot > 1 {
            return Err(DesignerError::Fork(format!(
                "merge input {} does not exist",
                fj.untrusted_slot
            )));
        }
        let loss = fork_loss(fj)?;
        let trusted = (!fj.trusted.is_empty())
            .then(|| load_part(engine, &fj.trusted, Part::Trusted, base, loss, sandbox))
            .transpose()?;
        let head = load_part(engine, &fj.head, Part::Head, base, loss, sandbox)?;
        Ok(ForkJoinModel {
            untrusted,
            untrusted_len: fj.untrusted.len(),
            trusted,
            merge: fj.merge,
            untrusted_slot: fj.untrusted_slot,
            untrusted_out: fj.untrusted.last().and_then(declared_sample_shape),
            head,
            timing: ForkTiming::default(),
        })
    }

    /// The untrusted branch's answer, refused unless it has the batch of
    /// `x` and the shape its last shard declares: the pool's last hop
    /// chooses the shape it sends back, and the merge would broadcast it.
    fn checked_untrusted(&self, batch: usize, u: Tensor) -> Result<Tensor, DesignerError> {
        let declared = self.untrusted_out.as_deref();
        let fits =
            u.shape.first() == Some(&batch) && declared.is_none_or(|d| u.shape.get(1..) == Some(d));
        if fits {
            Ok(u)
        } else {
            Err(DesignerError::Merge(format!(
                "the untrusted branch answered a tensor of shape {:?}; its last shard declares \
                 [{batch}, ..{:?}]",
                u.shape,
                declared.unwrap_or(&[])
            )))
        }
    }

    /// The untrusted branch (e.g. the pool cascade, to close it).
    pub fn untrusted_mut(&mut self) -> &mut U {
        &mut self.untrusted
    }

    /// Where the training steps spent their time so far.
    pub fn timing(&self) -> &ForkTiming {
        &self.timing
    }

    fn trusted_len(&self) -> usize {
        self.trusted.as_ref().map_or(0, Cascade::len)
    }

    /// The trained model: `original` (the fork-join model the parts were
    /// cut from) with every layer's current parameters, set by initializer
    /// name (the parts keep the original names).
    pub fn export_trained(
        &mut self,
        original: &pb::ModelProto,
    ) -> Result<pb::ModelProto, DesignerError> {
        let params: Vec<_> = self
            .export_params()?
            .into_iter()
            .flatten()
            .map(|t| (t.name, t.tensor.shape, t.tensor.data))
            .collect();
        Ok(mixnn_shard::set_params(original, &params)?)
    }
}

/// Runs `trusted` on a second thread while `untrusted` runs on this one;
/// returns both results and each side's wall time.
fn overlap<A: Send, B>(
    trusted: impl FnOnce() -> A + Send,
    untrusted: impl FnOnce() -> B,
) -> ((A, f64), (B, f64)) {
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            let t0 = Instant::now();
            let a = trusted();
            (a, t0.elapsed().as_secs_f64())
        });
        let t0 = Instant::now();
        let b = untrusted();
        let b = (b, t0.elapsed().as_secs_f64());
        let a = match handle.join() {
            Ok(a) => a,
            // A panic on the trusted thread is a bug: carry it here.
            Err(p) => std::panic::resume_unwind(p),
        };
        (a, b)
    })
}

/// A branch's output with its wall time.
type Timed = (Result<Tensor, DesignerError>, f64);

impl<U: Branch> ForkJoinModel<U> {
    /// Both branches' forward on `x` at the same time (the trusted one on
    /// a second thread): a training forward, or the test phase's.
    fn forward_both(&mut self, x: Tensor, train: bool) -> (Timed, Timed) {
        let xt = x.clone();
        let trusted = &mut self.trusted;
        let untrusted = &mut self.untrusted;
        overlap(
            move || match trusted.as_mut() {
                Some(c) if train => c.forward_train(xt),
                Some(c) => c.infer(xt),
                None => Ok(xt),
            },
            || {
                if train {
                    untrusted.forward_train(x)
                } else {
                    untrusted.infer(x)
                }
            },
        )
    }
}

impl<U: Branch> Model for ForkJoinModel<U> {
    fn train_batch(&mut self, x: Tensor, labels: &[i64]) -> Result<f32, DesignerError> {
        let step = Instant::now();
        let batch = x.shape.first().copied().unwrap_or(0);
        let ((t, ts), (u, us)) = self.forward_both(x, true);
        let (t, u) = (t?, self.checked_untrusted(batch, u?)?);
        let mh = Instant::now();
        let (a, b) = ordered(self.untrusted_slot, &u, &t);
        let m = merge::forward(self.merge, a, b)?;
        let z = self.head.forward_train(m)?;
        let (loss, dz) = self.head.loss(&z, labels)?;
        let dm = self
            .head
            .backward_train(dz)?
            .ok_or(DesignerError::NoInputGradient(0))?;
        let (da, db) = merge::backward(self.merge, a, b, &dm)?;
        let (du, dt) = if self.untrusted_slot == 0 {
            (da, db)
        } else {
            (db, da)
        };
        let mh = mh.elapsed().as_secs_f64();
        let trusted = &mut self.trusted;
        let untrusted = &mut self.untrusted;
        let ((t2, ts2), (u2, us2)) = overlap(
            move || match trusted.as_mut() {
                Some(c) => c.backward_train(dt).map(|_| ()),
                None => Ok(()),
            },
            || untrusted.backward_train(du),
        );
        t2?;
        u2?;
        let tm = &mut self.timing;
        tm.steps += 1;
        tm.untrusted_seconds += us + us2;
        tm.trusted_seconds += ts + ts2;
        tm.merge_head_seconds += mh;
        tm.step_seconds += step.elapsed().as_secs_f64();
        Ok(loss)
    }

    fn infer(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        let batch = x.shape.first().copied().unwrap_or(0);
        let ((t, _), (u, _)) = self.forward_both(x, false);
        let (t, u) = (t?, self.checked_untrusted(batch, u?)?);
        let (a, b) = ordered(self.untrusted_slot, &u, &t);
        let m = merge::forward(self.merge, a, b)?;
        self.head.infer(m)
    }

    fn export_params(&mut self) -> Result<Vec<Vec<NamedTensor>>, DesignerError> {
        let mut out = self.untrusted.export_params()?;
        if let Some(t) = self.trusted.as_mut() {
            out.extend(t.export_params()?);
        }
        out.extend(self.head.export_params()?);
        Ok(out)
    }

    fn save_state(&mut self) -> Result<Vec<Vec<u8>>, DesignerError> {
        let mut out = self.untrusted.save_state()?;
        if let Some(t) = self.trusted.as_mut() {
            out.extend(t.save_state()?);
        }
        out.extend(self.head.save_state()?);
        Ok(out)
    }

    fn load_state(&mut self, states: &[Vec<u8>]) -> Result<(), DesignerError> {
        let (u, t) = (self.untrusted_len, self.trusted_len());
        let want = u + t + self.head.len();
        if states.len() != want {
            return Err(DesignerError::ShardCount {
                shards: want,
                layers: states.len(),
            });
        }
        self.untrusted.load_state(&states[..u])?;
        if let Some(c) = self.trusted.as_mut() {
            c.load_state(&states[u..u + t])?;
        }
        self.head.load_state(&states[u + t..])
    }

    /// Only the untrusted branch has remote layers to repair.
    fn repair(&mut self, failure: &DesignerError) -> Result<Option<Repair>, DesignerError> {
        self.untrusted.repair(failure)
    }

    fn take_detections(&mut self) -> Vec<crate::report::Detection> {
        self.untrusted.take_detections()
    }

    fn rolled_back(&mut self, step: u64) {
        self.untrusted.rolled_back(step);
    }

    fn network(&self) -> Option<crate::pool::NetworkReport> {
        self.untrusted.network()
    }
}

#[cfg(test)]
mod tests;
