//! One message of the job: its slots, the packet out, the answer back, and
//! the figures of the network report.

use std::time::Instant;

use mixnn_protocol::job::{FromHop, LayerSpec, ToHop, WireTensor};
use mixnn_sphinx::Op;

use super::onion::{self, Sent, Slot};
use super::{Phase, PoolCascade, PoolError, describe_slot};
use crate::DesignerError;

impl PoolCascade {
    /// Sends hop `t` its spec and shard in chunks that fit the job's class.
    pub(super) fn init_hop(
        &mut self,
        t: usize,
        spec: LayerSpec,
        shard: &[u8],
    ) -> Result<(), DesignerError> {
        let chunk = self
            .g
            .capacity(self.class)
            .map_err(PoolError::from)?
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
                other => return Err(unexpected(t, other)),
            }
        }
        Ok(())
    }

    /// A control message to hop `t`: every other hop relays.
    pub(super) fn control(
        &mut self,
        t: usize,
        msg: ToHop,
        phase: Phase,
    ) -> Result<FromHop, DesignerError> {
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
        reply.ok_or_else(|| PoolError::NoAnswer { hop: t + 1 }.into())
    }

    /// Sends one message and waits for its answer.
    pub(super) fn exchange(
        &mut self,
        slots: Vec<Slot>,
        tensor: Option<WireTensor>,
        e2e: Option<(usize, ToHop)>,
        phase: Phase,
    ) -> Result<(Option<WireTensor>, Option<FromHop>), DesignerError> {
        let start = Instant::now();
        self.refresh_keys(false);
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
        let answer = match self.ep.receive(&sent.exit_id, self.timeout) {
            Ok(a) => a,
            Err(e) => return Err(self.after_loss(e)),
        };
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

    /// Every hop in cascade order, doing `op`.
    pub(super) fn forward_slots(&self, op: Op) -> Vec<Slot> {
        (0..self.hops.len()).map(|j| Slot::new(j, op)).collect()
    }

    /// Every hop in reverse order, backward.
    pub(super) fn backward_slots(&self) -> Vec<Slot> {
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

/// An answer hop `t` should not have given.
pub(super) fn unexpected(t: usize, answer: FromHop) -> DesignerError {
    PoolError::UnexpectedAnswer {
        hop: t + 1,
        answer: Box::new(answer),
    }
    .into()
}
