//! Repair (PROTOCOL.md §12.8): which hop failed, and a fresh node in its
//! place.
//!
//! Only a hop that stopped answering is repaired: a message lost within
//! the detection bound ([`PoolError::Lost`]) or a closed link to an end of
//! the cascade ([`PoolError::LinkClosed`]). A hop that answers with a typed
//! error (bad input, a guest that trapped) is alive and would fail the
//! same way on any node, so that failure goes back to the caller.
//!
//! A closed link names its hop. A lost message does not: the designer then
//! sends *probes*, blank control packets whose route runs from the first
//! hop out to hop k and back the same way (`0 → … → k → … → 0 → designer`),
//! for k = 0, 1, …; the first probe that gets no answer within the bound
//! names hop k. Every hop on a probe only relays, under a job handle drawn
//! afresh (as cover carries), so no hop opens anything that says it was
//! probed; a probe's packets go only between neighbours the cascade already
//! links, and the designer is seen by the first hop alone, as always
//! (SPEC §7; what a probe still tells a hop is PROTOCOL.md §12.8).
//!
//! The replacement comes from the directory a quorum of bootstraps serve
//! (as at deployment), chosen at random with OS randomness among the nodes
//! that hold no hop of the cascade, share no address with one, and never
//! failed in this job; it gets the same init the failed hop got (the same
//! masked shard, or the same relay op and sign mask for a dummy) under a
//! fresh job handle. The training loop then loads the latest checkpoint
//! into every layer and replays the data order from there.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mixnn_protocol::NodeDescriptor;
use mixnn_protocol::job::LayerSpec;
use mixnn_sphinx::Op;
use rand::seq::SliceRandom;

use super::directory::{self, Distinct};
use super::onion::{self, Hop, Slot};
use super::{PoolCascade, PoolError, bringup, describe_role, placement};
use crate::DesignerError;
use crate::report::Repair;

/// What a repair needs beyond the cascade itself.
pub(super) struct Spares {
    quorum: usize,
    distinct: Distinct,
    /// Each hop's init (spec and shard bytes), by position.
    pub inits: Vec<(LayerSpec, Vec<u8>)>,
    /// Each hop's addresses as `distinct` compares them, by position.
    addrs: Vec<BTreeSet<String>>,
    /// Each hop's listed multiaddrs, by position: where an end is dialed.
    pub dial: Vec<Vec<String>>,
    /// Identities of the nodes that failed in this job: never used again.
    /// One entry per repair, so it stays as small as the job's repairs.
    failed: Vec<[u8; 32]>,
    /// Identities a repair must not take besides: the other replica's
    /// nodes and the liars found ([`PoolCascade::avoid`]).
    pub avoid: Vec<[u8; 32]>,
}

impl Spares {
    /// The spares of a cascade deployed on `hops` from `pool`.
    pub fn new(hops: &[Hop], pool: &[NodeDescriptor], quorum: usize, distinct: Distinct) -> Spares {
        let listed = |h: &Hop| pool.iter().find(|d| d.identity_key == h.node.0);
        Spares {
            quorum,
            distinct,
            inits: Vec::new(),
            addrs: (hops.iter())
                .map(|h| listed(h).map(|d| directory::address_keys(d, distinct)))
                .map(Option::unwrap_or_default)
                .collect(),
            dial: (hops.iter())
                .map(|h| listed(h).map(|d| d.addrs.clone()))
                .map(Option::unwrap_or_default)
                .collect(),
            failed: Vec::new(),
            avoid: Vec::new(),
        }
    }

    /// A node failed: it is never chosen again in this job.
    pub fn mark_failed(&mut self, id: [u8; 32]) {
        if !self.failed.contains(&id) {
            self.failed.push(id);
        }
    }

    /// The nodes that failed in this job, in the order they failed.
    pub fn failed(&self) -> &[[u8; 32]] {
        &self.failed
    }

    /// Hop `t` is now served by `d`.
    pub fn set(&mut self, t: usize, d: &NodeDescriptor) {
        if let (Some(a), Some(dial)) = (self.addrs.get_mut(t), self.dial.get_mut(t)) {
            *a = directory::address_keys(d, self.distinct);
            *dial = d.addrs.clone();
        }
    }

    /// A node for hop `t` (which holds `role`), at random among the
    /// [`Spares::candidates`] of `listed`; the error says what is missing
    /// when there is none.
    pub fn choose(
        &self,
        hops: &[Hop],
        listed: &[NodeDescriptor],
        t: usize,
        rng: &mut rand_chacha::ChaCha20Rng,
    ) -> Result<NodeDescriptor, PoolError> {
        let (cands, shared) = self.candidates(hops, listed, t);
        cands
            .choose(rng)
            .map(|d| (*d).clone())
            .ok_or_else(|| PoolError::NoSpareNode {
                hop: t + 1,
                role: hops
                    .get(t)
                    .map(|h| describe_role(h.role))
                    .unwrap_or_default(),
                failed: self.failed.len(),
                listed: listed.len(),
                note: if shared > 0 {
                    format!(", {shared} outside it share an address with a hop")
                } else {
                    String::new()
                },
            })
    }

    /// The nodes of `listed` that may take hop `t`: listed with an address,
    /// not one of `hops`, never failed in this job, no address shared with
    /// another hop. Also returns how many were refused for an address only.
    pub fn candidates<'a>(
        &self,
        hops: &[Hop],
        listed: &'a [NodeDescriptor],
        t: usize,
    ) -> (Vec<&'a NodeDescriptor>, usize) {
        let mut shared = 0;
        let mut out = Vec::new();
        for d in listed {
            let id = d.identity_key;
            if self.failed.contains(&id)
                || self.avoid.contains(&id)
                || hops.iter().any(|h| h.node.0 == id)
            {
                continue;
            }
            let keys = directory::address_keys(d, self.distinct);
            let clash = (self.addrs.iter().enumerate())
                .any(|(j, a)| j != t && a.iter().any(|k| keys.contains(k)));
            if keys.is_empty() || clash {
                shared += 1;
                continue;
            }
            out.push(d);
        }
        (out, shared)
    }
}

/// A failure a repair can fix: the hop it names (a closed link, a node
/// that cannot be dialed), and how long after the send it was noticed.
pub(super) fn repairable(e: &DesignerError) -> Option<(Option<usize>, u64)> {
    match e {
        DesignerError::Job(PoolError::Lost { waited_ms, .. }) => Some((None, *waited_ms)),
        DesignerError::Job(PoolError::LinkClosed { hop, after_ms, .. }) => {
            Some((Some(hop.saturating_sub(1)), *after_ms))
        }
        DesignerError::Job(PoolError::Unreachable { hop, .. }) => {
            Some((Some(hop.saturating_sub(1)), 0))
        }
        _ => None,
    }
}

/// What a probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    /// The probe came back: every hop up to the target relays.
    Answered,
    /// No answer within the bound.
    Silent,
    /// The link to this end hop closed meanwhile: that hop is down.
    Closed(usize),
}

impl PoolCascade {
    /// Replaces the hop behind `failure`, if it is one a repair can fix;
    /// see [`crate::Model::repair`].
    pub(super) fn repair_failure(
        &mut self,
        failure: &DesignerError,
    ) -> Result<Option<Repair>, DesignerError> {
        let Some((named, detected_after_ms)) = repairable(failure) else {
            return Ok(None);
        };
        // A cascade attached to after deployment (`pool/attach.rs`) holds
        // no inits to give a new node: its failures go back to the caller.
        if self.spares.inits.is_empty() {
            return Ok(None);
        }
        let noticed = Instant::now();
        let t = match named {
            Some(t) if t < self.hops.len() => t,
            _ => match self.locate()? {
                Some(t) => t,
                None => {
                    tracing::warn!(
                        error = %failure,
                        "every hop answered a probe: the message was lost, no hop failed"
                    );
                    return Ok(None);
                }
            },
        };
        tracing::warn!(hop = t + 1, peer = %self.hops[t].peer, "hop failed; replacing its node");
        let repair = self.replace_failed(t)?;
        Ok(Some(Repair {
            detected_after_ms,
            repaired_after_ms: noticed.elapsed().as_millis() as u64,
            ..repair
        }))
    }

    /// Hop `t`'s node never serves this job again; a fresh node takes its
    /// place. The repair record has no times and no step yet.
    fn replace_failed(&mut self, t: usize) -> Result<Repair, DesignerError> {
        let old = self.hops[t].clone();
        self.spares.mark_failed(old.node.0);
        let new_node = self.replace_hop(t)?;
        self.detect.reset();
        Ok(Repair {
            hop: t,
            role: describe_role(old.role),
            failed_node: old.peer.to_base58(),
            new_node,
            ..Repair::default()
        })
    }

    /// Replaces hop `t` after a lie (or a suspicion of one: a replica
    /// check, `pool/replica.rs`); its node is never used again.
    pub(super) fn replace_liar(&mut self, t: usize) -> Result<Repair, DesignerError> {
        if t >= self.hops.len() {
            return Err(PoolError::NoWitness.into());
        }
        self.replace_failed(t)
    }

    /// The first hop, probing outward from hop 0, that does not answer;
    /// `None` if every hop does. Each probe waits the bound of
    /// [`super::detect::Detect::probe_bound`], given the slowest probe of
    /// this sweep answered so far.
    pub(super) fn locate(&mut self) -> Result<Option<usize>, DesignerError> {
        let mut slowest = Duration::ZERO;
        for k in 0..self.hops.len() {
            let start = Instant::now();
            match self.probe(k, slowest)? {
                Probe::Answered => slowest = slowest.max(start.elapsed()),
                Probe::Silent => return Ok(Some(k)),
                Probe::Closed(h) => return Ok(Some(h)),
            }
        }
        Ok(None)
    }

    /// One probe to hop `k`: a blank control packet relayed by hops
    /// `0..=k` and back by `k-1..=0` (with the last layer kept here, or in
    /// a branch, the probe of the last hop goes on to the designer, as a
    /// forward pass does).
    pub(super) fn probe(&mut self, k: usize, slowest: Duration) -> Result<Probe, DesignerError> {
        let n = self.hops.len();
        let mut slots: Vec<Slot> = (0..=k).map(|j| Slot::new(j, Op::Relay)).collect();
        let one_way = (self.last.is_some() || self.branch) && k + 1 == n;
        if !one_way {
            slots.extend((0..k).rev().map(|j| Slot::new(j, Op::Relay)));
        }
        if slots.len() > self.g.max_hops() {
            return Err(PoolError::ProbeTooLong {
                hop: k + 1,
                route_len: slots.len(),
                max: self.g.max_hops(),
            }
            .into());
        }
        let start = Instant::now();
        let header = onion::header(
            &self.g,
            self.class,
            &self.hops,
            &slots,
            self.ep.node_id(),
            &mut self.rng,
        )?;
        let (bytes, sent) = onion::build(
            &self.g,
            self.class,
            header,
            slots,
            None,
            None,
            self.control_section,
            false,
            &mut self.rng,
        )?;
        self.ep.send(self.hops[0].peer, bytes)?;
        self.net.probes += 1;
        let (bound, rule) = self.detect.probe_bound(slowest);
        let what = format!("probe to hop {}", k + 1);
        match self.await_answer(&sent, bound, start, &what, &rule.to_string()) {
            Ok(answer) => {
                onion::open(&self.g, &sent, answer)?;
                tracing::info!(
                    hop = k + 1,
                    ms = start.elapsed().as_millis() as u64,
                    "probe answered"
                );
                Ok(Probe::Answered)
            }
            Err(DesignerError::Job(PoolError::Lost { .. })) => Ok(Probe::Silent),
            Err(DesignerError::Job(PoolError::LinkClosed { hop, .. })) => {
                Ok(Probe::Closed(hop.saturating_sub(1)))
            }
            Err(e) => Err(e),
        }
    }

    /// Puts a fresh node in hop `t`'s place and sends it hop `t`'s init
    /// (another node if that one cannot be reached: `pool/bringup.rs`);
    /// returns its peer id.
    pub(super) fn replace_hop(&mut self, t: usize) -> Result<String, DesignerError> {
        self.take_spare(t)?;
        let replaced = bringup::bring_up(self, BTreeSet::from([t]), bringup::MAX_REPLACEMENTS)?;
        self.net.unreachable.extend(replaced);
        self.refresh_keys(true);
        let peer = self.hops[t].peer;
        tracing::info!(hop = t + 1, %peer, "hop replaced");
        Ok(peer.to_base58())
    }

    /// Gives hop `t` a node from the directory a quorum serves now (see
    /// [`Spares::candidates`]) under a fresh job handle; it is not linked
    /// nor sent its init yet.
    pub(super) fn take_spare(&mut self, t: usize) -> Result<(), DesignerError> {
        let role = self.hops[t].role;
        let read = self.ep.read_directory(self.spares.quorum);
        if read.answered < read.quorum {
            return Err(PoolError::QuorumUnreached {
                answered: read.answered,
                asked: read.asked,
                quorum: read.quorum,
                failures: read.failures.join("; "),
            }
            .into());
        }
        let d = self
            .spares
            .choose(&self.hops, &read.nodes, t, &mut self.rng)?;
        let hop = placement::hop(&d, role, &mut self.rng)?;
        self.net.cascade[t] = (describe_role(role), hop.peer.to_base58());
        self.hops[t] = hop;
        self.keys.replace(t, d.mix_key.epoch_secs);
        self.spares.set(t, &d);
        Ok(())
    }
}

#[cfg(test)]
#[path = "repair_tests.rs"]
mod tests;
