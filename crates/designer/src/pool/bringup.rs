//! Bringing hops up: linking the cascade's ends and sending hops their
//! init, with any node that proves unreachable replaced by another.
//!
//! Why: a bootstrap lists a node until its descriptor expires, so a node
//! that stopped a minute ago is still in the directory. A deployment (a new
//! job, or a resumed one whose designer died) or a repair that chose such a
//! node would fail on it, and a resumed job would fail on it every time
//! until the descriptor expires. Instead, when dialing a hop fails, its
//! link closes, or a message is lost and the probes of `pool/repair.rs`
//! name the silent hop, that hop's node is marked failed (never chosen
//! again in this job, as a repair's failed node) and the hop gets another
//! node from the directory under the same rules as a repair: never a node
//! already in the cascade, never a failed one, never one sharing an
//! address with a hop. Then the hops still waiting for their init (which
//! ones finished is not known after a failure, and a repeated init simply
//! starts the hop's job afresh) are sent it again. At most
//! [`MAX_REPLACEMENTS`] nodes are replaced per bring-up, so a directory
//! full of dead entries ends in a clear error rather than a long hunt.
//!
//! Before the inits go out, the cascade is swept with one of the repair's
//! probes, to the last hop and back (every hop relays it, as every hop
//! relays a training step's round trip, so it shows no hop its position).
//! An init may wait the whole configured timeout (a hop compiles its
//! layer), but a relay needs no compiling, so the probe waits only
//! [`super::detect::SWEEP_FLOOR`]. Unanswered, the repair's probes outward
//! from hop 0 name the silent hop, each waiting ten times the slowest
//! before it (at least that floor). A dead middle hop, which the designer
//! cannot dial (it talks to the ends alone), is so found in about two
//! floors, where it used to cost a lost init at the full timeout and then
//! probes at the full timeout again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::deploy::CONNECT_WAIT;
use super::repair::{Probe, repairable};
use super::{PoolCascade, PoolError, describe_role};
use crate::DesignerError;

/// Unreachable nodes one bring-up replaces before it gives up.
pub(super) const MAX_REPLACEMENTS: usize = 4;

/// What bringing hops up does with a cascade, apart from the rule that
/// decides when to replace a node and when to give up ([`bring_up`]).
pub(super) trait Hops {
    /// Links the ends among `pending` (hop indexes) and sends each pending
    /// hop its init.
    fn attempt(&mut self, pending: &BTreeSet<usize>) -> Result<(), DesignerError>;
    /// The hop whose node `failure` shows unreachable; `None` for a failure
    /// another node would not fix (a hop that answered with an error).
    fn unreachable(&mut self, failure: &DesignerError) -> Result<Option<usize>, DesignerError>;
    /// Hop `t` and its node, for the log and the error.
    fn describe(&self, t: usize) -> String;
    /// The identity of hop `t`'s node.
    fn node_id(&self, t: usize) -> [u8; 32];
    /// Marks hop `t`'s node failed and gives the hop another node.
    fn replace(&mut self, t: usize) -> Result<(), DesignerError>;
}

/// Brings the `pending` hops up, replacing the node of any hop that proves
/// unreachable (at most `max` of them); returns those replaced, each as
/// `hop N (role, node P): why`.
pub(super) fn bring_up(
    h: &mut dyn Hops,
    mut pending: BTreeSet<usize>,
    max: usize,
) -> Result<Vec<String>, DesignerError> {
    let mut dropped: Vec<String> = Vec::new();
    let mut ids: Vec<[u8; 32]> = Vec::new();
    loop {
        let failure = match h.attempt(&pending) {
            Ok(()) => return Ok(dropped),
            Err(e) => e,
        };
        let Some(t) = h.unreachable(&failure)? else {
            return Err(failure);
        };
        dropped.push(format!("{}: {failure}", h.describe(t)));
        ids.push(h.node_id(t));
        if dropped.len() > max {
            return Err(PoolError::TooManyUnreachable {
                tried: dropped.len(),
                nodes: dropped.join("; "),
                ids,
            }
            .into());
        }
        tracing::warn!(
            hop = t + 1,
            error = %failure,
            "the node chosen for this hop cannot be reached; choosing another"
        );
        h.replace(t)?;
        pending.insert(t);
    }
}

impl Hops for PoolCascade {
    fn attempt(&mut self, pending: &BTreeSet<usize>) -> Result<(), DesignerError> {
        let n = self.hops.len();
        for &t in pending {
            if t == 0 || t + 1 == n {
                self.connect_hop(t)?;
            }
        }
        self.sweep()?;
        let inits = (0..n)
            .map(|t| {
                pending
                    .contains(&t)
                    .then(|| self.spares.inits.get(t).cloned())
                    .flatten()
            })
            .collect();
        self.init_hops(inits)
    }

    fn unreachable(&mut self, failure: &DesignerError) -> Result<Option<usize>, DesignerError> {
        match repairable(failure) {
            Some((Some(t), _)) if t < self.hops.len() => Ok(Some(t)),
            Some(_) => self.locate(),
            None => Ok(None),
        }
    }

    fn describe(&self, t: usize) -> String {
        let h = &self.hops[t];
        format!("hop {} ({}, node {})", t + 1, describe_role(h.role), h.peer)
    }

    fn node_id(&self, t: usize) -> [u8; 32] {
        self.hops[t].node.0
    }

    fn replace(&mut self, t: usize) -> Result<(), DesignerError> {
        self.spares.mark_failed(self.hops[t].node.0);
        self.take_spare(t)
    }
}

impl PoolCascade {
    /// Probes the whole cascade before the inits; if that goes unanswered,
    /// locates the silent hop and returns it as unreachable. A cascade too
    /// long for a probe's route is not swept (its inits then find a dead
    /// hop as before); one whose hops all answer the second time goes on.
    fn sweep(&mut self) -> Result<(), DesignerError> {
        if self.hops.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        let whole = match self.probe(self.hops.len() - 1, Duration::ZERO) {
            Err(DesignerError::Job(PoolError::ProbeTooLong { .. })) => return Ok(()),
            other => other?,
        };
        let found = match whole {
            Probe::Answered => None,
            Probe::Closed(h) => Some(h),
            Probe::Silent => self.locate()?,
        };
        let Some(t) = found else {
            tracing::debug!(
                hops = self.hops.len(),
                ms = start.elapsed().as_millis() as u64,
                "bring-up sweep: every hop relays"
            );
            return Ok(());
        };
        let h = &self.hops[t];
        Err(PoolError::Unreachable {
            hop: t + 1,
            role: describe_role(h.role),
            peer: h.peer.to_base58(),
            reason: format!(
                "no answer to a probe within {} ms of the bring-up sweep",
                start.elapsed().as_millis()
            ),
        }
        .into())
    }

    /// Opens the packet link to hop `t`, an end of the cascade (the
    /// designer talks to the ends alone).
    fn connect_hop(&self, t: usize) -> Result<(), DesignerError> {
        let h = &self.hops[t];
        let addrs = self.spares.dial.get(t).map_or(&[][..], Vec::as_slice);
        self.ep.connect(h.peer, addrs, CONNECT_WAIT).map_err(|e| {
            PoolError::Unreachable {
                hop: t + 1,
                role: describe_role(h.role),
                peer: h.peer.to_base58(),
                reason: e.to_string(),
            }
            .into()
        })
    }
}
