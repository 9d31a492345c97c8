//! Every layer's whole training state over the job protocol (issue 11):
//! [`Model::save_state`](crate::Model::save_state) collects it from the
//! layer hops (`SaveState` parts, two control batches like the export) and
//! the shards the designer keeps; [`Model::load_state`](crate::Model::load_state)
//! sends it back (`LoadState` chunks filling the control sections, one
//! control batch like init). Dummies hold no state and get no message; the
//! control batches pad every hop to the same packet count all the same
//! (PROTOCOL.md §12.5). States are of the masked cascade and go back into
//! the same masked cascade, so nothing is un-folded here.

use mixnn_protocol::job::{FromHop, MAX_STATE_BYTES, ToHop, state_part_len};

use super::exchange::unexpected;
use super::onion::Role;
use super::{Phase, PoolCascade, PoolError};
use crate::DesignerError;

impl PoolCascade {
    /// Every shard's state, in shard order: the kept shards here, the
    /// others from their hops.
    pub(super) fn save_states(&mut self) -> Result<Vec<Vec<u8>>, DesignerError> {
        let mut out: Vec<Option<Vec<u8>>> = vec![None; self.shards];
        if let Some(l) = self.first.as_mut() {
            out[0] = Some(l.export_state()?);
        }
        if let Some(l) = self.last.as_mut() {
            out[self.shards - 1] = Some(l.export_state()?);
        }
        let hop_states = self.save_hop_states()?;
        for (h, state) in self.hops.iter().zip(hop_states) {
            if let (Role::Layer(i), Some(s)) = (h.role, state) {
                out[i] = Some(s);
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, s)| s.ok_or_else(|| PoolError::NoState(i).into()))
            .collect()
    }

    /// Puts every shard back to `states` (one per shard, in shard order).
    pub(super) fn load_states(&mut self, states: &[Vec<u8>]) -> Result<(), DesignerError> {
        if states.len() != self.shards {
            return Err(DesignerError::ShardCount {
                shards: self.shards,
                layers: states.len(),
            });
        }
        if let Some(l) = self.first.as_mut() {
            l.import_state(&states[0])?;
        }
        if let Some(l) = self.last.as_mut() {
            l.import_state(&states[self.shards - 1])?;
        }
        let mut msgs = Vec::with_capacity(self.hops.len());
        for h in &self.hops {
            msgs.push(match h.role {
                Role::Layer(i) => self.state_chunks(&states[i])?,
                Role::Dummy => Vec::new(),
            });
        }
        let answers = self.control_batch(msgs, Phase::Export)?;
        for (t, list) in answers.into_iter().enumerate() {
            let total = list.len();
            for (i, answer) in list.into_iter().enumerate() {
                match answer {
                    FromHop::Received { index } if i + 1 < total && index as usize == i => {}
                    FromHop::StateLoaded if i + 1 == total => {}
                    other => return Err(unexpected(t, other)),
                }
            }
        }
        Ok(())
    }

    /// Each layer hop's state (`None` for dummies): part 0 of all in one
    /// control batch, which tells each part count, then the other parts.
    fn save_hop_states(&mut self) -> Result<Vec<Option<Vec<u8>>>, DesignerError> {
        let part_len = state_part_len(self.control_section);
        let max_parts = MAX_STATE_BYTES.div_ceil(part_len as u64).max(1);
        self.collect_parts(
            |part| ToHop::SaveState { part },
            |t, part, answer, bytes| take_part(t, part, answer, part_len, bytes),
            max_parts,
        )
    }

    /// A layer hop's `LoadState` chunks, each filling what the control
    /// section leaves after the message's own fields.
    fn state_chunks(&self, state: &[u8]) -> Result<Vec<ToHop>, DesignerError> {
        let probe = ToHop::LoadState {
            index: u32::MAX,
            total: u32::MAX,
            bytes: Vec::new(),
        };
        let parts = self.chunked("load-state", &probe, state)?;
        let total = u32::try_from(parts.len()).map_err(|_| PoolError::StateParts {
            hop: 0,
            parts: u32::MAX,
        })?;
        Ok(parts
            .into_iter()
            .enumerate()
            .map(|(i, part)| ToHop::LoadState {
                index: i as u32,
                total,
                bytes: part.to_vec(),
            })
            .collect())
    }
}

/// Appends state part `part` of hop `t` to `bytes`; returns the part count.
fn take_part(
    t: usize,
    part: u32,
    answer: FromHop,
    part_len: usize,
    bytes: &mut Vec<u8>,
) -> Result<u32, DesignerError> {
    match answer {
        FromHop::StatePart {
            part: p,
            total,
            bytes: b,
        } if p == part && part < total && b.len() <= part_len => {
            bytes.extend_from_slice(&b);
            Ok(total)
        }
        other => Err(unexpected(t, other)),
    }
}
