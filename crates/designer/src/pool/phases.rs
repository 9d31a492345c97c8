//! The phases after deployment as the training loop drives them
//! ([`Model`]): a training step (turning at the last hop, or through the
//! designer's last shard with `keep_last`), the test forward, and the
//! export of every hop's parameters.

use mixnn_layer::{NamedTensor, Tensor};
use mixnn_protocol::job::{FromHop, ParamTensor, ToHop, WireTensor, app_flags};
use mixnn_sphinx::Op;

use super::exchange::unexpected;
use super::onion::{Role, Slot};
use super::{Phase, PoolCascade, PoolError};
use crate::DesignerError;
use crate::backend::LayerBackend;
use crate::cascade::Model;
use crate::report::Repair;

/// A tensor for the wire (compact: image input stays in bytes).
fn to_wire(t: Tensor, what: &'static str) -> Result<WireTensor, DesignerError> {
    WireTensor::try_from(t).map_err(|source| PoolError::Tensor { what, source }.into())
}

/// The tensor an answer must carry, checked against its shape.
fn from_wire(t: Option<WireTensor>, what: &'static str) -> Result<Tensor, DesignerError> {
    let t = t.ok_or(PoolError::NoTensor(what))?;
    Tensor::try_from(t).map_err(|source| PoolError::Tensor { what, source }.into())
}

impl PoolCascade {
    /// A step with the last shard here: the pool's forward, the designer's
    /// last shard (loss, backward, step), the pool's backward. Returns the
    /// loss and the pool's input gradient.
    fn step_keeping_last(
        &mut self,
        last: &mut dyn LayerBackend,
        z: Tensor,
        labels: &[i64],
    ) -> Result<(f32, Option<WireTensor>), DesignerError> {
        let y = last.forward(self.pool_forward(z)?)?;
        let (loss, dy) = last.loss(&y, labels)?;
        let dx = last.backward(dy)?.ok_or(PoolError::NoInputGradient)?;
        last.step()?;
        let grad = self.pool_backward(dx)?;
        Ok((loss, grad))
    }

    /// The training forward through every hop, its output back here (a
    /// packet of its own).
    fn pool_forward(&mut self, z: Tensor) -> Result<Tensor, DesignerError> {
        let slots = self.forward_slots(Op::Forward);
        let (out, _) = self.exchange(slots, Some(to_wire(z, "input")?), None, Phase::Train)?;
        from_wire(out, "activations")
    }

    /// The backward through every hop from the gradient of the pool's
    /// output; returns the pool's input gradient when its first hop
    /// computes one.
    fn pool_backward(&mut self, dz: Tensor) -> Result<Option<WireTensor>, DesignerError> {
        let slots = self.backward_slots();
        let (grad, _) = self.exchange(slots, Some(to_wire(dz, "gradient")?), None, Phase::Train)?;
        Ok(grad)
    }

    /// A step in one packet: forward to the last hop, which gets the labels
    /// end-to-end, turns (loss, backward) and sends the loss back under the
    /// gradient's way back.
    fn step_turning(
        &mut self,
        z: Tensor,
        labels: &[i64],
    ) -> Result<(f32, Option<WireTensor>), DesignerError> {
        let n = self.hops.len();
        let mut slots: Vec<Slot> = (0..n - 1).map(|j| Slot::new(j, Op::Forward)).collect();
        slots.push(Slot::target(n - 1, Op::Backward, app_flags::TURN));
        slots.extend((0..n - 1).rev().map(|j| Slot::new(j, Op::Backward)));
        let e2e = (n - 1, ToHop::Labels(labels.to_vec()));
        let (grad, reply) =
            self.exchange(slots, Some(to_wire(z, "input")?), Some(e2e), Phase::Train)?;
        match reply {
            Some(FromHop::Loss { bits }) => Ok((f32::from_bits(bits), grad)),
            other => Err(PoolError::ExpectedLoss(other.map(Box::new)).into()),
        }
    }

    /// Every layer hop's trained parameters, by hop: part 0 of all of them
    /// in one control batch, which tells each hop's part count, then the
    /// other parts in a second (PROTOCOL.md §12.5). Dummies export nothing.
    fn export_hops(&mut self) -> Result<Vec<Option<Vec<NamedTensor>>>, DesignerError> {
        let max = mixnn_protocol::job::MAX_EXPORT_PARTS;
        self.collect_parts(|part| ToHop::Export { part }, take_part, max)?
            .into_iter()
            .map(|b| b.map(|b| decode_params(&b)).transpose())
            .collect()
    }
}

/// Appends export part `part` of hop `t` to `bytes`; returns the part count.
fn take_part(
    t: usize,
    part: u32,
    answer: FromHop,
    bytes: &mut Vec<u8>,
) -> Result<u32, DesignerError> {
    match answer {
        FromHop::ExportPart {
            part: p,
            total,
            bytes: b,
        } if p == part && part < total && b.len() <= mixnn_protocol::job::EXPORT_PART_BYTES => {
            bytes.extend_from_slice(&b);
            Ok(total)
        }
        other => Err(unexpected(t, other)),
    }
}

/// A hop's exported parameter list, from the concatenated parts.
fn decode_params(bytes: &[u8]) -> Result<Vec<NamedTensor>, DesignerError> {
    let list: Vec<ParamTensor> =
        mixnn_protocol::cbor::decode("parameters", bytes, usize::MAX).map_err(PoolError::from)?;
    list.into_iter()
        .map(|p| {
            NamedTensor::try_from(p).map_err(|source| {
                PoolError::Tensor {
                    what: "parameter",
                    source,
                }
                .into()
            })
        })
        .collect()
}

impl Model for PoolCascade {
    fn network(&self) -> Option<super::NetworkReport> {
        Some(PoolCascade::network(self))
    }

    fn train_batch(&mut self, x: Tensor, labels: &[i64]) -> Result<f32, DesignerError> {
        if self.branch {
            return Err(DesignerError::Fork(
                "a branch cascade has no loss: it trains inside its fork-join".into(),
            ));
        }
        let mut z = x;
        if let Some(l) = self.first.as_mut() {
            z = l.forward(z)?;
        }
        let (loss, grad) = if let Some(mut last) = self.last.take() {
            let step = self.step_keeping_last(last.as_mut(), z, labels);
            self.last = Some(last);
            step?
        } else {
            self.step_turning(z, labels)?
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
        let (out, _) = self.exchange(slots, Some(to_wire(z, "test input")?), None, Phase::Test)?;
        let mut y = from_wire(out, "test output")?;
        if let Some(l) = self.last.as_mut() {
            y = l.infer(&y)?;
        }
        Ok(y)
    }

    /// Pipelined with a window over 1 (`pool/pipeline.rs`); one at a time
    /// in a verified job, whose witnesses are read per packet in order.
    fn infer_stream(
        &mut self,
        batches: &mut dyn Iterator<Item = Result<Tensor, DesignerError>>,
        done: &mut dyn FnMut(usize, Tensor) -> Result<(), DesignerError>,
    ) -> Result<(), DesignerError> {
        if self.test_window > 1 && self.witness.is_none() {
            self.infer_pipelined(batches, done)
        } else {
            crate::cascade::infer_each(self, batches, done)
        }
    }

    /// Replaces a hop that stopped answering (`pool/repair.rs`).
    fn repair(&mut self, failure: &DesignerError) -> Result<Option<Repair>, DesignerError> {
        self.repair_failure(failure)
    }

    fn export_params(&mut self) -> Result<Vec<Vec<NamedTensor>>, DesignerError> {
        let mut out: Vec<Option<Vec<NamedTensor>>> = vec![None; self.shards];
        if let Some(l) = self.first.as_mut() {
            out[0] = Some(l.export_params()?);
        }
        if let Some(l) = self.last.as_mut() {
            out[self.shards - 1] = Some(l.export_params()?);
        }
        let exported = self.export_hops()?;
        for (h, params) in self.hops.iter().zip(exported) {
            if let (Role::Layer(i), Some(p)) = (h.role, params) {
                out[i] = Some(p);
            }
        }
        // The dummies' masks leave the weights they were folded into.
        for (i, fold, mask) in &self.folds {
            if let Some(Some(p)) = out.get_mut(*i) {
                fold.apply_to_params(p, mask);
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, p)| p.ok_or_else(|| PoolError::NoParams(i).into()))
            .collect()
    }

    /// One state per shard (the kept ones here, the others from their
    /// hops), of the masked cascade: see `pool/state.rs`.
    fn save_state(&mut self) -> Result<Vec<Vec<u8>>, DesignerError> {
        self.save_states()
    }

    fn load_state(&mut self, states: &[Vec<u8>]) -> Result<(), DesignerError> {
        self.load_states(states)
    }
}

/// A cascade deployed with [`super::PoolOptions::branch`] is a fork-join's
/// untrusted branch: two packets per step, the forward whose output comes
/// back and the backward from the gradient the designer's merge sends.
impl crate::fork::Branch for PoolCascade {
    fn forward_train(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        self.pool_forward(x)
    }

    fn backward_train(&mut self, dz: Tensor) -> Result<(), DesignerError> {
        self.pool_backward(dz).map(|_| ())
    }
}
